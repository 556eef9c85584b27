//! Fan-out: S subscribers follow K of M maps/keys each (subscriber `s` follows maps
//! `s·M/S .. s·M/S + K`, wrapping, so every map has K·S/M subscribers); then a burst writes every
//! map once (C writers at a time). Measured: the time from the burst's first write until every
//! subscriber has every update, and the servers' resident memory per subscription (RSS of all
//! server processes after subscribing minus before, over S·K).
//!
//! Spine subscribers are node agents (one connection and subscription stream each, K replicas);
//! etcd subscribers are one connection and one watch stream each, with K watchers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use node_agent::{Agent, Replica};
use sharing_map::{AppName, MapName};

use super::Outcome;
use crate::cluster::{EtcdTarget, SpineTarget};
use crate::load::{self, CasWriter};
use crate::procfs;

/// Longest wait for every subscriber to have every update.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(300);
/// Subscribers connected at once.
const CONNECT_CONCURRENCY: usize = 32;

/// The shape of a fan-out run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Subscribers.
    pub subscribers: usize,
    /// Maps (keys).
    pub maps: usize,
    /// Maps each subscriber follows.
    pub per_subscriber: usize,
    /// Writes in flight during the burst.
    pub concurrency: usize,
}

impl Shape {
    /// The maps subscriber `s` follows.
    pub fn followed_by(&self, s: usize) -> Vec<usize> {
        let stride = self.maps / self.subscribers.max(1);
        (0..self.per_subscriber.min(self.maps))
            .map(|j| (s * stride + j) % self.maps.max(1))
            .collect()
    }

    fn subscriptions(&self) -> usize {
        self.subscribers * self.per_subscriber.min(self.maps)
    }
}

/// Burst, wait for all, and fill the outcome.
async fn burst_and_wait<W: CasWriter>(
    shape: Shape,
    writers: Vec<W>,
    waiters: Vec<tokio::task::JoinHandle<anyhow::Result<Instant>>>,
    rss: (u64, u64),
    pids: &[u32],
) -> anyhow::Result<Outcome> {
    let (_, figures, start) = load::burst(writers, shape.concurrency).await?;
    let all = tokio::time::timeout(DELIVERY_DEADLINE, futures::future::try_join_all(waiters))
        .await
        .context("not every subscriber had every update in time")?
        .context("a subscriber task panicked")?;
    let mut last = start;
    for at in all {
        last = last.max(at?);
    }
    let mut out = Outcome::default();
    out.figure(
        "all_delivered_s",
        last.saturating_duration_since(start).as_secs_f64(),
    )
    .figure("burst_write_s", figures.seconds)
    .detail("burst_writes_per_s", figures.per_second())
    .detail(
        "burst_write_latency",
        serde_json::to_value(figures.latencies.summary())?,
    )
    .detail("subscriptions", shape.subscriptions() as u64)
    .detail("subscribers", shape.subscribers as u64)
    .detail("maps", shape.maps as u64);
    if !pids.is_empty() {
        let grown = rss.1.saturating_sub(rss.0);
        out.figure(
            "server_bytes_per_subscription",
            grown as f64 / shape.subscriptions().max(1) as f64,
        )
        .detail("server_rss_before_bytes", rss.0)
        .detail("server_rss_after_bytes", rss.1);
    }
    Ok(out)
}

fn rss(pids: &[u32]) -> anyhow::Result<u64> {
    if pids.is_empty() {
        Ok(0)
    } else {
        procfs::total_rss(pids)
    }
}

