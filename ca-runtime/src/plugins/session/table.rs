//! The pure core of the `session` plugin: a CA's logical sessions, their notification queues and
//! exactly-once instances (nonce + memento), with Caf.js caf_session's rules.
//!
//! A turn reads the table as the turns before it left it and records [`Op`]s; the ops take
//! effect together at the end of the turn ([`SessionTable::fold`]), so:
//! - a notification of a failed turn never joins a queue (the turn's copy is dropped);
//! - `outq` in a turn does not show that turn's notifications;
//! - a nonce `begin` returns takes effect at the end of its turn, so `remember` with it in the
//!   same turn fails; the last `remember` of a turn wins; `end` is idempotent;
//! - `begin` returns the memento of the previous instance unless that instance ended.
//!
//! Bounds: each queue keeps the newest `queue_limit` notifications unless the session has its
//! own limit (`limit_queue`, `n ≤ 0` = unbounded); beyond `max_sessions` sessions, those with
//! queued notifications and no explicit limit are evicted, the fullest first. A session with
//! nothing in it (no queue, limit, nonce or memento) is not kept. Notification sequence numbers
//! are unique in the CA and increase, so a listener that reconnects asks for what follows the
//! last one it saw.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A notification: its sequence number in the CA and the arguments the app gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique in the CA, increasing.
    pub seq: u64,
    /// The session it was queued in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    /// What the app notified (a JSON array of arguments).
    pub args: Value,
}

/// One logical session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Notifications not yet acknowledged, oldest first.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub queue: VecDeque<Notification>,
    /// The queue limit the app set (`≤ 0`: unbounded); it also exempts the session from
    /// eviction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The current exactly-once instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// What the current instance remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memento: Option<Value>,
}

impl Session {
    fn is_empty(&self) -> bool {
        self.queue.is_empty()
            && self.limit.is_none()
            && self.nonce.is_none()
            && self.memento.is_none()
    }
}

/// Where a notification goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// One session (created if it does not exist).
    Session(String),
    /// Every existing session whose name matches (`*` matches any run of characters).
    Pattern(String),
}

impl Target {
    /// A session name, or a pattern if it holds a `*`.
    pub fn parse(text: &str) -> Self {
        if text.contains('*') {
            Target::Pattern(text.to_string())
        } else {
            Target::Session(text.to_string())
        }
    }
}

/// An effect recorded in a turn, applied at its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Queue a notification.
    Notify {
        /// Where.
        to: Target,
        /// The arguments.
        args: Value,
    },
    /// Set a session's queue limit.
    Limit {
        /// The session.
        session: String,
        /// The limit (`≤ 0`: unbounded).
        n: i64,
    },
    /// A new instance.
    Begin {
        /// The session.
        session: String,
        /// Its nonce.
        nonce: String,
    },
    /// The current instance's memento.
    Remember {
        /// The session.
        session: String,
        /// The memento.
        memento: Value,
    },
    /// The current instance ended: nonce and memento go.
    End {
        /// The session.
        session: String,
    },
    /// A listener received the notifications up to `seq`: they leave the queue.
    Ack {
        /// The session.
        session: String,
        /// The last one received.
        seq: u64,
    },
}

/// The bounds of every CA's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The queue limit of sessions without one of their own.
    pub queue_limit: usize,
    /// Sessions per CA beyond which evictable ones are evicted.
    pub max_sessions: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            queue_limit: 100,
            max_sessions: 64,
        }
    }
}

/// A CA's sessions: the `session` plugin's checkpointed state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTable {
    /// The sessions, by name.
    #[serde(default)]
    pub sessions: BTreeMap<String, Session>,
    /// The sequence number the next notification gets (the first is 1).
    #[serde(default)]
    pub next_seq: u64,
    /// The running turn's effects (empty between turns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Op>,
}

/// What `begin` answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Begun {
    /// The new instance's nonce (in force once the turn ends).
    pub nonce: String,
    /// What the previous instance remembered, unless it ended.
    pub memento: Option<Value>,
}

