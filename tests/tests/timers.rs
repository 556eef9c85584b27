//! Timers end to end (issue 16, scenario 1): real `spine serve` and `ca-host serve` processes.
//! Delayed calls and pulses fire at their times, a cancelled one never; after kill -9 of the
//! host for longer than several periods, each missed timer fires once on recovery, in due order,
//! without any client calling the CA (the host's wake index activates it); and a dead host's
//! timers fire on another host.

use std::time::Duration;

use serde_json::{Value, json};
use sharing_map::{AppName, MapName};
use spine_tests::ca::CaHost;
use spine_tests::{Cluster, ClusterOpts, eventually};

const APP: &str = "demo-timers";
const PULSE_MS: u64 = 300;

fn host_dir(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster.credentials().dir.join("..").join(name)
}

fn args(extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--pulse".to_string(),
        format!("{APP}={PULSE_MS}"),
        "--wake-scan-ms".to_string(),
        "500".to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// The CA's committed state key `key`, read from the Spine (not through the host: a call would
/// activate the CA, and these tests prove the host does that by itself).
async fn committed(cluster: &Cluster, ca: &str, key: &str) -> Option<Value> {
    let client = cluster.client().ok()?;
    let map = client
        .get_map(
            &AppName::parse(APP).ok()?,
            &MapName::parse(&format!("{ca}-castate")).ok()?,
            false,
        )
        .await
        .ok()?;
    map.get_value(&format!("s.{key}")).cloned()
}

fn texts(rings: &Value) -> Vec<String> {
    rings
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["text"].as_str().map(str::to_string))
        .collect()
}

fn count(rings: &Value, text: &str) -> usize {
    texts(rings).iter().filter(|t| *t == text).count()
}

