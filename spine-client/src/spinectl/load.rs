//! `spinectl load`: write throughput and commit latency of a running cluster.
//!
//! ```text
//!  create maps (create-if-absent) ─▶ N writer tasks, one map each, until the deadline:
//!      change set at the version the last one produced ─▶ Client::update ─▶ ack | error
//!                                          │
//!                         Recorder (shared): histograms, counts, longest gap
//!                                          │
//!                    progress line on stderr every second ─▶ report on stdout
//! ```
//!
//! The writers are the library's [`spine_client::load::MapWriter`]s, driven by the library's
//! closed loop ([`spine_client::load::drive`]), as `spine-bench` drives its writers; this file
//! adds what the command does around them: errors counted and retried, a conflict re-read,
//! progress and the report. Everything but [`run`] and the writer is pure, for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use hdrhistogram::Histogram;
use serde::Serialize;
use sharing_map::{AppName, MapName};
use spine_client::load::{
    AckSink, DriveError, Going, LoadWriter, MapWriter, Until, create_writers, drive, value_text,
};
use spine_client::{Client, ClientError, Code};

use super::args::{LoadArgs, Output};

/// Latencies are recorded in microseconds, up to an hour, to 3 significant digits.
const HIGHEST_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;
/// Maps created at once before the run starts.
const CREATE_CONCURRENCY: usize = 32;
/// Pause after a failed call before the next one (the client already waited on unavailable
/// nodes; this only keeps immediate errors from spinning).
const ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Characters of a run id.
const RUN_ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const RUN_ID_LEN: usize = 6;

/// A random run id: 6 lowercase letters and digits, so that each run writes fresh maps.
pub fn run_id() -> String {
    (0..RUN_ID_LEN)
        .map(|_| char::from(RUN_ID_CHARS[rand::random_range(0..RUN_ID_CHARS.len())]))
        .collect()
}

/// The maps' names as a pattern, for messages: `PREFIX-w<i>-rRUN`.
pub fn maps_pattern(prefix: &str, run: &str) -> String {
    format!("{prefix}-w<i>-r{run}")
}

/// The writers' maps: `PREFIX-w0-rRUN`, `PREFIX-w1-rRUN`, ...
pub fn map_names(prefix: &str, writers: u32, run: &str) -> anyhow::Result<Vec<MapName>> {
    (0..writers)
        .map(|i| {
            let name = format!("{prefix}-w{i}-r{run}");
            MapName::parse(&name)
                .with_context(|| format!("--maps-prefix {prefix:?} does not make valid map names"))
        })
        .collect()
}

/// The gRPC code's canonical name (`FAILED_PRECONDITION`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether an error means no later update can succeed either (a bad name or value, a refusal),
/// so the run stops, rather than a transient failure worth counting and retrying.
pub fn is_fatal(error: &ClientError) -> bool {
    match error {
        ClientError::Unavailable { .. } => false,
        ClientError::Status { code, .. } => matches!(
            code,
            Code::InvalidArgument
                | Code::NotFound
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::OutOfRange
        ),
        ClientError::Convert(_)
        | ClientError::Name(_)
        | ClientError::Limit(_)
        | ClientError::InvalidEndpoint { .. }
        | ClientError::InvalidToken { .. } => true,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant bounds: low >= 1, high >= 2 * low, at most 5 digits")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Rounds to `digits` decimals, for tidy JSON.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The `q` quantile of `h` in milliseconds, or `None` when it holds nothing. A histogram keeps
/// buckets 0.1% wide; this is the middle of the bucket.
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.median_equivalent(h.value_at_quantile(q))))
}

/// The highest latency recorded, in milliseconds, like [`quantile_ms`].
pub fn max_ms(h: &Histogram<u64>) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.median_equivalent(h.max())))
}

/// What all writers record into: latencies, counts, errors and the longest time without any
/// acknowledgement.
#[derive(Debug)]
pub struct Recorder {
    total: Histogram<u64>,
    /// Since the last progress line.
    interval: Histogram<u64>,
    ops: u64,
    interval_ops: u64,
    errors: BTreeMap<&'static str, u64>,
    last_tick: Instant,
    /// The latest acknowledgement (the start before the first one).
    last_ack: Instant,
    longest_gap: Duration,
}

/// One progress line's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Since the run started.
    pub elapsed: Duration,
    /// Acknowledged updates so far.
    pub ops: u64,
    /// Acknowledged updates per second since the last line.
    pub ops_per_sec: f64,
    /// Median latency since the last line.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency since the last line.
    pub p99_ms: Option<f64>,
    /// Failed calls so far.
    pub errors: u64,
}

