//! `spine-bench suite`: every workload, on both systems, alternating which goes first, with
//! each measurement's CPU and wall time; failures are recorded and the suite goes on.
//!
//! ```text
//!  start etcd ×3, Spine ×3 (or take endpoints) ─▶ for each workload, for each parameter:
//!      system A then B (A alternates) ─▶ Measurement { figures, latency, details, error }
//!  ─▶ SuiteReport ─▶ report.md (table + goals), results.json, latency.svg in --out
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use sharing_map::AppName;

use crate::cluster::{self, CaHostTarget, CafjsTarget, EtcdTarget, SpineTarget, cafjs};
use crate::load::{CONNECTIONS, VALUE_BYTES};
use crate::procfs;
use crate::report::{self, Measurement, SuiteReport, System, check_goals};
use crate::workload::{self, Outcome, ca, catchup, fanout, write_batch};

/// `spine-bench suite` arguments. Workload parameters default to the full suite's (or, with
/// `--smoke`, to tiny ones); each can be set on its own.
#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Directory for report.md, results.json and latency.svg.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Tiny parameters: the same code paths in seconds, for CI. Fails if any workload fails.
    #[arg(long)]
    pub smoke: bool,
    /// Use this running Spine cluster (comma-separated endpoints) instead of starting one.
    #[arg(long, value_delimiter = ',')]
    pub spine_endpoints: Vec<String>,
    /// Token for `--spine-endpoints` (URL-safe base64; an admin token, since the suite creates
    /// apps and maps); none for a `--no-auth` cluster.
    #[arg(long, env = "SPINE_TOKEN", hide_env_values = true)]
    pub spine_token: Option<String>,
    /// File holding the token for `--spine-endpoints` (`spine init` writes DIR/admin.token).
    #[arg(long, env = "SPINE_TOKEN_FILE", value_name = "FILE")]
    pub spine_token_file: Option<PathBuf>,
    /// Use this running etcd cluster (comma-separated client endpoints) instead of starting one.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The etcd binary (default: `etcd` on PATH, installing Debian's etcd-server if missing).
    #[arg(long)]
    pub etcd_bin: Option<PathBuf>,
    /// Where started clusters keep their data (a fresh temporary directory inside it; default:
    /// the system's temporary directory). Put it on the disk you want fsync measured on.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Run only these workloads (write, write-batch, propagation, fan-out, catch-up, ca,
    /// notify).
    #[arg(long, value_delimiter = ',',
          value_parser = ["write", "write-batch", "propagation", "fan-out", "catch-up", "ca", "notify"])]
    pub only: Vec<String>,
    /// Measure only these systems (etcd, spine; for the ca workload ca-host, cafjs), e.g. while
    /// profiling one of them [default: all; with --smoke all but cafjs, whose installation and
    /// start take longer than the smoke run].
    #[arg(long, value_delimiter = ',', value_parser = ["etcd", "spine", "ca-host", "cafjs"])]
    pub systems: Option<Vec<String>>,
    /// Diagnostics: the node agents' lag probe period in seconds (default: the agent's own,
    /// 5 s). Every probe lists all maps of the app.
    #[arg(long)]
    pub agent_lag_probe_secs: Option<f64>,
    /// Write workload: concurrent writers per run [full: 1,16,256,1000].
    #[arg(long, value_delimiter = ',')]
    pub writers: Option<Vec<usize>>,
    /// Write workload: seconds per run [full: 10].
    #[arg(long)]
    pub write_seconds: Option<f64>,
    /// Propagation: subscribers per run [full: 1,100].
    #[arg(long, value_delimiter = ',')]
    pub subscribers: Option<Vec<usize>>,
    /// Propagation, diagnostics: connection of the first subscriber (0: the leader, 1: a
    /// follower; subscriber i uses connection first + i, member (first + i) mod 3).
    #[arg(long, default_value_t = 1)]
    pub subscribers_from: usize,
    /// Propagation: updates measured per run [full: 500].
    #[arg(long)]
    pub updates: Option<u64>,
    /// Fan-out: subscribers [full: 1000].
    #[arg(long)]
    pub fanout_subscribers: Option<usize>,
    /// Fan-out: maps (keys) [full: 10000].
    #[arg(long)]
    pub fanout_maps: Option<usize>,
    /// Fan-out: maps each subscriber follows [full: 100].
    #[arg(long)]
    pub fanout_per_subscriber: Option<usize>,
    /// Fan-out: writes in flight during the burst [full: 1000].
    #[arg(long)]
    pub fanout_concurrency: Option<usize>,
    /// Catch-up: maps (keys) the absent subscriber follows, one run per value [full: 1000,50;
    /// 50 maps get 2,000 updates each, more than the Spine retains per map (1,000)].
    #[arg(long, value_delimiter = ',')]
    pub catchup_maps: Option<Vec<usize>>,
    /// Catch-up: updates written while the subscriber is away [full: 100000].
    #[arg(long)]
    pub catchup_updates: Option<u64>,
    /// Write-batch: updates per batch, each of its own map/key [full: 100].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Write-batch: batches in flight at once [full: 16].
    #[arg(long)]
    pub batch_concurrency: Option<usize>,
    /// Write-batch: seconds measured [full: 10].
    #[arg(long)]
    pub batch_seconds: Option<f64>,
    /// CA workload: CA counts, one run each; every CA has its own client [full:
    /// 1,100,1000,10000].
    #[arg(long, value_delimiter = ',')]
    pub cas: Option<Vec<usize>>,
    /// CA workload: seconds measured per run [full: 20].
    #[arg(long)]
    pub ca_seconds: Option<f64>,
    /// CA workload: seconds of calls before measuring [full: 3].
    #[arg(long)]
    pub ca_warmup: Option<f64>,
    /// CA workload: a hot CA, one CA called by this many closed-loop clients at once (0: not
    /// measured) [full: 64].
    #[arg(long)]
    pub ca_hot_callers: Option<usize>,
    /// CA workload: the Caf.js app and load client [default: bench/cafjs of this source tree].
    #[arg(long, value_name = "DIR")]
    pub cafjs_dir: Option<PathBuf>,
    /// Notify workload: listeners per run (the peer: as many node agents) [full: 1,1000].
    #[arg(long, value_delimiter = ',')]
    pub notify_listeners: Option<Vec<usize>>,
    /// Notify workload: notifications (peer: map updates) per run [full: 200].
    #[arg(long)]
    pub notify_updates: Option<u64>,
}

