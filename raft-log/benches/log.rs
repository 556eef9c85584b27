//! The Raft log against its two peers, measured in the same run on the same disk:
//!
//! - `spine-raft-log`: this crate, default options (32 MiB segments, 32 MiB entry cache);
//! - `raft-engine`: TiKV's log engine (0.4, default configuration: LZ4 for batches over 8 KiB,
//!   128 MiB files), one Raft group, the hard state as a message in the same batch;
//! - `sled`: the log as spine-server kept it before this crate: one key per entry in a sled tree, the hard
//!   state beside them, one `apply_batch` per Ready, then `flush` and an `fdatasync` of sled's
//!   file; compaction removes every key.
//!
//! First, printed: the append comparison in interleaved rounds (each round opens each log in
//! a fresh directory in turn and writes the same Readies), because fsync latency on a shared
//! virtual disk drifts over seconds, and with the CPU time each Ready costs (all threads of the
//! process, so sled's and raft-engine's own threads count). Skip it with
//! `RAFT_LOG_BENCH_COMPARE=0`.
//!
//! Then the criterion groups:
//! - `append/N`: a batch of N entries of 256 random bytes plus the hard state, then an fsync:
//!   one Ready. Throughput is in entries.
//! - `read_recent/N`: the last N entries of a 10,000-entry log (what a leader sends a follower
//!   that is just behind). `spine-raft-log (no cache)` reads them from the segment file.
//! - `compact`: compaction of 2,000 entries as a Raft loop issues it (raft-engine: `compact_to`
//!   and `purge_expired_files`; sled: the removals in one batch), then the next Ready (16
//!   entries), whose fsync makes the compaction durable and where deferred work lands (ours
//!   hands freed files to its removal thread there; sled flushes the removals). Compare with
//!   `append/16`. The entries are appended untimed before each compaction, in Readies of 16.
//!   Small files (1 MiB) for both file-based logs, so compaction does free files.
//! - `reopen`: opening a log of 50,000 entries (recovery).
//!
//! Run with `cargo bench -p spine-raft-log`; the directories are under `$TMPDIR` (a real disk
//! here: fsync costs what it costs).
//!
//! Measured on the project's 2-core VM (ext4 on a virtio disk whose fdatasync took from 0.1 ms
//! to 3.5 ms depending on the minute; two other engineers' builds running), two runs of the
//! printed comparison, CPU of all threads per Ready, ours / raft-engine / sled:
//!
//! ```text
//! batch 1      40.8 /  37.2 /  237.0 µs      58.4 /  53.0 /  230.1 µs
//! batch 16     80.1 / 112.5 /  469.5 µs     126.1 / 117.5 /  537.4 µs
//! batch 256   442.2 / 518.6 / 3495.8 µs     459.2 / 539.9 / 3928.6 µs
//! compaction  894.7 / 285.6 / 13695 µs      984.1 / 278.2 / 14680 µs
//!   (2,000 entries, default file sizes, + the next Ready of 16; ours without its entry
//!   cache: 250.5 and 254.0 µs)
//! ```
//!
//! Wall p50 per Ready followed the same order (sled 2.5–5× the others). Compaction costs ours
//! more with its cache on: it frees the ~1,900 cached entries it drops (about 0.3 µs each),
//! which raft-engine never holds (TiKV keeps its own entry cache above it); without the cache
//! it is at raft-engine's figure. In the criterion groups (earlier runs, same code paths):
//! reading the newest 16 / 256 entries, ours 0.9–1.2 / 13–22 µs from its cache and 5–10 /
//! 89–142 µs from the file, raft-engine 3.9–9.3 / 90–173 µs, sled 15–17 / 190–332 µs;
//! reopening 50,000 entries, ours 13–15 ms and raft-engine 4.4–4.8 ms.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};
use spine_raft_log::{LogBatch, Options, RaftLog};

const PAYLOAD: usize = 256;

