//! A compare-and-swap load: writers that each own one map (or, in `spine-bench`, one etcd key)
//! and update it at the version they last produced, with values of a fixed size, driven in a
//! closed loop. `spinectl load` and the benchmarks (`spine-bench`) use this same loop
//! ([`drive`]) and the same Spine writer ([`MapWriter`]); each decides only what a write does on
//! an error (a [`LoadWriter`]), how long to write and what to report.
//!
//! ```text
//!  create_writers: create the maps (create-if-absent, `concurrency` at a time) ─▶ MapWriter each
//!  drive: one task per LoadWriter: write(seq) ─▶ acknowledged at `at`, first sent at `sent`
//!         ─▶ ack(at - sent, at) ... until the deadline / count, or `going.stop()`
//!  MapWriter::write: change set at the version it has ─▶ Client::update ─▶ the new version
//!       (a conflict: reread; a transient failure: apply the same change set again, so a write
//!        that did commit is acknowledged by its update id instead of applied twice)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use sharing_map::{AppName, ChangeSet, Entry, MapName, UpdateId};

use crate::{Client, ClientError};

/// The one key every write puts.
pub const KEY: &str = "k";

/// The value of write `seq`: exactly `bytes` ASCII bytes that start with `seq`.
pub fn value_text(seq: u64, bytes: usize) -> String {
    let mut text = seq.to_string();
    text.truncate(bytes);
    let fill = bytes - text.len();
    text.extend(std::iter::repeat_n('x', fill));
    text
}

/// Writes one map: change sets at the map's version, applied with compare-and-swap. Nobody else
/// writes the map, so a conflict means a write of this writer's committed unacknowledged, or the
/// map was changed behind its back.
#[derive(Clone, Debug)]
pub struct MapWriter {
    client: Client,
    app: AppName,
    map: MapName,
    version: u64,
    /// Update ids are `<prefix>-<seq>`.
    id_prefix: String,
    seq: u64,
}

impl MapWriter {
    /// A writer of `map` at `version`, naming its updates `<id_prefix>-1`, `<id_prefix>-2`, ...
    pub fn new(
        client: Client,
        app: AppName,
        map: MapName,
        version: u64,
        id_prefix: String,
    ) -> Self {
        Self {
            client,
            app,
            map,
            version,
            id_prefix,
            seq: 0,
        }
    }

    /// The map.
    pub fn map(&self) -> &MapName {
        &self.map
    }

    /// The map's version after the last acknowledged write.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many change sets it has made.
    pub fn writes(&self) -> u64 {
        self.seq
    }

    /// The next change set: `KEY = value` at the version it has, with a new update id.
    pub fn next_change_set(&mut self, value: String) -> Result<ChangeSet, ClientError> {
        self.seq += 1;
        let id = UpdateId::parse(&format!("{}-{}", self.id_prefix, self.seq))?;
        let ops = [(Arc::from(KEY), Some(Entry::value(json!(value))))];
        Ok(ChangeSet::from_ops(self.map.clone(), self.version, id, ops))
    }

    /// Applies `change_set` (made by [`next_change_set`](Self::next_change_set); again after a
    /// transient failure) and moves to the version it produced.
    pub async fn apply(&mut self, change_set: &ChangeSet) -> Result<u64, ClientError> {
        let versions = self
            .client
            .update(&self.app, vec![change_set.clone()])
            .await?;
        self.version = versions
            .first()
            .copied()
            .unwrap_or(change_set.next_version());
        Ok(self.version)
    }

    /// One write of `value`: the next change set, applied.
    pub async fn write(&mut self, value: String) -> Result<u64, ClientError> {
        let change_set = self.next_change_set(value)?;
        self.apply(&change_set).await
    }

    /// Reads the map's version again (after a conflict).
    pub async fn reread(&mut self) -> Result<u64, ClientError> {
        self.version = self
            .client
            .get_map(&self.app, &self.map, false)
            .await?
            .version();
        Ok(self.version)
    }
}

