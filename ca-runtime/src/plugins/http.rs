//! The `http` plugin (DESIGN.md §9.8): outbound HTTP requests as intents.
//!
//! A method asks for a request with [`request`]; nothing leaves the CA until the turn's
//! checkpoint committed. Then the plugin sends it with an `Idempotency-Key` header equal to the
//! intent's key (`app/ca/version/index`), so the service applies a redo (after a crash, a retry)
//! once. Failures (no connection, a timeout, a 5xx answer) are retried with exponential backoff;
//! any other answer (2xx, 3xx, 4xx) is the response. It is delivered to the CA as a system
//! message to the method the request named, with
//! [`Message::completes`](crate::turn::Message) = the intent's key: the intent is removed in the
//! same checkpoint as the handler's effects, and a second delivery (a redo that got an answer
//! too) is dropped unrun, so the CA's state records every response exactly once. After
//! `attempts` failures the request is given up: the same method gets
//! `{"failed": true, "error", "attempts", "key", "tag"}` (also completing the intent), and the
//! plugin's checkpointed state (`p.http.failed`, the last 64) keeps it for admins.
//!
//! Destinations are configured per app (env `allow`: app → URL prefixes, matched on scheme,
//! host, port and path prefix): a turn asking for any other is refused at prepare, and the
//! carrying out checks again (the configuration may change between commit and redo).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sharing_map::{AppName, CaName};

use super::{Courier, IntentPlugin};
use crate::app::{Cx, MethodError, MethodResult};
use crate::checkpoint::Intent;
use crate::turn::{Call, Message, Sender, TurnEffects, TurnPlugin};

/// The plugin's name.
pub const NAME: &str = "http";
/// The header carrying the intent's key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Given-up requests kept in the plugin's state.
const KEEP_FAILED: usize = 64;

/// One outbound request, as a method asks for it (and as its intent's payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// An `http` or `https` URL of an allowed destination.
    pub url: String,
    /// Extra headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A JSON body (sent as `application/json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The method of the CA that gets the response.
    pub reply_to: String,
    /// Anything the CA wants back with the response, to tell its requests apart.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub tag: Value,
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

impl Request {
    fn check(&self) -> Result<reqwest::Url, String> {
        if !METHODS.contains(&self.method.as_str()) {
            return Err(format!(
                "HTTP method {:?} is not one of {}",
                self.method,
                METHODS.join(", ")
            ));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("{:?} is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!("{:?} is not an http(s) URL with a host", self.url));
        }
        if self.reply_to.is_empty() || self.reply_to.starts_with("__ca_") {
            return Err(format!(
                "the response must go to a method of the app, not {:?}",
                self.reply_to
            ));
        }
        for (name, value) in &self.headers {
            reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            reqwest::header::HeaderValue::from_str(value)
                .map_err(|e| format!("header {name}: {e}"))?;
            if name.eq_ignore_ascii_case(IDEMPOTENCY_KEY) {
                return Err(format!("{IDEMPOTENCY_KEY} is set by the runtime"));
            }
        }
        Ok(url)
    }
}

/// Asks for `request` to be sent once this turn commits (see the module doc). Bad requests are
/// refused here (`bad arguments`); a destination the app may not call, at prepare.
pub fn request(cx: &mut Cx<'_>, request: Request) -> MethodResult<()> {
    request.check().map_err(MethodError::BadArgs)?;
    let payload = serde_json::to_value(&request).map_err(|e| MethodError::Failed(e.to_string()))?;
    cx.intent(NAME, payload);
    Ok(())
}

/// Destinations an app may call: URL prefixes (scheme, host, port, path prefix).
#[derive(Clone, Debug, Default)]
pub struct Allowed {
    by_app: BTreeMap<String, Vec<reqwest::Url>>,
}

impl Allowed {
    /// From app → URL prefixes.
    pub fn new(by_app: BTreeMap<String, Vec<String>>) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for (app, prefixes) in by_app {
            let urls = prefixes
                .iter()
                .map(|p| reqwest::Url::parse(p).map_err(|e| format!("{app}: {p:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert(app, urls);
        }
        Ok(Self { by_app: out })
    }

    /// Whether `app` may call `url`.
    pub fn admits(&self, app: &str, url: &reqwest::Url) -> bool {
        self.by_app.get(app).is_some_and(|prefixes| {
            prefixes.iter().any(|p| {
                p.scheme() == url.scheme()
                    && p.host_str() == url.host_str()
                    && p.port_or_known_default() == url.port_or_known_default()
                    && url.path().starts_with(p.path())
            })
        })
    }

    fn refusal(&self, app: &str, url: &str) -> String {
        let allowed: Vec<String> = self
            .by_app
            .get(app)
            .into_iter()
            .flatten()
            .map(|u| u.to_string())
            .collect();
        format!(
            "app {app} may not call {url} (its allowed destinations: {})",
            if allowed.is_empty() {
                "none".to_string()
            } else {
                allowed.join(", ")
            }
        )
    }
}

/// How requests are retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts before giving up.
    pub attempts: u32,
    /// The first backoff; doubled after each failure, at most `max_backoff`.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// The longest one attempt may take.
    pub timeout: Duration,
    /// The largest response body taken.
    pub max_body_bytes: usize,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl Retry {
    /// The backoff after failure number `n` (0-based).
    pub fn backoff_after(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32 << n.min(16))
            .min(self.max_backoff)
    }
}

/// The `http` plugin: its turn half checks destinations and keeps given-up requests; its intent
/// half sends requests.
#[derive(Debug, Clone)]
pub struct HttpPlugin {
    allowed: Allowed,
    retry: Retry,
    client: reqwest::Client,
}

impl HttpPlugin {
    /// The plugin.
    pub fn new(allowed: Allowed, retry: Retry) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .timeout(retry.timeout)
            .build()
            .map_err(|e| format!("the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            allowed,
            retry,
            client,
        }))
    }
}

