//! `this.session`: the `session` plugin in scripts (DESIGN.md §9.6), the same operations as
//! [`Sessions`] in Rust. Effects take place when the turn commits; reads see the sessions as
//! the turns before left them.
//! - `notify(args)` to this message's session, `notify(args, to)` to session `to` or, if `to`
//!   holds a `*`, to every existing session it matches (`args`: an array, or one value);
//! - `session_id()` (`()` if the system sent the message), `all_session_ids()`;
//! - `outq()`, `outq(session)`: queued notifications, oldest first (`#{seq, args}`);
//! - `limit_queue(n)`, `limit_queue(n, session)`: keep the newest `n` (`n ≤ 0`: unbounded);
//! - exactly-once requests: `begin()` → `#{nonce, memento}`, `remember(nonce, memento)` →
//!   `false` for a stale instance (throw then, so the turn aborts), `memento(nonce)`,
//!   `end(nonce)`.

use rhai::{Array, Dynamic, Engine, EvalAltResult};
use serde_json::Value;

use super::{ScriptPlugin, TurnRef, TurnSide, from_script, to_script};
use crate::app::MethodResult;
use crate::plugins::session::{NAME, Sessions};

/// `this.session`.
#[derive(Clone, Debug)]
pub struct Session(TurnRef);

/// Registers `this.session`.
#[derive(Debug)]
pub struct SessionApi;

type Out<T> = Result<T, Box<EvalAltResult>>;

impl Session {
    /// Runs `f` on the CA's sessions for this message.
    fn with<T>(&self, f: impl FnOnce(&mut Sessions<'_>) -> MethodResult<T>) -> Out<T> {
        self.0.with(|t: &mut TurnSide| {
            let mut sessions = Sessions::over(&mut t.plugins, &t.sender);
            f(&mut sessions).map_err(|e| e.to_string())
        })
    }
}

fn json(value: &Dynamic, what: &str) -> Out<Value> {
    from_script(value, what).map_err(Into::into)
}

fn script<T: serde::Serialize>(value: &T) -> Out<Dynamic> {
    let value = serde_json::to_value(value).map_err(|e| e.to_string())?;
    to_script(&value)
}

impl ScriptPlugin for SessionApi {
    fn property(&self) -> &'static str {
        NAME
    }

    fn handle(&self, turn: &TurnRef) -> Dynamic {
        Dynamic::from(Session(turn.clone()))
    }

    fn register(&self, engine: &mut Engine) {
        engine
            .register_type_with_name::<Session>("Session")
            .register_fn("notify", |s: &mut Session, args: Dynamic| -> Out<()> {
                let args = json(&args, "the notification")?;
                s.with(|x| {
                    let to = x.session_id().ok_or_else(|| {
                        crate::app::MethodError::Failed(
                            "notify(args) goes to the message's session, and the system sent \
                             this one: name a session"
                                .into(),
                        )
                    })?;
                    x.notify(args, &to)
                })
            })
            .register_fn(
                "notify",
                |s: &mut Session, args: Dynamic, to: &str| -> Out<()> {
                    let args = json(&args, "the notification")?;
                    s.with(|x| x.notify(args, to))
                },
            )
            .register_fn("session_id", |s: &mut Session| -> Out<Dynamic> {
                Ok(s.with(|x| Ok(x.session_id()))?
                    .map_or(Dynamic::UNIT, Dynamic::from))
            })
            .register_fn("all_session_ids", |s: &mut Session| -> Out<Array> {
                let ids = s.with(|x| x.all_session_ids())?;
                Ok(ids.into_iter().map(Dynamic::from).collect())
            })
            .register_fn("outq", |s: &mut Session| -> Out<Dynamic> {
                script(&s.with(|x| x.outq(None))?)
            })
            .register_fn("outq", |s: &mut Session, session: &str| -> Out<Dynamic> {
                script(&s.with(|x| x.outq(Some(session)))?)
            })
            .register_fn("limit_queue", |s: &mut Session, n: i64| -> Out<()> {
                s.with(|x| x.limit_queue(n, None))
            })
            .register_fn(
                "limit_queue",
                |s: &mut Session, n: i64, session: &str| -> Out<()> {
                    s.with(|x| x.limit_queue(n, Some(session)))
                },
            )
            .register_fn("begin", |s: &mut Session| -> Out<Dynamic> {
                script(&s.with(|x| x.begin())?)
            })
            .register_fn(
                "remember",
                |s: &mut Session, nonce: &str, memento: Dynamic| -> Out<bool> {
                    let memento = json(&memento, "the memento")?;
                    s.with(|x| x.remember(nonce, memento))
                },
            )
            .register_fn("memento", |s: &mut Session, nonce: &str| -> Out<Dynamic> {
                match s.with(|x| x.memento(nonce))? {
                    Some(m) => to_script(&m),
                    None => Ok(Dynamic::UNIT),
                }
            })
            .register_fn("end", |s: &mut Session, nonce: &str| -> Out<bool> {
                s.with(|x| x.end(nonce))
            });
    }
}