/// Creates `maps` in `app` (create-if-absent, `concurrency` at a time) and returns one writer
/// per map, in order: writer `i` uses `clients[i % clients.len()]` and names its updates
/// `id_prefix(i)-<seq>`.
pub async fn create_writers(
    clients: &[Client],
    app: &AppName,
    maps: Vec<MapName>,
    id_prefix: impl Fn(usize) -> String,
    concurrency: usize,
) -> Result<Vec<MapWriter>, ClientError> {
    if clients.is_empty() {
        return Err(ClientError::InvalidEndpoint {
            endpoint: String::new(),
            reason: "no clients to write with".into(),
        });
    }
    futures::stream::iter(maps.into_iter().enumerate())
        .map(|(i, map)| {
            let client = clients[i % clients.len()].clone();
            let (app, prefix) = (app.clone(), id_prefix(i));
            async move {
                let created = client.create_map(&app, &map, Vec::new()).await?;
                Ok::<_, ClientError>(MapWriter::new(client, app, map, created.version, prefix))
            }
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await
}

/// When a load ends (besides [`Going::stop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Writers write until this much time has passed since the start.
    Elapsed(Duration),
    /// Every writer writes this many times.
    Writes(u64),
}

/// Whether a load still runs: before its deadline, and nobody stopped it (Ctrl-C, a writer
/// that failed). Shared by the writers of one load.
#[derive(Clone, Debug)]
pub struct Going {
    deadline: Option<Instant>,
    writes_each: Option<u64>,
    stop: Arc<AtomicBool>,
}

impl Going {
    /// A load that starts now and ends as `until` says (or when stopped).
    pub fn new(until: Until) -> Self {
        let (deadline, writes_each) = match until {
            Until::Elapsed(d) => (Instant::now().checked_add(d), None),
            Until::Writes(k) => (None, Some(k)),
        };
        Self {
            deadline,
            writes_each,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the load still runs.
    pub fn still(&self) -> bool {
        self.deadline.is_none_or(|d| Instant::now() < d) && !self.stop.load(Ordering::Relaxed)
    }

    /// Ends the load: every writer finishes the write it has in flight and stops.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// One writer of a load: [`drive`] calls [`write`](LoadWriter::write) for values 1, 2, ... in a
/// closed loop. What a failure does is the writer's: retry inside `write`, or return the error
/// (which stops the load).
pub trait LoadWriter: Send + 'static {
    /// An error that ends the load.
    type Error: Send + 'static;
    /// Writes value number `seq`. `Ok(Some(sent))`: acknowledged, its latency counted from
    /// `sent` (the first attempt, if it retried); `Ok(None)`: not acknowledged because the load
    /// ended meanwhile (`going`); `Err`: the load stops.
    fn write(
        &mut self,
        seq: u64,
        going: &Going,
    ) -> impl Future<Output = Result<Option<Instant>, Self::Error>> + Send;
}

/// Where acknowledged writes are counted: `(latency, acknowledged at)`.
pub type AckSink = Arc<dyn Fn(Duration, Instant) + Send + Sync>;

/// Drives `writers`, each in a task of its own, until `going` ends (its deadline, its count of
/// writes per writer, or a stop); every acknowledged write goes to `ack`. The first writer to
/// fail stops the others. Returns the writers (for more runs) and the first error; a panicked
/// writer task is lost, with its error as text.
pub async fn drive<W: LoadWriter>(
    writers: Vec<W>,
    going: &Going,
    ack: AckSink,
) -> (Vec<W>, Option<DriveError<W::Error>>) {
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            let (going, ack) = (going.clone(), ack.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                while going.still() && going.writes_each.is_none_or(|k| seq < k) {
                    seq += 1;
                    match w.write(seq, &going).await {
                        Ok(Some(sent)) => {
                            let at = Instant::now();
                            ack(at.saturating_duration_since(sent), at);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            going.stop();
                            return (w, Some(e));
                        }
                    }
                }
                (w, None)
            })
        })
        .collect();
    let mut writers = Vec::with_capacity(tasks.len());
    let mut first = None;
    for task in tasks {
        match task.await {
            Ok((w, error)) => {
                writers.push(w);
                if first.is_none() {
                    first = error.map(DriveError::Writer);
                }
            }
            Err(e) => {
                going.stop();
                first.get_or_insert(DriveError::Task(e.to_string()));
            }
        }
    }
    (writers, first)
}

