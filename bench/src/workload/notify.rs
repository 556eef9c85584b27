//! Notify: a CA's notification, committed, pushed to N clients listening to its session (the
//! session plugin, DESIGN.md §9.6). One notifier calls `notify` of one counter CA, one call at a
//! time; N listeners (`Listen` streams over up to 12 gRPC connections) wait for it. Peer in the
//! same run: the `propagation` of a Spine map update to N node agents (writer ack → visible),
//! the layer the CA's checkpoint goes through.
//!
//! ```text
//!  notifier: sent ──▶ notify turn ──▶ checkpoint committed ──▶ reply ──▶ replied
//!                                                    └──▶ pushed ──▶ listener i: received
//!  samples (per notification and listener): received − pushed (the host stamps each push,
//!  made right after the checkpoint committed; one machine, one clock) and received − sent
//! ```
//!
//! Listeners do not acknowledge (acks would be N more turns per notification); the session's
//! queue keeps its newest 100.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use ca_client::{CaClient, MethodCall, Target};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use super::Outcome;
use crate::cluster::CaHostTarget;
use crate::load::CONNECTIONS;
use crate::stats::Latencies;

const APP: &str = "demo-counter";
/// Notifications sent before measuring.
const WARM_UP: u64 = 3;
/// Longest wait for one notification to reach every listener.
const NOTIFICATION_DEADLINE: Duration = Duration::from_secs(60);

/// `notifications` notifications of CA `<prefix>-notify`, each to `listeners` listeners.
pub async fn ca_host(
    target: &CaHostTarget,
    prefix: &str,
    listeners: usize,
    notifications: u64,
) -> anyhow::Result<Outcome> {
    let ca = format!("{prefix}-notify");
    let session = Target::new(APP, ca.as_str()).session("bench");
    let notifier = target.client().await?;
    // The CA exists before anyone listens.
    notifier.call(APP, &ca, "get", vec![]).await?;
    let mut connections: Vec<CaClient> = Vec::new();
    for _ in 0..CONNECTIONS.min(listeners).max(1) {
        connections.push(target.client().await?);
    }
    let (tx, mut arrivals) = mpsc::unbounded_channel::<(u64, Instant, Duration)>();
    let mut tasks = Vec::new();
    for i in 0..listeners {
        let client = connections[i % connections.len()].clone();
        let mut stream = client
            .listen(&session, 0)
            .await
            .with_context(|| format!("listener {i}"))?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let Ok(n) = item else { return };
                let index = n.args[0].as_u64().unwrap_or(u64::MAX);
                let lag = SystemTime::now()
                    .duration_since(n.pushed_at)
                    .unwrap_or_default();
                if tx.send((index, Instant::now(), lag)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut received = Latencies::new();
    let mut sent_received = Latencies::new();
    let mut replies = Latencies::new();
    for index in 0..WARM_UP + notifications {
        let sent = Instant::now();
        notifier
            .call_as(
                &Target::new(APP, ca.as_str()),
                vec![MethodCall::new(
                    "notify",
                    vec![json!(index), json!("bench")],
                )],
            )
            .await?;
        let replied = Instant::now();
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + NOTIFICATION_DEADLINE;
        while got < listeners {
            let (i, at, lag) = tokio::time::timeout_at(deadline, arrivals.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("notification {index} reached {got} of {listeners} listeners")
                })?
                .context("every listener stopped")?;
            // Older ones (the queue, sent again to a listener that joined) are not samples.
            if i != index {
                continue;
            }
            got += 1;
            if index >= WARM_UP {
                received.record(lag);
                sent_received.record(at - sent);
            }
        }
        if index >= WARM_UP {
            replies.record(replied - sent);
        }
    }
    for t in tasks {
        t.abort();
    }
    let mut out = Outcome::default();
    let sent = sent_received.summary();
    let reply = replies.summary();
    out.latency(received.summary())
        .figure("sent_p50_ms", sent.p50_ms)
        .figure("sent_p99_ms", sent.p99_ms)
        .detail("reply_p50_ms", reply.p50_ms)
        .detail("reply_p99_ms", reply.p99_ms)
        .detail("listeners", listeners as u64)
        .detail("notifications", notifications);
    Ok(out)
}
