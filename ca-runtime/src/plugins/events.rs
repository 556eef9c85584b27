//! The `events` plugin (DESIGN.md §9.8): CloudEvents 1.0 in and out, so that a CA can
//! orchestrate services the way xOrca does (`cmd.*` to services, `evt.*` back, `notif.*` for
//! observers), as a durable state machine.
//!
//! - **Ingress** ([`ingress`]): `POST /events/<app>` on the host's HTTP port takes structured
//!   (`application/cloudevents+json`), batch (`application/cloudevents-batch+json`) and binary
//!   (`ce-*` headers) events, routes each to the CA named by its `subject` (or an extension
//!   attribute configured per app) as a system message to the app's handler method, and answers
//!   once the turn committed. Malformed events get a 4xx saying why, and nothing is delivered.
//! - **De-duplication**: the turn half keeps, in the CA's checkpoint (`p.events.seen`), the last
//!   `window` `(source, id)` pairs it handled: a repeat is answered without running (accepted,
//!   `duplicate`), also across restarts, since the window commits with the turn that handled it.
//! - **Emit** ([`emit`]): an intent carried out after commit: the event is POSTed in structured
//!   mode to the sink configured for its type's prefix, with `id` = the intent's key (so a redo
//!   repeats the id and the receiver drops it), `source` = `/<app>/<ca>`, and `subject` the
//!   subject of the event the CA handled last (the orchestration's), retried with backoff.
//!
//! CloudEvents parsing and JSON come from `cloudevents-sdk` (it fits axum 0.8 and our `http`);
//! the ingress adds what a host needs on top: size limits, content-type dispatch, spec 1.0
//! only, non-empty required attributes, and routing.

pub mod ingress;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Courier, IntentPlugin};
use crate::app::{Cx, MethodError, MethodResult};
use crate::checkpoint::Intent;
use crate::turn::{Message, Sender, TurnEffects, TurnPlugin};

/// The plugin's name (its state's key, its intents', the `by` of the ingress's messages).
pub const NAME: &str = "events";
/// The event types a CA may emit.
pub const EMIT_PREFIXES: [&str; 3] = ["cmd.", "evt.", "notif."];
/// The media type of a structured-mode event.
pub const STRUCTURED: &str = "application/cloudevents+json";
/// The media type of a batch.
pub const BATCH: &str = "application/cloudevents-batch+json";

/// What a duplicate event is answered with (it does not run).
pub fn duplicate_reply() -> Value {
    json!({"__ca_duplicate__": true})
}

/// Whether a reply says the event was a duplicate.
pub fn is_duplicate(reply: &Value) -> bool {
    reply.get("__ca_duplicate__") == Some(&json!(true))
}

/// Sinks of an app: type prefix → URL (the longest prefix of an event's type wins).
pub type Sinks = BTreeMap<String, String>;

/// The `events` plugin's turn half (de-duplication, the current subject, checks of emits) and
/// intent half (emit).
#[derive(Debug, Clone)]
pub struct EventsPlugin {
    window: usize,
    sinks: BTreeMap<String, Sinks>,
    client: reqwest::Client,
}

impl EventsPlugin {
    /// The plugin: a de-duplication window of `window` events per CA, sinks per app.
    pub fn new(
        window: usize,
        sinks: BTreeMap<String, Sinks>,
        timeout: Duration,
    ) -> Result<Arc<Self>, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("the HTTP client: {e}"))?;
        Ok(Arc::new(Self {
            window: window.max(1),
            sinks,
            client,
        }))
    }

    /// The sink of events of type `ty` emitted by `app`.
    pub fn sink(&self, app: &str, ty: &str) -> Option<&str> {
        self.sinks
            .get(app)?
            .iter()
            .filter(|(prefix, _)| ty.starts_with(prefix.as_str()))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, url)| url.as_str())
    }
}

/// `(source, id)` of an event message of the ingress.
fn event_key(message: &Message) -> Option<(String, String)> {
    if !matches!(&message.sender, Sender::System { by } if by == NAME) {
        return None;
    }
    let event = message.calls.first()?.args.first()?;
    Some((
        event.get("source")?.as_str()?.to_string(),
        event.get("id")?.as_str()?.to_string(),
    ))
}

