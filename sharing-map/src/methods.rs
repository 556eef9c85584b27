//! Methods: Rhai scripts bound to a map, run sandboxed against a pinned snapshot.
//!
//! A method `{args, body}` is compiled as `fn method(args...) { body }` (once per body; the AST is
//! cached in the entry) and called with `this` bound to a read-only view of the snapshot. Inside
//! the script, `this.get("key")` or `this["key"]` reads a value (`()` when absent),
//! `this.contains("key")`, `this.keys()`, `this.len()` and `this.version()` describe the map. A
//! body may recurse by calling `method(...)` (or `this.method(...)` to keep `this`).
//! Scripts have no I/O: no modules, no `eval`, no printing; operations, call depth, expression
//! depth, strings, arrays and object maps are bounded.

use std::sync::{Arc, OnceLock};

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, Scope};
use serde::{Deserialize, Serialize};

use crate::{Method, MethodError, SharingMap};

const ENTRY_POINT: &str = "method";

/// Bounds on what one method invocation may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodLimits {
    /// Rhai operations per invocation (a loop iteration, a call, an expression step...).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Nesting depth of expressions (checked when compiling).
    pub max_expr_depth: usize,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Largest array a script may build.
    pub max_array_len: usize,
    /// Largest object map a script may build.
    pub max_map_len: usize,
}

impl Default for MethodLimits {
    fn default() -> Self {
        Self {
            max_operations: 100_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_bytes: 64 * 1024,
            max_array_len: 10_000,
            max_map_len: 10_000,
        }
    }
}

/// The read-only view of a snapshot that a script sees as `this`.
#[derive(Clone)]
struct MapView(SharingMap);

fn value_of(view: &mut MapView, key: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    match view.0.get_value(key) {
        Some(v) => rhai::serde::to_dynamic(v),
        None => Ok(Dynamic::UNIT),
    }
}

/// A sandboxed script engine with fixed limits; share one per process (it is `Send + Sync`).
pub struct MethodRuntime {
    engine: Engine,
    limits: MethodLimits,
}

impl std::fmt::Debug for MethodRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodRuntime")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Default for MethodRuntime {
    fn default() -> Self {
        Self::new(MethodLimits::default())
    }
}

/// A Rhai engine with the methods' sandbox: no modules, no `eval`, no output, and `limits`.
/// Map methods run on it, and so do scripted CA apps (`code-map`), each adding its own API.
pub fn sandbox(limits: &MethodLimits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new())
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth)
        .set_max_string_size(limits.max_string_bytes)
        .set_max_array_size(limits.max_array_len)
        .set_max_map_size(limits.max_map_len)
        .on_print(|_| {})
        .on_debug(|_, _, _| {});
    engine.disable_symbol("eval");
    engine
}

impl MethodRuntime {
    /// A runtime enforcing `limits`.
    pub fn new(limits: MethodLimits) -> Self {
        let mut engine = sandbox(&limits);
        engine
            .register_type_with_name::<MapView>("SharingMap")
            .register_fn("get", value_of)
            .register_indexer_get(value_of)
            .register_fn("contains", |m: &mut MapView, key: &str| {
                m.0.contains_key(key)
            })
            .register_fn("keys", |m: &mut MapView| -> rhai::Array {
                m.0.sorted()
                    .into_iter()
                    .map(|(k, _)| Dynamic::from(k.to_string()))
                    .collect()
            })
            .register_fn("len", |m: &mut MapView| m.0.len() as rhai::INT)
            .register_fn("version", |m: &mut MapView| m.0.version() as rhai::INT);
        Self { engine, limits }
    }