impl TurnPlugin for HttpPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn begin(&self, state: &mut Value, message: &Message) {
        // A given-up request's notice: kept for admins, in the turn that tells the CA.
        if !matches!(&message.sender, Sender::System { by } if by == NAME) {
            return;
        }
        let Some(notice) = message.calls.first().and_then(|c| c.args.first()) else {
            return;
        };
        if notice.get("failed") != Some(&json!(true)) {
            return;
        }
        if !state.is_object() {
            *state = json!({});
        }
        let failed = state
            .as_object_mut()
            .map(|o| o.entry("failed").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = failed {
            list.push(notice.clone());
            if list.len() > KEEP_FAILED {
                let extra = list.len() - KEEP_FAILED;
                list.drain(..extra);
            }
        }
    }

    fn prepare(&self, _state: &Value, turn: &TurnEffects<'_>) -> Result<(), String> {
        for intent in turn.intents.iter().filter(|i| i.plugin == NAME) {
            let request: Request = serde_json::from_value(intent.payload.clone())
                .map_err(|e| format!("a request that does not decode: {e}"))?;
            let url = request.check()?;
            if !self.allowed.admits(turn.ids.app.as_str(), &url) {
                return Err(self.allowed.refusal(turn.ids.app.as_str(), &request.url));
            }
        }
        Ok(())
    }
}

/// The app and CA of an intent key `app/ca/version/index`.
pub fn owner_of(key: &str) -> Result<(AppName, CaName), String> {
    let mut parts = key.split('/');
    let (Some(app), Some(ca)) = (parts.next(), parts.next()) else {
        return Err(format!("intent key {key:?} names no CA"));
    };
    Ok((
        AppName::parse(app).map_err(|e| e.to_string())?,
        CaName::parse(ca).map_err(|e| e.to_string())?,
    ))
}

/// One attempt's outcome.
enum Attempt {
    /// An answer to deliver.
    Answer(Value),
    /// Worth another try.
    Failed(String),
    /// Not worth another try.
    Refused(String),
}

impl HttpPlugin {
    async fn attempt(&self, key: &str, request: &Request) -> Attempt {
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return Attempt::Refused(format!("bad method {}", request.method));
        };
        let mut builder = self
            .client
            .request(method, &request.url)
            .header(IDEMPOTENCY_KEY, key);
        for (name, value) in &request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Failed(format!("{}: {e}", request.url)),
        };
        let status = response.status();
        if status.is_server_error() {
            return Attempt::Failed(format!("{} answered {status}", request.url));
        }
        let headers: BTreeMap<String, String> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        if response
            .content_length()
            .is_some_and(|n| n as usize > self.retry.max_body_bytes)
        {
            return Attempt::Refused(format!(
                "the response is over {} bytes",
                self.retry.max_body_bytes
            ));
        }
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::Failed(format!("reading the response: {e}")),
        };
        if bytes.len() > self.retry.max_body_bytes {
            return Attempt::Refused(format!(
                "the response is over {} bytes",
                self.retry.max_body_bytes
            ));
        }
        let json_body = headers
            .get("content-type")
            .is_some_and(|t| t.contains("json"));
        let body = if bytes.is_empty() {
            Value::Null
        } else if json_body {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        } else {
            Value::String(String::from_utf8_lossy(&bytes).into_owned())
        };
        Attempt::Answer(json!({
            "status": status.as_u16(),
            "headers": headers,
            "body": body,
        }))
    }
}