fn ms_text(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| format!("{v:.2}ms"))
}

impl Progress {
    /// `t=3s ops=1234 ops/s=412 p50=1.20ms p99=3.40ms errors=0`.
    pub fn line(&self) -> String {
        format!(
            "t={}s ops={} ops/s={:.0} p50={} p99={} errors={}",
            self.elapsed.as_secs_f64().round(),
            self.ops,
            self.ops_per_sec,
            ms_text(self.p50_ms),
            ms_text(self.p99_ms),
            self.errors
        )
    }
}

impl Recorder {
    /// A recorder for a run that starts at `start`.
    pub fn new(start: Instant) -> Self {
        Recorder {
            total: histogram(),
            interval: histogram(),
            ops: 0,
            interval_ops: 0,
            errors: BTreeMap::new(),
            last_tick: start,
            last_ack: start,
            longest_gap: Duration::ZERO,
        }
    }

    /// An update was acknowledged at `at`, `latency` after it was first sent.
    pub fn ack(&mut self, latency: Duration, at: Instant) {
        let value = micros(latency);
        self.total.saturating_record(value);
        self.interval.saturating_record(value);
        self.ops += 1;
        self.interval_ops += 1;
        self.gap_until(at);
    }

    /// Notes that nothing was acknowledged between the last acknowledgement and `at`.
    fn gap_until(&mut self, at: Instant) {
        // Writers take their timestamps before locking, so `at` may be slightly older than the
        // last acknowledgement recorded.
        self.longest_gap = self
            .longest_gap
            .max(at.saturating_duration_since(self.last_ack));
        self.last_ack = self.last_ack.max(at);
    }

    /// A call failed with `code`.
    pub fn error(&mut self, code: Code) {
        *self.errors.entry(code_name(code)).or_default() += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The figures for a progress line at `now`; starts a new interval.
    pub fn tick(&mut self, start: Instant, now: Instant) -> Progress {
        let seconds = now.saturating_duration_since(self.last_tick).as_secs_f64();
        let progress = Progress {
            elapsed: now.saturating_duration_since(start),
            ops: self.ops,
            ops_per_sec: if seconds > 0.0 {
                self.interval_ops as f64 / seconds
            } else {
                0.0
            },
            p50_ms: quantile_ms(&self.interval, 0.50),
            p99_ms: quantile_ms(&self.interval, 0.99),
            errors: self.error_count(),
        };
        self.interval.reset();
        self.interval_ops = 0;
        self.last_tick = now;
        progress
    }

    /// The final report of a run that started at `start` and ended at `end` (the end counts
    /// as an acknowledgement for the longest gap, so that a run ending in a stall shows it).
    pub fn report(&mut self, run: &RunInfo, start: Instant, end: Instant) -> Report {
        self.gap_until(end);
        let seconds = end.saturating_duration_since(start).as_secs_f64();
        let quantile = |q| quantile_ms(&self.total, q).map(|v| round(v, 3));
        Report {
            writers: run.writers,
            seconds: round(seconds, 3),
            value_bytes: run.value_bytes,
            maps: run.maps.clone(),
            ops: self.ops,
            ops_per_sec: round(
                if seconds > 0.0 {
                    self.ops as f64 / seconds
                } else {
                    0.0
                },
                1,
            ),
            p50_ms: quantile(0.50),
            p90_ms: quantile(0.90),
            p99_ms: quantile(0.99),
            max_ms: max_ms(&self.total).map(|v| round(v, 3)),
            errors: self.error_count(),
            errors_by_code: self.errors.clone(),
            conflicts: self
                .errors
                .get(code_name(Code::FailedPrecondition))
                .copied()
                .unwrap_or(0),
            longest_gap_ms: round(ms(micros(self.longest_gap)), 3),
        }
    }
}

/// What the report says about the run's set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInfo {
    /// How many writers ran.
    pub writers: u32,
    /// Length of each value.
    pub value_bytes: usize,
    /// The maps' name pattern.
    pub maps: String,
}

