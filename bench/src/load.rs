//! The load generator both systems get: compare-and-swap writers, one key or map each, with
//! 256-byte values, driven for a duration or a number of writes. A Spine writer is
//! `spine_client::load`'s [`MapWriter`], the one `spinectl load` drives.
//!
//! ```text
//!  prepare: create the maps / put the keys (64 at a time) ─▶ one CasWriter per map/key
//!  run:     the library's closed loop (`spine_client::load::drive`, as `spinectl load`), one
//!           task per writer: payload ─▶ CAS on the version it last produced ─▶ ack; a ticker
//!           prints progress on stderr; the first failed write fails the run
//!  burst:   C tasks share W writers (W ≥ C): one write per writer, as fast as they go
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use sharing_map::{AppName, MapName};
use spine_client::Client;
pub use spine_client::load::Until;
use spine_client::load::{
    AckSink, DriveError, Going, LoadWriter, MapWriter, create_writers, drive, value_text,
};

use crate::cluster::{EtcdTarget, SpineTarget};
use crate::etcd::EtcdConn;
use crate::stats::Latencies;

/// Length of every value written, on both systems.
pub const VALUE_BYTES: usize = 256;
/// Maps created / keys put at once while preparing.
const PREPARE_CONCURRENCY: usize = 64;
/// Connections writers share: writer `i` uses connection `i mod CONNECTIONS` (and fewer when
/// there are fewer writers). Both systems get the same number.
pub const CONNECTIONS: usize = 12;

/// The value of write `seq`: exactly [`VALUE_BYTES`] ASCII bytes that start with `seq` (the
/// values `spinectl load` writes too).
pub fn payload(seq: u64) -> String {
    value_text(seq, VALUE_BYTES)
}

/// A writer that owns one key or map and writes it with compare-and-swap against the version
/// it last produced.
pub trait CasWriter: Send + 'static {
    /// Writes `value`; a conflict is an error (nobody else writes this key).
    fn write(&mut self, value: String) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A Spine writer is `spinectl load`'s: one map, a change set at the version it last produced.
impl CasWriter for MapWriter {
    async fn write(&mut self, value: String) -> anyhow::Result<()> {
        MapWriter::write(self, value)
            .await
            .with_context(|| format!("Spine update of {}", self.map()))?;
        Ok(())
    }
}

/// Writes one etcd key: a txn that puts only if the key's mod revision is unchanged.
#[derive(Debug)]
pub struct EtcdWriter {
    conn: EtcdConn,
    key: Vec<u8>,
    /// The key's mod revision after the last write.
    pub mod_revision: i64,
}

impl CasWriter for EtcdWriter {
    async fn write(&mut self, value: String) -> anyhow::Result<()> {
        match self
            .conn
            .cas(&self.key, self.mod_revision, value.as_bytes())
            .await?
        {
            Some(rev) => {
                self.mod_revision = rev;
                Ok(())
            }
            None => bail!(
                "etcd txn on {} failed its compare (mod revision {} changed)",
                String::from_utf8_lossy(&self.key),
                self.mod_revision
            ),
        }
    }
}

/// Creates `maps` (at version 0) and returns one writer per map; writer `i` uses connection
/// `i mod CONNECTIONS`.
pub async fn spine_writers(
    target: &SpineTarget,
    app: &AppName,
    maps: Vec<MapName>,
) -> anyhow::Result<Vec<MapWriter>> {
    let conns = CONNECTIONS.min(maps.len()).max(1);
    let clients: Vec<Client> = (0..conns)
        .map(|i| target.client(i))
        .collect::<anyhow::Result<_>>()?;
    create_writers(&clients, app, maps, |_| "b".into(), PREPARE_CONCURRENCY)
        .await
        .context("creating the Spine maps")
}

/// Puts `keys` (with a first value) and returns one writer per key; writer `i` uses connection
/// `i mod CONNECTIONS`.
pub async fn etcd_writers(
    target: &EtcdTarget,
    keys: Vec<Vec<u8>>,
) -> anyhow::Result<Vec<EtcdWriter>> {
    let conns = CONNECTIONS.min(keys.len()).max(1);
    let mut pool = Vec::with_capacity(conns);
    for i in 0..conns {
        pool.push(target.connect(i).await?);
    }
    let first = payload(0);
    futures::stream::iter(keys.into_iter().enumerate())
        .map(|(i, key)| {
            let conn = pool[i % conns].clone();
            let first = first.clone();
            async move {
                let mod_revision = conn.put(&key, first.as_bytes()).await?;
                anyhow::Ok(EtcdWriter {
                    conn,
                    key,
                    mod_revision,
                })
            }
        })
        .buffered(PREPARE_CONCURRENCY)
        .try_collect()
        .await
}

/// What a run measured.
#[derive(Debug)]
pub struct RunFigures {
    /// Latency of every acknowledged write.
    pub latencies: Latencies,
    /// Acknowledged writes.
    pub writes: u64,
    /// From the first write sent to the last acknowledgement.
    pub seconds: f64,
}