/// Why a load stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DriveError<E> {
    /// A writer failed.
    #[error("a writer failed")]
    Writer(E),
    /// A writer's task panicked or was cancelled.
    #[error("a writer task failed: {0}")]
    Task(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts its writes; fails at `fail_at` if set.
    #[derive(Debug, Default)]
    struct Counting {
        writes: u64,
        fail_at: Option<u64>,
    }

    impl LoadWriter for Counting {
        type Error = String;
        async fn write(&mut self, seq: u64, _going: &Going) -> Result<Option<Instant>, String> {
            // A real writer awaits its server; this one lets the other writers run.
            tokio::task::yield_now().await;
            if self.fail_at == Some(seq) {
                return Err(format!("failed at {seq}"));
            }
            self.writes += 1;
            Ok(Some(Instant::now()))
        }
    }

    fn counter() -> (AckSink, Arc<std::sync::atomic::AtomicU64>) {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = n.clone();
        let sink: AckSink = Arc::new(move |_, _| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        (sink, n)
    }

    #[tokio::test]
    async fn a_load_writes_each_writer_the_count_asked_and_acks_every_write() {
        let (sink, acked) = counter();
        let writers: Vec<Counting> = (0..5).map(|_| Counting::default()).collect();
        let going = Going::new(Until::Writes(7));
        let (writers, error) = drive(writers, &going, sink).await;
        assert!(error.is_none());
        assert!(writers.iter().all(|w| w.writes == 7));
        assert_eq!(acked.load(Ordering::Relaxed), 35);
        assert!(going.still(), "a load that ran its count is not stopped");
    }

    #[tokio::test]
    async fn a_failing_writer_stops_the_load_and_its_error_is_reported() {
        let (sink, _) = counter();
        let mut writers: Vec<Counting> = (0..3).map(|_| Counting::default()).collect();
        writers[1].fail_at = Some(3);
        // Without the failure the others would write forever (no deadline, no count).
        let going = Going::new(Until::Elapsed(Duration::MAX));
        let (writers, error) = drive(writers, &going, sink).await;
        assert!(matches!(error, Some(DriveError::Writer(e)) if e == "failed at 3"));
        assert!(!going.still());
        assert_eq!(writers.len(), 3);
        assert_eq!(writers[1].writes, 2);
    }

    #[test]
    fn values_have_exactly_the_requested_length() {
        assert_eq!(value_text(42, 6), "42xxxx");
        assert_eq!(value_text(12345, 3), "123");
        assert_eq!(value_text(7, 0), "");
        assert_eq!(value_text(1, 256).len(), 256);
        assert_eq!(value_text(u64::MAX, 256).len(), 256);
        assert_ne!(value_text(1, 16), value_text(2, 16));
    }

    #[tokio::test]
    async fn change_sets_follow_the_version_and_number_their_updates() -> Result<(), ClientError> {
        let client = Client::new(vec!["127.0.0.1:1".into()])?;
        let app = AppName::parse("acme-shop")?;
        let map = MapName::parse("bob-load-x")?;
        let mut w = MapWriter::new(client, app, map.clone(), 4, "load-r1-w0".into());
        let first = w.next_change_set(value_text(1, 8))?;
        assert_eq!((first.map(), first.version()), (&map, 4));
        assert_eq!(first.update_id().as_str(), "load-r1-w0-1");
        let second = w.next_change_set(value_text(2, 8))?;
        assert_eq!(second.update_id().as_str(), "load-r1-w0-2");
        assert_eq!(w.writes(), 2);
        Ok(())
    }
}
