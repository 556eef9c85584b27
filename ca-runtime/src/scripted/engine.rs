//! The Rhai engine scripted methods run on: the map methods' sandbox (`code_map::sandbox`),
//! `this` and its plugins registered, and an operations budget per *turn*: every method of a
//! multi-call and the hooks run in the same turn draw on one budget ([`Cx::meter`]).
//!
//! One engine serves every app and CA of a host. A call is synchronous: the budget left for
//! the turn is handed to the engine's progress callback through a thread-local for the call's
//! duration (turns never interleave on a thread).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use code_map::{BUDGET_MARKER, CodeError, Compiled, Failure};
use rhai::{CallFnOptions, Dynamic, Engine, Scope};
use serde_json::Value;
use sharing_map::MethodLimits;

use super::api::{self, ScriptPlugin, TurnRef, TurnSide, from_script, to_script};
use super::program::Program;
use crate::app::{Cx, MethodError, MethodResult};
use crate::turn::Sender;

thread_local! {
    /// Operations the running call may still use, and how many it has used.
    static BUDGET: Cell<(u64, u64)> = const { Cell::new((u64::MAX, 0)) };
}

/// `this.code`: the code version the message runs on, and its data entries.
#[derive(Clone, Debug)]
pub struct CodeView(Arc<Program>);

/// The engine of a host's scripted apps.
#[derive(Debug)]
pub struct ScriptEngine {
    engine: Engine,
    limits: MethodLimits,
    plugins: Vec<Box<dyn ScriptPlugin>>,
}

impl ScriptEngine {
    /// An engine enforcing `limits` (operations per turn; the others per call).
    pub fn new(limits: MethodLimits) -> Self {
        let mut engine = code_map::sandbox(&limits);
        engine.on_progress(|count| {
            BUDGET.with(|b| {
                let (allowed, _) = b.get();
                b.set((allowed, count));
                (count > allowed).then(|| Dynamic::from(BUDGET_MARKER))
            })
        });
        register_code(&mut engine);
        let plugins = api::plugins();
        for p in &plugins {
            p.register(&mut engine);
        }
        Self {
            engine,
            limits,
            plugins,
        }
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &MethodLimits {
        &self.limits
    }

    /// Compiles an app's scripts.
    pub fn compile(&self, scripts: &BTreeMap<String, String>) -> Result<Compiled, CodeError> {
        Compiled::new(&self.engine, scripts)
    }

    /// Calls `function` of `program` with `args` (missing ones are `()`), `this` bound to the
    /// CA's context. On success `this.state` becomes the CA's state; `this.scratch` is kept
    /// either way.
    pub fn call(
        &self,
        program: &Arc<Program>,
        cx: &mut Cx<'_>,
        function: &str,
        args: &[Value],
    ) -> MethodResult<Value> {
        let (f, arity) = program
            .compiled
            .resolve(function, args.len())
            .map_err(|e| match e {
                code_map::ResolveError::Unknown(m) => MethodError::UnknownMethod(m),
                other => MethodError::BadArgs(other.to_string()),
            })?;
        let system = function.starts_with(code_map::SYSTEM_PREFIX);
        if !f.public && !system {
            return Err(MethodError::UnknownMethod(format!(
                "{function} (a private fn: not a method clients may call)"
            )));
        }
        let mut dyn_args = Vec::with_capacity(arity);
        for i in 0..arity {
            let arg = match args.get(i) {
                Some(v) => to_script(v)
                    .map_err(|e| MethodError::BadArgs(format!("argument {}: {e}", i + 1)))?,
                None => Dynamic::UNIT,
            };
            dyn_args.push(arg);
        }
        let turn = TurnRef::open(TurnSide::new(
            cx.ca.clone(),
            cx.app.clone(),
            cx.reads.clone(),
            std::mem::take(cx.maps),
            std::mem::take(cx.intents),
            std::mem::take(cx.plugins),
            cx.sender.clone(),
        ));
        let this = self.this(program, cx, &turn);
        let mut this = match this {
            Ok(this) => this,
            Err(e) => {
                give_back(cx, &turn);
                return Err(e);
            }
        };
        let left = self
            .limits
            .max_operations
            .saturating_sub(cx.meter.operations);
        BUDGET.with(|b| b.set((left, 0)));
        let options = CallFnOptions::new()
            .eval_ast(false)
            .rewind_scope(true)
            .bind_this_ptr(&mut this);
        let result = self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &program.compiled.ast,
            function,
            dyn_args,
        );
        let used = BUDGET.with(|b| b.replace((u64::MAX, 0)).1);
        cx.meter.operations = cx.meter.operations.saturating_add(used);
        give_back(cx, &turn);
        let this = this.try_cast::<rhai::Map>();
        if let Some(scratch) = this.as_ref().and_then(|t| t.get("scratch")) {
            *cx.scratch = object(scratch, "this.scratch").map_err(MethodError::Failed)?;
        }
        let value =
            result.map_err(
                |e| match program.compiled.failure(function, &self.limits, *e) {
                    Failure::App(message) => MethodError::App(message),
                    other => MethodError::Failed(other.to_string()),
                },
            )?;
        let state = this
            .as_ref()
            .and_then(|t| t.get("state"))
            .ok_or_else(|| MethodError::Failed("the script replaced `this`".into()))?;
        *cx.state = object(state, "this.state").map_err(MethodError::Failed)?;
        from_script(&value, &format!("the result of {function}")).map_err(MethodError::Failed)
    }

