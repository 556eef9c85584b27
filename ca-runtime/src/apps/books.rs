//! `books`: the orchestration example app (served as `demo-books`): one CA per "book summary"
//! orchestration, a durable state machine over CloudEvents, in the xOrca style but without a
//! lock service or lost commands.
//!
//! ```text
//!  cmd.book.summarize ─▶ emit cmd.book.fetch ─▶ evt.book.fetch.success
//!   ─▶ emit cmd.book.summary ─▶ evt.book.summary.success
//!   ─▶ emit cmd.book.check.grammar ┐ (in parallel)
//!      emit cmd.book.check.length  ┘─▶ both evt.book.check.*.success ─▶ emit notif.book.done
//! ```
//!
//! Every command carries `{book, step, attempt}`; its event `id` is the intent's key, the same
//! for every redo of one attempt. A `*.failure` answer of the current attempt (or no answer
//! within [`STEP_TIMEOUT`], a durable timer) starts the next attempt, up to [`MAX_ATTEMPTS`],
//! then `notif.book.failed`. Answers of another attempt, of a step already done, and repeats
//! are ignored (counted in `ignored`); exact repeats of an event (same source and id) do not
//! even reach the app (the events plugin's window).
//!
//! Methods: `on_event(event)` (the events plugin's messages only), `status()` → the state;
//! and outbound HTTP (the `http` plugin): `fetch_url(url, tag)` POSTs `{tag}` to `url`,
//! `on_response(response)` (the plugin's messages only) records it in `responses`,
//! `responses()`.

use std::time::Duration;

use semver::Version;
use serde_json::{Value, json};

use crate::app::{App, Cx, MethodError, MethodResult, arg};
use crate::plugins::{events, http, timers};
use crate::turn::Sender;

/// Attempts of a step before the orchestration fails.
pub const MAX_ATTEMPTS: u64 = 3;
/// How long a step's attempt waits for its answer before the next attempt.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// The checks run in parallel.
pub const CHECKS: [&str; 2] = ["grammar", "length"];

/// The orchestration app.
#[derive(Debug, Clone, Default)]
pub struct Books;

impl Books {
    /// The app name it is served under by default.
    pub const APP: &'static str = "demo-books";
}

fn command_of(step: &str) -> String {
    match step {
        "fetch" | "summary" => format!("cmd.book.{step}"),
        check => format!("cmd.book.check.{check}"),
    }
}

/// The step and outcome an answer event's type names: `evt.book.fetch.success` → (fetch, true).
fn answer_of(ty: &str) -> Option<(&str, bool)> {
    let rest = ty.strip_prefix("evt.book.")?;
    let rest = rest.strip_prefix("check.").unwrap_or(rest);
    let (step, outcome) = rest.rsplit_once('.')?;
    match outcome {
        "success" => Some((step, true)),
        "failure" => Some((step, false)),
        _ => None,
    }
}

fn from(cx: &Cx<'_>, plugin: &str) -> MethodResult<()> {
    match cx.sender() {
        Sender::System { by } if by == plugin => Ok(()),
        _ => Err(MethodError::App(format!(
            "this method takes the {plugin} plugin's messages only"
        ))),
    }
}

fn bump(cx: &mut Cx<'_>, key: &str) {
    let n = cx.state.get(key).and_then(Value::as_u64).unwrap_or(0);
    cx.state.insert(key.into(), json!(n + 1));
}