fn payload(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..PAYLOAD)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn entries(first: u64, n: u64) -> Vec<Entry> {
    (first..first + n)
        .map(|index| Entry {
            index,
            term: 1,
            data: payload(index).into(),
            ..Default::default()
        })
        .collect()
}

fn hard_state(commit: u64) -> HardState {
    HardState {
        term: 1,
        vote: 1,
        commit,
        ..Default::default()
    }
}

fn fatal(e: impl std::fmt::Display) -> ! {
    panic!("{e}")
}

/// What the benchmark does with a log.
trait Log {
    fn open(dir: &Path, small_files: bool) -> Self;
    /// One Ready: entries and hard state, then fsync.
    fn ready(&mut self, entries: Vec<Entry>, hs: &HardState);
    fn read(&self, low: u64, high: u64) -> Vec<Entry>;
    /// Drops entries before `index`, as a Raft loop does after a checkpoint: durable with the
    /// next Ready's fsync.
    fn compact(&mut self, index: u64);
    fn last_index(&self) -> u64;
}

struct Ours(RaftLog);

impl Ours {
    fn open_with(dir: &Path, small_files: bool, cache_bytes: usize) -> Self {
        let mut options = Options {
            cache_bytes,
            ..Options::default()
        };
        if small_files {
            options.segment_bytes = 1 << 20;
        }
        Ours(RaftLog::open(dir, options).unwrap_or_else(|e| fatal(e)))
    }
}

impl Log for Ours {
    fn open(dir: &Path, small_files: bool) -> Self {
        Ours::open_with(dir, small_files, Options::default().cache_bytes)
    }

    fn ready(&mut self, entries: Vec<Entry>, hs: &HardState) {
        let mut batch = LogBatch::new();
        batch.append(entries).set_hard_state(hs.clone());
        self.0.write(batch).unwrap_or_else(|e| fatal(e));
        self.0.sync().unwrap_or_else(|e| fatal(e));
    }

    fn read(&self, low: u64, high: u64) -> Vec<Entry> {
        self.0.entries(low, high, None).unwrap_or_else(|e| fatal(e))
    }

    fn compact(&mut self, index: u64) {
        self.0.compact(index).unwrap_or_else(|e| fatal(e));
    }

    fn last_index(&self) -> u64 {
        self.0.last_index()
    }
}

struct Uncached(Ours);

impl Log for Uncached {
    fn open(dir: &Path, small_files: bool) -> Self {
        Uncached(Ours::open_with(dir, small_files, 0))
    }
    fn ready(&mut self, entries: Vec<Entry>, hs: &HardState) {
        self.0.ready(entries, hs)
    }
    fn read(&self, low: u64, high: u64) -> Vec<Entry> {
        self.0.read(low, high)
    }
    fn compact(&mut self, index: u64) {
        self.0.compact(index)
    }
    fn last_index(&self) -> u64 {
        self.0.last_index()
    }
}

struct EntryExt;

impl raft_engine::MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

const GROUP: u64 = 1;

struct Engine {
    engine: raft_engine::Engine,
    last: u64,
}

impl Log for Engine {
    fn open(dir: &Path, small_files: bool) -> Self {
        let mut cfg = raft_engine::Config {
            dir: dir.display().to_string(),
            ..Default::default()
        };
        if small_files {
            cfg.target_file_size = raft_engine::ReadableSize::mb(1);
            cfg.purge_threshold = raft_engine::ReadableSize::mb(4);
        }
        let engine = raft_engine::Engine::open(cfg).unwrap_or_else(|e| fatal(e));
        let last = engine.last_index(GROUP).unwrap_or(0);
        Engine { engine, last }
    }

    fn ready(&mut self, entries: Vec<Entry>, hs: &HardState) {
        let mut batch = raft_engine::LogBatch::with_capacity(entries.len());
        batch
            .add_entries::<EntryExt>(GROUP, &entries)
            .unwrap_or_else(|e| fatal(e));
        batch
            .put_message(GROUP, b"hard_state".to_vec(), hs)
            .unwrap_or_else(|e| fatal(e));
        self.engine
            .write(&mut batch, true)
            .unwrap_or_else(|e| fatal(e));
        self.last = entries.last().map_or(self.last, |e| e.index);
    }

