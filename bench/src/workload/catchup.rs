//! Catch-up: a subscriber that follows K maps/keys goes away while U updates are written to them
//! (U/K each, K writers at once), then comes back and asks for everything after what it had.
//! Measured: the time from reconnecting until it is current again.
//!
//! - Spine: one subscription stream with each map from the version it had; the Spine sends the
//!   retained change sets, or a snapshot when they are no longer retained; never an error.
//! - etcd: one watch on the keys' prefix from the revision after the last one it had (what etcd
//!   clients do). If etcd compacted that revision away the watch is canceled with the compact
//!   revision: that is recorded as a compaction error and the subscriber re-lists the prefix.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharing_map::{AppName, MapName};
use spine_client::{MapUpdate, SubscriptionSpec};

use super::Outcome;
use crate::cluster::{EtcdTarget, SpineTarget};
use crate::load::{self, Until};

/// Longest a subscriber may take to be current again.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(600);

/// The shape of a catch-up run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Maps (keys) followed.
    pub maps: usize,
    /// Updates written while away, in all.
    pub updates: u64,
}

impl Shape {
    fn per_map(&self) -> u64 {
        self.updates / self.maps.max(1) as u64
    }
}

/// Catch-up on the Spine, maps in `app`.
pub async fn spine(target: &SpineTarget, app: &AppName, shape: Shape) -> anyhow::Result<Outcome> {
    let names: Vec<MapName> = (0..shape.maps)
        .map(|i| MapName::parse(&format!("away-m{i}-m")))
        .collect::<Result<_, _>>()?;
    let writers = load::spine_writers(target, app, names.clone()).await?;
    // What the subscriber had when it went away.
    let had: HashMap<MapName, u64> = names
        .iter()
        .cloned()
        .zip(writers.iter().map(|w| w.version()))
        .collect();
    let label = format!("Spine, writing {} updates while away", shape.updates);
    let (writers, written) = load::run(writers, Until::Writes(shape.per_map()), &label).await?;
    let target_versions: HashMap<MapName, u64> = names
        .iter()
        .cloned()
        .zip(writers.iter().map(|w| w.version()))
        .collect();

    let client = target.client(1)?;
    let start = Instant::now();
    let specs = had
        .iter()
        .map(|(m, v)| SubscriptionSpec::map(app.clone(), m).from_version(*v))
        .collect();
    let mut sub = client
        .subscribe(specs)
        .await
        .context("resubscribing to the Spine")?;
    let mut behind = target_versions
        .iter()
        .filter(|(m, v)| had.get(*m).is_some_and(|h| h < *v))
        .count();
    let mut current: HashMap<MapName, u64> = had.clone();
    let (mut deltas, mut snapshots) = (0u64, 0u64);
    let caught_up = async {
        while behind > 0 {
            let event = sub.next().await.context("the Spine subscription failed")?;
            for update in event.updates {
                match update {
                    MapUpdate::Delta { .. } => deltas += 1,
                    MapUpdate::Snapshot { .. } => snapshots += 1,
                }
                let map = update.map().clone();
                let want = target_versions.get(&map).copied().unwrap_or(0);
                let v = current.entry(map).or_default();
                let was_behind = *v < want;
                *v = (*v).max(update.version());
                if was_behind && *v >= want {
                    behind -= 1;
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CATCH_UP_DEADLINE, caught_up)
        .await
        .context("the subscriber was not current in time")??;
    let elapsed = start.elapsed();
    let mut out = Outcome::default();
    out.figure("catch_up_s", elapsed.as_secs_f64())
        .figure("write_phase_writes_per_s", written.per_second())
        .detail("updates_missed", written.writes)
        .detail("deltas_received", deltas)
        .detail("snapshots_received", snapshots)
        .detail("compacted", false);
    Ok(out)
}

/// Catch-up on etcd, keys under `prefix`.
pub async fn etcd(target: &EtcdTarget, prefix: &str, shape: Shape) -> anyhow::Result<Outcome> {
    let key_prefix = format!("{prefix}/away/");
    let keys = (0..shape.maps)
        .map(|i| format!("{key_prefix}m{i}").into_bytes())
        .collect();
    let writers = load::etcd_writers(target, keys).await?;
    // The subscriber had seen everything up to the last initial put.
    let had = writers.iter().map(|w| w.mod_revision).max().unwrap_or(0);
    let label = format!("etcd, writing {} updates while away", shape.updates);
    let (writers, written) = load::run(writers, Until::Writes(shape.per_map()), &label).await?;
    let last = writers.iter().map(|w| w.mod_revision).max().unwrap_or(0);

    let conn = target.connect(1).await?;
    let start = Instant::now();
    let mut stream = conn
        .watch(&[(key_prefix.as_bytes(), true, had + 1)])
        .await?;
    let (mut events, mut compacted, mut relisted) = (0u64, None, 0usize);
    let caught_up = async {
        let mut seen = had;
        while seen < last {
            let response = stream.next().await?;
            if response.canceled {
                if response.compact_revision > 0 {
                    compacted = Some(response.compact_revision);
                    let (kvs, rev) = conn.list_prefix(key_prefix.as_bytes()).await?;
                    relisted = kvs.len();
                    seen = rev;
                    continue;
                }
                bail!("etcd canceled the watch: {}", response.cancel_reason);
            }
            for event in &response.events {
                events += 1;
                if let Some(kv) = &event.kv {
                    seen = seen.max(kv.mod_revision);
                }
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CATCH_UP_DEADLINE, caught_up)
        .await
        .context("the watcher was not current in time")??;
    let elapsed = start.elapsed();
    let mut out = Outcome::default();
    out.figure("catch_up_s", elapsed.as_secs_f64())
        .figure("write_phase_writes_per_s", written.per_second())
        .detail("updates_missed", written.writes)
        .detail("events_received", events)
        .detail("compacted", compacted.is_some());
    if let Some(rev) = compacted {
        out.detail("compaction_error", format!("etcdserver: mvcc: required revision has been compacted (compact revision {rev}); re-listed {relisted} keys"));
    }
    Ok(out)
}