impl IntentPlugin for HttpPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn carry_out(
        &self,
        intent: Intent,
        courier: Arc<dyn Courier>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let me = self.clone();
        Box::pin(async move {
            let (app, ca) = owner_of(&intent.key)?;
            let request: Request = serde_json::from_value(intent.payload.clone())
                .map_err(|e| format!("intent {}: not a request: {e}", intent.key))?;
            let mut answer = None;
            let mut failures = 0;
            let mut last_error = String::new();
            match request.check() {
                Err(e) => last_error = e,
                Ok(url) if !me.allowed.admits(app.as_str(), &url) => {
                    last_error = me.allowed.refusal(app.as_str(), &request.url);
                }
                Ok(_) => {
                    while failures < me.retry.attempts {
                        match me.attempt(&intent.key, &request).await {
                            Attempt::Answer(a) => {
                                answer = Some(a);
                                break;
                            }
                            Attempt::Refused(e) => {
                                last_error = e;
                                failures += 1;
                                break;
                            }
                            Attempt::Failed(e) => {
                                tracing::debug!(key = %intent.key, error = %e, "HTTP request failed");
                                last_error = e;
                                failures += 1;
                                if failures < me.retry.attempts {
                                    tokio::time::sleep(me.retry.backoff_after(failures - 1)).await;
                                }
                            }
                        }
                    }
                }
            }
            let mut arg = match answer {
                Some(a) => a,
                None => {
                    tracing::warn!(key = %intent.key, error = %last_error, failures, "HTTP request given up");
                    json!({"failed": true, "error": last_error, "attempts": failures})
                }
            };
            arg["key"] = json!(intent.key);
            arg["tag"] = request.tag.clone();
            let message = Message {
                calls: vec![Call {
                    method: request.reply_to.clone(),
                    args: vec![arg],
                }],
                sender: Sender::System { by: NAME.into() },
                completes: Some(intent.key.clone()),
            };
            // An app error of the handler still completes the intent; only a delivery that did
            // not commit is tried again (and the service sees the key again).
            match courier.deliver(app, ca, message).await {
                Ok(_) => Ok(()),
                Err(e) if !e.is_retryable() => Ok(()),
                Err(e) => Err(format!("delivering the response of {}: {e}", intent.key)),
            }
        })
    }
}

/// The component factory (`ca-runtime#http-client`): env `allow` (app → URL prefixes),
/// `attempts`, `backoff_ms`, `timeout_ms`, `max_body_bytes`.
pub(crate) fn part(
    env: &serde_json::Map<String, Value>,
) -> Result<crate::assembly::PluginPart, components::BoxError> {
    use crate::assembly::u64_of;
    let allow: BTreeMap<String, Vec<String>> = match env.get("allow") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("env allow must map app names to lists of URL prefixes: {e}"))?,
    };
    let allowed = Allowed::new(allow).map_err(|e| format!("env allow: {e}"))?;
    let retry = Retry {
        attempts: u64_of(env, "attempts")?.clamp(1, 100) as u32,
        backoff: Duration::from_millis(u64_of(env, "backoff_ms")?),
        max_backoff: Duration::from_secs(5),
        timeout: Duration::from_millis(u64_of(env, "timeout_ms")?.max(1)),
        max_body_bytes: u64_of(env, "max_body_bytes")? as usize,
    };
    let plugin = HttpPlugin::new(allowed, retry)?;
    Ok(crate::assembly::PluginPart {
        intent: Some(plugin.clone()),
        turn: Some(plugin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(url: &str) -> Request {
        Request {
            method: "POST".into(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: Some(json!({"a": 1})),
            reply_to: "on_response".into(),
            tag: Value::Null,
        }
    }

    #[test]
    fn destinations_are_allowed_per_app_by_origin_and_path_prefix() {
        let allowed = Allowed::new(
            [(
                "demo-books".to_string(),
                vec!["http://127.0.0.1:9100/api/".to_string()],
            )]
            .into(),
        )
        .expect("config");
        let url = |u: &str| reqwest::Url::parse(u).expect("url");
        assert!(allowed.admits("demo-books", &url("http://127.0.0.1:9100/api/x")));
        assert!(!allowed.admits("demo-books", &url("http://127.0.0.1:91/api/x")));
        assert!(!allowed.admits("demo-books", &url("http://127.0.0.1:9100/other")));
        assert!(!allowed.admits("demo-books", &url("https://127.0.0.1:9100/api/x")));
        assert!(!allowed.admits("demo-books", &url("http://127.0.0.1:9101/api/")));
        assert!(!allowed.admits("demo-counter", &url("http://127.0.0.1:9100/api/x")));
        assert!(
            allowed
                .refusal("demo-counter", "http://x/")
                .contains("none")
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(req("http://127.0.0.1:1/x").check().is_ok());
        let bad = |r: Request, why: &str| {
            let e = r.check().expect_err("refused");
            assert!(e.contains(why), "{e}");
        };
        bad(req("not a url"), "not a URL");
        bad(req("ftp://127.0.0.1/x"), "http(s)");
        bad(
            Request {
                method: "BREW".into(),
                ..req("http://127.0.0.1:1/")
            },
            "BREW",
        );
        bad(
            Request {
                reply_to: "__ca_init__".into(),
                ..req("http://127.0.0.1:1/")
            },
            "method of the app",
        );
        let mut r = req("http://127.0.0.1:1/");
        r.headers.insert("idempotency-key".into(), "mine".into());
        bad(r, "set by the runtime");
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_keys_name_their_ca() {
        let r = Retry::default();
        assert_eq!(r.backoff_after(0), Duration::from_millis(100));
        assert_eq!(r.backoff_after(3), Duration::from_millis(800));
        assert_eq!(r.backoff_after(30), Duration::from_secs(5));
        let (app, ca) = owner_of("demo-books/alice-book/7/0").expect("key");
        assert_eq!((app.as_str(), ca.as_str()), ("demo-books", "alice-book"));
        assert!(owner_of("nothing").is_err());
    }
}
