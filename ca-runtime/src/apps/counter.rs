//! `counter`: the example app. Each CA keeps a count in its state.
//!
//! Methods:
//! - `increment(n = 1)` → the new count;
//! - `get()` → the count; `state()` → the whole state object;
//! - `share(n = 1)` → increments, and writes the new count to the CA's two Sharing Maps
//!   (`<ca>-counter` and `<ca>-mirror`, key `count`), all in one transaction;
//! - `log(text)` → increments, and records an intent for the `log` plugin (carried out after the
//!   checkpoint, once by its key);
//! - `fail(message)` → increments, then returns an application error (rolled back);
//! - `panic()` → increments, writes the maps, records an intent, then panics (rolled back);
//! - `grow(bytes)` → stores a string of that many bytes (to try the state limit).
//!
//! Reading other writers' maps and aggregates through the node agent (pinned once per message):
//! - `read(map, key)` → `{"version", "value"}` of `key` in map `map` (a full name) as pinned for
//!   this message; a map that does not exist is a `not_found` error;
//! - `read_again(map, key)` → the same, with `"before"`: what the last `read` saw (in a
//!   multi-call `[read, dawdle, read_again]`, both reads of one message);
//! - `dawdle(ms)` → holds the turn for `ms` milliseconds (at most 1000), so that updates can land
//!   in the middle of a message;
//! - `allowed(root, caller)` → whether the aggregate rooted at map `root` grants CA `caller`.
//!
//! Sessions (the `session` plugin, DESIGN.md §9.6):
//! - `notify(text, to = "default")` → queues the notification `[text]` for session `to` (or every
//!   session matching it, with `*`), at commit; returns `[text]`;
//! - `outq(session?)`, `sessions()`, `limit_queue(n, session?)`: the queues as app code sees them;
//! - `buy(nonce, index, item)` → appends `item` to the list `bought()` returns, if `nonce` is the
//!   current exactly-once instance of the caller's session (it `remember`s `index`; a repeat of
//!   an index it already remembered buys nothing); a stale nonce is an app error. The Caf.js
//!   "hellopersistent" pattern: a client that crashed calls `@begin` and goes on after the
//!   memento;
//! - `whoami()` → the message's sender (session and caller);
//! - `acl_versions(root)` → the versions of the maps of aggregate `root` pinned for this message.
//!
//! `__ca_upgrade__` migrates a breaking upward bump (0.1.x → 0.2.0) by recording where it came
//! from; other changes take the default rule.

use semver::Version;
use serde_json::{Value, json};

use crate::app::{App, Cx, MethodError, MethodResult, ReadSpec, arg};
use crate::plugins::session::Sessions;

/// Longest `dawdle`.
const MAX_DAWDLE_MS: u64 = 1000;

/// The counter app.
#[derive(Debug, Clone)]
pub struct Counter {
    version: Version,
}

impl Counter {
    /// The app name it is served under by default.
    pub const APP: &'static str = "demo-counter";

    /// The state version this code declares by default.
    pub fn default_version() -> Version {
        Version::new(0, 1, 0)
    }

    /// The counter, declaring state version `version`.
    pub fn new(version: Version) -> Self {
        Self { version }
    }

    fn add(cx: &mut Cx<'_>, n: i64) -> i64 {
        let count = cx.state.get("count").and_then(Value::as_i64).unwrap_or(0) + n;
        cx.state.insert("count".into(), json!(count));
        count
    }