fn attempt_of(cx: &Cx<'_>, step: &str) -> u64 {
    cx.state
        .get("attempts")
        .and_then(|a| a.get(step))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Emits attempt `attempt` of `step`'s command, with its timeout.
fn run_step(cx: &mut Cx<'_>, step: &str, attempt: u64, input: Value) -> MethodResult<()> {
    let book = cx.state.get("book").cloned().unwrap_or(Value::Null);
    let ty = command_of(step);
    events::emit(
        cx,
        &ty,
        json!({"book": book, "step": step, "attempt": attempt, "input": input}),
    )?;
    let attempts = cx.state.entry("attempts").or_insert_with(|| json!({}));
    attempts[step] = json!(attempt);
    let inputs = cx.state.entry("inputs").or_insert_with(|| json!({}));
    inputs[step] = input;
    let emitted = cx.state.entry("emitted").or_insert_with(|| json!([]));
    if let Some(list) = emitted.as_array_mut() {
        list.push(json!({"type": ty, "attempt": attempt}));
    }
    timers::delay(
        cx,
        "step_timeout",
        vec![json!(step), json!(attempt)],
        STEP_TIMEOUT,
    )?;
    Ok(())
}

/// The current attempt of `step` failed: the next one, or the end.
fn retry(cx: &mut Cx<'_>, step: &str, why: &str) -> MethodResult<()> {
    let attempt = attempt_of(cx, step);
    if attempt < MAX_ATTEMPTS {
        let input = cx
            .state
            .get("inputs")
            .and_then(|i| i.get(step))
            .cloned()
            .unwrap_or(Value::Null);
        return run_step(cx, step, attempt + 1, input);
    }
    cx.state.insert("step".into(), json!("failed"));
    let book = cx.state.get("book").cloned().unwrap_or(Value::Null);
    events::emit(
        cx,
        "notif.book.failed",
        json!({"book": book, "step": step, "why": why}),
    )
}

fn on_event(cx: &mut Cx<'_>, event: &Value) -> MethodResult<()> {
    bump(cx, "events");
    let ty = event.get("type").and_then(Value::as_str).unwrap_or("");
    let data = event.get("data").cloned().unwrap_or(Value::Null);
    let step = cx
        .state
        .get("step")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if ty == "cmd.book.summarize" {
        if !step.is_empty() {
            bump(cx, "ignored");
            return Ok(());
        }
        let book = data.get("book").cloned().unwrap_or(Value::Null);
        if !book.is_string() {
            return Err(MethodError::App(
                "cmd.book.summarize needs data {\"book\": name}".into(),
            ));
        }
        cx.state.insert("book".into(), book.clone());
        cx.state.insert("step".into(), json!("fetch"));
        return run_step(cx, "fetch", 1, json!({"book": book}));
    }
    let Some((answered, ok)) = answer_of(ty) else {
        bump(cx, "ignored");
        return Ok(());
    };
    let current = match step.as_str() {
        "checks" => CHECKS.contains(&answered),
        s => s == answered,
    };
    let attempt = data.get("attempt").and_then(Value::as_u64);
    let done = cx
        .state
        .get("results")
        .and_then(|r| r.get(answered))
        .is_some();
    if !current || done || attempt != Some(attempt_of(cx, answered)) {
        bump(cx, "ignored");
        return Ok(());
    }
    if !ok {
        let why = data
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        return retry(cx, answered, why);
    }
    let output = data.get("output").cloned().unwrap_or(Value::Null);
    let results = cx.state.entry("results").or_insert_with(|| json!({}));
    results[answered] = output.clone();
    match answered {
        "fetch" => {
            cx.state.insert("step".into(), json!("summary"));
            run_step(cx, "summary", 1, json!({"text": output}))
        }
        "summary" => {
            cx.state.insert("step".into(), json!("checks"));
            for check in CHECKS {
                run_step(cx, check, 1, json!({"summary": output}))?;
            }
            Ok(())
        }
        _ => {
            let results = cx.state.get("results").cloned().unwrap_or(Value::Null);
            if CHECKS.iter().all(|c| results.get(c).is_some()) {
                cx.state.insert("step".into(), json!("done"));
                let book = cx.state.get("book").cloned().unwrap_or(Value::Null);
                events::emit(
                    cx,
                    "notif.book.done",
                    json!({"book": book, "summary": results["summary"], "checks": {
                        "grammar": results["grammar"], "length": results["length"]}}),
                )?;
            }
            Ok(())
        }
    }
}

impl App for Books {
    fn state_version(&self) -> Version {
        Version::new(0, 1, 0)
    }

    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value> {
        match method {
            "on_event" => {
                from(cx, events::NAME)?;
                let event: Value = arg(args, 0, "event")?;
                on_event(cx, &event)?;
                Ok(cx.state.get("step").cloned().unwrap_or(Value::Null))
            }
            "step_timeout" => {
                from(cx, timers::NAME)?;
                let step: String = arg(args, 0, "step")?;
                let attempt: u64 = arg(args, 1, "attempt")?;
                let done = cx.state.get("results").and_then(|r| r.get(&step)).is_some();
                let over = matches!(
                    cx.state.get("step").and_then(Value::as_str),
                    Some("done" | "failed")
                );
                if !done && !over && attempt_of(cx, &step) == attempt {
                    bump(cx, "timeouts");
                    retry(cx, &step, "no answer in time")?;
                }
                Ok(Value::Null)
            }
            "status" => Ok(Value::Object(cx.state.clone())),
            "fetch_url" => {
                let url: String = arg(args, 0, "url")?;
                let tag: Value = arg(args, 1, "tag")?;
                http::request(
                    cx,
                    http::Request {
                        method: "POST".into(),
                        url,
                        headers: Default::default(),
                        body: Some(json!({"tag": tag})),
                        reply_to: "on_response".into(),
                        tag,
                    },
                )?;
                Ok(Value::Null)
            }
            "on_response" => {
                from(cx, http::NAME)?;
                let response: Value = arg(args, 0, "response")?;
                let list = cx.state.entry("responses").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(response);
                }
                Ok(Value::Null)
            }
            "responses" => Ok(cx.state.get("responses").cloned().unwrap_or(json!([]))),
            other => Err(MethodError::UnknownMethod(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_name_their_step_and_outcome() {
        assert_eq!(answer_of("evt.book.fetch.success"), Some(("fetch", true)));
        assert_eq!(
            answer_of("evt.book.check.grammar.failure"),
            Some(("grammar", false))
        );
        assert_eq!(answer_of("evt.book.fetch.maybe"), None);
        assert_eq!(answer_of("cmd.book.fetch"), None);
        assert_eq!(command_of("length"), "cmd.book.check.length");
        assert_eq!(command_of("fetch"), "cmd.book.fetch");
    }
}