/// The result of a run. Latencies are in milliseconds, `None` (JSON null) when nothing was
/// acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Concurrent writers.
    pub writers: u32,
    /// How long the run took, from the first update sent to the last answer received.
    pub seconds: f64,
    /// Length of each value written.
    pub value_bytes: usize,
    /// The maps written, as a pattern.
    pub maps: String,
    /// Acknowledged updates.
    pub ops: u64,
    /// Acknowledged updates per second.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50_ms: Option<f64>,
    /// 90th percentile latency.
    pub p90_ms: Option<f64>,
    /// 99th percentile latency.
    pub p99_ms: Option<f64>,
    /// Highest latency.
    pub max_ms: Option<f64>,
    /// Failed calls (updates and re-reads), conflicts included.
    pub errors: u64,
    /// Failed calls by gRPC code.
    pub errors_by_code: BTreeMap<&'static str, u64>,
    /// Version conflicts (FAILED_PRECONDITION), each followed by a re-read of the version.
    pub conflicts: u64,
    /// Longest time in which no writer got an acknowledgement.
    pub longest_gap_ms: f64,
}

impl Report {
    /// The report for people, one figure per line.
    pub fn human(&self) -> String {
        let errors = if self.errors_by_code.is_empty() {
            "0".to_string()
        } else {
            let by_code: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            format!("{} ({})", self.errors, by_code.join(", "))
        };
        let latency = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        format!(
            "writers          {}\n\
             maps             {} ({} byte values)\n\
             seconds          {:.2}\n\
             ops              {}\n\
             ops/s            {:.1}\n\
             latency ms       p50 {}  p90 {}  p99 {}  max {}\n\
             errors           {}\n\
             conflicts        {}\n\
             longest gap ms   {:.2}",
            self.writers,
            self.maps,
            self.value_bytes,
            self.seconds,
            self.ops,
            self.ops_per_sec,
            latency(self.p50_ms),
            latency(self.p90_ms),
            latency(self.p99_ms),
            latency(self.max_ms),
            errors,
            self.conflicts,
            self.longest_gap_ms,
        )
    }
}

fn lock(recorder: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    recorder.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A writer of `spinectl load`: the library's Spine writer of its map, which counts every failed
/// call, re-reads the version after a conflict and sends a change set again after a transient
/// failure; only a fatal error ends the run.
#[derive(Debug)]
struct Writer {
    writer: MapWriter,
    value_bytes: usize,
    recorder: Arc<Mutex<Recorder>>,
}

impl Writer {
    /// Counts a failure; an error when it is fatal (the run stops).
    fn failed(&self, error: ClientError, doing: &str) -> anyhow::Result<()> {
        lock(&self.recorder).error(error.code());
        if is_fatal(&error) {
            return Err(anyhow!(error).context(format!("{doing} {}", self.writer.map())));
        }
        Ok(())
    }

    async fn pause(going: &Going) {
        let until = Instant::now() + ERROR_PAUSE;
        let until = going.deadline().map_or(until, |d| until.min(d));
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }

    /// Re-reads the map's version after a conflict, while the run goes on.
    async fn reread(&mut self, going: &Going) -> anyhow::Result<()> {
        while going.still() {
            match self.writer.reread().await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    self.failed(e, "cannot read map")?;
                    Self::pause(going).await;
                }
            }
        }
        Ok(())
    }
}

impl LoadWriter for Writer {
    type Error = anyhow::Error;

