//! The supervisor: a checkup of the whole tree every `interval`, and the decision to end the
//! process when the tree cannot be repaired.
//!
//! Restarts happen inside a checkup (containers repair their children), so a checkup that is
//! retrying a restart is still pending at the next tick and counts as a hang: choose
//! `max_hang_retries * interval` above the longest restart (`max_retries * retry_delay`).

use std::fmt;
use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::Error;
use crate::policy::Policy;
use crate::tree::Tree;

/// Supervises a [`Tree`] with the policy from its top's env.
#[derive(Debug, Clone)]
pub struct Supervisor {
    tree: Tree,
    policy: Policy,
}

/// Why supervision ended: the process should exit non-zero with [`Fatal::error`]'s chain, unless
/// `die_delay` was negative.
#[derive(Debug)]
pub struct Fatal {
    /// What could not be repaired.
    pub error: Error,
    /// `true` once `die_delay` has passed; `false` when `die_delay` is negative ("do not exit").
    pub exit_process: bool,
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unrecoverable: {}", self.error.chain())
    }
}

impl std::error::Error for Fatal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

enum Event {
    Tick,
    Checked(Result<Result<(), Error>, tokio::task::JoinError>),
    Stop,
}

impl Supervisor {
    /// Supervises `tree` with its own policy.
    pub fn new(tree: Tree) -> Self {
        let policy = tree.policy().clone();
        Supervisor { tree, policy }
    }

    /// Supervises `tree` with another policy.
    pub fn with_policy(tree: Tree, policy: Policy) -> Self {
        Supervisor { tree, policy }
    }

    /// Checks the tree every `interval` until `stop` completes (`Ok`) or the tree cannot be
    /// repaired (`Err`, after `die_delay`). It does not shut the tree down either way.
    pub async fn run(&self, stop: impl Future<Output = ()>) -> Result<(), Fatal> {
        let mut stop = std::pin::pin!(stop);
        let interval = self.policy.interval;
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pending: Option<JoinHandle<Result<(), Error>>> = None;
        let mut hangs = 0u32;
        loop {
            let event = match pending.as_mut() {
                Some(checkup) => tokio::select! {
                    result = checkup => Event::Checked(result),
                    _ = ticks.tick() => Event::Tick,
                    () = &mut stop => Event::Stop,
                },
                None => tokio::select! {
                    _ = ticks.tick() => Event::Tick,
                    () = &mut stop => Event::Stop,
                },
            };
            let failure = match event {
                Event::Stop => {
                    if let Some(checkup) = pending.take() {
                        checkup.abort();
                    }
                    return Ok(());
                }
                Event::Tick if pending.is_some() => {
                    hangs += 1;
                    tracing::warn!(path = %self.tree.checking(), hangs, "checkup still pending");
                    if hangs <= self.policy.max_hang_retries {
                        continue;
                    }
                    Error::Hang {
                        path: self.tree.checking(),
                        ticks: hangs,
                        interval,
                        max_hang_retries: self.policy.max_hang_retries,
                    }
                }
                Event::Tick => {
                    let tree = self.tree.clone();
                    pending = Some(tokio::spawn(async move { tree.checkup().await }));
                    continue;
                }
                Event::Checked(Ok(Ok(()))) => {
                    pending = None;
                    hangs = 0;
                    continue;
                }
                Event::Checked(Ok(Err(error))) => error,
                Event::Checked(Err(_panic)) => Error::Panicked {
                    path: self.tree.checking(),
                },
            };
            if let Some(checkup) = pending.take() {
                checkup.abort();
            }
            return Err(self.die(failure).await);
        }
    }

    async fn die(&self, error: Error) -> Fatal {
        match self.policy.die_delay {
            Some(delay) => {
                tracing::error!(error = %error.chain(), ?delay, "unrecoverable; exiting after die_delay");
                tokio::time::sleep(delay).await;
                Fatal {
                    error,
                    exit_process: true,
                }
            }
            None => {
                tracing::error!(error = %error.chain(), "unrecoverable; not exiting (negative die_delay)");
                Fatal {
                    error,
                    exit_process: false,
                }
            }
        }
    }
}