    fn read(&self, low: u64, high: u64) -> Vec<Entry> {
        let mut out = Vec::with_capacity((high - low) as usize);
        self.engine
            .fetch_entries_to::<EntryExt>(GROUP, low, high, None, &mut out)
            .unwrap_or_else(|e| fatal(e));
        out
    }

    fn compact(&mut self, index: u64) {
        // `Engine::sync` would not help: it returns early on an empty batch, without an fsync.
        self.engine.compact_to(GROUP, index);
        self.engine
            .purge_expired_files()
            .unwrap_or_else(|e| fatal(e));
    }

    fn last_index(&self) -> u64 {
        self.last
    }
}

/// spine-server's former sled `RaftStore` log, reduced to what touches sled.
struct Sled {
    db: sled::Db,
    tree: sled::Tree,
    file: std::fs::File,
    first: u64,
    last: u64,
}

fn log_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'l';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

impl Sled {
    fn sync(&self) {
        self.db.flush().unwrap_or_else(|e| fatal(e));
        self.file.sync_data().unwrap_or_else(|e| fatal(e));
    }
}

impl Log for Sled {
    fn open(dir: &Path, _small_files: bool) -> Self {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
            .unwrap_or_else(|e| fatal(e));
        let tree = db.open_tree("raft").unwrap_or_else(|e| fatal(e));
        let file = std::fs::File::open(dir.join("db")).unwrap_or_else(|e| fatal(e));
        let last = tree
            .scan_prefix([b'l'])
            .keys()
            .next_back()
            .and_then(|k| k.ok())
            .map_or(0, |k| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&k[1..9]);
                u64::from_be_bytes(b)
            });
        Sled {
            db,
            tree,
            file,
            first: 1,
            last,
        }
    }

    fn ready(&mut self, entries: Vec<Entry>, hs: &HardState) {
        let mut batch = sled::Batch::default();
        for e in &entries {
            batch.insert(&log_key(e.index), e.write_to_bytes().unwrap_or_default());
        }
        batch.insert(b"hs", hs.write_to_bytes().unwrap_or_default());
        self.tree.apply_batch(batch).unwrap_or_else(|e| fatal(e));
        self.sync();
        self.last = entries.last().map_or(self.last, |e| e.index);
    }

    fn read(&self, low: u64, high: u64) -> Vec<Entry> {
        self.tree
            .range(log_key(low)..log_key(high))
            .map(|kv| {
                let (_, v) = kv.unwrap_or_else(|e| fatal(e));
                Entry::parse_from_bytes(&v).unwrap_or_else(|e| fatal(e))
            })
            .collect()
    }

    fn compact(&mut self, index: u64) {
        let mut batch = sled::Batch::default();
        for i in self.first..index {
            batch.remove(&log_key(i));
        }
        batch.insert(b"sm", &(index - 1).to_be_bytes());
        self.tree.apply_batch(batch).unwrap_or_else(|e| fatal(e));
        self.first = index;
    }

    fn last_index(&self) -> u64 {
        self.last
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| fatal(e))
}

fn bench_append<L: Log>(c: &mut Criterion, name: &str) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for n in [1u64, 16, 256] {
        let dir = tempdir();
        let mut log = L::open(dir.path(), false);
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| {
                let next = log.last_index() + 1;
                log.ready(entries(next, n), &hard_state(next));
            })
        });
    }
    group.finish();
}

fn bench_read<L: Log>(c: &mut Criterion, name: &str) {
    let dir = tempdir();
    let mut log = L::open(dir.path(), false);
    for first in (1..=10_000).step_by(16) {
        log.ready(entries(first, 16), &hard_state(first));
    }
    let last = log.last_index();
    let mut group = c.benchmark_group("read_recent");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(2));
    for n in [16u64, 256] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| {
                let got = log.read(last + 1 - n, last + 1);
                assert_eq!(got.len() as u64, n);
                black_box(got)
            })
        });
    }
    group.finish();
}

