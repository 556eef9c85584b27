//! External calls and CloudEvents end to end (issue 16, scenarios 2, 3 and 4): real `spine
//! serve` and `ca-host serve` processes, and the book-summary fleet's real HTTP services.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};
use sharing_map::{AppName, MapName};
use spine_tests::ca::CaHost;
use spine_tests::fleet::Fleet;
use spine_tests::{Cluster, ClusterOpts, eventually, free_port};

const APP: &str = "demo-books";

fn host_dir(cluster: &Cluster, name: &str) -> std::path::PathBuf {
    cluster.credentials().dir.join("..").join(name)
}

fn args(fleet: &Fleet, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "--sink".to_string(),
        format!("{APP}={}", fleet.sink()),
        "--allow".to_string(),
        format!("{APP}=http://{}/", fleet.addr),
        "--wake-scan-ms".to_string(),
        "500".to_string(),
    ];
    a.extend(extra.iter().cloned());
    a
}

/// A CA's committed checkpoint map, read from the Spine (`None`: it does not exist).
async fn castate(cluster: &Cluster, ca: &str) -> Option<sharing_map::SharingMap> {
    let client = cluster.client().ok()?;
    client
        .get_map(
            &AppName::parse(APP).ok()?,
            &MapName::parse(&format!("{ca}-castate")).ok()?,
            false,
        )
        .await
        .ok()
}

async fn state_key(cluster: &Cluster, ca: &str, key: &str) -> Option<Value> {
    castate(cluster, ca)
        .await?
        .get_value(&format!("s.{key}"))
        .cloned()
}

fn pending_intents(map: &sharing_map::SharingMap) -> Vec<String> {
    map.iter()
        .filter_map(|(k, _)| k.strip_prefix("i.").map(str::to_string))
        .collect()
}

