//! The `timers` plugin (DESIGN.md §9.7): a CA's pulse and its durable delayed calls.
//!
//! - A **pulse**: CAs of an app given a pulse period (env `pulse_ms` of the component, per app)
//!   get `__ca_pulse__({"due", "slots"})` every period; the app defines that method.
//! - **Delayed calls**: [`delay`], [`repeat`] (a count of slots a period apart) and [`cancel`],
//!   called from methods. They are kept in the checkpoint (`p.timers`, a [`TimerTable`]), so
//!   they are set and cancelled atomically with the turn that did it, and survive crashes.
//!
//! A call fires as a system message (`Message::system("timers", ...)`) that the CA's
//! activation takes from its table at the due time ([`TurnPlugin::take_due`]) and runs like
//! any other message: the table change and the call's effects commit in one checkpoint, so a
//! firing is never lost and never repeated once committed. After a time nobody looked (a host
//! down, a CA inactive), each due call fires once for all the slots it missed (coalesced, not a
//! flood), in due order. A CA nobody calls is activated for its timers by its host's wake index
//! ([`crate::wakeups`]), also after a restart or on another host.
//!
//! ```text
//!  method: timers::delay(cx, "remind", args, 5 s) ──▶ p.timers (checkpointed with the turn)
//!  activation: next_wake ──sleep──▶ take_due(now) ──▶ Message::system("timers", [remind(args)])
//!  host: wake index (per partition, in the Spine) ──▶ activates CAs that are not active
//! ```

pub mod table;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::app::{Cx, MethodError, MethodResult};
use crate::turn::{Call, Ids, Message, TurnEffects, TurnPlugin};
pub use table::{Firing, PULSE_METHOD, Pulse, Timer, TimerError, TimerTable};

/// The plugin's name (its state's key, the `by` of its messages).
pub const NAME: &str = "timers";

/// Now, in Unix milliseconds: the clock of the thin shell around [`TimerTable`].
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `timers` turn plugin.
#[derive(Debug, Clone)]
pub struct TimersPlugin {
    pulse: BTreeMap<String, u64>,
    max_timers: usize,
}

impl TimersPlugin {
    /// The plugin, with a pulse period in ms for each app that has one, and at most
    /// `max_timers` delayed calls pending per CA.
    pub fn new(pulse: BTreeMap<String, u64>, max_timers: usize) -> Arc<Self> {
        Arc::new(Self { pulse, max_timers })
    }

    fn pulse_for(&self, ids: Ids<'_>) -> Option<u64> {
        self.pulse.get(ids.app.as_str()).copied()
    }
}

impl TurnPlugin for TimersPlugin {
    fn name(&self) -> &str {
        NAME
    }

    fn resume(&self, state: &mut Value) -> Result<(), String> {
        TimerTable::from_state(state).map(|_| ())
    }

    fn prepare(&self, state: &Value, _turn: &TurnEffects<'_>) -> Result<(), String> {
        let table = TimerTable::from_state(state)?;
        if table.len() > self.max_timers {
            return Err(format!(
                "{} delayed calls would be pending; at most {} are allowed per CA",
                table.len(),
                self.max_timers
            ));
        }
        Ok(())
    }

    fn next_wake(&self, ids: Ids<'_>, state: &Value) -> Option<u64> {
        if table::pulse_of(state) != self.pulse_for(ids) {
            // The pulse is to be armed, changed or stopped: at once.
            return Some(0);
        }
        table::next_due_of(state)
    }

    fn take_due(&self, ids: Ids<'_>, state: &mut Value, now_ms: u64) -> Vec<Message> {
        let mut table = match TimerTable::from_state(state) {
            Ok(t) => t,
            Err(e) => {
                // `resume` refused such a state already; nothing here can repair it.
                tracing::error!(error = %e, "timers state cannot be read");
                return Vec::new();
            }
        };
        table.set_pulse(self.pulse_for(ids), now_ms);
        let firings = table.take_due(now_ms);
        *state = table.to_state();
        firings
            .into_iter()
            .map(|f| {
                Message::system(
                    NAME,
                    vec![Call {
                        method: f.method,
                        args: f.args,
                    }],
                )
            })
            .collect()
    }
}