/// Every pulse covers the slots right after the previous one's: none covered twice (no
/// flood), none lost. Returns the largest number of slots one pulse covered.
fn check_pulse_chain(pulses: &Value) -> anyhow::Result<u64> {
    let pulses = pulses.as_array().cloned().unwrap_or_default();
    let mut widest = 0;
    for pair in pulses.windows(2) {
        let (due, slots) = (pair[0]["due"].as_u64(), pair[0]["slots"].as_u64());
        let (Some(due), Some(slots), Some(next)) = (due, slots, pair[1]["due"].as_u64()) else {
            anyhow::bail!("a pulse without due/slots: {pair:?}");
        };
        anyhow::ensure!(
            next == due + slots * PULSE_MS,
            "pulses not contiguous: {pair:?}"
        );
        widest = widest.max(slots);
    }
    Ok(widest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_calls_and_pulses_fire_at_their_times_and_a_cancelled_one_never()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), args(&[])).await?;
    let client = host.client(&cluster.token()).await?;
    let ca = "alice-clock";
    let later = client
        .call(APP, ca, "remind", vec![json!("later"), json!(900)])
        .await?;
    client
        .call(APP, ca, "remind", vec![json!("sooner"), json!(400)])
        .await?;
    let never = client
        .call(APP, ca, "remind", vec![json!("never"), json!(700)])
        .await?;
    assert_eq!(later.result, json!(1));
    let cancelled = client
        .call(APP, ca, "cancel", vec![never.result.clone()])
        .await?;
    assert_eq!(cancelled.result, json!(true));
    client
        .call(APP, ca, "every", vec![json!("tick"), json!(200), json!(3)])
        .await?;
    // A client may not ring: only the timers do.
    let refused = client.call(APP, ca, "ring", vec![json!("forged")]).await;
    assert!(refused.is_err(), "{refused:?}");

    let rings = eventually("the reminders to ring", Duration::from_secs(15), || async {
        let rings = committed(&cluster, ca, "rings").await?;
        (count(&rings, "later") == 1 && count(&rings, "tick") == 3).then_some(rings)
    })
    .await?;
    let order: Vec<String> = texts(&rings).into_iter().filter(|t| t != "tick").collect();
    assert_eq!(order, ["sooner", "later"], "in due order: {rings}");
    for r in rings.as_array().into_iter().flatten() {
        if let Some(late) = r["late_ms"].as_u64() {
            assert!(late < 2_000, "rang {late} ms late: {r}");
        }
    }
    // The cancelled one was due at +700 ms; "later" at +900 rang after it: still never.
    let rings = committed(&cluster, ca, "rings").await.unwrap_or_default();
    assert_eq!(count(&rings, "never"), 0, "a cancelled timer rang: {rings}");
    assert_eq!(count(&rings, "sooner"), 1);
    let pulses = eventually("a few pulses", Duration::from_secs(10), || async {
        let p = committed(&cluster, ca, "pulses").await?;
        (p.as_array()?.len() >= 4).then_some(p)
    })
    .await?;
    check_pulse_chain(&pulses)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_9_longer_than_several_periods_each_missed_timer_fires_once()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host"), args(&[])).await?;
    let token = cluster.token();
    let ca = "bob-clock";
    for round in 0..2 {
        let client = host.client(&token).await?;
        let tag = |t: &str| format!("{t}{round}");
        for (text, after) in [("c", 1_600), ("a", 800), ("b", 1_200)] {
            client
                .call(APP, ca, "remind", vec![json!(tag(text)), json!(after)])
                .await?;
        }
        client
            .call(
                APP,
                ca,
                "every",
                vec![json!(tag("t")), json!(250), json!(16)],
            )
            .await?;
        // Down for 2.5 s: every reminder, about ten slots of the repeating call and eight
        // pulses pass while nobody runs the CA (a fault window, not a synchronization).
        host.kill().await?;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        host.restart().await?;
        // Nobody calls the CA: the host's wake index activates it.
        let want: Vec<String> = ["a", "b", "c"].iter().map(|t| tag(t)).collect();
        let rings = eventually(
            "the missed reminders to ring",
            Duration::from_secs(20),
            || {
                let want = want.clone();
                let cluster = &cluster;
                async move {
                    let rings = committed(cluster, ca, "rings").await?;
                    let rang: Vec<String> = texts(&rings)
                        .into_iter()
                        .filter(|t| want.contains(t))
                        .collect();
                    (rang.len() >= 3).then_some(rings)
                }
            },
        )
        .await?;
        // Each reminder once, in the order of the times they were due (set one call after
        // another, so a slow call can put b's time after c's: the recorded due times decide).
        let reminders: Vec<(String, u64)> = rings
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| Some((r["text"].as_str()?.to_string(), r["due_ms"].as_u64()?)))
            .filter(|(t, _)| want.contains(t))
            .collect();
        let mut once: Vec<String> = reminders.iter().map(|(t, _)| t.clone()).collect();
        once.sort();
        assert_eq!(once, want, "each once: {rings}");
        assert!(
            reminders.windows(2).all(|w| w[0].1 <= w[1].1),
            "in due order: {rings}"
        );
        // The repeating call's 16 slots end 4.25 s after it was set; wait for its last one.
        let rings = eventually("the repeating call to end", Duration::from_secs(20), || {
            let cluster = &cluster;
            let t = tag("t");
            async move {
                let pending = committed(cluster, ca, "rings").await?;
                let n = count(&pending, &t);
                // Done once no slot is left: read the timer table.
                let client = cluster.client().ok()?;
                let map = client
                    .get_map(
                        &AppName::parse(APP).ok()?,
                        &MapName::parse(&format!("{ca}-castate")).ok()?,
                        false,
                    )
                    .await
                    .ok()?;
                let timers = map.get_value("p.timers").cloned().unwrap_or(Value::Null);
                let left = timers["calls"].as_object().map_or(0, |c| c.len());
                (left == 0 && n > 0).then_some(pending)
            }
        })
        .await?;
        let ticks = count(&rings, &tag("t"));
        assert!(
            (2..16).contains(&ticks),
            "the missed slots rang once, not each: {ticks} rings of 16 slots"
        );
        let pulses = committed(&cluster, ca, "pulses").await.unwrap_or_default();
        let widest = check_pulse_chain(&pulses)?;
        assert!(widest >= 4, "no pulse covered the time down: {pulses}");
        assert_eq!(
            texts(&rings).iter().filter(|t| t.starts_with('a')).count(),
            round + 1,
            "{rings}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_timers_fire_on_another_host() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let lease = ["--lease-ms", "2000"];
    let mut a = CaHost::start(&cluster, host_dir(&cluster, "a"), args(&lease)).await?;
    let _b = CaHost::start(&cluster, host_dir(&cluster, "b"), args(&lease)).await?;
    let client = a.client(&cluster.token()).await?;
    let ca = "carl-clock";
    client
        .call(APP, ca, "remind", vec![json!("moved"), json!(1_500)])
        .await?;
    a.kill().await?;
    // Host b was never called for this CA: it finds it in the wake index once a's lease ran out.
    let rings = eventually(
        "the reminder to ring on host b",
        Duration::from_secs(20),
        || async {
            let rings = committed(&cluster, ca, "rings").await?;
            (count(&rings, "moved") > 0).then_some(rings)
        },
    )
    .await?;
    assert_eq!(count(&rings, "moved"), 1, "{rings}");
    let late = rings[0]["late_ms"].as_u64().unwrap_or(u64::MAX);
    assert!(late < 10_000, "rang {late} ms late (lease 2 s, scan 0.5 s)");
    Ok(())
}