    /// A process-wide runtime with default limits.
    pub fn shared_default() -> Arc<MethodRuntime> {
        static DEFAULT: OnceLock<Arc<MethodRuntime>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| Arc::new(MethodRuntime::default()))
            .clone()
    }

    /// The limits this runtime enforces.
    pub fn limits(&self) -> &MethodLimits {
        &self.limits
    }

    /// Compiles a method without running it, reporting script errors (used to reject a broken
    /// method before it is published).
    pub fn check(&self, method: &Method) -> Result<(), MethodError> {
        self.compiled(method).map(|_| ())
    }

    fn compiled(&self, method: &Method) -> Result<Arc<rhai::AST>, MethodError> {
        method.compiled.get_or_init(|| self.compile(method)).clone()
    }

    fn compile(&self, method: &Method) -> Result<Arc<rhai::AST>, MethodError> {
        if let Some(bad) = method.args.iter().find(|a| !is_identifier(a)) {
            return Err(MethodError::Script {
                message: format!("argument name {bad:?} is not an identifier ([a-z_][a-z0-9_]*)"),
                line: None,
                column: None,
            });
        }
        // The body starts on the second line, so reported lines are shifted back by one.
        let source = format!(
            "fn {ENTRY_POINT}({}) {{\n{}\n}}",
            method.args.join(", "),
            method.body
        );
        match self.engine.compile(&source) {
            Ok(ast) => Ok(Arc::new(ast)),
            Err(rhai::ParseError(kind, pos)) => Err(MethodError::Script {
                message: kind.to_string(),
                line: pos.line().map(|l| l.saturating_sub(1)),
                column: pos.position(),
            }),
        }
    }

    /// Runs the method under `key` of `map` with `args`, `this` bound to `map`.
    pub fn invoke(
        &self,
        map: &SharingMap,
        key: &str,
        args: &[serde_json::Value],
    ) -> Result<serde_json::Value, MethodError> {
        let method = match map.get(key) {
            None => {
                return Err(MethodError::Unknown {
                    map: map.name().to_string(),
                    key: key.to_string(),
                    reason: "no such key",
                });
            }
            Some(entry) => entry.as_method().ok_or_else(|| MethodError::Unknown {
                map: map.name().to_string(),
                key: key.to_string(),
                reason: "the key holds data, not a method",
            })?,
        };
        if args.len() != method.args.len() {
            return Err(MethodError::Arity {
                key: key.to_string(),
                expected: method.args.len(),
                got: args.len(),
            });
        }
        let ast = self.compiled(method)?;
        let dyn_args = args
            .iter()
            .map(rhai::serde::to_dynamic)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.runtime_error(*e))?;
        let mut this = Dynamic::from(MapView(map.clone()));
        let options = CallFnOptions::new()
            .eval_ast(false)
            .rewind_scope(true)
            .bind_this_ptr(&mut this);
        let result: Dynamic = self
            .engine
            .call_fn_with_options(options, &mut Scope::new(), &ast, ENTRY_POINT, dyn_args)
            .map_err(|e| self.runtime_error(*e))?;
        rhai::serde::from_dynamic(&result).map_err(|_| MethodError::Script {
            message: format!(
                "the method returned a {} which is not a JSON value",
                result.type_name()
            ),
            line: None,
            column: None,
        })
    }

    fn runtime_error(&self, err: EvalAltResult) -> MethodError {
        let mut root = err;
        while let EvalAltResult::ErrorInFunctionCall(.., inner, _)
        | EvalAltResult::ErrorInModule(.., inner, _) = root
        {
            root = *inner;
        }
        let what = match &root {
            EvalAltResult::ErrorTooManyOperations(_) => Some(format!(
                "more than {} operations",
                self.limits.max_operations
            )),
            EvalAltResult::ErrorStackOverflow(_) => {
                Some(format!("call depth above {}", self.limits.max_call_levels))
            }
            EvalAltResult::ErrorDataTooLarge(what, _) => Some(format!("{what} too large")),
            EvalAltResult::ErrorTooManyVariables(_) => Some(root.to_string()),
            _ => None,
        };
        if let Some(what) = what {
            return MethodError::LimitExceeded { what };
        }
        let pos = root.take_position();
        MethodError::Script {
            message: root.to_string(),
            line: pos.line().map(|l| l.saturating_sub(1)),
            column: pos.position(),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, MapName};
    use serde_json::json;

    fn map_with(entries: Vec<(&str, Entry)>) -> SharingMap {
        let name = MapName::parse("dev-pub-algo").unwrap_or_else(|e| panic!("{e}"));
        SharingMap::with_entries(name, entries.into_iter().map(|(k, e)| (Arc::from(k), e)))
    }

    fn method(args: &[&str], body: &str) -> Entry {
        Entry::method(args.iter().map(|s| s.to_string()).collect(), body)
    }

    #[test]
    fn a_method_reads_this_and_its_arguments() -> Result<(), MethodError> {
        let map = map_with(vec![
            ("rate", Entry::value(json!(3))),
            ("names", Entry::value(json!(["a", "b"]))),
            (
                "price",
                method(&["qty"], "this.get(\"rate\") * qty + this[\"rate\"]"),
            ),
            (
                "info",
                method(
                    &[],
                    "#{ n: this.len(), v: this.version(), k: this.keys(), has: this.contains(\"rate\"), none: this.get(\"zz\") }",
                ),
            ),
        ]);
        let rt = MethodRuntime::default();
        assert_eq!(rt.invoke(&map, "price", &[json!(4)])?, json!(15));
        let info = rt.invoke(&map, "info", &[])?;
        assert_eq!(info["n"], json!(4));
        assert_eq!(info["v"], json!(0));
        assert_eq!(info["has"], json!(true));
        assert_eq!(info["none"], json!(null));
        assert_eq!(info["k"], json!(["info", "names", "price", "rate"]));
        Ok(())
    }

    #[test]
    fn errors_are_distinct() {
        let map = map_with(vec![
            ("data", Entry::value(json!(1))),
            ("bad", method(&[], "let x = ;")),
            ("throws", method(&[], "\nthrow \"no stock\";")),
            ("spin", method(&[], "loop { }")),
            ("deep", method(&["n"], "method(n + 1)")),
            ("big", method(&[], "let s = \"x\"; loop { s += s; }")),
            ("one", method(&["a"], "a")),
        ]);
        let rt = MethodRuntime::default();
        assert!(matches!(
            rt.invoke(&map, "nope", &[]),
            Err(MethodError::Unknown {
                reason: "no such key",
                ..
            })
        ));
        assert!(matches!(
            rt.invoke(&map, "data", &[]),
            Err(MethodError::Unknown { .. })
        ));
        assert!(matches!(
            rt.invoke(&map, "bad", &[]),
            Err(MethodError::Script { line: Some(1), .. })
        ));
        match rt.invoke(&map, "throws", &[]) {
            Err(MethodError::Script { message, line, .. }) => {
                assert!(message.contains("no stock"), "{message}");
                assert_eq!(line, Some(2));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            rt.invoke(&map, "spin", &[]),
            Err(MethodError::LimitExceeded { .. })
        ));
        assert!(matches!(
            rt.invoke(&map, "deep", &[json!(0)]),
            Err(MethodError::LimitExceeded { .. })
        ));
        assert!(matches!(
            rt.invoke(&map, "big", &[]),
            Err(MethodError::LimitExceeded { .. })
        ));
        assert!(matches!(
            rt.invoke(&map, "one", &[]),
            Err(MethodError::Arity {
                expected: 1,
                got: 0,
                ..
            })
        ));
    }

    #[test]
    fn scripts_cannot_reach_io_or_eval() {
        let map = map_with(vec![
            ("imp", method(&[], "import \"std\" as s; 1")),
            ("ev", method(&[], "eval(\"1\")")),
            ("file", method(&[], "open_file(\"/etc/passwd\")")),
            ("p", method(&[], "print(\"leak\"); 7")),
        ]);
        let rt = MethodRuntime::default();
        for key in ["imp", "ev", "file"] {
            assert!(
                matches!(rt.invoke(&map, key, &[]), Err(MethodError::Script { .. })),
                "{key} was not refused"
            );
        }
        // print is swallowed, not written anywhere.
        assert_eq!(rt.invoke(&map, "p", &[]).ok(), Some(json!(7)));
    }

    #[test]
    fn this_is_read_only() -> Result<(), MethodError> {
        let map = map_with(vec![
            ("rate", Entry::value(json!(3))),
            ("m", method(&[], "this = 5; this")),
        ]);
        let rt = MethodRuntime::default();
        assert_eq!(rt.invoke(&map, "m", &[])?, json!(5));
        assert_eq!(map.get_value("rate"), Some(&json!(3)));
        assert_eq!(map.len(), 2);
        Ok(())
    }

    #[test]
    fn compiles_once_per_body() -> Result<(), MethodError> {
        let map = map_with(vec![("m", method(&["x"], "x * 2"))]);
        let rt = MethodRuntime::default();
        let Some(Entry::Method(m)) = map.get("m") else {
            panic!("not a method")
        };
        assert!(m.compiled.get().is_none());
        rt.invoke(&map, "m", &[json!(1)])?;
        let first = m.compiled.get().and_then(|r| r.as_ref().ok()).cloned();
        rt.invoke(&map, "m", &[json!(2)])?;
        let second = m.compiled.get().and_then(|r| r.as_ref().ok()).cloned();
        assert!(matches!((first, second), (Some(a), Some(b)) if Arc::ptr_eq(&a, &b)));
        Ok(())
    }
}
