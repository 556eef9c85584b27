//! Compiling an app's scripts, and telling what went wrong when they run.
//!
//! Each script file is compiled on its own (so an error names its file and line), must hold
//! only `fn` definitions (top-level statements would never run), and the files' functions are
//! merged into one program. A function's name is unique across files, so an error inside a
//! function names the file it came from. System hooks (`__ca_init__`, `__ca_resume__`,
//! `__ca_upgrade__(old, new)`, `__ca_pulse__`) must take the arguments the runtime passes.
//!
//! The sandbox is the one of map methods (DESIGN.md §3): no modules, no `eval`, no printing;
//! operations, call depth, expression depth, strings, arrays and object maps bounded
//! ([`MethodLimits`]).

use std::collections::BTreeMap;

use rhai::{AST, Engine, EvalAltResult, FnAccess, Position};
use sharing_map::MethodLimits;

use crate::CodeError;

/// The system hooks a script may define, with the number of arguments each takes.
pub const HOOKS: [(&str, usize); 4] = [
    ("__ca_init__", 0),
    ("__ca_resume__", 0),
    ("__ca_upgrade__", 2),
    ("__ca_pulse__", 0),
];
/// The prefix of system methods.
pub const SYSTEM_PREFIX: &str = "__ca_";
/// The key of an object a script throws to refuse a call (an application error):
/// `throw #{app_error: "out of stock"}`.
pub const APP_ERROR_KEY: &str = "app_error";
/// The marker of a turn's exhausted operations budget (the runtime's `on_progress`).
pub const BUDGET_MARKER: &str = "__ca_operations_budget__";

/// The sandboxed engine scripts compile and run on, before the runtime registers its API.
pub fn sandbox(limits: &MethodLimits) -> Engine {
    let mut engine = sharing_map::sandbox(limits);
    // `app_error(message)` builds what a script throws to refuse a call.
    engine.register_fn("app_error", |message: rhai::Dynamic| {
        let mut m = rhai::Map::new();
        m.insert(APP_ERROR_KEY.into(), message);
        m
    });
    engine
}

/// One function of the program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// The file it is defined in.
    pub file: String,
    /// Its parameters.
    pub params: Vec<String>,
    /// Whether clients may call it (not `private`, not a system hook).
    pub public: bool,
}

/// An app's scripts, compiled once and shared by every CA running that version.
#[derive(Debug)]
pub struct Compiled {
    /// The merged program.
    pub ast: AST,
    /// Its functions by name (one per arity, sorted by arity).
    pub functions: BTreeMap<String, Vec<Function>>,
}

/// Where a script failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Place {
    /// The file.
    pub file: Option<String>,
    /// The line in it, from 1.
    pub line: Option<usize>,
    /// The function.
    pub function: Option<String>,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(file) = &self.file {
            parts.push(match self.line {
                Some(line) => format!("{file}:{line}"),
                None => file.clone(),
            });
        }
        if let Some(function) = &self.function {
            parts.push(format!("in fn {function}"));
        }
        if parts.is_empty() {
            Ok(())
        } else {
            write!(f, " ({})", parts.join(", "))
        }
    }
}

/// How a call of a script failed: the two rungs of the error ladder a script can reach.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The script refused the call (`throw #{app_error: ...}`): an application error.
    #[error("{0}")]
    App(String),
    /// The script hit a sandbox limit: an exception.
    #[error("limit exceeded: {what}{at}")]
    Limit {
        /// Which limit.
        what: String,
        /// Where.
        at: Place,
    },
    /// The script failed (a runtime error, or a `throw` of anything else): an exception.
    #[error("script error: {message}{at}")]
    Script {
        /// Rhai's message.
        message: String,
        /// Where.
        at: Place,
    },
}