impl RunFigures {
    /// Acknowledged writes per second.
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.writes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// A benchmark's writer in the library's closed loop: its first failed write fails the run (a
/// measurement with errors would not compare like with like).
struct FailFast<W>(W);

impl<W: CasWriter> LoadWriter for FailFast<W> {
    type Error = anyhow::Error;

    async fn write(&mut self, seq: u64, _going: &Going) -> anyhow::Result<Option<Instant>> {
        let sent = Instant::now();
        self.0.write(payload(seq)).await?;
        Ok(Some(sent))
    }
}

/// Runs every writer in the library's closed loop (`spine_client::load::drive`, as `spinectl
/// load` does) until `until`; prints progress every 2 s with `label`. Returns the writers (for
/// more runs) and the figures; fails on the first failed write.
pub async fn run<W: CasWriter>(
    writers: Vec<W>,
    until: Until,
    label: &str,
) -> anyhow::Result<(Vec<W>, RunFigures)> {
    let recorded = Arc::new(Mutex::new(Latencies::new()));
    let acked = Arc::new(AtomicU64::new(0));
    let (sink_latencies, sink_acked) = (recorded.clone(), acked.clone());
    let ack: AckSink = Arc::new(move |latency, _at| {
        sink_latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(latency);
        sink_acked.fetch_add(1, Ordering::Relaxed);
    });
    let start = Instant::now();
    let going = Going::new(until);
    let all = drive(writers.into_iter().map(FailFast).collect(), &going, ack);
    tokio::pin!(all);
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    ticker.tick().await;
    let (writers, error) = loop {
        tokio::select! {
            done = &mut all => break done,
            _ = ticker.tick() => {
                let n = acked.load(Ordering::Relaxed);
                let t = start.elapsed().as_secs_f64();
                eprintln!("    {label}: t={t:.0}s writes={n} ({:.0}/s)", n as f64 / t);
            }
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    match error {
        None => {}
        Some(DriveError::Writer(e)) => return Err(e),
        Some(DriveError::Task(e)) => bail!("a writer task failed: {e}"),
    }
    let latencies = std::mem::take(&mut *recorded.lock().unwrap_or_else(PoisonError::into_inner));
    let figures = RunFigures {
        writes: latencies.count(),
        latencies,
        seconds,
    };
    Ok((writers.into_iter().map(|w| w.0).collect(), figures))
}

/// One write to every writer, `concurrency` at a time. Returns the writers in their order, the
/// figures, and the instant the first write was sent.
pub async fn burst<W: CasWriter>(
    writers: Vec<W>,
    concurrency: usize,
) -> anyhow::Result<(Vec<W>, RunFigures, Instant)> {
    let concurrency = concurrency.clamp(1, writers.len().max(1));
    let total = writers.len();
    // Task t takes writers t, t + C, t + 2C, ...
    let mut lanes: Vec<Vec<(usize, W)>> = (0..concurrency).map(|_| Vec::new()).collect();
    for (i, w) in writers.into_iter().enumerate() {
        lanes[i % concurrency].push((i, w));
    }
    let start = Instant::now();
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            tokio::spawn(async move {
                let mut latencies = Latencies::new();
                let mut done = Vec::with_capacity(lane.len());
                for (i, mut w) in lane {
                    let sent = Instant::now();
                    w.write(payload(i as u64)).await?;
                    latencies.record(sent.elapsed());
                    done.push((i, w));
                }
                anyhow::Ok((done, latencies, Instant::now()))
            })
        })
        .collect();
    let mut latencies = Latencies::new();
    let mut slots: Vec<Option<W>> = (0..total).map(|_| None).collect();
    let mut end = start;
    for result in futures::future::try_join_all(tasks)
        .await
        .context("a writer task panicked")?
    {
        let (done, l, at) = result?;
        latencies.merge(&l);
        end = end.max(at);
        for (i, w) in done {
            slots[i] = Some(w);
        }
    }
    let writers = slots.into_iter().flatten().collect();
    let figures = RunFigures {
        writes: latencies.count(),
        latencies,
        seconds: end.saturating_duration_since(start).as_secs_f64(),
    };
    Ok((writers, figures, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_exactly_256_bytes_and_differ() {
        assert_eq!(payload(0).len(), VALUE_BYTES);
        assert_eq!(payload(u64::MAX).len(), VALUE_BYTES);
        assert!(payload(42).starts_with("42x"));
        assert_ne!(payload(1), payload(2));
    }

    /// A writer that counts its writes.
    #[derive(Debug, Default)]
    struct Counting(u64);

    impl CasWriter for Counting {
        async fn write(&mut self, value: String) -> anyhow::Result<()> {
            assert_eq!(value.len(), VALUE_BYTES);
            self.0 += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn runs_write_the_requested_number_of_times() -> anyhow::Result<()> {
        let writers: Vec<Counting> = (0..5).map(|_| Counting::default()).collect();
        let (writers, figures) = run(writers, Until::Writes(7), "test").await?;
        assert_eq!(figures.writes, 35);
        assert!(writers.iter().all(|w| w.0 == 7));
        let (writers, figures, _) = burst(writers, 2).await?;
        assert_eq!(figures.writes, 5);
        assert_eq!(writers.len(), 5);
        assert!(writers.iter().all(|w| w.0 == 8));
        Ok(())
    }
}