/// The keys of the responses the CA recorded, each with how often.
fn response_keys(responses: &Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in responses.as_array().into_iter().flatten() {
        *out.entry(r["key"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_external_call_takes_effect_once_across_kills_before_and_during_it() -> anyhow::Result<()>
{
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let fleet = Fleet::start("127.0.0.1:0", None).await?;
    // A second service, not listening yet: calls to it fail until it starts.
    let later_port = free_port()?;
    let later_url = format!("http://127.0.0.1:{later_port}/echo");
    let extra = vec![
        "--allow".to_string(),
        format!("{APP}=http://127.0.0.1:{later_port}/"),
    ];
    let mut host =
        CaHost::start(&cluster, host_dir(&cluster, "host"), args(&fleet, &extra)).await?;
    let token = cluster.token();
    let ca = "alice-calls";
    let client = host.client(&token).await?;

    // A destination the app may not call is refused in the turn, which leaves no trace.
    let refused = client
        .call(
            APP,
            ca,
            "fetch_url",
            vec![json!("http://127.0.0.1:1/x"), json!("no")],
        )
        .await;
    let e = refused.expect_err("refused");
    assert!(e.to_string().contains("may not call"), "{e}");

    // 1. Killed between the commit and the call: the service is down, so the committed
    // requests stay pending; the host dies; the service comes up; the restarted host redoes
    // them by itself (its wake index knows the CA has intents), nobody calling the CA.
    for tag in ["a", "b", "c"] {
        client
            .call(APP, ca, "fetch_url", vec![json!(later_url), json!(tag)])
            .await?;
    }
    let map = castate(&cluster, ca).await.expect("checkpoint");
    let mut keys = pending_intents(&map);
    keys.sort();
    assert_eq!(keys.len(), 3, "committed, not carried out: {keys:?}");
    host.kill().await?;
    let later = Fleet::start(&format!("127.0.0.1:{later_port}"), None).await?;
    host.restart().await?;
    // Invariant on every checkpoint seen: a response is recorded in the same checkpoint that
    // removes its intent (never a response with its intent still pending).
    let responses = eventually(
        "the redone calls' responses",
        Duration::from_secs(30),
        || async {
            let map = castate(&cluster, ca).await?;
            let r = map.get_value("s.responses").cloned().unwrap_or(json!([]));
            let pending = pending_intents(&map);
            if let Some(k) = response_keys(&r).keys().find(|k| pending.contains(k)) {
                return Some(Err(format!(
                    "response {k} recorded while its intent is pending"
                )));
            }
            (response_keys(&r).len() == 3).then_some(Ok(r))
        },
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    let got = response_keys(&responses);
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), keys, "{responses}");
    assert!(
        got.values().all(|n| *n == 1),
        "a response recorded twice: {responses}"
    );
    later.with_log(|log| {
        for k in &keys {
            assert!(
                log.echo_requests.get(k).copied().unwrap_or(0) >= 1,
                "{k} never arrived"
            );
            assert!(log.echo_applied.contains(k));
        }
    });

    // 2. Killed with the call in flight: the service holds the request; the host dies; the
    // restarted host sends it again with the same key; the service applies it once.
    fleet.hold(true);
    let client = host.client(&token).await?;
    client
        .call(APP, ca, "fetch_url", vec![json!(fleet.echo()), json!("d")])
        .await?;
    let key = eventually("the call to arrive", Duration::from_secs(10), || async {
        fleet.with_log(|log| log.echo_requests.keys().next().cloned())
    })
    .await?;
    host.kill().await?;
    fleet.hold(false);
    host.restart().await?;
    let responses = eventually(
        "the in-flight call's response",
        Duration::from_secs(30),
        || async {
            let r = state_key(&cluster, ca, "responses").await?;
            response_keys(&r).contains_key(&key).then_some(r)
        },
    )
    .await?;
    let got = response_keys(&responses);
    assert_eq!(got.len(), 4);
    assert!(
        got.values().all(|n| *n == 1),
        "a response recorded twice: {responses}"
    );
    let (requests, applied) =
        fleet.with_log(|log| (log.echo_requests.get(&key).copied(), log.echo_applied.len()));
    assert!(
        requests.unwrap_or(0) >= 2,
        "not sent again after the kill: {requests:?}"
    );
    assert_eq!(applied, 1, "applied once by its key");
    let map = castate(&cluster, ca).await.expect("checkpoint");
    eventually(
        "no intent left pending",
        Duration::from_secs(10),
        || async {
            let map = castate(&cluster, ca).await?;
            pending_intents(&map).is_empty().then_some(())
        },
    )
    .await?;
    drop(map);
    // The response the CA recorded carries the service's answer.
    let last = responses
        .as_array()
        .and_then(|a| a.iter().find(|r| r["key"] == json!(key)))
        .cloned();
    let last = last.unwrap_or(Value::Null);
    assert_eq!(last["status"], json!(200), "{last}");
    assert_eq!(
        last["body"]["key"],
        json!(key),
        "the Idempotency-Key header: {last}"
    );
    assert_eq!(last["tag"], json!("d"));
    Ok(())
}

/// Every command the fleet received, by (orchestration, type, attempt): the distinct ids.
fn ids_per_attempt(fleet: &Fleet) -> BTreeMap<(String, String, u64), BTreeSet<String>> {
    fleet.with_log(|log| {
        let mut out: BTreeMap<(String, String, u64), BTreeSet<String>> = BTreeMap::new();
        for r in &log.events {
            let attempt = r.data["attempt"].as_u64().unwrap_or(0);
            out.entry((r.subject.clone(), r.ty.clone(), attempt))
                .or_default()
                .insert(r.id.clone());
        }
        out
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orchestration_completes_exactly_once_per_attempt_across_random_kills()
-> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let fleet = Fleet::start("127.0.0.1:0", None).await?;
    let mut host = CaHost::start(&cluster, host_dir(&cluster, "host"), args(&fleet, &[])).await?;
    fleet.set_ingress(&format!("http://{}", host.http_endpoint()));
    let mut kills = 0;
    let mut all = Vec::new();
    for run in 0..3 {
        let cas: Vec<String> = (0..3).map(|i| format!("run{run}-book{i}")).collect();
        for ca in &cas {
            fleet.start_orchestration(ca, &format!("Book {ca}")).await?;
        }
        // Kill the host at a random point of the orchestrations, twice, and let it recover.
        for _ in 0..2 {
            let ms = rand::rng().random_range(0..1_500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            host.kill().await?;
            kills += 1;
            host.restart().await?;
        }
        for ca in &cas {
            let what = format!("orchestration {ca} to finish");
            eventually(&what, Duration::from_secs(60), || async {
                let step = state_key(&cluster, ca, "step").await?;
                (step == json!("done")).then_some(())
            })
            .await?;
        }
        all.extend(cas);
    }
    assert_eq!(kills, 6);
    // Each notification is emitted (and applied) once per orchestration.
    eventually("every notification", Duration::from_secs(30), || async {
        let n = fleet.with_log(|log| {
            log.events
                .iter()
                .filter(|r| r.ty == "notif.book.done" && r.applied)
                .count()
        });
        (n == all.len()).then_some(())
    })
    .await?;
    let per_attempt = ids_per_attempt(&fleet);
    for ((subject, ty, attempt), ids) in &per_attempt {
        assert_eq!(
            ids.len(),
            1,
            "{subject} {ty} attempt {attempt} had ids {ids:?}"
        );
    }
    for ca in &all {
        let emitted = state_key(&cluster, ca, "emitted").await.unwrap_or_default();
        let steps: Vec<(String, u64)> = emitted
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_string(),
                    e["attempt"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let want: Vec<(String, u64)> = [
            ("cmd.book.fetch", 1),
            ("cmd.book.summary", 1),
            ("cmd.book.summary", 2),
            ("cmd.book.summary", 3),
            ("cmd.book.check.grammar", 1),
            ("cmd.book.check.length", 1),
        ]
        .iter()
        .map(|(t, a)| (t.to_string(), *a))
        .collect();
        assert_eq!(
            steps, want,
            "{ca}: each command once per attempt; the duplicate fetch answer did not restart the summary; the failing summarizer was retried"
        );
        let results = state_key(&cluster, ca, "results").await.unwrap_or_default();
        assert_eq!(results["summary"], json!(format!("Book {ca}, in short.")));
        for key in ["grammar", "length"] {
            assert!(results.get(key).is_some(), "{ca}: {results}");
        }
        // Every command the fleet received for this orchestration was the CA's.
        let sent: BTreeSet<(String, u64)> = per_attempt
            .keys()
            .filter(|(s, t, _)| s == ca && t.starts_with("cmd."))
            .map(|(_, t, a)| (t.clone(), *a))
            .collect();
        assert_eq!(sent, want.into_iter().collect());
    }
    // The grammar checker failed each first delivery: the emit was retried and applied once.
    fleet.with_log(|log| {
        let failed = log
            .events
            .iter()
            .filter(|r| r.ty == "cmd.book.check.grammar" && !r.applied)
            .count();
        assert!(failed >= all.len(), "{failed}");
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_get_a_clear_4xx_and_deliver_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let fleet = Fleet::start("127.0.0.1:0", None).await?;
    let host = CaHost::start(&cluster, host_dir(&cluster, "host"), args(&fleet, &[])).await?;
    let url = format!("http://{}/events/{APP}", host.http_endpoint());
    let http = reqwest::Client::new();
    let ca = "dora-book";
    let good = json!({"specversion": "1.0", "id": "e1", "source": "/test", "type": "cmd.book.summarize",
                      "subject": ca, "data": {"book": "Emma"}});
    let mut missing = good.clone();
    missing.as_object_mut().map(|o| o.remove("type"));
    let mut bad_subject = good.clone();
    bad_subject["subject"] = json!("Not a CA");
    let structured = "application/cloudevents+json";
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "malformed JSON",
            structured,
            "{\"specversion\": \"1.0\",".into(),
            400,
            "malformed JSON",
        ),
        (
            "a missing required attribute",
            structured,
            missing.to_string(),
            400,
            "type",
        ),
        (
            "a subject that names no CA",
            structured,
            bad_subject.to_string(),
            400,
            "not a CA name",
        ),
        (
            "an unknown content type",
            "text/csv",
            "a,b".into(),
            415,
            "not a CloudEvent",
        ),
        (
            "an oversize body",
            structured,
            format!("{{\"pad\": \"{}\"}}", "x".repeat(2 << 20)),
            413,
            "over",
        ),
        (
            "a batch with one bad event",
            "application/cloudevents-batch+json",
            json!([good, missing]).to_string(),
            400,
            "event 1 of the batch",
        ),
    ];
    for (what, content_type, body, status, reason) in cases {
        let response = http
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), status, "{what}");
        let text = response.text().await?;
        assert!(text.contains(reason), "{what}: {text}");
    }
    let unknown_app = http
        .post(format!("http://{}/events/nobody-app", host.http_endpoint()))
        .header("content-type", structured)
        .body(good.to_string())
        .send()
        .await?;
    assert_eq!(unknown_app.status().as_u16(), 404);
    // Nothing was delivered: the CA was never even created.
    assert!(
        castate(&cluster, ca).await.is_none(),
        "a bad request reached the CA"
    );
    // The good event is taken once; a repeat is a duplicate; binary mode works too.
    for expect in ["accepted", "duplicate"] {
        let r = http
            .post(&url)
            .header("content-type", structured)
            .body(good.to_string())
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await?;
        assert_eq!(body["results"][0]["status"], json!(expect), "{body}");
    }
    let r = http
        .post(&url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "e2")
        .header("ce-source", "/test")
        .header("ce-type", "evt.book.unknown")
        .header("ce-subject", ca)
        .body("{\"x\": 1}")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(state_key(&cluster, ca, "events").await, Some(json!(2)));
    assert_eq!(state_key(&cluster, ca, "ignored").await, Some(json!(1)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_sent_to_another_host_reaches_the_ca_through_its_holder() -> anyhow::Result<()> {
    let cluster = Cluster::start(3, ClusterOpts::default()).await?;
    let fleet = Fleet::start("127.0.0.1:0", None).await?;
    let a = CaHost::start(&cluster, host_dir(&cluster, "a"), args(&fleet, &[])).await?;
    let b = CaHost::start(&cluster, host_dir(&cluster, "b"), args(&fleet, &[])).await?;
    let ca = "erin-book";
    // Host a serves the CA (a call through it takes the partition).
    a.client(&cluster.token())
        .await?
        .call(APP, ca, "status", vec![])
        .await?;
    let event = json!({"specversion": "1.0", "id": "x1", "source": "/test", "type": "evt.book.nothing",
                       "subject": ca});
    let r = reqwest::Client::new()
        .post(format!("http://{}/events/{APP}", b.http_endpoint()))
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    assert_eq!(state_key(&cluster, ca, "events").await, Some(json!(1)));
    Ok(())
}
