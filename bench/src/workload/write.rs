//! Write throughput and latency: N writers, each a compare-and-swap loop on its own map (Spine)
//! or key (etcd), for a fixed time.

use std::time::Duration;

use sharing_map::{AppName, MapName};

use super::Outcome;
use crate::cluster::{EtcdTarget, SpineTarget};
use crate::load::{self, CasWriter, RunFigures, Until};

fn outcome(figures: &RunFigures) -> Outcome {
    let mut out = Outcome::default();
    out.figure("writes_per_s", figures.per_second())
        .figure("writes", figures.writes as f64)
        .figure("seconds", figures.seconds)
        .latency(figures.latencies.summary());
    out
}

async fn measure<W: CasWriter>(
    writers: Vec<W>,
    seconds: Duration,
    label: &str,
) -> anyhow::Result<Outcome> {
    let (_, figures) = load::run(writers, Until::Elapsed(seconds), label).await?;
    Ok(outcome(&figures))
}

/// `n` writers on `n` fresh maps of `app` for `seconds`.
pub async fn spine(
    target: &SpineTarget,
    app: &AppName,
    n: usize,
    seconds: Duration,
) -> anyhow::Result<Outcome> {
    let maps: Vec<MapName> = (0..n)
        .map(|i| MapName::parse(&format!("load-w{i}-n{n}")))
        .collect::<Result<_, _>>()?;
    let writers = load::spine_writers(target, app, maps).await?;
    measure(writers, seconds, &format!("Spine, {n} writers")).await
}

/// `n` writers on `n` fresh keys under `prefix` for `seconds`.
pub async fn etcd(
    target: &EtcdTarget,
    prefix: &str,
    n: usize,
    seconds: Duration,
) -> anyhow::Result<Outcome> {
    let keys = (0..n)
        .map(|i| format!("{prefix}/write/n{n}/w{i}").into_bytes())
        .collect();
    let writers = load::etcd_writers(target, keys).await?;
    measure(writers, seconds, &format!("etcd, {n} writers")).await
}
