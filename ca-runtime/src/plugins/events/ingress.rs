//! The CloudEvents ingress: `POST <path>/<app>` on the host's HTTP port.
//!
//! ```text
//!  body (≤ max_body_bytes, else 413) ─▶ parse: structured | batch | binary (else 415; bad: 400)
//!  ─▶ every event checked and routed (subject or an extension → CA name; else 400)
//!  ─▶ each delivered as Message::system("events", [handler(event)]) ─▶ answered after commit
//! ```
//!
//! Nothing is delivered unless every event of the request is well formed. An event for a CA
//! whose partition another host holds is forwarded to that host's HTTP port (its lease records
//! it), once: a host that receives a forwarded event it does not serve answers 503, and the
//! sender retries (de-duplication makes a retry safe). Answers: 200 with
//! `{"results": [{"id", "status": "accepted" | "duplicate"}]}`; 422 when a handler refused an
//! event (the results say which; events before it were taken); 503 (retry) when a turn could
//! not commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cloudevents::{AttributesReader, Event, event::SpecVersion};
use serde::Deserialize;
use serde_json::{Value, json};
use sharing_map::{AppName, CaName};

use super::{BATCH, NAME, STRUCTURED, is_duplicate};
use crate::placement::Route;
use crate::turn::{Call, Message};
use crate::{CaError, Host};

/// The header marking an event one host forwarded to another (never forwarded again).
pub const FORWARDED: &str = "ca-forwarded";

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 400, 404, 413, 415, ...
    pub status: u16,
    /// Why, for the sender.
    pub reason: String,
}

impl Refusal {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
        }
    }
}

/// Parses a request's events (see the module doc): each as its structured JSON form.
pub fn parse(headers: &HeaderMap, body: &[u8], max_batch: usize) -> Result<Vec<Value>, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let events: Vec<Event> = if content_type == STRUCTURED {
        vec![structured(&json_of(body)?)?]
    } else if content_type == BATCH {
        let Value::Array(items) = json_of(body)? else {
            return Err(Refusal::new(400, "a batch must be a JSON array of events"));
        };
        if items.is_empty() {
            return Err(Refusal::new(400, "the batch holds no event"));
        }
        if items.len() > max_batch {
            return Err(Refusal::new(
                413,
                format!(
                    "the batch holds {} events; at most {max_batch} are taken",
                    items.len()
                ),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                structured(item).map_err(|r| {
                    Refusal::new(r.status, format!("event {i} of the batch: {}", r.reason))
                })
            })
            .collect::<Result<_, _>>()?
    } else if headers.contains_key("ce-specversion") {
        let data = if content_type.contains("json") && !body.is_empty() {
            Some(
                serde_json::from_slice::<Value>(body)
                    .map_err(|e| Refusal::new(400, format!("the event's data is not JSON: {e}")))?,
            )
        } else if content_type.starts_with("text/") {
            Some(Value::String(String::from_utf8_lossy(body).into_owned()))
        } else {
            None
        };
        let event = cloudevents::binding::http::to_event(headers, body.to_vec())
            .map_err(|e| Refusal::new(400, format!("not a binary-mode CloudEvent: {e}")))?;
        let mut value = checked(&event)?;
        // JSON and text data are handed to the CA as such; other data stays data_base64.
        if let (Some(data), Some(o)) = (data, value.as_object_mut()) {
            o.remove("data_base64");
            o.insert("data".into(), data);
        }
        return Ok(vec![value]);
    } else {
        return Err(Refusal::new(
            415,
            format!(
                "content type {content_type:?} is not a CloudEvent: send {STRUCTURED} (structured), {BATCH} (batch), or the data with ce-specversion, ce-id, ce-source and ce-type headers (binary)"
            ),
        ));
    };
    events.iter().map(checked).collect()
}

fn json_of(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::new(400, format!("malformed JSON: {e}")))
}

fn structured(value: &Value) -> Result<Event, Refusal> {
    if !value.is_object() {
        return Err(Refusal::new(400, "an event must be a JSON object"));
    }
    serde_json::from_value(value.clone())
        .map_err(|e| Refusal::new(400, format!("not a CloudEvent: {e}")))
}