/// The parameters of one suite run.
#[derive(Clone, Debug)]
struct Params {
    writers: Vec<usize>,
    write_seconds: f64,
    subscribers: Vec<usize>,
    updates: u64,
    fanout: fanout::Shape,
    catchup_maps: Vec<usize>,
    catchup_updates: u64,
    write_batch: write_batch::Shape,
    cas: Vec<usize>,
    ca_seconds: f64,
    ca_warmup: f64,
    ca_hot_callers: usize,
    notify_listeners: Vec<usize>,
    notify_updates: u64,
}

impl Params {
    fn full() -> Self {
        Params {
            writers: vec![1, 16, 256, 1000],
            write_seconds: 10.0,
            subscribers: vec![1, 100],
            updates: 500,
            fanout: fanout::Shape {
                subscribers: 1000,
                maps: 10_000,
                per_subscriber: 100,
                concurrency: 1000,
            },
            catchup_maps: vec![1000, 50],
            catchup_updates: 100_000,
            write_batch: write_batch::Shape {
                batch: 100,
                concurrency: 16,
                seconds: 10.0,
            },
            cas: vec![1, 100, 1000, 10_000],
            ca_seconds: 20.0,
            ca_warmup: 3.0,
            ca_hot_callers: 64,
            notify_listeners: vec![1, 1000],
            notify_updates: 200,
        }
    }

    fn smoke() -> Self {
        Params {
            writers: vec![1, 8],
            write_seconds: 0.5,
            subscribers: vec![1, 4],
            updates: 10,
            fanout: fanout::Shape {
                subscribers: 8,
                maps: 64,
                per_subscriber: 16,
                concurrency: 16,
            },
            catchup_maps: vec![8, 2],
            catchup_updates: 400,
            write_batch: write_batch::Shape {
                batch: 10,
                concurrency: 2,
                seconds: 0.5,
            },
            cas: vec![1, 4],
            ca_seconds: 0.5,
            ca_warmup: 0.2,
            ca_hot_callers: 4,
            notify_listeners: vec![1, 4],
            notify_updates: 10,
        }
    }