impl SessionTable {
    /// The table a plugin state holds (`Null`: an empty table).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        if value.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(value.clone()).map_err(|e| format!("bad session table: {e}"))
    }

    /// As plugin state: `Null` when there is nothing to keep.
    pub fn to_value(&self) -> Value {
        if self.sessions.is_empty() && self.next_seq == 0 && self.pending.is_empty() {
            return Value::Null;
        }
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The queue of `session`, as the turns before this one left it.
    pub fn outq(&self, session: &str) -> Vec<Notification> {
        self.sessions
            .get(session)
            .map(|s| s.queue.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts a new instance of `session` with `nonce` (in force at the end of the turn).
    pub fn begin(&mut self, session: &str, nonce: String) -> Begun {
        let (begun, op) = begin(self.sessions.get(session), session, nonce);
        self.pending.push(op);
        begun
    }

    /// Stores `memento` with the turn if `nonce` is the current instance's; `false` (and
    /// nothing recorded) for a stale one.
    pub fn remember(&mut self, session: &str, nonce: &str, memento: Value) -> bool {
        let op = remember(self.sessions.get(session), session, nonce, memento);
        let ok = op.is_some();
        self.pending.extend(op);
        ok
    }

    /// Ends the instance `nonce`: `true` if it is the current one (nonce and memento go at the
    /// end of the turn) or if no instance is in progress (already ended); `false` if another
    /// instance is.
    pub fn end(&mut self, session: &str, nonce: &str) -> bool {
        let (ok, op) = end(self.sessions.get(session), session, nonce);
        self.pending.extend(op);
        ok
    }

    /// Records an op to apply at the end of the turn.
    pub fn record(&mut self, op: Op) {
        self.pending.push(op);
    }

    /// Applies the turn's ops in order, then the bounds.
    pub fn fold(&mut self, bounds: &Bounds) {
        for op in std::mem::take(&mut self.pending) {
            self.apply(op, bounds);
        }
        self.sessions.retain(|_, s| !s.is_empty());
        self.evict(bounds);
    }

    fn apply(&mut self, op: Op, bounds: &Bounds) {
        match op {
            Op::Notify { to, args } => {
                let names: Vec<String> = match to {
                    Target::Session(name) => vec![name],
                    Target::Pattern(p) => self
                        .sessions
                        .keys()
                        .filter(|name| glob(&p, name))
                        .cloned()
                        .collect(),
                };
                for name in names {
                    self.next_seq = self.next_seq.max(1);
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let s = self.sessions.entry(name.clone()).or_default();
                    s.queue.push_back(Notification {
                        seq,
                        session: name,
                        args: args.clone(),
                    });
                    trim(s, bounds);
                }
            }
            Op::Limit { session, n } => {
                let s = self.sessions.entry(session).or_default();
                s.limit = Some(n);
                trim(s, bounds);
            }
            Op::Begin { session, nonce } => {
                self.sessions.entry(session).or_default().nonce = Some(nonce);
            }
            Op::Remember { session, memento } => {
                self.sessions.entry(session).or_default().memento = Some(memento);
            }
            Op::End { session } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.nonce = None;
                    s.memento = None;
                }
            }
            Op::Ack { session, seq } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    while s.queue.front().is_some_and(|n| n.seq <= seq) {
                        s.queue.pop_front();
                    }
                }
            }
        }
    }

    fn evict(&mut self, bounds: &Bounds) {
        while self.sessions.len() > bounds.max_sessions {
            let fullest = self
                .sessions
                .iter()
                .filter(|(_, s)| s.limit.is_none() && !s.queue.is_empty())
                .max_by(|(a, x), (b, y)| x.queue.len().cmp(&y.queue.len()).then(b.cmp(a)))
                .map(|(name, _)| name.clone());
            match fullest {
                Some(name) => self.sessions.remove(&name),
                None => break,
            };
        }
    }
}

/// `begin` on session `name` (`s` as the turns before left it): the answer, and the op that
/// puts the new nonce in force at the end of the turn.
pub fn begin(s: Option<&Session>, name: &str, nonce: String) -> (Begun, Op) {
    let memento = s.and_then(|s| s.memento.clone());
    let op = Op::Begin {
        session: name.to_string(),
        nonce: nonce.clone(),
    };
    (Begun { nonce, memento }, op)
}