fn with_table<T>(
    cx: &mut Cx<'_>,
    f: impl FnOnce(&mut TimerTable) -> MethodResult<T>,
) -> MethodResult<T> {
    let state = cx.plugin(NAME).ok_or_else(|| {
        MethodError::Failed(
            "this host has no timers plugin (add component ca-runtime#timers to its plugins)"
                .into(),
        )
    })?;
    let mut table = TimerTable::from_state(state).map_err(MethodError::Failed)?;
    let out = f(&mut table)?;
    *state = table.to_state();
    Ok(out)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Calls `method(args...)` on this CA once, `after` from now; returns the timer's id. Set (and
/// later fired) atomically with the turn: if the turn fails, no timer was set.
pub fn delay(
    cx: &mut Cx<'_>,
    method: &str,
    args: Vec<Value>,
    after: Duration,
) -> MethodResult<u64> {
    repeat(cx, method, args, after, None, 1)
}

/// Calls `method(args...)` `count` times, the first `after` from now, then every `every`.
pub fn repeat(
    cx: &mut Cx<'_>,
    method: &str,
    args: Vec<Value>,
    after: Duration,
    every: Option<Duration>,
    count: u64,
) -> MethodResult<u64> {
    let now = now_ms();
    with_table(cx, |t| {
        t.set(method, args, millis(after), every.map(millis), count, now)
            .map_err(|e| MethodError::BadArgs(e.to_string()))
    })
}

/// Cancels timer `id`; whether it was pending (it never fires once the turn commits).
pub fn cancel(cx: &mut Cx<'_>, id: u64) -> MethodResult<bool> {
    with_table(cx, |t| Ok(t.cancel(id)))
}

/// The delayed calls pending, by id.
pub fn pending(cx: &mut Cx<'_>) -> MethodResult<BTreeMap<u64, Timer>> {
    with_table(cx, |t| Ok(t.calls.clone()))
}

/// The component factory (`ca-runtime#timers`): env `pulse_ms` (an object: app name → period
/// in ms; 0 gives the app no pulse) and `max_timers` (delayed calls per CA).
pub(crate) fn part(
    env: &serde_json::Map<String, Value>,
) -> Result<crate::assembly::PluginPart, components::BoxError> {
    let pulse = pulse_periods(env.get("pulse_ms"))?;
    let max_timers = crate::assembly::u64_of(env, "max_timers")? as usize;
    Ok(crate::assembly::PluginPart {
        intent: None,
        turn: Some(TimersPlugin::new(pulse, max_timers)),
    })
}

/// The pulse period of each app from env `pulse_ms` (app name → ms, a number or a string of
/// one); an app given 0 has no pulse (so a flag can take back a description's default).
fn pulse_periods(env: Option<&Value>) -> Result<BTreeMap<String, u64>, String> {
    let mut pulse = BTreeMap::new();
    match env {
        None | Some(Value::Null) => {}
        Some(Value::Object(apps)) => {
            for (app, ms) in apps {
                sharing_map::AppName::parse(app)
                    .map_err(|e| format!("env pulse_ms: {app:?} is not an app name: {e}"))?;
                let ms = ms
                    .as_u64()
                    .or_else(|| ms.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| format!("env pulse_ms.{app}: a period in ms, not {ms}"))?;
                if ms == 0 {
                    continue;
                }
                if ms < table::MIN_PERIOD_MS {
                    return Err(format!(
                        "env pulse_ms.{app}: {ms} ms; the shortest pulse is {} ms",
                        table::MIN_PERIOD_MS
                    ));
                }
                pulse.insert(app.clone(), ms);
            }
        }
        Some(other) => {
            return Err(format!(
                "env pulse_ms must map app names to periods, not {other}"
            ));
        }
    }
    Ok(pulse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::{AppName, CaName};

    #[test]
    fn pulse_periods_are_read_per_app_and_zero_takes_the_pulse_away() {
        let periods = pulse_periods(Some(&json!({"demo-timers": "500", "acme-shop": 0})));
        assert_eq!(periods, Ok([("demo-timers".to_string(), 500)].into()));
        assert_eq!(pulse_periods(None), Ok(BTreeMap::new()));
        for bad in [
            json!({"demo-timers": 1}),
            json!({"demo-timers": "soon"}),
            json!({"Not An App": 500}),
            json!([500]),
        ] {
            assert!(pulse_periods(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_plugin_arms_the_pulse_of_apps_that_have_one_and_fires_system_messages() {
        let plugin = TimersPlugin::new([("demo-timers".to_string(), 100)].into(), 10);
        let (timers, other) = (
            AppName::parse("demo-timers").expect("app"),
            AppName::parse("demo-counter").expect("app"),
        );
        let ca = CaName::parse("alice-phone").expect("ca");
        let ids = Ids {
            app: &timers,
            ca: &ca,
        };
        let mut state = Value::Null;
        assert_eq!(plugin.next_wake(ids, &state), Some(0), "to be armed");
        assert!(plugin.take_due(ids, &mut state, 1000).is_empty());
        assert_eq!(plugin.next_wake(ids, &state), Some(1100));
        let fired = plugin.take_due(ids, &mut state, 1350);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].calls[0].method, PULSE_METHOD);
        assert_eq!(
            fired[0].calls[0].args,
            vec![json!({"due": 1100, "slots": 3})]
        );
        assert_eq!(
            fired[0].sender,
            crate::turn::Sender::System { by: NAME.into() }
        );
        // An app without a pulse loses one it had.
        let ids = Ids {
            app: &other,
            ca: &ca,
        };
        assert_eq!(plugin.next_wake(ids, &state), Some(0));
        assert!(plugin.take_due(ids, &mut state, 1400).is_empty());
        assert_eq!(plugin.next_wake(ids, &state), None);
    }
}