impl Compiled {
    /// Compiles `scripts` (file name → text) with `engine`.
    pub fn new(engine: &Engine, scripts: &BTreeMap<String, String>) -> Result<Self, CodeError> {
        let mut merged = AST::empty();
        let mut functions: BTreeMap<String, Vec<Function>> = BTreeMap::new();
        for (file, text) in scripts {
            let ast = engine
                .compile(text)
                .map_err(|rhai::ParseError(kind, pos)| CodeError::Script {
                    file: file.clone(),
                    line: pos.line(),
                    message: kind.to_string(),
                })?;
            if let Some(line) = first_statement(&ast) {
                return Err(CodeError::Script {
                    file: file.clone(),
                    line,
                    message: "a script holds only `fn` definitions: top-level statements never run (move them into a function)".into(),
                });
            }
            for f in ast.iter_functions() {
                let name = f.name.to_string();
                if let Some(other) = functions
                    .get(&name)
                    .and_then(|v| v.iter().find(|o| &o.file != file))
                {
                    return Err(CodeError::Script {
                        file: file.clone(),
                        line: None,
                        message: format!(
                            "fn {name} is also defined in {}: a function's name is unique across the app's files",
                            other.file
                        ),
                    });
                }
                let params: Vec<String> = f.params.iter().map(|p| p.to_string()).collect();
                if name.starts_with(SYSTEM_PREFIX) {
                    match HOOKS.iter().find(|(hook, _)| *hook == name) {
                        Some((_, n)) if *n == params.len() => {}
                        Some((_, n)) => {
                            return Err(CodeError::Script {
                                file: file.clone(),
                                line: None,
                                message: format!(
                                    "fn {name} must take {n} arguments, not {}",
                                    params.len()
                                ),
                            });
                        }
                        None => {
                            return Err(CodeError::Script {
                                file: file.clone(),
                                line: None,
                                message: format!(
                                    "fn {name}: {SYSTEM_PREFIX}* names are reserved for the system hooks ({})",
                                    HOOKS.map(|(h, _)| h).join(", ")
                                ),
                            });
                        }
                    }
                }
                let public = f.access == FnAccess::Public && !name.starts_with(SYSTEM_PREFIX);
                let list = functions.entry(name).or_default();
                list.push(Function {
                    file: file.clone(),
                    params,
                    public,
                });
                list.sort_by_key(|f| f.params.len());
            }
            merged.combine(ast);
        }
        Ok(Self {
            ast: merged,
            functions,
        })
    }

    /// Whether hook (or function) `name` is defined.
    pub fn has(&self, name: &str) -> bool {
        self.functions.contains_key(name)
    }

    /// The function a call of `name` with `given` arguments runs, and how many arguments to pass
    /// (missing ones are `()`): the one of that arity, else the one taking the fewest more.
    pub fn resolve(&self, name: &str, given: usize) -> Result<(&Function, usize), ResolveError> {
        let list = self
            .functions
            .get(name)
            .ok_or_else(|| ResolveError::Unknown(name.to_string()))?;
        list.iter()
            .find(|f| f.params.len() >= given)
            .map(|f| (f, f.params.len()))
            .ok_or_else(|| ResolveError::Arity {
                name: name.to_string(),
                takes: list.last().map_or(0, |f| f.params.len()),
                given,
            })
    }

    /// What a failed call of `entry` means: an application error, a limit, or a script error,
    /// with the file and line it happened at.
    pub fn failure(&self, entry: &str, limits: &MethodLimits, err: EvalAltResult) -> Failure {
        let mut root = err;
        let mut function = entry.to_string();
        while let EvalAltResult::ErrorInFunctionCall(name, _, inner, _) = root {
            function = name;
            root = *inner;
        }
        let file = self
            .functions
            .get(&function)
            .and_then(|v| v.first())
            .map(|f| f.file.clone());
        let at = |pos: Position| Place {
            file: file.clone(),
            line: pos.line(),
            function: Some(function.clone()),
        };
        match root {
            EvalAltResult::ErrorRuntime(value, pos) => {
                if let Some(map) = value.read_lock::<rhai::Map>()
                    && let Some(message) = map.get(APP_ERROR_KEY)
                {
                    return Failure::App(match message.clone().into_string() {
                        Ok(s) => s,
                        Err(_) => rhai::serde::from_dynamic::<serde_json::Value>(message)
                            .map(|v| v.to_string())
                            .unwrap_or_else(|_| message.to_string()),
                    });
                }
                Failure::Script {
                    message: format!("the script threw {value}"),
                    at: at(pos),
                }
            }
            EvalAltResult::ErrorTooManyOperations(pos) => Failure::Limit {
                what: format!("more than {} operations", limits.max_operations),
                at: at(pos),
            },
            EvalAltResult::ErrorTerminated(token, pos)
                if token.clone().into_string().ok().as_deref() == Some(BUDGET_MARKER) =>
            {
                Failure::Limit {
                    what: format!("more than {} operations in one turn", limits.max_operations),
                    at: at(pos),
                }
            }
            EvalAltResult::ErrorStackOverflow(pos) => Failure::Limit {
                what: format!("call depth above {}", limits.max_call_levels),
                at: at(pos),
            },
            EvalAltResult::ErrorDataTooLarge(what, pos) => Failure::Limit {
                what: format!(
                    "{what} too large (strings up to {} bytes, arrays and maps up to {} and {} items)",
                    limits.max_string_bytes, limits.max_array_len, limits.max_map_len
                ),
                at: at(pos),
            },
            other => {
                let pos = other.position();
                Failure::Script {
                    message: strip_position(&other.to_string()),
                    at: at(pos),
                }
            }
        }
    }
}

/// Rhai's messages end with ` (line L, position P)`; the [`Place`] says it instead.
fn strip_position(text: &str) -> String {
    match text.rfind(" (line ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text.to_string(),
    }
}