    /// One update of the map; a transient failure sends the same change set again (if the
    /// failed attempt was applied after all, the Spine acknowledges the repeat of its update
    /// id), a conflict re-reads the version and gives this value up.
    async fn write(&mut self, _seq: u64, going: &Going) -> anyhow::Result<Option<Instant>> {
        let value = value_text(self.writer.writes() + 1, self.value_bytes);
        let change_set = self.writer.next_change_set(value)?;
        let sent = Instant::now();
        loop {
            match self.writer.apply(&change_set).await {
                Ok(_) => return Ok(Some(sent)),
                Err(e) if e.is_conflict() => {
                    self.failed(e, "cannot update map")?;
                    self.reread(going).await?;
                    return Ok(None);
                }
                Err(e) => {
                    self.failed(e, "cannot update map")?;
                    Self::pause(going).await;
                    if !going.still() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

/// Runs `spinectl load`: creates the maps, writes until the time is up (or Ctrl-C), prints
/// progress on stderr and the report on stdout.
pub async fn run(
    client: &Client,
    app: &AppName,
    output: Output,
    args: &LoadArgs,
) -> anyhow::Result<()> {
    let run = run_id();
    let names = map_names(&args.maps_prefix, args.writers, &run)?;
    let info = RunInfo {
        writers: args.writers,
        value_bytes: args.value_bytes,
        maps: maps_pattern(&args.maps_prefix, &run),
    };
    let writers = create_writers(
        std::slice::from_ref(client),
        app,
        names,
        |i| format!("load-{run}-w{i}"),
        CREATE_CONCURRENCY,
    )
    .await
    .with_context(|| format!("cannot create the maps {}", info.maps))?;
    eprintln!(
        "{} writers on maps {} for {:.1}s, {}-byte values",
        args.writers,
        info.maps,
        args.seconds.as_secs_f64(),
        args.value_bytes
    );

    let start = Instant::now();
    let recorder = Arc::new(Mutex::new(Recorder::new(start)));
    let writers: Vec<Writer> = writers
        .into_iter()
        .map(|writer| Writer {
            writer,
            value_bytes: args.value_bytes,
            recorder: recorder.clone(),
        })
        .collect();
    let going = Going::new(Until::Elapsed(args.seconds));
    let sink = recorder.clone();
    let ack: AckSink = Arc::new(move |latency, at| lock(&sink).ack(latency, at));
    let all = drive(writers, &going, ack);
    tokio::pin!(all);
    let second = Duration::from_secs(1);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::from_std(start + second), second);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let (_, error) = loop {
        tokio::select! {
            done = &mut all => break done,
            _ = ticker.tick() => {
                let progress = lock(&recorder).tick(start, Instant::now());
                eprintln!("{}", progress.line());
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                going.stop();
                eprintln!("interrupted: waiting for the updates in flight");
            }
        }
    };
    let end = Instant::now();
    match error {
        None => {}
        Some(DriveError::Writer(e)) => return Err(e),
        Some(e @ DriveError::Task(_)) => return Err(anyhow!(e.to_string())),
    }
    let report = lock(&recorder).report(&info, start, end);
    match output {
        Output::Human => println!("{}", report.human()),
        // Serialized from the struct, so that the fields keep their order.
        Output::Json => println!("{}", serde_json::to_string(&report)?),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn info() -> RunInfo {
        RunInfo {
            writers: 4,
            value_bytes: 256,
            maps: maps_pattern("load", "abc123"),
        }
    }

    #[test]
    fn names_follow_the_owner_local_map_rule() -> anyhow::Result<()> {
        let run = run_id();
        assert_eq!(run.len(), RUN_ID_LEN);
        assert!(run.bytes().all(|b| RUN_ID_CHARS.contains(&b)));
        let names = map_names("load", 3, "abc123")?;
        let names: Vec<&str> = names.iter().map(MapName::as_str).collect();
        assert_eq!(
            names,
            ["load-w0-rabc123", "load-w1-rabc123", "load-w2-rabc123"]
        );
        assert_eq!(maps_pattern("load", "abc123"), "load-w<i>-rabc123");
        // The owner part must be at least 3 characters of [a-z0-9].
        let short = map_names("ab", 1, "abc123").map_err(|e| format!("{e:#}"));
        assert!(short.is_err_and(|e| e.contains("\"ab\"") && e.contains("ab-w0-rabc123")));
        assert!(map_names("my-load", 1, "abc123").is_err());
        assert!(map_names("Load", 1, "abc123").is_err());
        Ok(())
    }

    #[test]
    fn only_hopeless_errors_are_fatal() {
        let status = |code| ClientError::Status {
            code,
            message: String::new(),
        };
        assert!(!is_fatal(&status(Code::FailedPrecondition)));
        assert!(!is_fatal(&status(Code::Unavailable)));
        assert!(!is_fatal(&status(Code::Internal)));
        assert!(!is_fatal(&ClientError::Unavailable {
            tried: vec![],
            last: String::new()
        }));
        assert!(is_fatal(&status(Code::InvalidArgument)));
        assert!(is_fatal(&status(Code::PermissionDenied)));
        assert_eq!(code_name(Code::FailedPrecondition), "FAILED_PRECONDITION");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
    }

    #[test]
    fn percentiles_come_from_the_recorded_latencies() {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        // 1 ms .. 100 ms, acknowledged one per millisecond.
        for i in 1..=100 {
            r.ack(Duration::from_millis(i), at(start, i));
        }
        let report = r.report(&info(), start, at(start, 100));
        let close = |got: Option<f64>, want: f64| {
            got.is_some_and(|g| (g - want).abs() <= want * 0.001 + 0.001)
        };
        assert!(close(report.p50_ms, 50.0), "{report:?}");
        assert!(close(report.p90_ms, 90.0), "{report:?}");
        assert!(close(report.p99_ms, 99.0), "{report:?}");
        assert!(close(report.max_ms, 100.0), "{report:?}");
        assert_eq!(report.ops, 100);
        assert_eq!(report.ops_per_sec, 1000.0);
        assert_eq!(report.seconds, 0.1);
        assert_eq!(report.longest_gap_ms, 1.0);
    }

    #[test]
    fn the_longest_gap_spans_all_writers_and_the_ends() {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        r.ack(Duration::from_millis(5), at(start, 5));
        r.ack(Duration::from_millis(5), at(start, 10));
        // Two writers' acks recorded out of order do not make a gap.
        r.ack(Duration::from_millis(5), at(start, 30));
        r.ack(Duration::from_millis(5), at(start, 25));
        // A failover: nothing from 30 ms to 1530 ms.
        r.ack(Duration::from_millis(1500), at(start, 1530));
        r.ack(Duration::from_millis(5), at(start, 1535));
        let report = r.report(&info(), start, at(start, 1600));
        assert_eq!(report.longest_gap_ms, 1500.0);
        // A run that ends in a stall shows it.
        let mut r = Recorder::new(start);
        r.ack(Duration::from_millis(5), at(start, 5));
        assert_eq!(
            r.report(&info(), start, at(start, 4005)).longest_gap_ms,
            4000.0
        );
        // So does one that never got an answer.
        let mut r = Recorder::new(start);
        let report = r.report(&info(), start, at(start, 2000));
        assert_eq!(report.longest_gap_ms, 2000.0);
        assert_eq!((report.ops, report.p50_ms, report.max_ms), (0, None, None));
    }

    #[test]
    fn errors_are_counted_by_code_and_conflicts_apart() {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        r.error(Code::FailedPrecondition);
        r.error(Code::Unavailable);
        r.error(Code::Unavailable);
        let report = r.report(&info(), start, at(start, 1000));
        assert_eq!(report.errors, 3);
        assert_eq!(report.conflicts, 1);
        assert_eq!(
            report.errors_by_code,
            BTreeMap::from([("FAILED_PRECONDITION", 1), ("UNAVAILABLE", 2)])
        );
        let text = report.human();
        assert!(
            text.contains("errors           3 (FAILED_PRECONDITION 1, UNAVAILABLE 2)"),
            "{text}"
        );
        assert!(text.contains("conflicts        1"), "{text}");
        assert!(text.contains("p50 -  p90 -  p99 -  max -"), "{text}");
    }

    #[test]
    fn progress_covers_the_last_interval() {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        for i in 0..400 {
            r.ack(Duration::from_millis(2), at(start, i));
        }
        r.error(Code::Unavailable);
        let first = r.tick(start, at(start, 1000));
        assert_eq!(
            first.line(),
            "t=1s ops=400 ops/s=400 p50=2.00ms p99=2.00ms errors=1"
        );
        for i in 0..100 {
            r.ack(Duration::from_millis(10), at(start, 1000 + i));
        }
        let second = r.tick(start, at(start, 2000));
        assert_eq!(
            second.line(),
            "t=2s ops=500 ops/s=100 p50=10.00ms p99=10.00ms errors=1"
        );
        let idle = r.tick(start, at(start, 3000));
        assert_eq!(idle.line(), "t=3s ops=500 ops/s=0 p50=- p99=- errors=1");
    }

    #[test]
    fn the_report_reads_as_text_and_as_json() {
        let start = Instant::now();
        let mut r = Recorder::new(start);
        r.ack(Duration::from_micros(1500), at(start, 2));
        r.ack(Duration::from_micros(2500), at(start, 4));
        let report = r.report(&info(), start, at(start, 2000));
        let text = report.human();
        for line in [
            "writers          4",
            "maps             load-w<i>-rabc123 (256 byte values)",
            "seconds          2.00",
            "ops              2",
            "ops/s            1.0",
            "errors           0",
            "longest gap ms   1996.00",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(text.contains("max 2.50"), "{text}");
        let value = serde_json::to_value(&report).unwrap_or_default();
        for field in [
            "writers",
            "seconds",
            "value_bytes",
            "maps",
            "ops",
            "ops_per_sec",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
            "errors",
            "errors_by_code",
            "conflicts",
            "longest_gap_ms",
        ] {
            assert!(value.get(field).is_some(), "{field} missing from {value}");
        }
        assert_eq!(value["ops"], json!(2));
        assert_eq!(value["errors_by_code"], json!({}));
        // Within the histogram's 0.1% precision.
        let max = value["max_ms"].as_f64().unwrap_or_default();
        assert!((max - 2.5).abs() <= 0.0025, "{value}");
    }
}