/// Spec 1.0 only, required attributes not empty; the event as JSON.
fn checked(event: &Event) -> Result<Value, Refusal> {
    if event.specversion() != SpecVersion::V10 {
        return Err(Refusal::new(
            400,
            format!("specversion {} is not taken: only 1.0", event.specversion()),
        ));
    }
    for (name, value) in [
        ("id", event.id()),
        ("source", event.source().as_str()),
        ("type", event.ty()),
    ] {
        if value.is_empty() {
            return Err(Refusal::new(400, format!("the event's {name} is empty")));
        }
    }
    serde_json::to_value(event)
        .map_err(|e| Refusal::new(400, format!("the event does not serialize: {e}")))
}

/// How an app takes events.
#[derive(Clone, Debug, Deserialize)]
pub struct AppRoute {
    /// The method each event is handed to (one argument: the event as JSON).
    #[serde(default = "default_handler")]
    pub handler: String,
    /// The attribute naming the CA: `subject`, or an extension attribute.
    #[serde(default = "default_route_by")]
    pub route_by: String,
}

fn default_handler() -> String {
    "on_event".into()
}

fn default_route_by() -> String {
    "subject".into()
}

/// The CA an event goes to.
pub fn route_of(event: &Value, route: &AppRoute) -> Result<CaName, Refusal> {
    let id = event.get("id").and_then(Value::as_str).unwrap_or("?");
    let value = event
        .get(&route.route_by)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Refusal::new(
                400,
                format!(
                    "event {id} has no {} attribute to route it to a CA by",
                    route.route_by
                ),
            )
        })?;
    CaName::parse(value).map_err(|e| {
        Refusal::new(
            400,
            format!(
                "event {id}: its {} {value:?} is not a CA name: {e}",
                route.route_by
            ),
        )
    })
}

/// The ingress's settings and handles.
#[derive(Debug)]
pub struct Ingress {
    host: Host,
    apps: BTreeMap<String, AppRoute>,
    path: String,
    max_body_bytes: usize,
    max_batch: usize,
    client: reqwest::Client,
}

fn refuse(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, &json!({"error": r.reason}))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

impl Ingress {
    /// The routes: `POST <path>/{app}`.
    pub fn router(self) -> axum::Router {
        let path = format!("{}/{{app}}", self.path.trim_end_matches('/'));
        axum::Router::new()
            .route(&path, axum::routing::post(ingest))
            .with_state(Arc::new(self))
    }

    async fn deliver(
        &self,
        app: &AppName,
        ca: CaName,
        route: &AppRoute,
        event: Value,
        forwarded: bool,
    ) -> (StatusCode, Value) {
        let id = event.get("id").cloned().unwrap_or(Value::Null);
        let failed = |status: StatusCode, e: String| {
            (status, json!({"id": id, "status": "failed", "error": e}))
        };
        match self.host.route(app, &ca).await {
            Err(e) => return failed(status_of(&e), e.message),
            Ok(Route::Local) => {}
            Ok(Route::Remote(addr)) if forwarded => {
                return failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "CA {ca} is served by {addr}, not by the host this event was forwarded to; send it again"
                    ),
                );
            }
            Ok(Route::Remote(addr)) => {
                let Some(http) = self.host.holder_http(app, &ca) else {
                    return failed(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "CA {ca} is served by {addr}, which advertises no HTTP address; send it there"
                        ),
                    );
                };
                return self.forward(&http, app, &event).await;
            }
        }
        let message = Message::system(
            NAME,
            vec![Call {
                method: route.handler.clone(),
                args: vec![event],
            }],
        );
        match self.host.send(app.clone(), ca, message).await {
            Ok(reply) => {
                let status = if is_duplicate(&reply.result) {
                    "duplicate"
                } else {
                    "accepted"
                };
                (StatusCode::OK, json!({"id": id, "status": status}))
            }
            Err(e) => failed(status_of(&e), e.message),
        }
    }

    async fn forward(&self, http: &str, app: &AppName, event: &Value) -> (StatusCode, Value) {
        let id = event.get("id").cloned().unwrap_or(Value::Null);
        let url = format!("http://{http}{}/{app}", self.path.trim_end_matches('/'));
        let sent = self
            .client
            .post(&url)
            .header(header::CONTENT_TYPE.as_str(), STRUCTURED)
            .header(FORWARDED, "1")
            .body(event.to_string())
            .send()
            .await;
        let unavailable = |e: String| {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"id": id, "status": "failed", "error": e}),
            )
        };
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return unavailable(format!(
                    "the host holding the CA ({http}) did not answer: {e}"
                ));
            }
        };
        let status =
            StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        match response.json::<Value>().await {
            Ok(body) => {
                let result = body
                    .get("results")
                    .and_then(|r| r.get(0))
                    .cloned()
                    .unwrap_or(json!({"id": id, "status": "failed", "error": body.get("error")}));
                (status, result)
            }
            Err(e) => unavailable(format!(
                "the host holding the CA ({http}) answered {status}: {e}"
            )),
        }
    }
}