fn seen(state: &Value) -> impl Iterator<Item = (&str, &str)> {
    state
        .get("seen")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|pair| Some((pair.get(0)?.as_str()?, pair.get(1)?.as_str()?)))
}

impl TurnPlugin for EventsPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn admit(&self, state: &Value, message: &Message) -> Option<Value> {
        let (source, id) = event_key(message)?;
        seen(state)
            .any(|(s, i)| s == source && i == id)
            .then(duplicate_reply)
    }

    fn begin(&self, state: &mut Value, message: &Message) {
        let Some((source, id)) = event_key(message) else {
            return;
        };
        if !state.is_object() {
            *state = json!({});
        }
        let subject = message
            .calls
            .first()
            .and_then(|c| c.args.first())
            .and_then(|e| e.get("subject"))
            .cloned()
            .unwrap_or(Value::Null);
        if let Some(o) = state.as_object_mut() {
            o.insert("subject".into(), subject);
            let list = o.entry("seen").or_insert_with(|| json!([]));
            if let Value::Array(list) = list {
                list.push(json!([source, id]));
                if list.len() > self.window {
                    let extra = list.len() - self.window;
                    list.drain(..extra);
                }
            }
        }
    }

    fn prepare(&self, _state: &Value, turn: &TurnEffects<'_>) -> Result<(), String> {
        for intent in turn.intents.iter().filter(|i| i.plugin == NAME) {
            let ty = intent
                .payload
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("");
            if self.sink(turn.ids.app.as_str(), ty).is_none() {
                return Err(format!(
                    "app {} has no sink for events of type {ty:?} (configure the events plugin's sinks)",
                    turn.ids.app
                ));
            }
        }
        Ok(())
    }
}

impl IntentPlugin for EventsPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn carry_out(
        &self,
        intent: Intent,
        _courier: Arc<dyn Courier>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let me = self.clone();
        Box::pin(async move {
            let (app, ca) = super::http::owner_of(&intent.key)?;
            let ty = intent
                .payload
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let sink = me
                .sink(app.as_str(), &ty)
                .ok_or_else(|| format!("app {app} has no sink for {ty:?}"))?
                .to_string();
            let mut event = json!({
                "specversion": "1.0",
                "id": intent.key,
                "source": format!("/{app}/{ca}"),
                "type": ty,
                "datacontenttype": "application/json",
            });
            if let Some(subject) = intent.payload.get("subject").filter(|s| s.is_string()) {
                event["subject"] = subject.clone();
            }
            if let Some(data) = intent.payload.get("data").filter(|d| !d.is_null()) {
                event["data"] = data.clone();
            }
            let response = me
                .client
                .post(&sink)
                .header("content-type", STRUCTURED)
                .body(event.to_string())
                .send()
                .await
                .map_err(|e| format!("emitting {ty} to {sink}: {e}"))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!(
                    "emitting {ty} to {sink}: answered {}",
                    response.status()
                ))
            }
        })
    }
}

/// Emits an event of type `ty` (`cmd.*`, `evt.*` or `notif.*`) with JSON `data` once this turn
/// commits, with the subject of the event the CA handled last.
pub fn emit(cx: &mut Cx<'_>, ty: &str, data: Value) -> MethodResult<()> {
    let subject = cx
        .plugin(NAME)
        .and_then(|s| s.get("subject"))
        .filter(|s| s.is_string())
        .cloned();
    emit_with_subject(
        cx,
        ty,
        data,
        subject.and_then(|s| s.as_str().map(str::to_string)),
    )
}

/// Emits an event with an explicit subject (`None`: none).
pub fn emit_with_subject(
    cx: &mut Cx<'_>,
    ty: &str,
    data: Value,
    subject: Option<String>,
) -> MethodResult<()> {
    if !EMIT_PREFIXES
        .iter()
        .any(|p| ty.starts_with(p) && ty.len() > p.len())
    {
        return Err(MethodError::BadArgs(format!(
            "event type {ty:?} must start with one of {}",
            EMIT_PREFIXES.join(", ")
        )));
    }
    if cx.plugin(NAME).is_none() {
        return Err(MethodError::Failed(
            "this host has no events plugin (add component ca-runtime#events to its plugins)"
                .into(),
        ));
    }
    cx.intent(NAME, json!({"type": ty, "data": data, "subject": subject}));
    Ok(())
}

