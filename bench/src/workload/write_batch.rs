//! Batched writes (issue 11's batched checkpoints): independent single-map updates sent many at
//! a time, `concurrency` batches in flight, for a fixed time. Each update is a compare-and-swap
//! of one map (key) at the version its last update produced; nobody else writes it.
//!
//! - Spine: one `UpdateBatch` per batch (one Raft entry), each of its updates one change set of
//!   one map, atomic on its own and answered on its own.
//! - etcd has no batch of independent transactions; the nearest is one txn per batch: a
//!   mod-revision compare per key and a put per key (one Raft entry too, but all or nothing).
//!
//! ```text
//!  prepare: create concurrency × batch maps / keys ─▶ lane l owns maps l·batch .. (l+1)·batch
//!  run:     each lane in a loop: one batch of `batch` updates (one per map) ─▶ every result ─▶ again
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};
use spine_client::Client;
use spine_client::load::KEY;

use super::Outcome;
use crate::cluster::{EtcdTarget, SpineTarget};
use crate::etcd::EtcdConn;
use crate::load::{self, CONNECTIONS, CasWriter, RunFigures, Until};
use crate::procfs::CpuWindow;

/// The shape of a batched-write run.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Updates per batch.
    pub batch: usize,
    /// Batches in flight at once (one lane each).
    pub concurrency: usize,
    /// Seconds measured.
    pub seconds: f64,
}

impl Shape {
    /// The parameter in words: "16 × 100 updates".
    pub fn label(&self) -> String {
        format!("{} batches × {} updates", self.concurrency, self.batch)
    }
}

/// One lane of Spine updates: a batch writes every one of its maps once.
#[derive(Debug)]
struct SpineLane {
    client: Client,
    app: AppName,
    /// Each map and the version its last update produced.
    maps: Vec<(MapName, u64)>,
    id_prefix: String,
    seq: u64,
}

impl CasWriter for SpineLane {
    async fn write(&mut self, value: String) -> anyhow::Result<()> {
        self.seq += 1;
        let value = json!(value);
        let updates = self
            .maps
            .iter()
            .enumerate()
            .map(|(i, (map, version))| {
                let id = UpdateId::parse(&format!("{}-{i}-{}", self.id_prefix, self.seq))?;
                let ops = [(Arc::from(KEY), Some(Entry::value(value.clone())))];
                let change_set = ChangeSet::from_ops(map.clone(), *version, id, ops);
                anyhow::Ok((self.app.clone(), vec![change_set]))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let results = self
            .client
            .update_batch(&updates)
            .await
            .context("Spine UpdateBatch")?;
        for ((map, version), result) in self.maps.iter_mut().zip(results) {
            let versions = result.with_context(|| format!("Spine update of {map} in a batch"))?;
            *version = versions.first().copied().unwrap_or(*version + 1);
        }
        Ok(())
    }
}

/// One lane of etcd updates: a batch is one txn over every one of its keys.
#[derive(Debug)]
struct EtcdLane {
    conn: EtcdConn,
    /// Each key and its mod revision after the last write.
    keys: Vec<(Vec<u8>, i64)>,
}

impl CasWriter for EtcdLane {
    async fn write(&mut self, value: String) -> anyhow::Result<()> {
        let writes: Vec<(&[u8], i64, &[u8])> = self
            .keys
            .iter()
            .map(|(k, rev)| (k.as_slice(), *rev, value.as_bytes()))
            .collect();
        match self.conn.cas_all(&writes).await? {
            Some(rev) => {
                for (_, r) in &mut self.keys {
                    *r = rev;
                }
                Ok(())
            }
            None => bail!("an etcd batch txn failed its compares (a key changed behind it)"),
        }
    }
}

/// Runs the lanes for `shape.seconds`, with the servers' CPU over the run.
async fn measure<W: CasWriter>(
    lanes: Vec<W>,
    shape: Shape,
    pids: &[u32],
    label: &str,
) -> anyhow::Result<Outcome> {
    let cpu = CpuWindow::start(pids).ok();
    let until = Until::Elapsed(Duration::from_secs_f64(shape.seconds));
    let (_, figures) = load::run(lanes, until, label).await?;
    let cpu = cpu
        .and_then(|c| c.seconds().ok())
        .map(|s| s.iter().sum::<f64>());
    Ok(outcome(&figures, shape, cpu))
}

fn outcome(figures: &RunFigures, shape: Shape, server_cpu: Option<f64>) -> Outcome {
    let updates = figures.writes as f64 * shape.batch as f64;
    let mut out = Outcome::default();
    out.figure("updates_per_s", figures.per_second() * shape.batch as f64)
        .figure("updates", updates)
        .figure("batches", figures.writes as f64)
        .figure("seconds", figures.seconds)
        .latency(figures.latencies.summary());
    if let Some(cpu) = server_cpu.filter(|_| updates > 0.0) {
        out.figure("server_cpu_us_per_update", cpu * 1e6 / updates)
            .detail("server_cpu_s_during_run", crate::stats::round3(cpu));
    }
    out
}

/// Batched updates on the Spine: `shape.concurrency × shape.batch` fresh maps of `app`; `pids`
/// are the servers whose CPU is measured.
pub async fn spine(
    target: &SpineTarget,
    app: &AppName,
    shape: Shape,
    pids: &[u32],
) -> anyhow::Result<Outcome> {
    let names: Vec<MapName> = (0..shape.concurrency * shape.batch)
        .map(|i| MapName::parse(&format!("batch-m{i}-b{}", shape.batch)))
        .collect::<Result<_, _>>()?;
    let writers = load::spine_writers(target, app, names).await?;
    let mut lanes = Vec::with_capacity(shape.concurrency);
    for (l, chunk) in writers.chunks(shape.batch.max(1)).enumerate() {
        lanes.push(SpineLane {
            client: target.client(l % CONNECTIONS)?,
            app: app.clone(),
            maps: chunk
                .iter()
                .map(|w| (w.map().clone(), w.version()))
                .collect(),
            id_prefix: format!("lane{l}"),
            seq: 0,
        });
    }
    let label = format!("Spine, {}", shape.label());
    measure(lanes, shape, pids, &label).await
}

/// Batched updates on etcd: `shape.concurrency × shape.batch` fresh keys under `prefix`, one
/// txn per batch; `pids` are the servers whose CPU is measured.
pub async fn etcd(
    target: &EtcdTarget,
    prefix: &str,
    shape: Shape,
    pids: &[u32],
) -> anyhow::Result<Outcome> {
    let keys: Vec<Vec<u8>> = (0..shape.concurrency * shape.batch)
        .map(|i| format!("{prefix}/batch/b{}/k{i}", shape.batch).into_bytes())
        .collect();
    let writers = load::etcd_writers(target, keys.clone()).await?;
    let revisions: Vec<(Vec<u8>, i64)> = keys
        .into_iter()
        .zip(writers.iter().map(|w| w.mod_revision))
        .collect();
    let mut lanes = Vec::with_capacity(shape.concurrency);
    for (l, chunk) in revisions.chunks(shape.batch.max(1)).enumerate() {
        lanes.push(EtcdLane {
            conn: target.connect(l % CONNECTIONS).await?,
            keys: chunk.to_vec(),
        });
    }
    let label = format!("etcd, {}", shape.label());
    measure(lanes, shape, pids, &label).await
}
