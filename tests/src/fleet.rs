//! The book-summary fleet: small real HTTP services (axum, on one loopback port) that the
//! `demo-books` orchestration commands, some failing and answering twice on purpose.
//!
//! - `POST /events`: the commands (`cmd.book.*`, structured CloudEvents) and notifications
//!   (`notif.*`) a CA host's events plugin emits. Every delivery is recorded; each event id is
//!   applied once (a redo of one attempt is dropped, as a real service would with the id as
//!   its idempotency key). A command is answered by posting an `evt.book.<step>.success` (or
//!   `.failure`) event to the host's ingress, asynchronously, retried until the host takes it.
//!   On purpose: `fetch` answers every command **twice** (the same event twice); `summary`
//!   answers attempts 1 and 2 with a failure (the orchestration tries a third time); `grammar`
//!   answers the first delivery of every command with HTTP 500 (the host retries the emit).
//! - `POST /echo`: a service for the `http` plugin: counts requests by `Idempotency-Key` and
//!   applies each key once; while held ([`Fleet::hold`]) requests wait, so a host can be killed
//!   with a call in flight.
//! - `GET /log`: what it saw, as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// One event the fleet received.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    /// The event id (the CA's intent key).
    pub id: String,
    /// Its type.
    pub ty: String,
    /// Its subject (the orchestration's CA).
    pub subject: String,
    /// Its data.
    pub data: Value,
    /// Whether this delivery was applied (the first of its id that was not failed on purpose).
    pub applied: bool,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// What the fleet saw.
#[derive(Debug, Default)]
pub struct FleetLog {
    /// Every delivery to `/events`, in order.
    pub events: Vec<Received>,
    /// Requests to `/echo` by idempotency key (counted on arrival, also those cut off while
    /// held).
    pub echo_requests: BTreeMap<String, u64>,
    /// Keys applied by `/echo` (each once).
    pub echo_applied: BTreeSet<String>,
    /// Answers posted to the ingress (events, counting repeats).
    pub answers_posted: u64,
    /// When each event posted to the ingress (starts and answers) was first sent, by subject.
    pub posted: Vec<(String, std::time::Instant)>,
}

#[derive(Debug)]
struct Shared {
    faults: bool,
    log: Mutex<FleetLog>,
    ingress: Mutex<Option<String>>,
    held: tokio::sync::watch::Sender<bool>,
    client: reqwest::Client,
}