/// The component factory (`ca-runtime#events`): env `window` (events remembered per CA for
/// de-duplication), `sinks` (app → {type prefix → URL}), `timeout_ms`.
pub(crate) fn part(
    env: &serde_json::Map<String, Value>,
) -> Result<crate::assembly::PluginPart, components::BoxError> {
    use crate::assembly::u64_of;
    let sinks: BTreeMap<String, Sinks> = match env.get("sinks") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            format!("env sinks must map app names to {{type prefix: URL}} objects: {e}")
        })?,
    };
    for (app, by_type) in &sinks {
        for (prefix, url) in by_type {
            if !EMIT_PREFIXES
                .iter()
                .any(|p| prefix.starts_with(p) || p.starts_with(prefix.as_str()))
            {
                return Err(format!(
                    "env sinks.{app}: {prefix:?} is not a cmd., evt. or notif. prefix"
                )
                .into());
            }
            reqwest::Url::parse(url)
                .map_err(|e| format!("env sinks.{app}.{prefix}: {url:?}: {e}"))?;
        }
    }
    let plugin = EventsPlugin::new(
        u64_of(env, "window")? as usize,
        sinks,
        Duration::from_millis(u64_of(env, "timeout_ms")?.max(1)),
    )?;
    Ok(crate::assembly::PluginPart {
        intent: Some(plugin.clone()),
        turn: Some(plugin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Call;

    fn event_message(source: &str, id: &str) -> Message {
        Message::system(
            NAME,
            vec![Call {
                method: "on_event".into(),
                args: vec![
                    json!({"source": source, "id": id, "subject": "alice-book", "type": "evt.x"}),
                ],
            }],
        )
    }

    #[test]
    fn repeats_within_the_window_are_admitted_without_running() {
        let plugin = EventsPlugin::new(2, BTreeMap::new(), Duration::from_secs(1)).expect("plugin");
        let mut state = Value::Null;
        let (a, b, c) = (
            event_message("s", "1"),
            event_message("s", "2"),
            event_message("t", "1"),
        );
        assert_eq!(plugin.admit(&state, &a), None);
        plugin.begin(&mut state, &a);
        assert_eq!(plugin.admit(&state, &a), Some(duplicate_reply()));
        assert!(is_duplicate(&duplicate_reply()));
        assert_eq!(plugin.admit(&state, &c), None, "same id, other source");
        plugin.begin(&mut state, &b);
        plugin.begin(&mut state, &c);
        assert_eq!(plugin.admit(&state, &a), None, "fell out of a window of 2");
        assert_eq!(plugin.admit(&state, &c), Some(duplicate_reply()));
        assert_eq!(state["subject"], json!("alice-book"));
        // A client's message is never an event.
        let client = Message::from_client(
            a.calls.clone(),
            None,
            sharing_map::CaName::parse("alice-book").expect("a CA name"),
        );
        assert_eq!(plugin.admit(&state, &client), None);
    }

    #[test]
    fn the_longest_sink_prefix_wins() {
        let sinks: Sinks = [
            ("cmd.".to_string(), "http://a/".to_string()),
            ("cmd.book.fetch".to_string(), "http://b/".to_string()),
        ]
        .into();
        let plugin = EventsPlugin::new(
            8,
            [("demo-books".to_string(), sinks)].into(),
            Duration::from_secs(1),
        )
        .expect("plugin");
        assert_eq!(
            plugin.sink("demo-books", "cmd.book.fetch"),
            Some("http://b/")
        );
        assert_eq!(
            plugin.sink("demo-books", "cmd.book.summary"),
            Some("http://a/")
        );
        assert_eq!(plugin.sink("demo-books", "notif.done"), None);
        assert_eq!(plugin.sink("demo-counter", "cmd.x"), None);
    }
}
