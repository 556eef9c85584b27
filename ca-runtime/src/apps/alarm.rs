//! `alarm`: the timer example app (served as `demo-timers`). Each CA rings reminders at their
//! times, durably: they are set in the turn that asked for them, survive host crashes, and a
//! reminder missed while the host was down rings once when it is back.
//!
//! Methods:
//! - `remind(text, after_ms)` → the timer's id: rings `text` once, `after_ms` from now;
//! - `every(text, period_ms, count)` → the id: rings `count` times, `period_ms` apart;
//! - `cancel(id)` → whether it was pending (a cancelled reminder never rings);
//! - `pending()` → the timers pending, by id;
//! - `rings()` → what rang: `[{text, due_ms?, at_ms, late_ms?}]` (the last 1,000);
//! - `pulses()` → the pulses: `[{due, slots, at_ms}]` (the last 1,000; `slots` > 1 when the
//!   pulse covers periods that passed while the host was down: one call, not a flood);
//! - `ring(text, due_ms?)`: called by the timers only (a client gets an app error);
//! - `remind_many(count, first_after_ms, spread_ms)`: `count` timers due evenly over
//!   `spread_ms` from `first_after_ms` on, each calling `tally(due_ms)` (timers only), which
//!   counts how late it fired in `lateness` (a histogram: ms → count; 1 ms steps below 100 ms,
//!   10 ms below 1 s, then 100 ms) and `tallied` (the benchmark's timers).
//!
//! `__ca_pulse__` comes every pulse period the host gives this app (`timers` plugin, env
//! `pulse_ms`).

use std::time::Duration;

use semver::Version;
use serde_json::{Value, json};

use crate::app::{App, Cx, MethodError, MethodResult, arg};
use crate::plugins::timers;
use crate::turn::Sender;

/// Entries kept in `rings` and `pulses`.
const KEEP: usize = 1000;

/// The timer example app.
#[derive(Debug, Clone, Default)]
pub struct Alarm;

impl Alarm {
    /// The app name it is served under by default.
    pub const APP: &'static str = "demo-timers";

    fn append(cx: &mut Cx<'_>, key: &str, item: Value) {
        let list = cx.state.entry(key.to_string()).or_insert_with(|| json!([]));
        if let Some(items) = list.as_array_mut() {
            items.push(item);
            if items.len() > KEEP {
                let extra = items.len() - KEEP;
                items.drain(..extra);
            }
        }
    }
}

impl App for Alarm {
    fn state_version(&self) -> Version {
        Version::new(0, 1, 0)
    }

    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value> {
        match method {
            "remind" => {
                let text: String = arg(args, 0, "text")?;
                let after: u64 = arg(args, 1, "after_ms")?;
                let due = timers::now_ms() + after;
                let id = timers::delay(
                    cx,
                    "ring",
                    vec![json!(text), json!(due)],
                    Duration::from_millis(after),
                )?;
                Ok(json!(id))
            }
            "every" => {
                let text: String = arg(args, 0, "text")?;
                let period: u64 = arg(args, 1, "period_ms")?;
                let count: u64 = arg(args, 2, "count")?;
                let period = Duration::from_millis(period);
                let id =
                    timers::repeat(cx, "ring", vec![json!(text)], period, Some(period), count)?;
                Ok(json!(id))
            }
            "cancel" => {
                let id: u64 = arg(args, 0, "id")?;
                Ok(json!(timers::cancel(cx, id)?))
            }
            "pending" => Ok(json!(timers::pending(cx)?)),
            "remind_many" => {
                let count: u64 = arg(args, 0, "count")?;
                let first: u64 = arg(args, 1, "first_after_ms")?;
                let spread: u64 = arg(args, 2, "spread_ms")?;
                let now = timers::now_ms();
                for i in 0..count {
                    let after = first + spread * i / count.max(1);
                    timers::delay(
                        cx,
                        "tally",
                        vec![json!(now + after)],
                        Duration::from_millis(after),
                    )?;
                }
                Ok(json!(count))
            }
            "tally" => {
                if !matches!(cx.sender(), Sender::System { by } if by == timers::NAME) {
                    return Err(MethodError::App("tally is called by timers only".into()));
                }
                let due: u64 = arg(args, 0, "due_ms")?;
                let late = timers::now_ms().saturating_sub(due);
                let bucket = match late {
                    0..100 => late,
                    100..1000 => late / 10 * 10,
                    _ => late / 100 * 100,
                };
                let hist = cx
                    .state
                    .entry("lateness".to_string())
                    .or_insert_with(|| json!({}));
                let n = hist[bucket.to_string()].as_u64().unwrap_or(0);
                hist[bucket.to_string()] = json!(n + 1);
                let tallied = cx.state.get("tallied").and_then(Value::as_u64).unwrap_or(0);
                cx.state.insert("tallied".into(), json!(tallied + 1));
                Ok(Value::Null)
            }
            "lateness" => Ok(json!({
                "tallied": cx.state.get("tallied").cloned().unwrap_or(json!(0)),
                "lateness": cx.state.get("lateness").cloned().unwrap_or(json!({})),
            })),
            "rings" => Ok(cx.state.get("rings").cloned().unwrap_or(json!([]))),
            "pulses" => Ok(cx.state.get("pulses").cloned().unwrap_or(json!([]))),
            "ring" => {
                if !matches!(cx.sender(), Sender::System { by } if by == timers::NAME) {
                    return Err(MethodError::App("ring is called by timers only".into()));
                }
                let text: String = arg(args, 0, "text")?;
                let due: Option<u64> = arg(args, 1, "due_ms")?;
                let at = timers::now_ms();
                let mut item = json!({"text": text, "at_ms": at});
                if let Some(due) = due {
                    item["due_ms"] = json!(due);
                    item["late_ms"] = json!(at.saturating_sub(due));
                }
                Self::append(cx, "rings", item);
                Ok(Value::Null)
            }
            timers::PULSE_METHOD => {
                let info: Value = arg(args, 0, "pulse")?;
                let mut item = info;
                item["at_ms"] = json!(timers::now_ms());
                Self::append(cx, "pulses", item);
                Ok(Value::Null)
            }
            other => Err(MethodError::UnknownMethod(other.to_string())),
        }
    }
}