/// A running fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Fleet {
    /// Starts the fleet on `listen` (port 0: any), answering to the ingress at `ingress`
    /// (`http://HOST:PORT`, may be set later).
    pub async fn start(listen: &str, ingress: Option<String>) -> anyhow::Result<Self> {
        Self::start_with(listen, ingress, true).await
    }

    /// Like [`start`](Self::start); without `faults` every service answers once, at once (for
    /// benchmarks).
    pub async fn start_with(
        listen: &str,
        ingress: Option<String>,
        faults: bool,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (held, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            faults,
            log: Mutex::default(),
            ingress: Mutex::new(ingress),
            held,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        });
        let app = axum::Router::new()
            .route("/events", axum::routing::post(on_event))
            .route("/echo", axum::routing::post(on_echo))
            .route("/log", axum::routing::get(on_log))
            .with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// The URL of its event sink.
    pub fn sink(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// The URL of its echo service.
    pub fn echo(&self) -> String {
        format!("http://{}/echo", self.addr)
    }

    /// Sets where answers go (`http://HOST:PORT` of a CA host's HTTP port).
    pub fn set_ingress(&self, ingress: &str) {
        *lock(&self.shared.ingress) = Some(ingress.to_string());
    }

    /// Holds (`true`) or releases `/echo` requests.
    pub fn hold(&self, held: bool) {
        self.shared.held.send_replace(held);
    }

    /// Reads the log.
    pub fn with_log<T>(&self, f: impl FnOnce(&FleetLog) -> T) -> T {
        f(&lock(&self.shared.log))
    }

    /// Posts `cmd.book.summarize` for `book` to orchestration CA `ca` through the ingress.
    pub async fn start_orchestration(&self, ca: &str, book: &str) -> anyhow::Result<()> {
        let event = json!({
            "specversion": "1.0", "id": format!("start-{ca}"), "source": "/fleet/client",
            "type": "cmd.book.summarize", "subject": ca, "data": {"book": book},
        });
        post_until_taken(&self.shared, &event, Duration::from_secs(60)).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Posts an event to the ingress until it is taken (2xx) or `deadline` passes; 4xx is final.
async fn post_until_taken(
    shared: &Shared,
    event: &Value,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    let subject = event["subject"].as_str().unwrap_or("").to_string();
    lock(&shared.log)
        .posted
        .push((subject, std::time::Instant::now()));
    let mut pause = Duration::from_millis(50);
    loop {
        let ingress = lock(&shared.ingress).clone();
        let outcome = match ingress {
            None => Err("no ingress yet".to_string()),
            Some(ingress) => shared
                .client
                .post(format!("{ingress}/events/demo-books"))
                .header("content-type", "application/cloudevents+json")
                .body(event.to_string())
                .send()
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let s = r.status();
                    if s.is_success() {
                        Ok(())
                    } else if s.is_client_error() && s != StatusCode::REQUEST_TIMEOUT {
                        Err(format!("refused: {s}"))
                    } else {
                        Err(format!("retry: {s}"))
                    }
                }),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if e.starts_with("refused") => anyhow::bail!("{e}: {event}"),
            Err(e) if tokio::time::Instant::now() > until => anyhow::bail!("{e}: {event}"),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The answer to a command: `(type, data)`, and how many times it is posted.
fn answer(ty: &str, data: &Value, faults: bool) -> Option<(String, Value, u32)> {
    let attempt = data.get("attempt").cloned().unwrap_or(Value::Null);
    let step = ty.strip_prefix("cmd.book.")?;
    let input = data.get("input").cloned().unwrap_or(Value::Null);
    let book = data
        .get("book")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let ok = |output: Value| {
        Some((
            format!("evt.book.{step}.success"),
            json!({"attempt": attempt, "output": output}),
            1,
        ))
    };
    match step {
        "fetch" => Some((
            "evt.book.fetch.success".into(),
            json!({"attempt": attempt, "output": format!("The full text of {book}.")}),
            if faults { 2 } else { 1 },
        )),
        "summary" if faults && attempt.as_u64().unwrap_or(0) < 3 => Some((
            "evt.book.summary.failure".into(),
            json!({"attempt": attempt, "error": "the summarizer is overloaded"}),
            1,
        )),
        "summary" => ok(json!(format!("{book}, in short."))),
        "check.grammar" => ok(json!({"errors": 0})),
        "check.length" => ok(
            json!({"words": input["summary"].as_str().map_or(0, |s| s.split_whitespace().count())}),
        ),
        _ => None,
    }
}

async fn on_event(State(shared): State<Arc<Shared>>, body: Bytes) -> impl IntoResponse {
    let Ok(event) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let text = |k: &str| {
        event
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (id, ty, subject) = (text("id"), text("type"), text("subject"));
    let data = event.get("data").cloned().unwrap_or(Value::Null);
    let (applied, status) = {
        let mut log = lock(&shared.log);
        let seen_before = log.events.iter().any(|r| r.id == id);
        let applied_before = log.events.iter().any(|r| r.id == id && r.applied);
        // The grammar checker fails the first delivery of each command.
        let fail = shared.faults && ty == "cmd.book.check.grammar" && !seen_before;
        let applied = !fail && !applied_before;
        log.events.push(Received {
            id: id.clone(),
            ty: ty.clone(),
            subject: subject.clone(),
            data: data.clone(),
            applied,
            at: std::time::Instant::now(),
        });
        let status = if fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::ACCEPTED
        };
        (applied, status)
    };
    if applied && let Some((answer_ty, answer_data, times)) = answer(&ty, &data, shared.faults) {
        let answer_event = json!({
            "specversion": "1.0", "id": format!("{id}/answer"), "source": format!("/fleet/{ty}"),
            "type": answer_ty, "subject": subject, "data": answer_data,
        });
        let shared = shared.clone();
        tokio::spawn(async move {
            for _ in 0..times {
                if post_until_taken(&shared, &answer_event, Duration::from_secs(120))
                    .await
                    .is_ok()
                {
                    lock(&shared.log).answers_posted += 1;
                }
            }
        });
    }
    status
}

async fn on_echo(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    *lock(&shared.log)
        .echo_requests
        .entry(key.clone())
        .or_default() += 1;
    let mut held = shared.held.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    let first = lock(&shared.log).echo_applied.insert(key.clone());
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"key": key, "applied_now": first, "echo": body}).to_string(),
    )
}

async fn on_log(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let log = lock(&shared.log);
    let events: Vec<Value> = log
        .events
        .iter()
        .map(|r| json!({"id": r.id, "type": r.ty, "subject": r.subject, "data": r.data, "applied": r.applied}))
        .collect();
    (
        [("content-type", "application/json")],
        json!({"events": events, "echo_requests": log.echo_requests}).to_string(),
    )
}