fn bench_compact<L: Log>(c: &mut Criterion, name: &str) {
    const EVERY: u64 = 2_000;
    let dir = tempdir();
    let mut log = L::open(dir.path(), true);
    let mut group = c.benchmark_group("compact");
    group
        .sample_size(15)
        .measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(EVERY));
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..EVERY / 16 {
                    let next = log.last_index() + 1;
                    log.ready(entries(next, 16), &hard_state(next));
                }
                // Keep the newest 100 entries, as spine-server keeps some for slow followers.
                let to = log.last_index() - 100;
                let started = Instant::now();
                compact_then_ready(&mut log, to);
                spent += started.elapsed();
            }
            spent
        })
    });
    group.finish();
}

/// A compaction and the Ready after it, whose fsync makes it durable (and where the work a
/// log defers from its compaction lands).
fn compact_then_ready<L: Log>(log: &mut L, to: u64) {
    log.compact(to);
    let next = log.last_index() + 1;
    log.ready(entries(next, 16), &hard_state(next));
}

fn bench_reopen<L: Log>(c: &mut Criterion, name: &str) {
    let dir = tempdir();
    {
        let mut log = L::open(dir.path(), false);
        for first in (1..=50_000).step_by(256) {
            log.ready(entries(first, 256), &hard_state(first));
        }
    }
    let mut group = c.benchmark_group("reopen");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(50_000));
    group.bench_function(BenchmarkId::from_parameter(name), |b| {
        b.iter(|| {
            let log = L::open(dir.path(), false);
            assert!(log.last_index() >= 50_000);
            black_box(log.last_index())
        })
    });
    group.finish();
}

/// CPU time of every thread of this process so far, in nanoseconds (Linux schedstat). A
/// running thread's figure moves only at scheduler events, so single short operations read as
/// 0 or as a whole slice: only sums over many of them mean something.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[derive(Default)]
struct Tally {
    wall: Vec<Duration>,
    cpu_ns: u64,
    readies: u64,
}

/// One round of one log: a fresh directory, `readies` Readies of `n` entries.
fn round<L: Log>(n: u64, readies: u64, tally: &mut Tally) {
    let dir = tempdir();
    let mut log = L::open(dir.path(), false);
    // A first Ready outside the tally: file creation, lazy threads.
    log.ready(entries(1, n), &hard_state(1));
    let cpu = cpu_ns();
    for _ in 0..readies {
        let next = log.last_index() + 1;
        let started = Instant::now();
        log.ready(entries(next, n), &hard_state(next));
        tally.wall.push(started.elapsed());
    }
    tally.cpu_ns += cpu_ns().saturating_sub(cpu);
    tally.readies += readies;
    drop(log);
}

