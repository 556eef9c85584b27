//! Resolving a merged description's env values: environment properties, then links. Pure: the
//! environment is passed in ([`Environment`]), the inputs are never mutated.
//!
//! - `"process.env.NAME||default"` becomes the variable's value, or else the default (a variable
//!   that is unset or blank counts as unset, as JavaScript's `||` does); the chosen text is
//!   trimmed and parsed as JSON, falling back to the plain string. With no default
//!   (`"process.env.NAME"`) and the variable unset, the key is absent (an array item becomes
//!   `null`, since arrays have no holes).
//! - `"$._.env.KEY"` becomes the value of `KEY` in the **top** component's env (after environment
//!   properties), whatever the component's depth; links to links are followed, cycles are errors.
//!
//! Both apply recursively inside arrays and objects, in every component's env.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::description::{ComponentPath, Description};
use crate::error::Error;

/// The prefix of an environment property.
pub const PROPERTY_PREFIX: &str = "process.env.";
/// The prefix of a link to the top component's env.
pub const LINK_PREFIX: &str = "$._.env.";

/// Where environment properties are read from.
pub trait Environment {
    /// The variable's value, if set (and valid Unicode).
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment (`std::env::var`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Environment properties, then links; `file` names the description in errors.
pub fn resolve(
    description: &Description,
    environment: &dyn Environment,
    file: &str,
) -> Result<Description, Error> {
    let with_properties = resolve_properties(description, environment, file)?;
    resolve_links(&with_properties, file)
}

/// Replaces every `"process.env.NAME||default"` value in every component's env.
pub fn resolve_properties(
    description: &Description,
    environment: &dyn Environment,
    file: &str,
) -> Result<Description, Error> {
    let path = ComponentPath::top(&description.name);
    map_envs(description, &path, &mut |env, path| {
        let mut out = Map::new();
        for (key, value) in env {
            let at = Key::new(file, path, key);
            if let Some(value) = property(value, environment, &at)? {
                out.insert(key.clone(), value);
            }
        }
        Ok(out)
    })
}

/// Replaces every `"$._.env.KEY"` value in every component's env by the top env's `KEY`.
pub fn resolve_links(description: &Description, file: &str) -> Result<Description, Error> {
    let top = &description.env;
    let path = ComponentPath::top(&description.name);
    map_envs(description, &path, &mut |env, path| {
        env.iter()
            .map(|(key, value)| {
                let at = Key::new(file, path, key);
                Ok((key.clone(), link(value, top, &at, &mut Vec::new())?))
            })
            .collect()
    })
}

type EnvMapper<'f> =
    dyn FnMut(&Map<String, Value>, &ComponentPath) -> Result<Map<String, Value>, Error> + 'f;

fn map_envs(
    description: &Description,
    path: &ComponentPath,
    f: &mut EnvMapper<'_>,
) -> Result<Description, Error> {
    Ok(Description {
        module: description.module.clone(),
        name: description.name.clone(),
        description: description.description.clone(),
        env: f(&description.env, path)?,
        components: description
            .components
            .iter()
            .map(|child| map_envs(child, &path.child(&child.name), f))
            .collect::<Result<_, _>>()?,
    })
}

/// A key inside a component's env, for error messages: `env.servers[1].port`.
struct Key<'a> {
    file: &'a str,
    path: &'a ComponentPath,
    key: String,
}

impl<'a> Key<'a> {
    fn new(file: &'a str, path: &'a ComponentPath, key: &str) -> Self {
        Key {
            file,
            path,
            key: format!("env.{key}"),
        }
    }

    fn index(&self, index: usize) -> Self {
        Key {
            file: self.file,
            path: self.path,
            key: format!("{}[{index}]", self.key),
        }
    }

    fn field(&self, name: &str) -> Self {
        Key {
            file: self.file,
            path: self.path,
            key: format!("{}.{name}", self.key),
        }
    }

    fn invalid(&self, reason: String) -> Error {
        Error::Invalid {
            file: self.file.to_owned(),
            path: self.path.clone(),
            key: self.key.clone(),
            reason,
        }
    }
}

/// `None` when the value is absent (an unset variable without a default).
fn property(
    value: &Value,
    environment: &dyn Environment,
    at: &Key<'_>,
) -> Result<Option<Value>, Error> {
    match value {
        Value::String(text) => {
            let Some(rest) = text.strip_prefix(PROPERTY_PREFIX) else {
                return Ok(Some(value.clone()));
            };
            let (name, default) = match rest.split_once("||") {
                Some((name, default)) => (name.trim(), Some(default)),
                None => (rest.trim(), None),
            };
            if name.is_empty() {
                return Err(at.invalid(format!(
                    "`{text}` names no variable (expected `{PROPERTY_PREFIX}NAME||default`)"
                )));
            }
            let chosen = environment
                .var(name)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| default.map(str::to_owned));
            Ok(chosen.map(|text| json_else_string(&text)))
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                out.push(property(item, environment, &at.index(index))?.unwrap_or(Value::Null));
            }
            Ok(Some(Value::Array(out)))
        }
        Value::Object(fields) => {
            let mut out = Map::new();
            for (name, field) in fields {
                if let Some(v) = property(field, environment, &at.field(name))? {
                    out.insert(name.clone(), v);
                }
            }
            Ok(Some(Value::Object(out)))
        }
        _ => Ok(Some(value.clone())),
    }
}