/// Why a call cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No such function.
    #[error("the app has no method {0:?}")]
    Unknown(String),
    /// Too many arguments.
    #[error("{name} takes at most {takes} arguments, got {given}")]
    Arity {
        /// The function.
        name: String,
        /// Most arguments any of its definitions takes.
        takes: usize,
        /// Arguments given.
        given: usize,
    },
}

/// The line of the first top-level statement of `ast`, if it has one: running only its
/// statements on an engine that stops at the first operation tells, without running anything.
fn first_statement(ast: &AST) -> Option<Option<usize>> {
    let mut probe = Engine::new_raw();
    probe.on_progress(|_| Some(rhai::Dynamic::UNIT));
    match probe.run_ast(&ast.clone_statements_only()) {
        Ok(()) => None,
        Err(e) => Some(e.position().line()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(files: &[(&str, &str)]) -> Result<Compiled, CodeError> {
        let scripts = files
            .iter()
            .map(|(f, t)| (f.to_string(), t.to_string()))
            .collect();
        Compiled::new(&sandbox(&MethodLimits::default()), &scripts)
    }

    #[test]
    fn broken_scripts_are_refused_with_their_file_and_line() {
        for (files, needle) in [
            (vec![("a.rhai", "fn a() {\n  let x = ;\n}")], "a.rhai:2"),
            (vec![("a.rhai", "fn a() { 1 }\nlet x = 1;")], "a.rhai:2"),
            (
                vec![("a.rhai", "fn a() { 1 }"), ("b.rhai", "fn a() { 2 }")],
                "also defined in a.rhai",
            ),
            (
                vec![("a.rhai", "fn __ca_upgrade__(x) { 1 }")],
                "2 arguments",
            ),
            (vec![("a.rhai", "fn __ca_other__() { 1 }")], "reserved"),
        ] {
            let e = compile(&files).expect_err(needle);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn calls_resolve_by_name_and_arity_and_private_functions_are_not_methods() {
        let c = compile(&[
            ("a.rhai", "fn inc(n) { n }\nprivate fn helper() { 1 }"),
            (
                "b.rhai",
                "fn __ca_init__() { 0 }\nfn two(a, b) { a }\nfn two() { 0 }",
            ),
        ])
        .expect("compiles");
        assert!(c.functions["inc"][0].public);
        assert!(!c.functions["helper"][0].public);
        assert!(!c.functions["__ca_init__"][0].public);
        assert_eq!(c.resolve("inc", 0).map(|(_, n)| n), Ok(1));
        assert_eq!(c.resolve("two", 0).map(|(_, n)| n), Ok(0));
        assert_eq!(c.resolve("two", 1).map(|(_, n)| n), Ok(2));
        assert!(matches!(
            c.resolve("two", 3),
            Err(ResolveError::Arity { takes: 2, .. })
        ));
        assert!(matches!(
            c.resolve("nope", 0),
            Err(ResolveError::Unknown(_))
        ));
    }

    #[test]
    fn failures_are_application_errors_limits_or_script_errors_with_their_place() {
        let limits = MethodLimits::default();
        let engine = sandbox(&limits);
        let scripts = [
            (
                "shop.rhai".to_string(),
                "fn buy() {\n  throw app_error(\"no stock\");\n}\nfn odd() {\n  throw \"odd\";\n}\nfn outer() {\n  inner()\n}\nfn spin() { loop {} }"
                    .to_string(),
            ),
            (
                "util.rhai".to_string(),
                "private fn inner() {\n  let x = 1;\n  x.missing()\n}\nfn deep(n) { deep(n + 1) }\nfn big() { let s = \"x\"; loop { s += s; } }"
                    .to_string(),
            ),
        ]
        .into();
        let c = Compiled::new(&engine, &scripts).expect("compiles");
        let run = |f: &str, args: Vec<rhai::Dynamic>| {
            let e = engine
                .call_fn::<rhai::Dynamic>(&mut rhai::Scope::new(), &c.ast, f, args)
                .expect_err("fails");
            c.failure(f, &limits, *e)
        };
        assert_eq!(run("buy", vec![]), Failure::App("no stock".into()));
        match run("odd", vec![]) {
            Failure::Script { message, at } => {
                assert!(message.contains("odd"), "{message}");
                assert_eq!((at.file.as_deref(), at.line), (Some("shop.rhai"), Some(5)));
            }
            other => panic!("{other:?}"),
        }
        let inner = run("outer", vec![]);
        assert!(
            inner.to_string().contains("util.rhai:3") && inner.to_string().contains("fn inner"),
            "{inner}"
        );
        for (f, args, needle) in [
            ("spin", vec![], "operations"),
            ("deep", vec![rhai::Dynamic::from(0_i64)], "call depth"),
            ("big", vec![], "too large"),
        ] {
            match run(f, args) {
                Failure::Limit { what, .. } => assert!(what.contains(needle), "{f}: {what}"),
                other => panic!("{f}: {other:?}"),
            }
        }
    }
}