/// One round of compactions on one log: `cycles` times 2,000 entries appended (untimed), then
/// compaction and the next Ready.
fn compaction_round<L: Log>(cycles: u64, small_files: bool, tally: &mut Tally) {
    let dir = tempdir();
    let mut log = L::open(dir.path(), small_files);
    for _ in 0..cycles {
        for _ in 0..2_000 / 16 {
            let next = log.last_index() + 1;
            log.ready(entries(next, 16), &hard_state(next));
        }
        let to = log.last_index() - 100;
        let cpu = cpu_ns();
        let started = Instant::now();
        compact_then_ready(&mut log, to);
        tally.wall.push(started.elapsed());
        tally.cpu_ns += cpu_ns().saturating_sub(cpu);
        tally.readies += 1;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn compare(_: &mut Criterion) {
    if std::env::var("RAFT_LOG_BENCH_COMPARE").is_ok_and(|v| v == "0") {
        return;
    }
    const ROUNDS: usize = 4;
    println!("append + fsync per Ready, {ROUNDS} interleaved rounds; CPU = all threads");
    println!(
        "{:>5}  {:<16} {:>9} {:>9} {:>10} {:>11}",
        "batch", "log", "wall p50", "wall p90", "CPU/Ready", "CPU/entry"
    );
    for n in [1u64, 16, 256] {
        let readies = if n == 256 { 60 } else { 150 };
        let mut tallies: [Tally; 3] = Default::default();
        for r in 0..ROUNDS {
            // Rotate the order so no log always runs right after another's file removals.
            for k in 0..3 {
                match (r + k) % 3 {
                    0 => round::<Ours>(n, readies, &mut tallies[0]),
                    1 => round::<Engine>(n, readies, &mut tallies[1]),
                    _ => round::<Sled>(n, readies, &mut tallies[2]),
                }
            }
        }
        let sled_cpu = tallies[2].cpu_ns as f64 / tallies[2].readies.max(1) as f64;
        for (name, t) in [OURS, ENGINE, SLED].iter().zip(tallies.iter_mut()) {
            t.wall.sort();
            let cpu = t.cpu_ns as f64 / t.readies.max(1) as f64;
            println!(
                "{n:>5}  {name:<16} {:>7.2}ms {:>7.2}ms {:>8.1}µs {:>8.2}µs  (CPU {:.2}× sled's)",
                percentile(&t.wall, 0.5).as_secs_f64() * 1e3,
                percentile(&t.wall, 0.9).as_secs_f64() * 1e3,
                cpu / 1e3,
                cpu / 1e3 / n as f64,
                cpu / sled_cpu,
            );
        }
    }
    const NO_CACHE: &str = "(no cache)";
    for (small_files, files) in [(true, "1 MiB files"), (false, "default file sizes")] {
        let mut tallies: [Tally; 4] = Default::default();
        for r in 0..2 {
            for k in 0..4 {
                match (r + k) % 4 {
                    0 => compaction_round::<Ours>(8, small_files, &mut tallies[0]),
                    1 => compaction_round::<Uncached>(8, small_files, &mut tallies[1]),
                    2 => compaction_round::<Engine>(8, small_files, &mut tallies[2]),
                    _ => compaction_round::<Sled>(8, small_files, &mut tallies[3]),
                }
            }
        }
        println!("compaction of 2,000 entries + the next Ready of 16 ({files}), 2 rounds of 8");
        let sled_cpu = tallies[3].cpu_ns as f64 / tallies[3].readies.max(1) as f64;
        for (name, t) in [OURS, NO_CACHE, ENGINE, SLED]
            .iter()
            .zip(tallies.iter_mut())
        {
            t.wall.sort();
            let cpu = t.cpu_ns as f64 / t.readies.max(1) as f64;
            println!(
                "       {name:<16} {:>7.2}ms {:>7.2}ms {:>8.1}µs              (CPU {:.2}× sled's)",
                percentile(&t.wall, 0.5).as_secs_f64() * 1e3,
                percentile(&t.wall, 0.9).as_secs_f64() * 1e3,
                cpu / 1e3,
                cpu / sled_cpu,
            );
        }
    }
}

const OURS: &str = "spine-raft-log";
const ENGINE: &str = "raft-engine";
const SLED: &str = "sled";

fn append(c: &mut Criterion) {
    bench_append::<Ours>(c, OURS);
    bench_append::<Engine>(c, ENGINE);
    bench_append::<Sled>(c, SLED);
}

fn read_recent(c: &mut Criterion) {
    bench_read::<Ours>(c, OURS);
    bench_read::<Uncached>(c, "spine-raft-log (no cache)");
    bench_read::<Engine>(c, ENGINE);
    bench_read::<Sled>(c, SLED);
}

fn compact(c: &mut Criterion) {
    bench_compact::<Ours>(c, OURS);
    bench_compact::<Engine>(c, ENGINE);
    bench_compact::<Sled>(c, SLED);
}

fn reopen(c: &mut Criterion) {
    bench_reopen::<Ours>(c, OURS);
    bench_reopen::<Engine>(c, ENGINE);
}

criterion_group!(benches, compare, append, read_recent, compact, reopen);
criterion_main!(benches);