    fn from_args(a: &SuiteArgs) -> Self {
        let mut p = if a.smoke { Self::smoke() } else { Self::full() };
        if let Some(v) = &a.writers {
            p.writers.clone_from(v);
        }
        if let Some(v) = a.write_seconds {
            p.write_seconds = v;
        }
        if let Some(v) = &a.subscribers {
            p.subscribers.clone_from(v);
        }
        if let Some(v) = a.updates {
            p.updates = v;
        }
        if let Some(v) = a.fanout_subscribers {
            p.fanout.subscribers = v;
        }
        if let Some(v) = a.fanout_maps {
            p.fanout.maps = v;
        }
        if let Some(v) = a.fanout_per_subscriber {
            p.fanout.per_subscriber = v;
        }
        if let Some(v) = a.fanout_concurrency {
            p.fanout.concurrency = v;
        }
        if let Some(v) = &a.catchup_maps {
            p.catchup_maps.clone_from(v);
        }
        if let Some(v) = a.catchup_updates {
            p.catchup_updates = v;
        }
        if let Some(v) = a.batch_size {
            p.write_batch.batch = v.max(1);
        }
        if let Some(v) = a.batch_concurrency {
            p.write_batch.concurrency = v.max(1);
        }
        if let Some(v) = a.batch_seconds {
            p.write_batch.seconds = v;
        }
        if let Some(v) = &a.cas {
            p.cas.clone_from(v);
        }
        if let Some(v) = a.ca_seconds {
            p.ca_seconds = v;
        }
        if let Some(v) = a.ca_warmup {
            p.ca_warmup = v;
        }
        if let Some(v) = a.ca_hot_callers {
            p.ca_hot_callers = v;
        }
        if let Some(v) = &a.notify_listeners {
            p.notify_listeners.clone_from(v);
        }
        if let Some(v) = a.notify_updates {
            p.notify_updates = v.max(1);
        }
        p
    }
}

/// Records measurements as they are taken.
struct Recorder {
    run: String,
    measurements: Vec<Measurement>,
}

impl Recorder {
    /// A fresh app per workload (the agents' lag probe lists an app's maps, so workloads do not
    /// see each other's maps).
    fn app(&self, workload: &str) -> anyhow::Result<AppName> {
        Ok(AppName::parse(&format!("bench{}-{workload}", self.run))?)
    }

    /// The etcd key prefix of this run.
    fn prefix(&self) -> String {
        format!("/spine-bench/{}", self.run)
    }

    /// Runs one measurement on the system whose servers are `pids` and records it, failed or
    /// not; returns whether it succeeded.
    async fn measure<F: Future<Output = anyhow::Result<Outcome>>>(
        &mut self,
        workload: &'static str,
        parameter: &str,
        system: System,
        pids: &[u32],
        run: F,
    ) -> bool {
        eprintln!("[{workload} {parameter}] {} ...", system.name());
        let cpu_before = procfs::total_cpu(pids).ok();
        let own_before = procfs::own_cpu().ok();
        let started = Instant::now();
        let result = run.await;
        let wall = started.elapsed().as_secs_f64();
        let server_cpu = cpu_before
            .zip(procfs::total_cpu(pids).ok())
            .map(|(a, b)| b - a);
        let bench_cpu = own_before.zip(procfs::own_cpu().ok()).map(|(a, b)| b - a);
        let result = result.and_then(|o| match pids.iter().find(|p| !procfs::alive(**p)) {
            Some(pid) => Err(anyhow::anyhow!(
                "{} server process {pid} died during the measurement (its log is in the data directory)",
                system.name()
            )),
            None => Ok(o),
        });
        let mut m = Measurement {
            workload,
            parameter: parameter.to_string(),
            system,
            error: None,
            figures: BTreeMap::new(),
            latency: None,
            details: serde_json::Value::Null,
            wall_seconds: crate::stats::round3(wall),
        };
        match result {
            Ok(mut outcome) => {
                if let Some(cpu) = server_cpu.filter(|_| !pids.is_empty()) {
                    outcome.detail("server_cpu_s", crate::stats::round3(cpu));
                    if let Some(&writes) = outcome.figures.get("writes").filter(|w| **w > 0.0) {
                        outcome.figure("server_cpu_us_per_write", cpu * 1e6 / writes);
                    }
                }
                if let Some(cpu) = bench_cpu {
                    outcome.detail("bench_process_cpu_s", crate::stats::round3(cpu));
                }
                let summary: Vec<String> = outcome
                    .figures
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                eprintln!(
                    "[{workload} {parameter}] {}: {} ({wall:.1}s)",
                    system.name(),
                    summary.join(" ")
                );
                m.figures = outcome.figures;
                m.latency = outcome.latency;
                m.details = serde_json::Value::Object(outcome.details);
            }
            Err(e) => {
                eprintln!("[{workload} {parameter}] {} FAILED: {e:#}", system.name());
                m.error = Some(format!("{e:#}"));
                if let Some(cpu) = server_cpu.filter(|_| !pids.is_empty()) {
                    m.details = serde_json::json!({ "server_cpu_s": crate::stats::round3(cpu) });
                }
            }
        }
        let ok = m.error.is_none();
        self.measurements.push(m);
        ok
    }
}