fn status_of(e: &CaError) -> StatusCode {
    if e.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    }
}

async fn ingest(
    State(ingress): State<Arc<Ingress>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(route) = ingress.apps.get(&app) else {
        return refuse(Refusal::new(
            404,
            format!("no app {app:?} takes events on this host"),
        ));
    };
    let Ok(app_name) = AppName::parse(&app) else {
        return refuse(Refusal::new(404, format!("{app:?} is not an app name")));
    };
    let limit = ingress.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let over = || refuse(Refusal::new(413, format!("the body is over {limit} bytes")));
    // Up to this much of an oversize body is read and dropped before the 413, so that the
    // sender, still sending, gets the answer rather than a closed connection.
    let drain_cap = limit.saturating_mul(16);
    if declared.is_some_and(|n| n > drain_cap) {
        return over();
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let Ok(chunk) = chunk else {
            return refuse(Refusal::new(400, "the body broke off"));
        };
        seen += chunk.len();
        if seen > drain_cap {
            break;
        }
        if seen <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    if seen > limit {
        return over();
    }
    let events = match parse(&headers, &bytes, ingress.max_batch) {
        Ok(e) => e,
        Err(r) => return refuse(r),
    };
    let mut routed = Vec::new();
    for event in events {
        match route_of(&event, route) {
            Ok(ca) => routed.push((ca, event)),
            Err(r) => return refuse(r),
        }
    }
    let forwarded = headers.contains_key(FORWARDED);
    let mut results = Vec::new();
    let mut worst = StatusCode::OK;
    for (ca, event) in routed {
        let (status, result) = ingress
            .deliver(&app_name, ca, route, event, forwarded)
            .await;
        results.push(result);
        if status != StatusCode::OK {
            worst = status;
            // Later events wait for the sender's retry: their order is kept.
            break;
        }
    }
    json_response(worst, &json!({"results": results}))
}

/// The component factory (`ca-runtime#events-ingress`): env `host`, `path` (default
/// `/events`), `apps` (app → `{handler, route_by}`), `max_body_bytes`, `max_batch`.
pub(crate) fn part(
    host: Host,
    env: &serde_json::Map<String, Value>,
) -> Result<crate::assembly::RoutesPart, components::BoxError> {
    use crate::assembly::{opt_str, u64_of};
    let apps: BTreeMap<String, AppRoute> = match env.get("apps") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("env apps must map app names to {{handler, route_by}}: {e}"))?,
    };
    for app in apps.keys() {
        AppName::parse(app).map_err(|e| format!("env apps: {app:?}: {e}"))?;
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| format!("the forwarding HTTP client: {e}"))?;
    let ingress = Ingress {
        host,
        apps,
        path: opt_str(env, "path")?.unwrap_or_else(|| "/events".into()),
        max_body_bytes: u64_of(env, "max_body_bytes")? as usize,
        max_batch: u64_of(env, "max_batch")?.max(1) as usize,
        client,
    };
    Ok(crate::assembly::RoutesPart(ingress.router()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn event(id: &str) -> Value {
        json!({"specversion": "1.0", "id": id, "source": "/fleet/fetch", "type": "evt.book.fetch.success",
               "subject": "alice-book", "data": {"title": "Dune"}})
    }

    #[test]
    fn structured_batch_and_binary_events_parse() {
        let structured = parse(
            &headers(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            event("1").to_string().as_bytes(),
            10,
        )
        .expect("structured");
        assert_eq!(structured[0]["id"], json!("1"));
        assert_eq!(structured[0]["data"], json!({"title": "Dune"}));
        let batch = parse(
            &headers(&[("content-type", BATCH)]),
            json!([event("1"), event("2")]).to_string().as_bytes(),
            10,
        )
        .expect("batch");
        assert_eq!(batch.len(), 2);
        let binary = parse(
            &headers(&[
                ("content-type", "application/json"),
                ("ce-specversion", "1.0"),
                ("ce-id", "b1"),
                ("ce-source", "/fleet"),
                ("ce-type", "evt.x"),
                ("ce-subject", "alice-book"),
                ("ce-attempt", "2"),
            ]),
            br#"{"ok": true}"#,
            10,
        )
        .expect("binary");
        assert_eq!(binary[0]["id"], json!("b1"));
        assert_eq!(binary[0]["subject"], json!("alice-book"));
        assert_eq!(binary[0]["attempt"], json!("2"));
        assert_eq!(binary[0]["data"], json!({"ok": true}));
    }

    #[test]
    fn malformed_events_are_refused_with_the_reason() {
        let h = headers(&[("content-type", STRUCTURED)]);
        let refused =
            |h: &HeaderMap, body: &str| parse(h, body.as_bytes(), 2).expect_err("refused");
        let r = refused(&h, "{not json");
        assert_eq!(r.status, 400);
        assert!(r.reason.contains("malformed JSON"), "{}", r.reason);
        let mut e = event("1");
        e.as_object_mut().map(|o| o.remove("source"));
        let r = refused(&h, &e.to_string());
        assert!(r.status == 400 && r.reason.contains("source"), "{r:?}");
        let r = refused(
            &h,
            &json!({"specversion": "0.3", "id": "1", "source": "/s", "type": "t"}).to_string(),
        );
        assert!(r.status == 400 && r.reason.contains("1.0"), "{r:?}");
        let r = refused(
            &h,
            &json!({"specversion": "1.0", "id": "", "source": "/s", "type": "t"}).to_string(),
        );
        assert!(r.status == 400 && r.reason.contains("id"), "{r:?}");
        let r = refused(&headers(&[("content-type", "text/plain")]), "hello");
        assert_eq!(r.status, 415);
        let b = headers(&[("content-type", BATCH)]);
        let r = refused(&b, &json!([event("1"), event("2"), event("3")]).to_string());
        assert_eq!(r.status, 413);
        let r = refused(&b, "[]");
        assert_eq!(r.status, 400);
        let r = refused(&b, &json!([event("1"), 7]).to_string());
        assert!(
            r.status == 400 && r.reason.contains("event 1 of the batch"),
            "{r:?}"
        );
    }

    #[test]
    fn events_route_by_subject_or_an_extension() {
        let by_subject = AppRoute {
            handler: "on_event".into(),
            route_by: "subject".into(),
        };
        assert_eq!(
            route_of(&event("1"), &by_subject).expect("routes").as_str(),
            "alice-book"
        );
        let mut e = event("1");
        e["subject"] = json!("Not A CA");
        assert_eq!(route_of(&e, &by_subject).expect_err("bad").status, 400);
        let by_ext = AppRoute {
            handler: "on_event".into(),
            route_by: "orchestration".into(),
        };
        assert!(route_of(&event("1"), &by_ext).is_err());
        e["orchestration"] = json!("bob-book");
        assert_eq!(route_of(&e, &by_ext).expect("routes").as_str(), "bob-book");
    }
}