/// `remember`: the op storing `memento` if `nonce` is the current instance's, else `None`.
pub fn remember(s: Option<&Session>, name: &str, nonce: &str, memento: Value) -> Option<Op> {
    (s.and_then(|s| s.nonce.as_deref()) == Some(nonce)).then(|| Op::Remember {
        session: name.to_string(),
        memento,
    })
}

/// `end`: whether the instance counts as ended, and the op ending it if it is the current one.
pub fn end(s: Option<&Session>, name: &str, nonce: &str) -> (bool, Option<Op>) {
    if s.and_then(|s| s.nonce.as_deref()) == Some(nonce) {
        return (
            true,
            Some(Op::End {
                session: name.to_string(),
            }),
        );
    }
    (
        s.is_none_or(|s| s.nonce.is_none() && s.memento.is_none()),
        None,
    )
}

/// Drops the oldest notifications beyond the session's limit.
fn trim(s: &mut Session, bounds: &Bounds) {
    let cap = match s.limit {
        Some(n) if n <= 0 => return,
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => bounds.queue_limit,
    };
    while s.queue.len() > cap {
        s.queue.pop_front();
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (Some(first), Some(last)) = (parts.first(), parts.last()) else {
        return true;
    };
    if parts.len() == 1 {
        return pattern == name;
    }
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn bounds(queue_limit: usize, max_sessions: usize) -> Bounds {
        Bounds {
            queue_limit,
            max_sessions,
        }
    }

    fn args(t: &SessionTable, session: &str) -> Vec<Value> {
        t.outq(session).into_iter().map(|n| n.args).collect()
    }

    #[test]
    fn notifications_join_their_queue_at_the_end_of_the_turn_in_order() {
        let b = bounds(3, 10);
        let mut t = SessionTable::default();
        t.record(Op::Notify {
            to: Target::parse("phone"),
            args: json!([1]),
        });
        assert!(t.outq("phone").is_empty(), "not before the turn ends");
        t.record(Op::Notify {
            to: Target::parse("laptop"),
            args: json!(["x"]),
        });
        t.record(Op::Notify {
            to: Target::parse("phone"),
            args: json!([2]),
        });
        t.fold(&b);
        assert_eq!(args(&t, "phone"), [json!([1]), json!([2])]);
        assert_eq!(args(&t, "laptop"), [json!(["x"])]);
        let seqs: Vec<u64> = t.outq("phone").iter().map(|n| n.seq).collect();
        assert_eq!(seqs, [1, 3]);
        // A pattern reaches the sessions that exist; a limited queue keeps the newest.
        for i in 0..4 {
            t.record(Op::Notify {
                to: Target::parse("*"),
                args: json!([i]),
            });
        }
        t.fold(&b);
        assert_eq!(args(&t, "phone"), [json!([1]), json!([2]), json!([3])]);
        assert_eq!(args(&t, "laptop").len(), 3);
        t.record(Op::Ack {
            session: "phone".into(),
            seq: t.outq("phone")[1].seq,
        });
        t.fold(&b);
        assert_eq!(args(&t, "phone"), [json!([3])]);
    }

    #[test]
    fn exactly_once_follows_caf_sessions_rules() {
        let b = Bounds::default();
        let mut t = SessionTable::default();
        // A first instance: no memento; its nonce is not in force in its own turn.
        let one = t.begin("s", "n1".into());
        assert_eq!(one.memento, None);
        assert!(
            !t.remember("s", "n1", json!(0)),
            "remember in the turn of its begin"
        );
        t.fold(&b);
        assert!(t.remember("s", "n1", json!(1)));
        assert!(t.remember("s", "n1", json!(2)));
        t.fold(&b);
        assert_eq!(
            t.sessions["s"].memento,
            Some(json!(2)),
            "the last remember wins"
        );
        // The client crashed: a new instance gets the memento; the old nonce is stale.
        let two = t.begin("s", "n2".into());
        assert_eq!(two.memento, Some(json!(2)));
        t.fold(&b);
        assert!(!t.remember("s", "n1", json!(9)));
        assert!(
            !t.end("s", "n1"),
            "a stale instance cannot end the current one"
        );
        assert!(t.end("s", "n2"));
        t.fold(&b);
        assert!(t.end("s", "n2"), "end is idempotent");
        assert!(
            t.sessions.is_empty(),
            "an ended session with nothing queued is not kept"
        );
        assert_eq!(
            t.begin("s", "n3".into()).memento,
            None,
            "it ended: no memento"
        );
    }

    #[test]
    fn eviction_takes_the_fullest_unlimited_sessions_first() {
        let b = bounds(100, 2);
        let mut t = SessionTable::default();
        for (s, n) in [("a", 1), ("b", 3), ("c", 2)] {
            for i in 0..n {
                t.record(Op::Notify {
                    to: Target::parse(s),
                    args: json!([i]),
                });
            }
        }
        t.record(Op::Limit {
            session: "b".into(),
            n: 0,
        });
        t.fold(&b);
        let names: Vec<&str> = t.sessions.keys().map(String::as_str).collect();
        assert_eq!(names, ["a", "b"], "c is the fullest without a limit");
        assert_eq!(t.sessions["b"].queue.len(), 3, "unbounded");
    }

    #[test]
    fn the_table_round_trips_and_an_empty_one_is_null() {
        let mut t = SessionTable::default();
        assert_eq!(t.to_value(), Value::Null);
        t.record(Op::Notify {
            to: Target::parse("x"),
            args: json!([1]),
        });
        t.fold(&Bounds::default());
        assert_eq!(SessionTable::from_value(&t.to_value()), Ok(t));
        assert!(SessionTable::from_value(&json!({"sessions": 3})).is_err());
    }

    #[test]
    fn globs_match_runs() {
        assert!(glob("*", "anything"));
        assert!(glob("tab*", "tablet"));
        assert!(glob("*-b*", "a-b-c"));
        assert!(!glob("tab*", "phone"));
        assert!(glob("x", "x") && !glob("x", "xy"));
    }

    /// A model session: `(seq, value)` queue, limit, nonce, memento.
    type ModelSession = (Vec<(u64, i64)>, Option<i64>, Option<String>, Option<i64>);

    // A model: the same table kept as plain vectors, with the rules written the obvious way.
    #[derive(Clone, Debug, Default)]
    struct Model {
        sessions: BTreeMap<String, ModelSession>,
        next: u64,
    }

    #[derive(Clone, Debug)]
    enum Step {
        Notify(u8, i64),
        NotifyAll(i64),
        Limit(u8, i64),
        Ack(u8, u64),
        Begin(u8, u8),
        Remember(u8, u8, i64),
        End(u8, u8),
        EndTurn,
        AbortTurn,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..4u8, any::<i64>()).prop_map(|(s, v)| Step::Notify(s, v)),
            1 => any::<i64>().prop_map(Step::NotifyAll),
            1 => (0..4u8, -2..4i64).prop_map(|(s, n)| Step::Limit(s, n)),
            1 => (0..4u8, 0..30u64).prop_map(|(s, q)| Step::Ack(s, q)),
            1 => (0..4u8, 0..3u8).prop_map(|(s, n)| Step::Begin(s, n)),
            2 => (0..4u8, 0..3u8, any::<i64>()).prop_map(|(s, n, m)| Step::Remember(s, n, m)),
            1 => (0..4u8, 0..3u8).prop_map(|(s, n)| Step::End(s, n)),
            3 => Just(Step::EndTurn),
            1 => Just(Step::AbortTurn),
        ]
    }

    fn name(s: u8) -> String {
        format!("s{s}")
    }

    impl Model {
        fn cap(limit: Option<i64>, b: &Bounds) -> Option<usize> {
            match limit {
                Some(n) if n <= 0 => None,
                Some(n) => Some(n as usize),
                None => Some(b.queue_limit),
            }
        }

        fn apply(&mut self, ops: &[Op], b: &Bounds) {
            for op in ops {
                match op {
                    Op::Notify { to, args } => {
                        let targets: Vec<String> = match to {
                            Target::Session(s) => vec![s.clone()],
                            Target::Pattern(_) => self.sessions.keys().cloned().collect(),
                        };
                        for s in targets {
                            self.next = self.next.max(1);
                            let v = args[0].as_i64().unwrap_or(0);
                            let e = self.sessions.entry(s).or_default();
                            e.0.push((self.next, v));
                            self.next += 1;
                            if let Some(cap) = Self::cap(e.1, b) {
                                while e.0.len() > cap {
                                    e.0.remove(0);
                                }
                            }
                        }
                    }
                    Op::Limit { session, n } => {
                        let e = self.sessions.entry(session.clone()).or_default();
                        e.1 = Some(*n);
                        if let Some(cap) = Self::cap(e.1, b) {
                            while e.0.len() > cap {
                                e.0.remove(0);
                            }
                        }
                    }
                    Op::Begin { session, nonce } => {
                        self.sessions.entry(session.clone()).or_default().2 = Some(nonce.clone())
                    }
                    Op::Remember { session, memento } => {
                        self.sessions.entry(session.clone()).or_default().3 = memento.as_i64()
                    }
                    Op::End { session } => {
                        if let Some(e) = self.sessions.get_mut(session) {
                            e.2 = None;
                            e.3 = None;
                        }
                    }
                    Op::Ack { session, seq } => {
                        if let Some(e) = self.sessions.get_mut(session) {
                            e.0.retain(|(s, _)| s > seq);
                        }
                    }
                }
            }
            self.sessions.retain(|_, e| {
                !(e.0.is_empty() && e.1.is_none() && e.2.is_none() && e.3.is_none())
            });
            while self.sessions.len() > b.max_sessions {
                let mut victims: Vec<(usize, String)> = self
                    .sessions
                    .iter()
                    .filter(|(_, e)| e.1.is_none() && !e.0.is_empty())
                    .map(|(k, e)| (e.0.len(), k.clone()))
                    .collect();
                // Fullest first; among equals, the first name.
                victims.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                match victims.first() {
                    Some((_, k)) => {
                        self.sessions.remove(&k.clone());
                    }
                    None => break,
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn the_table_behaves_like_the_model(steps in proptest::collection::vec(step(), 1..80)) {
            let b = bounds(3, 3);
            let mut t = SessionTable::default();
            let mut model = Model::default();
            let mut turn = t.clone();
            for s in steps {
                match s {
                    Step::Notify(s, v) => turn.record(Op::Notify { to: Target::Session(name(s)), args: json!([v]) }),
                    Step::NotifyAll(v) => turn.record(Op::Notify { to: Target::parse("s*"), args: json!([v]) }),
                    Step::Limit(s, n) => turn.record(Op::Limit { session: name(s), n }),
                    Step::Ack(s, q) => turn.record(Op::Ack { session: name(s), seq: q }),
                    Step::Begin(s, n) => {
                        let before = model.sessions.get(&name(s)).and_then(|e| e.3);
                        let begun = turn.begin(&name(s), format!("n{n}"));
                        prop_assert_eq!(begun.memento.and_then(|m| m.as_i64()), before);
                    }
                    Step::Remember(s, n, m) => {
                        let current = model.sessions.get(&name(s)).and_then(|e| e.2.clone());
                        let ok = turn.remember(&name(s), &format!("n{n}"), json!(m));
                        prop_assert_eq!(ok, current == Some(format!("n{n}")));
                    }
                    Step::End(s, n) => {
                        let e = model.sessions.get(&name(s)).cloned();
                        let ok = turn.end(&name(s), &format!("n{n}"));
                        let expect = match e {
                            Some((_, _, Some(cur), _)) => cur == format!("n{n}"),
                            Some((_, _, None, memento)) => memento.is_none(),
                            None => true,
                        };
                        prop_assert_eq!(ok, expect);
                    }
                    Step::EndTurn => {
                        model.apply(&turn.pending, &b);
                        turn.fold(&b);
                        t = turn.clone();
                        // Same sessions, same queues, same instances.
                        let got: BTreeMap<String, ModelSession> = t
                            .sessions
                            .iter()
                            .map(|(k, s)| (k.clone(), (
                                s.queue.iter().map(|n| (n.seq, n.args[0].as_i64().unwrap_or(0))).collect(),
                                s.limit,
                                s.nonce.clone(),
                                s.memento.as_ref().and_then(Value::as_i64),
                            )))
                            .collect();
                        prop_assert_eq!(&got, &model.sessions);
                        for s in t.sessions.values() {
                            let seqs: Vec<u64> = s.queue.iter().map(|n| n.seq).collect();
                            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
                        }
                    }
                    Step::AbortTurn => turn = t.clone(),
                }
            }
        }
    }
}
