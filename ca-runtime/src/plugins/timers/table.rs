//! The timers' pure core: one CA's delayed calls and its pulse, by due time. No clock: callers
//! pass `now` (Unix milliseconds, so a checkpoint means the same on every host).
//!
//! Ids are handed out in increasing order and never reused, so a stale id can never cancel
//! someone else's timer. A repeating call has a grid of slots (`due`, `due + every`, ...,
//! `count` of them); whatever slots passed while nobody looked fire as ONE call (coalesced, not a
//! flood), which consumes them all, and the next slot on the grid stays due. The pulse is such a
//! grid without an end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The method a pulse calls.
pub const PULSE_METHOD: &str = "__ca_pulse__";

/// A delayed (perhaps repeating) call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timer {
    /// The method it calls.
    pub method: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// When its next slot is due (Unix ms).
    pub due: u64,
    /// The period of a repeating call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<u64>,
    /// Slots left, this one included.
    pub left: u64,
}

/// The pulse: `__ca_pulse__` every `every` ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulse {
    /// The period.
    pub every: u64,
    /// The next slot.
    pub due: u64,
}

/// One call a timer makes.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    /// The timer (`None`: the pulse).
    pub id: Option<u64>,
    /// The method.
    pub method: String,
    /// Its arguments (the pulse's: `{"due", "slots"}`).
    pub args: Vec<Value>,
    /// The first slot it covers.
    pub due: u64,
    /// How many slots it covers (more than one after a time nobody looked).
    pub slots: u64,
}

/// A timer that cannot be set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimerError {
    /// The method may not be called by a timer.
    #[error("a timer cannot call {0:?}: name a method of the app (not empty, not __ca_*)")]
    Method(String),
    /// A repeating call needs a period, and a period must be long enough.
    #[error("a repeating call needs a period of at least {min} ms (got {got:?})")]
    Period {
        /// The shortest period.
        min: u64,
        /// The period asked for.
        got: Option<u64>,
    },
    /// A call fires at least once.
    #[error("a timer's count must be at least 1")]
    Count,
    /// Too far in the future.
    #[error("a timer may be set at most {max} ms ahead (got {got} ms)")]
    TooFar {
        /// The limit.
        max: u64,
        /// What was asked.
        got: u64,
    },
}

/// The shortest period of a repeating call, in ms.
pub const MIN_PERIOD_MS: u64 = 10;
/// The farthest a timer may be set, in ms (ten years).
pub const MAX_AHEAD_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// One CA's timers, as kept in its checkpoint (`p.timers`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimerTable {
    /// The last id handed out.
    #[serde(default)]
    pub last_id: u64,
    /// Delayed calls by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<u64, Timer>,
    /// The pulse, if the app has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulse: Option<Pulse>,
}

impl TimerTable {
    /// A call of `method` with `args` in `after` ms from `now`; with `every`, repeating `count`
    /// times `every` ms apart. Returns its id.
    pub fn set(
        &mut self,
        method: &str,
        args: Vec<Value>,
        after: u64,
        every: Option<u64>,
        count: u64,
        now: u64,
    ) -> Result<u64, TimerError> {
        if method.is_empty() || method.starts_with("__ca_") {
            return Err(TimerError::Method(method.to_string()));
        }
        if count == 0 {
            return Err(TimerError::Count);
        }
        if (count > 1 && every.is_none()) || every.is_some_and(|e| e < MIN_PERIOD_MS) {
            return Err(TimerError::Period {
                min: MIN_PERIOD_MS,
                got: every,
            });
        }
        if after > MAX_AHEAD_MS {
            return Err(TimerError::TooFar {
                max: MAX_AHEAD_MS,
                got: after,
            });
        }
        self.last_id += 1;
        let id = self.last_id;
        self.calls.insert(
            id,
            Timer {
                method: method.to_string(),
                args,
                due: now.saturating_add(after),
                every: if count > 1 { every } else { None },
                left: count,
            },
        );
        Ok(id)
    }

    /// Cancels timer `id`; whether it was pending.
    pub fn cancel(&mut self, id: u64) -> bool {
        self.calls.remove(&id).is_some()
    }

    /// Sets the pulse's period (`None`: no pulse). A new period starts a grid at `now + every`;
    /// the same period keeps the grid.
    pub fn set_pulse(&mut self, every: Option<u64>, now: u64) {
        match every {
            None => self.pulse = None,
            Some(every) => {
                let every = every.max(MIN_PERIOD_MS);
                if self.pulse.map(|p| p.every) != Some(every) {
                    self.pulse = Some(Pulse {
                        every,
                        due: now.saturating_add(every),
                    });
                }
            }
        }
    }