    fn share(cx: &mut Cx<'_>, count: i64) -> MethodResult<()> {
        for map in ["counter", "mirror"] {
            cx.map(map)?
                .put("count", json!(count))
                .map_err(|e| MethodError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    fn read(cx: &mut Cx<'_>, args: &[Value]) -> MethodResult<Value> {
        let map: String = arg(args, 0, "map")?;
        let key: String = arg(args, 1, "key")?;
        let snapshot = cx.read(&map)?;
        Ok(json!({
            "version": snapshot.version(),
            "value": snapshot.get(&key).cloned().unwrap_or(Value::Null),
        }))
    }
}

impl App for Counter {
    fn state_version(&self) -> Version {
        self.version.clone()
    }

    fn maps(&self) -> Vec<String> {
        vec!["counter".into(), "mirror".into()]
    }

    fn reads_for(&self, method: &str, args: &[Value]) -> Vec<ReadSpec> {
        let first = args.first().and_then(Value::as_str).map(str::to_string);
        match (method, first) {
            ("read" | "read_again", Some(map)) => vec![ReadSpec::Map(map)],
            ("allowed" | "acl_versions", Some(root)) => vec![ReadSpec::Aggregate(root)],
            _ => Vec::new(),
        }
    }

    fn init(&self, cx: &mut Cx<'_>) -> MethodResult<()> {
        cx.state.insert("count".into(), json!(0));
        Ok(())
    }

    fn resume(&self, cx: &mut Cx<'_>) -> MethodResult<()> {
        let n = cx
            .scratch
            .get("resumed")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        cx.scratch.insert("resumed".into(), json!(n + 1));
        Ok(())
    }

    fn upgrade(&self, cx: &mut Cx<'_>, old: &Version, new: &Version) -> Option<MethodResult<()>> {
        // Only a breaking bump upwards needs a migration; the rest takes the default rule.
        let breaking =
            new > old && (new.major != old.major || new.major == 0 && new.minor != old.minor);
        if !breaking {
            return None;
        }
        cx.state
            .insert("upgraded_from".into(), json!(old.to_string()));
        Some(Ok(()))
    }

    fn call(&self, cx: &mut Cx<'_>, method: &str, args: &[Value]) -> MethodResult<Value> {
        match method {
            "increment" => {
                let n: Option<i64> = arg(args, 0, "n")?;
                Ok(json!(Self::add(cx, n.unwrap_or(1))))
            }
            "get" => Ok(cx.state.get("count").cloned().unwrap_or(json!(0))),
            "state" => Ok(Value::Object(cx.state.clone())),
            "share" => {
                let n: Option<i64> = arg(args, 0, "n")?;
                let count = Self::add(cx, n.unwrap_or(1));
                Self::share(cx, count)?;
                Ok(json!(count))
            }
            "log" => {
                let text: String = arg(args, 0, "text")?;
                let count = Self::add(cx, 1);
                cx.intent("log", json!({"text": text, "count": count}));
                Ok(json!(count))
            }
            "fail" => {
                let message: String = arg(args, 0, "message")?;
                let count = Self::add(cx, 1);
                Self::share(cx, count)?;
                Err(MethodError::App(message))
            }
            "panic" => {
                let count = Self::add(cx, 1);
                Self::share(cx, count)?;
                cx.intent("log", json!({"text": "never", "count": count}));
                panic!("the counter panicked on purpose at {count}");
            }
            "grow" => {
                let bytes: usize = arg(args, 0, "bytes")?;
                cx.state.insert("blob".into(), json!("x".repeat(bytes)));
                Ok(json!(bytes))
            }
            "read" => {
                let seen = Self::read(cx, args)?;
                cx.scratch.insert("last_read".into(), seen.clone());
                Ok(seen)
            }
            "read_again" => {
                let mut seen = Self::read(cx, args)?;
                let before = cx.scratch.get("last_read").cloned().unwrap_or(Value::Null);
                seen["before"] = before;
                Ok(seen)
            }
            "dawdle" => {
                let ms: u64 = arg(args, 0, "ms")?;
                let ms = ms.min(MAX_DAWDLE_MS);
                let nap = || std::thread::sleep(std::time::Duration::from_millis(ms));
                // A turn that blocks tells a multi-threaded runtime, so the host's other tasks
                // (other CAs, the agent, the committer) move to another thread meanwhile.
                let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
                if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
                    tokio::task::block_in_place(nap);
                } else {
                    nap();
                }
                Ok(json!(ms))
            }
            "allowed" => {
                let root: String = arg(args, 0, "root")?;
                let caller: String = arg(args, 1, "caller")?;
                let caller = sharing_map::CaName::parse(&caller)
                    .map_err(|e| MethodError::BadArgs(e.to_string()))?;
                Ok(json!(cx.check(&root, &caller)?))
            }
            "notify" => {
                let text: Value = args.first().cloned().unwrap_or(Value::Null);
                let to: Option<String> = arg(args, 1, "to")?;
                let args = json!([text]);
                Sessions::of(cx).notify(args.clone(), to.as_deref().unwrap_or("default"))?;
                Ok(args)
            }
            "outq" => {
                let session: Option<String> = arg(args, 0, "session")?;
                let queue = Sessions::of(cx).outq(session.as_deref())?;
                serde_json::to_value(queue).map_err(|e| MethodError::Failed(e.to_string()))
            }
            "sessions" => Ok(json!(Sessions::of(cx).all_session_ids()?)),
            "limit_queue" => {
                let n: i64 = arg(args, 0, "n")?;
                let session: Option<String> = arg(args, 1, "session")?;
                Sessions::of(cx).limit_queue(n, session.as_deref())?;
                Ok(Value::Null)
            }
            "buy" => {
                let nonce: String = arg(args, 0, "nonce")?;
                let index: u64 = arg(args, 1, "index")?;
                let item: String = arg(args, 2, "item")?;
                let mut sessions = Sessions::of(cx);
                let done = sessions.memento(&nonce)?.and_then(|m| m.as_u64());
                if !sessions.remember(&nonce, json!(index))? {
                    return Err(MethodError::App(format!(
                        "not buying {item} ({index}): nonce {nonce} is not the session's current instance"
                    )));
                }
                // A repeat of a buy that committed (a call retried after its answer was lost)
                // buys nothing more: the instance remembers how far it got.
                if done.is_some_and(|d| index <= d) {
                    return Ok(json!({"index": index, "repeat": true}));
                }
                let bought = cx.state.entry("bought").or_insert_with(|| json!([]));
                if let Value::Array(list) = bought {
                    list.push(json!(item));
                }
                Ok(json!({"index": index, "repeat": false}))
            }
            "bought" => Ok(cx.state.get("bought").cloned().unwrap_or(json!([]))),
            "whoami" => Ok(match cx.sender() {
                crate::turn::Sender::Client { session, caller } => {
                    json!({"session": session, "caller": caller.as_str()})
                }
                crate::turn::Sender::System { by } => json!({"system": by}),
            }),
            "acl_versions" => {
                let root: String = arg(args, 0, "root")?;
                let versions: serde_json::Map<String, Value> = cx
                    .aggregate(&root)?
                    .version_vector()
                    .into_iter()
                    .map(|(m, v)| (m.to_string(), json!(v)))
                    .collect();
                Ok(Value::Object(versions))
            }
            other => Err(MethodError::UnknownMethod(other.to_string())),
        }
    }
}
