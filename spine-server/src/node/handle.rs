//! The handle to the node loop, the messages it sends there, and what the loop publishes (its
//! state, its Raft status, the applied events).
//!
//! Every request is a [`Msg`] with a oneshot reply over a bounded mailbox; the loop answers each
//! within its request timeout (see [`super::pending`]). Shutdown is a watch, seen first by the
//! loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::Membership;
use crate::state::{Change, Command, Outcome, State};

/// Why the node could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// No leader, no quorum, or the leader changed while the request was in flight. Safe to
    /// retry (updates are idempotent by update id).
    #[error("{reason}{}", leader_hint(*leader, addr.as_deref()))]
    Unavailable {
        /// What happened.
        reason: String,
        /// The leader this node knows of, if any.
        leader: Option<u64>,
        /// Its address.
        addr: Option<String>,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    Stopped,
    /// The request is not valid for the cluster's membership.
    #[error("{0}")]
    Invalid(String),
}

fn leader_hint(leader: Option<u64>, addr: Option<&str>) -> String {
    match (leader, addr) {
        (Some(id), Some(addr)) => format!("; leader hint: node {id} at {addr}"),
        (Some(id), None) => format!("; leader hint: node {id}"),
        _ => "; no leader is known (is a majority of nodes up?)".into(),
    }
}

/// Role and progress of this node, published after every step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This node.
    pub id: u64,
    /// The leader it follows (0 when unknown).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// "leader", "follower", "candidate" or "pre-candidate".
    pub role: &'static str,
    /// Highest committed index known.
    pub commit: u64,
    /// First index still in the log.
    pub first_index: u64,
}

/// What one applied entry changed; subscribers read these from a broadcast channel.
#[derive(Clone, Debug)]
pub struct AppliedEvent {
    /// The log index.
    pub index: u64,
    /// What changed (updates committed together are in one event).
    pub changes: Vec<Change>,
    /// The whole state was replaced by a snapshot: subscribers must resynchronize.
    pub reset: bool,
}

/// Where the loop sends a request's answer.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// A message to the node loop.
#[derive(Debug)]
pub enum Msg {
    /// Propose a command; answered with its outcome and log index when applied here.
    Propose(Command, Reply<(Outcome, u64)>),
    /// Ask for a linearizable read index; answered once this node applied up to it.
    ReadIndex(Reply<u64>),
    /// A membership change; answered with the new membership when applied here.
    ChangeMembership(Membership, Reply<crate::state::Membership>),
    /// Hand leadership to another voter.
    TransferLeader(u64, Reply<()>),
}

/// A cloneable handle to the node loop.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    pub(super) id: u64,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) state: watch::Receiver<Arc<State>>,
    pub(super) status: watch::Receiver<RaftStatus>,
    pub(super) events: broadcast::Sender<Arc<AppliedEvent>>,
    pub(super) shutdown: Arc<watch::Sender<bool>>,
    pub(super) request_timeout: Duration,
    pub(super) election_timeout: Duration,
}

impl NodeHandle {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The newest applied state on this node.
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }

    /// A receiver of applied states, to wait for progress.
    pub fn watch_state(&self) -> watch::Receiver<Arc<State>> {
        self.state.clone()
    }

    /// The newest Raft status.
    pub fn status(&self) -> RaftStatus {
        self.status.borrow().clone()
    }

    /// Subscribes to applied events (call before reading [`state`](Self::state) so nothing is
    /// missed between the two).
    pub fn events(&self) -> broadcast::Receiver<Arc<AppliedEvent>> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        // The loop answers every request within its request timeout; the extra margin only
        // covers a loop that stopped without answering.
        match tokio::time::timeout(self.request_timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(self.unavailable("the request timed out")),
        }
    }

    fn unavailable(&self, reason: &str) -> NodeError {
        let status = self.status();
        let state = self.state();
        let leader = (status.leader_id != 0).then_some(status.leader_id);
        NodeError::Unavailable {
            reason: reason.into(),
            leader,
            addr: leader.and_then(|l| state.membership.addrs.get(&l).cloned()),
        }
    }

    /// Proposes a command and waits until it is applied here.
    pub async fn propose(&self, command: Command) -> Result<(Outcome, u64), NodeError> {
        self.ask(|r| Msg::Propose(command, r)).await
    }

    /// Waits until this node has applied everything committed when the call was made
    /// (ReadIndex), so that reading its state afterwards is linearizable.
    pub async fn linearizable(&self) -> Result<Arc<State>, NodeError> {
        let index = self.ask(Msg::ReadIndex).await?;
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.applied_index >= index)
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(state.clone())
    }

    /// Changes membership and waits until the change is applied here.
    pub async fn change_membership(
        &self,
        change: Membership,
    ) -> Result<crate::state::Membership, NodeError> {
        self.ask(|r| Msg::ChangeMembership(change, r)).await
    }

    /// Asks the group to move leadership to `to`.
    ///
    /// Returns once `to` leads. raft-rs abandons a transfer the target cannot complete within an
    /// election timeout (for example while it catches up, or while this node does not yet know
    /// the leader), so the request is repeated until it succeeds or the request timeout passes.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let attempt = self.election_timeout.max(Duration::from_millis(200));
        loop {
            if self.status().leader_id == to {
                return Ok(());
            }
            self.ask(|r| Msg::TransferLeader(to, r)).await?;
            let mut status = self.status.clone();
            let moved = tokio::time::timeout(attempt, status.wait_for(|s| s.leader_id == to)).await;
            if matches!(moved, Ok(Ok(_))) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.unavailable(&format!(
                    "leadership did not move to node {to} in time (is it running, reachable and caught up?)"
                )));
            }
        }
    }

    /// Resolves once [`shutdown`](Self::shutdown) was called.
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Stops the loop; pending requests are answered with [`NodeError::Stopped`].
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}