/// Fan-out on the Spine, maps in `app`.
pub async fn spine(target: &SpineTarget, app: &AppName, shape: Shape) -> anyhow::Result<Outcome> {
    let names: Vec<MapName> = (0..shape.maps)
        .map(|i| MapName::parse(&format!("fan-m{i}-m")))
        .collect::<Result<_, _>>()?;
    let began = Instant::now();
    let writers = load::spine_writers(target, app, names.clone()).await?;
    eprintln!(
        "    Spine: created {} maps ({:.1}s)",
        shape.maps,
        began.elapsed().as_secs_f64()
    );
    let pids = target.procs.pids();
    let before = rss(&pids)?;
    let agents: Vec<(Agent, Vec<Replica>)> = futures::stream::iter(0..shape.subscribers)
        .map(|s| {
            let access = target.access(1 + s);
            let maps: Vec<MapName> = shape
                .followed_by(s)
                .into_iter()
                .map(|m| names[m].clone())
                .collect();
            async move {
                let agent = Agent::connect(access.endpoints, access.agent)
                    .await
                    .with_context(|| format!("subscriber {s}: starting its node agent"))?;
                let replicas =
                    futures::future::try_join_all(maps.iter().map(|m| agent.replica(app, m)))
                        .await
                        .with_context(|| format!("subscriber {s}: following its maps"))?;
                anyhow::Ok((agent, replicas))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let after = rss(&pids)?;
    eprintln!(
        "    Spine: {} agents follow {} maps each ({:.1}s); bursting {} updates",
        agents.len(),
        shape.per_subscriber,
        began.elapsed().as_secs_f64(),
        shape.maps
    );
    let waiters = agents
        .iter()
        .map(|(_, replicas)| {
            let mut replicas = replicas.clone();
            tokio::spawn(async move {
                for r in &mut replicas {
                    // Every map is at version 0 until the burst writes version 1.
                    while r.version() < 1 {
                        r.changed().await?;
                    }
                }
                anyhow::Ok(Instant::now())
            })
        })
        .collect();
    let out = burst_and_wait(shape, writers, waiters, (before, after), &pids).await;
    for (agent, _) in &agents {
        agent.shutdown();
    }
    out
}

/// Fan-out on etcd, keys under `prefix`.
pub async fn etcd(target: &EtcdTarget, prefix: &str, shape: Shape) -> anyhow::Result<Outcome> {
    let keys: Vec<Vec<u8>> = (0..shape.maps)
        .map(|i| format!("{prefix}/fan/m{i}").into_bytes())
        .collect();
    let began = Instant::now();
    let writers = load::etcd_writers(target, keys.clone()).await?;
    eprintln!(
        "    etcd: put {} keys ({:.1}s)",
        shape.maps,
        began.elapsed().as_secs_f64()
    );
    let pids = target.procs.pids();
    let before = rss(&pids)?;
    let keys = &keys;
    let streams: Vec<_> = futures::stream::iter(0..shape.subscribers)
        .map(|s| async move {
            let conn = target.connect(1 + s).await?;
            let followed = shape.followed_by(s);
            let watchers: Vec<(&[u8], bool, i64)> = followed
                .iter()
                .map(|&m| (keys[m].as_slice(), false, 0))
                .collect();
            let mut stream = conn.watch(&watchers).await?;
            if !stream.created(followed.len()).await?.is_empty() {
                bail!("a watcher saw an update before the burst");
            }
            anyhow::Ok((conn, stream, followed.len()))
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let after = rss(&pids)?;
    eprintln!(
        "    etcd: {} watch streams with {} watchers each ({:.1}s); bursting {} updates",
        streams.len(),
        shape.per_subscriber,
        began.elapsed().as_secs_f64(),
        shape.maps
    );
    let waiters = streams
        .into_iter()
        .map(|(conn, mut stream, followed)| {
            tokio::spawn(async move {
                let _conn = conn;
                let mut seen = HashSet::with_capacity(followed);
                while seen.len() < followed {
                    let response = stream.next().await?;
                    if response.canceled {
                        bail!("etcd canceled a watch: {}", response.cancel_reason);
                    }
                    for event in response.events {
                        seen.insert(event.kv.map(|kv| kv.key).unwrap_or_default());
                    }
                }
                anyhow::Ok(Instant::now())
            })
        })
        .collect();
    burst_and_wait(shape, writers, waiters, (before, after), &pids).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_has_the_same_number_of_subscribers() {
        let shape = Shape {
            subscribers: 1000,
            maps: 10_000,
            per_subscriber: 100,
            concurrency: 1000,
        };
        let mut count = vec![0usize; shape.maps];
        for s in 0..shape.subscribers {
            let followed = shape.followed_by(s);
            assert_eq!(followed.len(), 100);
            assert_eq!(followed.iter().collect::<HashSet<_>>().len(), 100);
            for m in followed {
                count[m] += 1;
            }
        }
        assert!(count.iter().all(|&c| c == 10), "{:?}", &count[..20]);
        assert_eq!(shape.subscriptions(), 100_000);
    }
}