/// Which system goes first for the `k`-th parameter of a workload: the peer, then ours, then
/// the other way round.
fn order(workload: &str, k: usize) -> [System; 2] {
    let (peer, ours) = report::pair(workload);
    if k % 2 == 0 {
        [peer, ours]
    } else {
        [ours, peer]
    }
}

/// The systems `--systems` selects (by default all; with `--smoke` all but Caf.js).
fn selected(args: &SuiteArgs) -> Vec<System> {
    System::ALL
        .into_iter()
        .filter(|s| match &args.systems {
            Some(names) => names.iter().any(|n| n == s.flag()),
            None => !(args.smoke && *s == System::Cafjs),
        })
        .collect()
}

/// [`order`] without the systems left out.
fn systems(selected: &[System], workload: &str, k: usize) -> Vec<System> {
    order(workload, k)
        .into_iter()
        .filter(|s| selected.contains(s))
        .collect()
}

fn wanted(args: &SuiteArgs, workload: &str) -> bool {
    args.only.is_empty() || args.only.iter().any(|w| w == workload)
}

fn command_line(args: &[String]) -> String {
    args.join(" ")
}

fn machine() -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    BTreeMap::from([(
        "machine",
        format!(
            "{model}, {cores} cores, {mem_gib:.0} GiB RAM, Linux {}",
            kernel.trim()
        ),
    )])
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs the suite; returns the report (also written to `--out`).
pub async fn run(args: SuiteArgs) -> anyhow::Result<SuiteReport> {
    let params = Params::from_args(&args);
    let chosen = selected(&args);
    let suite_start = Instant::now();
    let base = args.data_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::Builder::new()
        .prefix("spine-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a data directory in {}", base.display()))?;
    let mut setup = machine();
    let load_before = loadavg();

    let mut etcd = if args.etcd_endpoints.is_empty() {
        let bin = cluster::etcd::find_or_install(args.etcd_bin.as_deref())?;
        eprintln!("starting 3 etcd members ({}) ...", bin.display());
        EtcdTarget::start(&bin, tmp.path()).await?
    } else {
        EtcdTarget::existing(args.etcd_endpoints.clone()).await?
    };
    let mut spine = if args.spine_endpoints.is_empty() {
        eprintln!("starting 3 Spine nodes ...");
        SpineTarget::start(tmp.path()).await?
    } else {
        let token = match (&args.spine_token, &args.spine_token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading --spine-token-file {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        SpineTarget::existing(args.spine_endpoints.clone(), token).await?
    };
    spine.agent_lag_probe = args.agent_lag_probe_secs.map(Duration::from_secs_f64);
    if args.subscribers_from != 1 {
        setup.insert(
            "diagnostics: subscribers",
            format!(
                "propagation subscribers start at connection {} (0 is the leader)",
                args.subscribers_from
            ),
        );
    }
    if let Some(secs) = args.agent_lag_probe_secs {
        setup.insert(
            "diagnostics",
            format!("node agents' lag probe every {secs} s instead of the default 5 s"),
        );
    }
    eprintln!(
        "etcd at {} (leader first), Spine at {} (leader first)",
        etcd.endpoints.join(","),
        spine.endpoints.join(",")
    );
    setup.insert(
        "command",
        format!(
            "spine-bench {}",
            command_line(&std::env::args().skip(1).collect::<Vec<_>>())
        ),
    );
    setup.insert("etcd", format!("{}; 3 members on loopback, default settings (fsync on, no auto-compaction, no authentication), --log-level warn", etcd.version));
    setup.insert(
        "Spine",
        format!(
            "spine-bench {} (release build); 3 `spine serve` nodes on loopback, default settings (fsync on, token authentication on: every request carries the admin token), RUST_LOG=warn",
            env!("CARGO_PKG_VERSION")
        ),
    );
    setup.insert(
        "data",
        format!(
            "{} on {}",
            tmp.path().display(),
            cluster::filesystem_of(tmp.path())
        ),
    );
    setup.insert("load", format!("{VALUE_BYTES}-byte values; every write a compare-and-swap on the writer's own map/key; writers share min(writers, {CONNECTIONS}) connections, connection i to member i mod 3 (leader first); load generator, agents and watchers run in this process on the same cores"));
    if wanted(&args, "write-batch") {
        setup.insert("write-batch", format!("{VALUE_BYTES}-byte values; each update a compare-and-swap of its own map/key at the version its last update produced; Spine: one UpdateBatch per batch (each update atomic and answered on its own); etcd, which has no batch of independent transactions: one txn per batch with a mod-revision compare and a put per key (one Raft entry, all or nothing); batch i on connection i mod {CONNECTIONS}"));
    }
    setup.insert("parameters", format!("{params:?}"));
    setup.insert("mode", if args.smoke { "smoke" } else { "full" }.into());

    let mut rec = Recorder {
        run: run_id(),
        measurements: Vec::new(),
    };
    let (spine_pids, etcd_pids) = (spine.procs.pids(), etcd.procs.pids());
    let prefix = rec.prefix();

    if wanted(&args, "write") {
        let app = rec.app("write")?;
        let seconds = Duration::from_secs_f64(params.write_seconds);
        for (k, &n) in params.writers.iter().enumerate() {
            let parameter = plural(n, "writer");
            for system in systems(&chosen, "write", k) {
                match system {
                    System::Etcd => {
                        let run = workload::write::etcd(&etcd, &prefix, n, seconds);
                        rec.measure("write", &parameter, system, &etcd_pids, run)
                            .await;
                    }
                    System::Spine => {
                        let run = workload::write::spine(&spine, &app, n, seconds);
                        rec.measure("write", &parameter, system, &spine_pids, run)
                            .await;
                    }
                    // Not in this workload's pair.
                    System::Cafjs | System::CaHost => {}
                }
            }
        }
    }
    if wanted(&args, "write-batch") {
        let app = rec.app("batch")?;
        let shape = params.write_batch;
        let parameter = shape.label();
        for system in systems(&chosen, "write-batch", 0) {
            match system {
                System::Etcd => {
                    let run = write_batch::etcd(&etcd, &prefix, shape, &etcd_pids);
                    rec.measure("write-batch", &parameter, system, &etcd_pids, run)
                        .await;
                }
                System::Spine => {
                    let run = write_batch::spine(&spine, &app, shape, &spine_pids);
                    rec.measure("write-batch", &parameter, system, &spine_pids, run)
                        .await;
                }
                // Not in this workload's pair.
                System::Cafjs | System::CaHost => {}
            }
        }
    }
    if wanted(&args, "propagation") {
        let app = rec.app("prop")?;
        for (k, &n) in params.subscribers.iter().enumerate() {
            let parameter = plural(n, "subscriber");
            for system in systems(&chosen, "propagation", k) {
                match system {
                    System::Etcd => {
                        let run = workload::propagation::etcd(
                            &etcd,
                            &prefix,
                            n,
                            args.subscribers_from,
                            params.updates,
                        );
                        rec.measure("propagation", &parameter, system, &etcd_pids, run)
                            .await;
                    }
                    System::Spine => {
                        let run = workload::propagation::spine(
                            &spine,
                            &app,
                            n,
                            args.subscribers_from,
                            params.updates,
                        );
                        rec.measure("propagation", &parameter, system, &spine_pids, run)
                            .await;
                    }
                    // Not in this workload's pair.
                    System::Cafjs | System::CaHost => {}
                }
            }
        }
    }
    if wanted(&args, "fan-out") {
        let app = rec.app("fanout")?;
        let shape = params.fanout;
        let parameter = format!(
            "{} subscribers × {} of {} maps",
            shape.subscribers, shape.per_subscriber, shape.maps
        );
        for system in systems(&chosen, "fan-out", 0) {
            match system {
                System::Etcd => {
                    let run = fanout::etcd(&etcd, &prefix, shape);
                    rec.measure("fan-out", &parameter, system, &etcd_pids, run)
                        .await;
                }
                System::Spine => {
                    let run = fanout::spine(&spine, &app, shape);
                    rec.measure("fan-out", &parameter, system, &spine_pids, run)
                        .await;
                }
                // Not in this workload's pair.
                System::Cafjs | System::CaHost => {}
            }
        }
    }
    if wanted(&args, "catch-up") {
        for (k, &maps) in params.catchup_maps.iter().enumerate() {
            let app = rec.app(&format!("away{maps}"))?;
            let shape = catchup::Shape {
                maps,
                updates: params.catchup_updates,
            };
            // Each map gets the same number of updates; the label says how many were written.
            let written = shape.updates / maps.max(1) as u64 * maps as u64;
            let parameter = format!("{written} updates over {maps} maps");
            let prefix = format!("{prefix}/k{maps}");
            // The other order than fan-out's.
            for system in systems(&chosen, "catch-up", k + 1) {
                match system {
                    System::Etcd => {
                        let run = catchup::etcd(&etcd, &prefix, shape);
                        rec.measure("catch-up", &parameter, system, &etcd_pids, run)
                            .await;
                    }
                    System::Spine => {
                        let run = catchup::spine(&spine, &app, shape);
                        rec.measure("catch-up", &parameter, system, &spine_pids, run)
                            .await;
                    }
                    // Not in this workload's pair.
                    System::Cafjs | System::CaHost => {}
                }
            }
        }
    }
    if wanted(&args, "ca") {
        // etcd has no part in it: its idle CPU would only disturb the two systems measured.
        etcd.procs.stop().await;
        run_ca(
            &args,
            &params,
            &chosen,
            &spine,
            tmp.path(),
            &mut rec,
            &mut setup,
        )
        .await;
    }
    etcd.procs.stop().await;
    if wanted(&args, "notify") {
        run_notify(
            &args,
            &params,
            &chosen,
            &spine,
            tmp.path(),
            &mut rec,
            &mut setup,
        )
        .await?;
    }
    spine.procs.stop().await;
    let measurements = rec.measurements;
    setup.insert(
        "load average (1/5/15 min)",
        format!(
            "{load_before} at the start, {} at the end (other processes on the machine compete for its cores)",
            loadavg()
        ),
    );
    if measurements.iter().any(|m| m.error.is_some()) {
        // The logs, not the data: after the full suite etcd's data alone is gigabytes.
        for member in std::fs::read_dir(tmp.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(member.path().join("data"));
        }
        // The throwaway cluster's root key is of no use to anyone afterwards.
        let _ = std::fs::remove_dir_all(tmp.path().join("spine-credentials"));
        let kept = tmp.keep();
        eprintln!(
            "kept the servers' logs in {} for inspection",
            kept.display()
        );
    }
    let mut report = SuiteReport {
        setup,
        measurements,
        goals: Vec::new(),
        total_seconds: crate::stats::round3(suite_start.elapsed().as_secs_f64()),
    };
    report.goals = check_goals(&report);
    Ok(report)
}

/// The `ca` workload: one `ca-host` on the suite's Spine and Caf.js on Redis, started here,
/// each CA count on both (alternating which goes first); a system that cannot start is recorded
/// as a failed measurement per CA count, and the other is still measured.
async fn run_ca(
    args: &SuiteArgs,
    params: &Params,
    chosen: &[System],
    spine: &SpineTarget,
    dir: &std::path::Path,
    rec: &mut Recorder,
    setup: &mut BTreeMap<&'static str, String>,
) {
    let wants = |s| chosen.contains(&s);
    let host = if wants(System::CaHost) {
        eprintln!("starting a CA host on the Spine ...");
        Some(CaHostTarget::start(spine, &dir.join("ca-host")).await)
    } else {
        None
    };
    let cafjs_dir = args.cafjs_dir.clone().unwrap_or_else(cafjs::default_dir);
    let mut cafjs = if wants(System::Cafjs) {
        eprintln!("starting Caf.js (node) and Redis ...");
        Some(CafjsTarget::start(&cafjs_dir, &dir.join("cafjs")).await)
    } else {
        None
    };
    let batching = format!(
        "CA host: group commit with no timer: a checkpoint goes out at once while fewer than 8 \
         UpdateBatch requests are in flight, else it joins the next batch (≤ 1000 per batch; \
         host.json's max_in_flight and max_batch). Caf.js: caf_redis coalesces checkpoint \
         writes for up to {} ms or {} pending writes (caf_platform's framework.json)",
        cafjs::COALESCING_INTERVAL_MS,
        cafjs::COALESCING_MAX_PENDING
    );
    setup.insert("ca: checkpoint batching", batching);
    setup.insert(
        "ca: CA host",
        format!(
            "1 `ca-host serve` ({} build) with ca-runtime/host.json's defaults (placement on: \
             64 partition leases in the Spine), --no-auth (clients present no token, as Caf.js \
             runs with security off), RUST_LOG=warn, on the suite's 3-node Spine; clients: tasks \
             of spine-bench over min(CAs, {CONNECTIONS}) gRPC connections; server CPU = host + \
             3 Spine nodes",
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        ),
    );
    let cafjs_version = match &cafjs {
        Some(Ok(t)) => t.version.clone(),
        Some(Err(e)) => format!("could not start: {e:#}"),
        None => "not measured (--systems)".into(),
    };
    setup.insert(
        "ca: Caf.js",
        format!(
            "{cafjs_version}; bench/cafjs: the counter app, security off, the platform's hang watchdog \
             off (MAX_HANG_RETRIES), one node process on 127.0.0.1, Redis with appendonly yes, appendfsync always; clients: bench/cafjs/load.js \
             in one node process, a caf_cli session (WebSocket) per CA; server CPU = node + Redis"
        ),
    );
    setup.insert(
        "ca: load",
        format!(
            "each CA of the counter app called (`increment`) by its own closed-loop client; every \
             CA called once first, then {} s warm-up, {} s measured; turns counted when their reply \
             arrives in the window; CPU from /proc over the window",
            params.ca_warmup, params.ca_seconds
        ),
    );
    let spine_pids = spine.procs.pids();
    let host_pids: Vec<u32> = match &host {
        Some(Ok(h)) => h
            .procs
            .pids()
            .into_iter()
            .chain(spine_pids.clone())
            .collect(),
        _ => Vec::new(),
    };
    let pids_of = |cafjs: &Option<anyhow::Result<CafjsTarget>>| match cafjs {
        Some(Ok(c)) => c.procs.pids(),
        _ => Vec::new(),
    };
    let mut cafjs_pids = pids_of(&cafjs);
    // Every CA count with one client per CA, then the hot CA: one CA, many clients at once.
    let mut runs: Vec<(String, usize, usize)> = params
        .cas
        .iter()
        .map(|&n| (plural(n, "CA"), n, 1))
        .collect();
    if params.ca_hot_callers > 0 {
        let c = params.ca_hot_callers;
        runs.push((format!("1 hot CA, {c} callers"), 1, c));
    }
    for (k, (parameter, n, callers)) in runs.into_iter().enumerate() {
        let shape = ca::Shape {
            cas: n,
            callers,
            warmup: params.ca_warmup,
            seconds: params.ca_seconds,
        };
        let names = format!("b{}n{n}c{callers}x", rec.run);
        let mut cafjs_failed = false;
        for system in systems(chosen, "ca", k) {
            match (system, &host, &cafjs) {
                (System::CaHost, Some(Ok(h)), _) => {
                    let run = ca::ca_host(h, &spine_pids, &names, shape);
                    rec.measure("ca", &parameter, system, &host_pids, run).await;
                }
                (System::Cafjs, _, Some(Ok(c))) => {
                    let run = ca::cafjs(c, &names, shape);
                    cafjs_failed = !rec
                        .measure("ca", &parameter, system, &cafjs_pids, run)
                        .await;
                }
                (System::CaHost, Some(Err(e)), _) | (System::Cafjs, _, Some(Err(e))) => {
                    let failed =
                        async { Err::<Outcome, _>(anyhow::anyhow!("could not start: {e:#}")) };
                    rec.measure("ca", &parameter, system, &[], failed).await;
                }
                _ => {}
            }
        }
        if cafjs_failed {
            // A platform that failed (it may still be busy, or dead) would spoil the next
            // measurement of it, and the CA host's beside it: a fresh node process and Redis.
            eprintln!("restarting Caf.js (node) and Redis after its failure ...");
            if let Some(Ok(c)) = cafjs.as_mut() {
                c.procs.stop().await;
            }
            cafjs = Some(CafjsTarget::start(&cafjs_dir, &dir.join(format!("cafjs-{k}"))).await);
            cafjs_pids = pids_of(&cafjs);
        }
    }
    for target in [
        host.and_then(Result::ok).map(|h| h.procs),
        cafjs.and_then(Result::ok).map(|c| c.procs),
    ]
    .into_iter()
    .flatten()
    {
        let mut procs = target;
        procs.stop().await;
    }
}

/// The `notify` workload: a CA host's notifications pushed to N listening clients, against
/// Spine map updates pushed to N node agents, on the same Spine, alternating which goes first.
async fn run_notify(
    args: &SuiteArgs,
    params: &Params,
    chosen: &[System],
    spine: &SpineTarget,
    dir: &std::path::Path,
    rec: &mut Recorder,
    setup: &mut BTreeMap<&'static str, String>,
) -> anyhow::Result<()> {
    setup.insert(
        "notify",
        format!(
            "CA host: one notifier calls `notify` of one counter CA ({} notifications, one at a \
             time after 3 warm-up ones); N clients listen to the session (gRPC Listen streams \
             over min(N, {CONNECTIONS}) connections, no acks); figure: pushed (stamped by the \
             host right after the checkpoint committed) → received at each listener, and call \
             sent → received. Peer: `propagation`'s Spine map update, writer ack → visible at N \
             node agents, same Spine",
            params.notify_updates
        ),
    );
    let host = if chosen.contains(&System::CaHost) {
        eprintln!("starting a CA host on the Spine for notify ...");
        Some(CaHostTarget::start(spine, &dir.join("ca-host-notify")).await)
    } else {
        None
    };
    let app = rec.app("notify")?;
    let spine_pids = spine.procs.pids();
    for (k, &n) in params.notify_listeners.iter().enumerate() {
        let parameter = plural(n, "listener");
        for system in systems(chosen, "notify", k) {
            match (system, &host) {
                (System::Spine, _) => {
                    let run = workload::propagation::spine(
                        spine,
                        &app,
                        n,
                        args.subscribers_from,
                        params.notify_updates,
                    );
                    rec.measure("notify", &parameter, system, &spine_pids, run)
                        .await;
                }
                (System::CaHost, Some(Ok(h))) => {
                    let pids: Vec<u32> = h
                        .procs
                        .pids()
                        .into_iter()
                        .chain(spine_pids.clone())
                        .collect();
                    let prefix = format!("b{}n{n}x", rec.run);
                    let run = workload::notify::ca_host(h, &prefix, n, params.notify_updates);
                    rec.measure("notify", &parameter, system, &pids, run).await;
                }
                (System::CaHost, Some(Err(e))) => {
                    let failed =
                        async { Err::<Outcome, _>(anyhow::anyhow!("could not start: {e:#}")) };
                    rec.measure("notify", &parameter, system, &[], failed).await;
                }
                _ => {}
            }
        }
    }
    if let Some(Ok(h)) = host {
        let mut procs = h.procs;
        procs.stop().await;
    }
    Ok(())
}

/// A random id of 6 lowercase letters and digits, so that each run uses fresh names (also on
/// clusters it did not start).
fn run_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..6)
        .map(|_| char::from(CHARS[rand::random_range(0..CHARS.len())]))
        .collect()
}

/// Writes report.md, results.json and latency.svg into `dir`; returns their paths.
pub fn write_outputs(report: &SuiteReport, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    let md = dir.join("report.md");
    std::fs::write(&md, report.markdown())?;
    written.push(md);
    let json = dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    written.push(json);
    if let Some(svg) = crate::chart::svg(report) {
        let path = dir.join("latency.svg");
        std::fs::write(&path, svg)?;
        written.push(path);
    }
    Ok(written)
}

/// "1 writer", "16 writers".
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
