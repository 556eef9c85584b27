//! Propagation: one writer updates one map/key; N subscribers (Spine: node agents, each its own
//! connection and subscription; etcd: watchers, each its own connection and watch stream) wait
//! for the update. A sample is the time from the writer's acknowledgement to the update being
//! visible at one subscriber (pinnable in an agent; delivered to a watcher); an update visible
//! before the writer saw its acknowledgement counts as 0.
//!
//! Writes go to the leader (connection 0); subscriber `i` uses connection `first + i` (`first` is
//! 1 unless a diagnostic asks otherwise), so a single subscriber sits on a follower and many
//! spread over all members.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use node_agent::{Agent, Replica};
use sharing_map::{AppName, MapName};

use super::Outcome;
use crate::cluster::{EtcdTarget, SpineTarget};
use crate::etcd::WatchStream;
use crate::load::{self, CasWriter, payload};
use crate::stats::Latencies;

/// Longest wait for one update to reach every subscriber.
const UPDATE_DEADLINE: Duration = Duration::from_secs(60);
/// Updates sent before measuring (connections warm, lazy state built).
const WARM_UP: u64 = 3;
/// Subscribers connected at once.
const CONNECT_CONCURRENCY: usize = 16;

/// A subscriber that can wait for the next update of the one map/key it follows.
pub trait Follower: Send + Sized + 'static {
    /// Waits until the next update is visible; returns when it was.
    fn next_update(self) -> impl Future<Output = anyhow::Result<(Self, Instant)>> + Send;
}

/// A node agent following one map.
#[derive(Debug)]
pub struct AgentFollower {
    /// Kept so the agent lives as long as the follower.
    pub agent: Agent,
    replica: Replica,
    /// The version the next update produces minus one.
    version: u64,
}

impl Follower for AgentFollower {
    async fn next_update(mut self) -> anyhow::Result<(Self, Instant)> {
        self.version += 1;
        while self.replica.version() < self.version {
            self.replica.changed().await?;
        }
        Ok((self, Instant::now()))
    }
}

/// An etcd watcher on one key.
#[derive(Debug)]
pub struct Watcher {
    stream: WatchStream,
    /// The key's last revision this watcher has seen.
    revision: i64,
}

impl Follower for Watcher {
    async fn next_update(mut self) -> anyhow::Result<(Self, Instant)> {
        loop {
            let response = self.stream.next().await?;
            if response.canceled {
                bail!("etcd canceled the watch: {}", response.cancel_reason);
            }
            // Only the writer writes the key, so the first event past the last one seen is the
            // update being waited for.
            let newest = response
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
                .max();
            if let Some(rev) = newest.filter(|r| *r > self.revision) {
                self.revision = rev;
                return Ok((self, Instant::now()));
            }
        }
    }
}

/// What [`measure`] found.
struct Samples {
    /// Writer's acknowledgement → visible.
    after_ack: Latencies,
    /// Writer sent the update → visible (end to end).
    after_send: Latencies,
    /// Samples visible before the acknowledgement.
    before_ack: u64,
}

/// Sends `warm_up + updates` updates, one at a time, each after every follower saw the last.
async fn measure<W: CasWriter, F: Follower>(
    writer: &mut W,
    mut followers: Vec<F>,
    updates: u64,
) -> anyhow::Result<(Samples, Vec<F>)> {
    let mut samples = Samples {
        after_ack: Latencies::new(),
        after_send: Latencies::new(),
        before_ack: 0,
    };
    for u in 0..WARM_UP + updates {
        let waits = followers.into_iter().map(F::next_update);
        let waiting = tokio::spawn(futures::future::try_join_all(waits));
        let sent = Instant::now();
        writer.write(payload(u)).await?;
        let acked = Instant::now();
        let seen = tokio::time::timeout(UPDATE_DEADLINE, waiting)
            .await
            .with_context(|| format!("update {u} did not reach every subscriber in time"))?
            .context("a subscriber task panicked")??;
        followers = Vec::with_capacity(seen.len());
        for (f, at) in seen {
            if u >= WARM_UP {
                if at < acked {
                    samples.before_ack += 1;
                }
                samples
                    .after_ack
                    .record(at.saturating_duration_since(acked));
                samples
                    .after_send
                    .record(at.saturating_duration_since(sent));
            }
            followers.push(f);
        }
    }
    Ok((samples, followers))
}

fn outcome(samples: &Samples, subscribers: usize) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    let end_to_end = samples.after_send.summary();
    out.latency(samples.after_ack.summary())
        .figure("sent_p50_ms", end_to_end.p50_ms)
        .figure("sent_p99_ms", end_to_end.p99_ms)
        .detail("samples", samples.after_ack.count())
        .detail("visible_before_ack", samples.before_ack)
        .detail("subscribers", subscribers as u64)
        .detail("sent_to_visible", serde_json::to_value(end_to_end)?);
    Ok(out)
}

/// `n` node agents follow one fresh map of `app`, the first on connection `first`; `updates`
/// updates.
pub async fn spine(
    target: &SpineTarget,
    app: &AppName,
    n: usize,
    first: usize,
    updates: u64,
) -> anyhow::Result<Outcome> {
    let map = MapName::parse(&format!("prop-s{n}-c{first}"))?;
    let mut writers = load::spine_writers(target, app, vec![map.clone()]).await?;
    let mut writer = writers.pop().context("no writer")?;
    let version = writer.version();
    let followers: Vec<AgentFollower> = futures::stream::iter(0..n)
        .map(|i| {
            let access = target.access(first + i);
            let (app, map) = (app.clone(), map.clone());
            async move {
                let agent = Agent::connect(access.endpoints, access.agent).await?;
                let replica = agent.replica(&app, &map).await?;
                anyhow::Ok(AgentFollower {
                    agent,
                    replica,
                    version,
                })
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let (samples, followers) = measure(&mut writer, followers, updates).await?;
    for f in &followers {
        f.agent.shutdown();
    }
    outcome(&samples, n)
}

/// `n` watchers on one fresh key under `prefix`, the first on connection `first`; `updates`
/// updates.
pub async fn etcd(
    target: &EtcdTarget,
    prefix: &str,
    n: usize,
    first: usize,
    updates: u64,
) -> anyhow::Result<Outcome> {
    let key = format!("{prefix}/prop/s{n}/c{first}").into_bytes();
    let mut writers = load::etcd_writers(target, vec![key.clone()]).await?;
    let mut writer = writers.pop().context("no writer")?;
    let revision = writer.mod_revision;
    let followers: Vec<Watcher> = futures::stream::iter(0..n)
        .map(|i| {
            let key = key.clone();
            async move {
                let conn = target.connect(first + i).await?;
                // From the revision after the key's first put: a watch "from now" on a follower
                // that has not applied that put yet would deliver the put as if it were an update.
                let mut stream = conn.watch(&[(&key, false, revision + 1)]).await?;
                let early = stream.created(1).await?;
                if !early.is_empty() {
                    bail!("a watcher saw an update before any was written");
                }
                anyhow::Ok(Watcher { stream, revision })
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let (samples, _) = measure(&mut writer, followers, updates).await?;
    outcome(&samples, n)
}