    /// `this` for one call.
    fn this(&self, program: &Arc<Program>, cx: &Cx<'_>, turn: &TurnRef) -> MethodResult<Dynamic> {
        let json = |v: &serde_json::Map<String, Value>, what: &str| {
            rhai::serde::to_dynamic(v).map_err(|e| {
                MethodError::Failed(format!("{what} cannot be given to a script: {e}"))
            })
        };
        let mut this = rhai::Map::new();
        this.insert("state".into(), json(cx.state, "the state")?);
        this.insert("scratch".into(), json(cx.scratch, "the scratch")?);
        this.insert("ca".into(), cx.ca.as_str().into());
        this.insert("app".into(), cx.app.as_str().into());
        let mut sender = rhai::Map::new();
        match cx.sender {
            Sender::Client { session, caller } => {
                sender.insert("kind".into(), "client".into());
                sender.insert("session".into(), session.as_str().into());
                sender.insert("caller".into(), caller.as_str().into());
            }
            Sender::System { by } => {
                sender.insert("kind".into(), "system".into());
                sender.insert("by".into(), by.as_str().into());
            }
        }
        this.insert("sender".into(), sender.into());
        this.insert("code".into(), Dynamic::from(CodeView(program.clone())));
        for p in &self.plugins {
            this.insert(p.property().into(), p.handle(turn));
        }
        Ok(this.into())
    }
}

/// Puts the turn's parts back into the method's context.
fn give_back(cx: &mut Cx<'_>, turn: &TurnRef) {
    let side = turn.close();
    *cx.maps = side.maps;
    *cx.intents = side.intents;
    *cx.plugins = side.plugins;
}

fn object(value: &Dynamic, what: &str) -> Result<serde_json::Map<String, Value>, String> {
    match from_script(value, what)? {
        Value::Object(m) => Ok(m),
        other => Err(format!(
            "{what} must stay an object map, the script made it {other}"
        )),
    }
}

fn register_code(engine: &mut Engine) {
    type Out<T> = Result<T, Box<rhai::EvalAltResult>>;
    engine
        .register_type_with_name::<CodeView>("Code")
        .register_get("version", |c: &mut CodeView| c.0.version as i64)
        .register_get("state_version", |c: &mut CodeView| {
            c.0.state_version().to_string()
        })
        .register_get("digest", |c: &mut CodeView| c.0.published.digest.clone())
        .register_fn("keys", |c: &mut CodeView| -> rhai::Array {
            c.0.package
                .data
                .keys()
                .map(|k| Dynamic::from(k.clone()))
                .collect()
        })
        .register_fn("get", |c: &mut CodeView, name: &str| -> Out<Dynamic> {
            c.0.package
                .data
                .get(name)
                .map_or(Ok(Dynamic::UNIT), to_script)
        })
        .register_fn(
            "get",
            |c: &mut CodeView, name: &str, field: &str| -> Out<Dynamic> {
                c.0.package
                    .data
                    .get(name)
                    .and_then(|v| v.get(field))
                    .map_or(Ok(Dynamic::UNIT), to_script)
            },
        );
}