    /// Delayed calls pending.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    /// Whether nothing is pending, pulse included.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.pulse.is_none()
    }

    /// When the next slot is due.
    pub fn next_due(&self) -> Option<u64> {
        let calls = self.calls.values().map(|t| t.due);
        calls.chain(self.pulse.map(|p| p.due)).min()
    }

    /// Takes every call due at `now`, each once whatever number of its slots passed, in due
    /// order (the pulse first among equals, then by id).
    pub fn take_due(&mut self, now: u64) -> Vec<Firing> {
        let mut out = Vec::new();
        if let Some(p) = self.pulse.as_mut()
            && p.due <= now
        {
            let slots = (now - p.due) / p.every + 1;
            out.push(Firing {
                id: None,
                method: PULSE_METHOD.to_string(),
                args: vec![json!({"due": p.due, "slots": slots})],
                due: p.due,
                slots,
            });
            p.due = p.due.saturating_add(slots.saturating_mul(p.every));
        }
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(t) = self.calls.get_mut(&id) else {
                continue;
            };
            let passed = match t.every {
                Some(every) => ((now - t.due) / every + 1).min(t.left),
                None => 1,
            };
            out.push(Firing {
                id: Some(id),
                method: t.method.clone(),
                args: t.args.clone(),
                due: t.due,
                slots: passed,
            });
            t.left -= passed;
            match t.every {
                Some(every) if t.left > 0 => {
                    t.due = t.due.saturating_add(passed.saturating_mul(every));
                }
                _ => {
                    self.calls.remove(&id);
                }
            }
        }
        out.sort_by_key(|f| (f.due, f.id.unwrap_or(0)));
        out
    }

    /// The table kept in a plugin state (`Null`: empty).
    pub fn from_state(state: &Value) -> Result<Self, String> {
        if state.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(state.clone()).map_err(|e| format!("bad timers state: {e}"))
    }

    /// The plugin state holding this table (`Null` when nothing is pending and no id was ever
    /// handed out).
    pub fn to_state(&self) -> Value {
        if self.is_empty() && self.last_id == 0 {
            return Value::Null;
        }
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The earliest due time in a plugin state, read without decoding the whole table (the
/// activation asks after every message).
pub fn next_due_of(state: &Value) -> Option<u64> {
    let calls = state
        .get("calls")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(|t| t.get("due").and_then(Value::as_u64));
    let pulse = state
        .get("pulse")
        .and_then(|p| p.get("due"))
        .and_then(Value::as_u64);
    calls.chain(pulse).min()
}

/// The pulse period in a plugin state.
pub fn pulse_of(state: &Value) -> Option<u64> {
    state
        .get("pulse")
        .and_then(|p| p.get("every"))
        .and_then(Value::as_u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn delayed_calls_fire_once_in_due_order_and_cancelled_ones_never() {
        let mut t = TimerTable::default();
        let a = t
            .set("late", vec![json!(1)], 300, None, 1, 1000)
            .expect("set");
        let b = t.set("early", vec![], 100, None, 1, 1000).expect("set");
        let c = t.set("never", vec![], 200, None, 1, 1000).expect("set");
        assert_eq!((a, b, c), (1, 2, 3));
        assert!(t.cancel(c));
        assert!(!t.cancel(c), "cancelled twice");
        assert_eq!(t.next_due(), Some(1100));
        assert!(t.take_due(1099).is_empty());
        let fired: Vec<_> = t.take_due(5000).into_iter().map(|f| f.method).collect();
        assert_eq!(fired, ["early", "late"]);
        assert!(t.take_due(9000).is_empty());
        assert_eq!(
            t.set("x", vec![], 0, None, 1, 0),
            Ok(4),
            "ids are never reused"
        );
    }

    #[test]
    fn missed_slots_of_a_repeating_call_and_of_the_pulse_fire_once() {
        let mut t = TimerTable::default();
        let id = t.set("tick", vec![], 100, Some(100), 5, 0).expect("set");
        t.set_pulse(Some(50), 0);
        // Down from 0 to 350: slots 100, 200, 300 of the call, 50..350 of the pulse.
        let f = t.take_due(350);
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].id, f[0].due, f[0].slots), (None, 50, 7));
        assert_eq!(f[0].args, vec![json!({"due": 50, "slots": 7})]);
        assert_eq!((f[1].id, f[1].due, f[1].slots), (Some(id), 100, 3));
        assert_eq!(t.next_due(), Some(400));
        assert_eq!(t.take_due(400).len(), 2);
        let last = t.take_due(10_000);
        assert_eq!(last[1].slots, 1, "the last slot: 500");
        assert_eq!(t.len(), 0);
        t.set_pulse(Some(50), 20_000);
        assert_eq!(t.next_due(), Some(10_050), "the same period keeps its grid");
        t.set_pulse(Some(70), 20_000);
        assert_eq!(t.next_due(), Some(20_070));
        t.set_pulse(None, 20_000);
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn bad_timers_are_refused_and_change_nothing() {
        let mut t = TimerTable::default();
        assert!(matches!(
            t.set("__ca_pulse__", vec![], 1, None, 1, 0),
            Err(TimerError::Method(_))
        ));
        assert!(matches!(
            t.set("", vec![], 1, None, 1, 0),
            Err(TimerError::Method(_))
        ));
        assert_eq!(t.set("m", vec![], 1, None, 0, 0), Err(TimerError::Count));
        assert!(matches!(
            t.set("m", vec![], 1, None, 2, 0),
            Err(TimerError::Period { .. })
        ));
        assert!(matches!(
            t.set("m", vec![], 1, Some(1), 2, 0),
            Err(TimerError::Period { .. })
        ));
        assert!(matches!(
            t.set("m", vec![], MAX_AHEAD_MS + 1, None, 1, 0),
            Err(TimerError::TooFar { .. })
        ));
        assert_eq!(t, TimerTable::default());
        assert_eq!(t.to_state(), Value::Null);
    }

    #[test]
    fn the_table_round_trips_through_its_state_and_its_due_time_reads_fast() {
        let mut t = TimerTable::default();
        t.set("a", vec![json!({"x": 1})], 500, Some(20), 3, 7)
            .expect("set");
        t.set("b", vec![], 40, None, 1, 7).expect("set");
        t.set_pulse(Some(1000), 7);
        let state = t.to_state();
        assert_eq!(TimerTable::from_state(&state), Ok(t.clone()));
        assert_eq!(next_due_of(&state), t.next_due());
        assert_eq!(pulse_of(&state), Some(1000));
        assert!(TimerTable::from_state(&json!({"calls": 3})).is_err());
    }

    /// The model: every timer as its explicit list of slot times.
    #[derive(Clone, Debug)]
    struct Model {
        calls: BTreeMap<u64, (String, Vec<u64>)>,
        next: u64,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Set { after: u64, every: u64, count: u64 },
        Cancel(u64),
        Wait(u64),
        Take,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..200, 10u64..60, 1u64..5).prop_map(|(after, every, count)| Op::Set { after, every, count }),
            1 => (0u64..12).prop_map(Op::Cancel),
            3 => (0u64..300).prop_map(Op::Wait),
            2 => Just(Op::Take),
        ]
    }

    proptest! {
        /// Against a model that keeps every slot explicitly: each take fires each timer once
        /// if any of its slots passed, covering all of them, in due order; nothing else fires.
        #[test]
        fn behaves_like_explicit_slots(ops in proptest::collection::vec(op(), 1..60)) {
            let mut t = TimerTable::default();
            let mut m = Model { calls: BTreeMap::new(), next: 1 };
            let mut now = 1_000u64;
            for op in ops {
                match op {
                    Op::Set { after, every, count } => {
                        let every_opt = (count > 1).then_some(every);
                        let id = t.set("m", vec![], after, every_opt, count, now);
                        prop_assert_eq!(id, Ok(m.next));
                        let slots = (0..count).map(|i| now + after + i * every).collect();
                        m.calls.insert(m.next, ("m".into(), slots));
                        m.next += 1;
                    }
                    Op::Cancel(id) => {
                        prop_assert_eq!(t.cancel(id), m.calls.remove(&id).is_some());
                    }
                    Op::Wait(ms) => now += ms,
                    Op::Take => {
                        let got: Vec<(u64, u64, u64)> = t
                            .take_due(now)
                            .into_iter()
                            .map(|f| (f.due, f.id.unwrap_or(0), f.slots))
                            .collect();
                        let mut want = Vec::new();
                        for (id, (_, slots)) in m.calls.iter_mut() {
                            let passed: Vec<u64> = slots.iter().copied().filter(|s| *s <= now).collect();
                            if let Some(first) = passed.first() {
                                want.push((*first, *id, passed.len() as u64));
                            }
                            slots.retain(|s| *s > now);
                        }
                        m.calls.retain(|_, (_, s)| !s.is_empty());
                        want.sort();
                        prop_assert_eq!(got, want);
                    }
                }
                let want_next = m.calls.values().filter_map(|(_, s)| s.first().copied()).min();
                prop_assert_eq!(t.next_due(), want_next);
                prop_assert_eq!(next_due_of(&t.to_state()), want_next);
                prop_assert_eq!(t.len(), m.calls.len());
            }
        }
    }
}