/// The text trimmed and parsed as JSON, or else the trimmed text itself.
pub fn json_else_string(text: &str) -> Value {
    let text = text.trim();
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn link(
    value: &Value,
    top: &Map<String, Value>,
    at: &Key<'_>,
    following: &mut Vec<String>,
) -> Result<Value, Error> {
    match value {
        Value::String(text) => {
            let Some(key) = text.strip_prefix(LINK_PREFIX) else {
                return Ok(value.clone());
            };
            if key.is_empty() {
                return Err(at.invalid(format!("`{text}` names no key of the top's env")));
            }
            if following.iter().any(|k| k == key) {
                following.push(key.to_owned());
                return Err(at.invalid(format!(
                    "links form a cycle through the top's env: {}",
                    following.join(" -> ")
                )));
            }
            let Some(target) = top.get(key) else {
                return Err(at.invalid(format!(
                    "`{text}` links to `{key}`, which the top component's env does not have"
                )));
            };
            following.push(key.to_owned());
            let resolved = link(target, top, at, following);
            following.pop();
            resolved
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(index, item)| link(item, top, &at.index(index), following))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| Ok((name.clone(), link(field, top, &at.field(name), following)?)))
            .collect::<Result<_, _>>()
            .map(Value::Object),
        _ => Ok(value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Description {
        match Description::from_value(&value, "base.json") {
            Ok(d) => d,
            Err(e) => panic!("test description is invalid: {e}"),
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn json_else_string_trims_and_falls_back() {
        assert_eq!(json_else_string(" 42 "), json!(42));
        assert_eq!(json_else_string("true"), json!(true));
        assert_eq!(json_else_string("null"), Value::Null);
        assert_eq!(json_else_string("[1, \"a\"]"), json!([1, "a"]));
        assert_eq!(
            json_else_string("{\"a\": {\"b\": 1}}"),
            json!({"a": {"b": 1}})
        );
        assert_eq!(json_else_string("\"quoted\""), json!("quoted"));
        assert_eq!(json_else_string("  plain text "), json!("plain text"));
        assert_eq!(json_else_string("{broken"), json!("{broken"));
    }

    #[test]
    fn properties_use_the_value_else_the_default_else_nothing() -> Result<(), Error> {
        let d = parse(json!({"module": "m", "name": "top", "env": {
            "set": "process.env.SET||1",
            "unset": "process.env.UNSET|| 2 ",
            "blank": "process.env.BLANK||3",
            "absent": "process.env.UNSET",
            "inner": {"list": ["process.env.SET", "process.env.UNSET", 5], "deep": {"x": "process.env.UNSET"}},
            "plain": "not a property",
            "or": "process.env.UNSET||a||b"
        }}));
        let environment = env_of(&[("SET", " {\"k\": [true]} "), ("BLANK", "  ")]);
        let resolved = resolve_properties(&d, &environment, "base.json")?;
        assert_eq!(
            Value::Object(resolved.env),
            json!({"set": {"k": [true]}, "unset": 2, "blank": 3,
                   "inner": {"list": [{"k": [true]}, null, 5], "deep": {}},
                   "plain": "not a property", "or": "a||b"})
        );
        // The input is untouched.
        assert_eq!(d.env["set"], json!("process.env.SET||1"));
        Ok(())
    }

    #[test]
    fn a_property_without_a_name_is_an_error_naming_the_key() {
        let d = parse(json!({"module": "m", "name": "top", "components": [
            {"module": "m", "name": "c", "env": {"a": [0, {"b": "process.env.||x"}]}}
        ]}));
        match resolve_properties(&d, &env_of(&[]), "base.json") {
            Err(Error::Invalid { path, key, .. }) => {
                assert_eq!(
                    (path.to_string(), key),
                    ("top/c".to_owned(), "env.a[1].b".to_owned())
                );
            }
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn links_resolve_against_the_top_env_not_the_parent() -> Result<(), Error> {
        let d = parse(
            json!({"module": "m", "name": "top", "env": {"n": 1, "alias": "$._.env.n", "obj": {"a": [1]}},
            "components": [{"module": "m", "name": "p", "env": {"n": 99}, "components": [
                {"module": "m", "name": "c", "env": {"n": "$._.env.n", "via": "$._.env.alias",
                                                    "nested": ["$._.env.obj", {"x": "$._.env.n"}]}}
            ]}]}),
        );
        let resolved = resolve_links(&d, "base.json")?;
        let c = resolved
            .find(&["p", "c"])
            .map(|c| Value::Object(c.env.clone()));
        assert_eq!(
            c,
            Some(json!({"n": 1, "via": 1, "nested": [{"a": [1]}, {"x": 1}]}))
        );
        assert_eq!(resolved.env["alias"], json!(1));
        Ok(())
    }

    #[test]
    fn broken_links_are_errors_naming_path_and_key() {
        let missing = parse(json!({"module": "m", "name": "top", "components": [
            {"module": "m", "name": "c", "env": {"port": "$._.env.port"}}]}));
        match resolve_links(&missing, "base.json") {
            Err(Error::Invalid {
                path, key, reason, ..
            }) => {
                assert_eq!(
                    (path.to_string(), key),
                    ("top/c".to_owned(), "env.port".to_owned())
                );
                assert!(reason.contains("`port`"), "{reason}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let cycle = parse(
            json!({"module": "m", "name": "top", "env": {"a": "$._.env.b", "b": "$._.env.a"}}),
        );
        assert!(
            matches!(resolve_links(&cycle, "f"), Err(Error::Invalid { reason, .. }) if reason.contains("cycle"))
        );
    }

    #[test]
    fn properties_come_before_links() -> Result<(), Error> {
        let d = parse(
            json!({"module": "m", "name": "top", "env": {"port": "process.env.PORT||80"},
            "components": [{"module": "m", "name": "c", "env": {"port": "$._.env.port"}}]}),
        );
        let resolved = resolve(&d, &env_of(&[("PORT", "8080")]), "base.json")?;
        assert_eq!(resolved.components[0].env["port"], json!(8080));
        Ok(())
    }
}
