//! Descriptions (what to build) and deltas (how a template or a spec changes one), parsed from JSON
//! with errors that name the file, the component path and the key.
//!
//! A [`Description`] is complete: every component has a `module` and a `name`. A [`Delta`] is
//! partial: it names components and says what changes (`"module": null` deletes one).

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Error;

/// Where a component sits in its tree: names from the top down, shown as `top/h2/h21`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ComponentPath(Vec<String>);

impl ComponentPath {
    /// The path of a top component.
    pub fn top(name: &str) -> Self {
        ComponentPath(vec![name.to_owned()])
    }

    /// The path of a child of this component.
    pub fn child(&self, name: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(name.to_owned());
        ComponentPath(segments)
    }

    /// The names from the top down.
    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for ComponentPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("<top>");
        }
        f.write_str(&self.0.join("/"))
    }
}

/// A component to build: which factory, under which name, with which env, and its children in
/// creation order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Description {
    /// The factory, as registered (`crate#factory`).
    pub module: String,
    /// Unique among its siblings; how other components find it.
    pub name: String,
    /// Free text for operators.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The factory's arguments.
    pub env: Map<String, Value>,
    /// Children, created in this order before this component.
    pub components: Vec<Description>,
}

/// A change to one optional field of a description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    /// The key is absent: keep what the base has.
    #[default]
    Keep,
    /// The key is `null`.
    Null,
    /// The key has a value.
    Set(T),
}

/// A template delta (`NAME++.json`) or a load's spec: what changes in a description.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    /// `Set` replaces the factory, `Null` deletes the component, `Keep` touches it in place.
    pub module: Patch<String>,
    /// Required for children (that is how they are matched); optional for the top.
    pub name: Option<String>,
    /// `Null` removes the base's text.
    pub description: Patch<String>,
    /// Merged key by key over the base's env; a `null` value stays `null`.
    pub env: Map<String, Value>,
    /// Merged by name over the base's children.
    pub components: Vec<Delta>,
}

const KEYS: [&str; 5] = ["module", "name", "description", "env", "components"];

impl Description {
    /// Parses a description; `file` is only used in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Syntax {
            file: file.to_owned(),
            source,
        })?;
        Self::from_value(&value, file)
    }

    /// Checks and converts a JSON value; `file` is only used in errors.
    pub fn from_value(value: &Value, file: &str) -> Result<Self, Error> {
        let at = Place::top(file, value);
        description(value, &at)
    }

    /// The description as JSON.
    pub fn to_value(&self) -> Value {
        // Serializing plain strings, maps and vectors cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The child with this name, if any.
    pub fn child(&self, name: &str) -> Option<&Description> {
        self.components.iter().find(|c| c.name == name)
    }

    /// The descendant at these names below this component (`["h2", "h21"]`), if any.
    pub fn find(&self, names: &[&str]) -> Option<&Description> {
        names.iter().try_fold(self, |at, name| at.child(name))
    }
}

impl<'de> serde::Deserialize<'de> for Description {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Description::from_value(&value, "<input>").map_err(serde::de::Error::custom)
    }
}

impl Delta {
    /// Parses a delta; `file` is only used in errors.
    pub fn from_json(text: &str, file: &str) -> Result<Self, Error> {
        Self::from_json_for(text, file, None)
    }

    /// Parses a delta meant for a description whose top is `top`, so that errors show paths
    /// from that name even when the delta does not repeat it.
    pub fn from_json_for(text: &str, file: &str, top: Option<&str>) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text).map_err(|source| Error::Syntax {
            file: file.to_owned(),
            source,
        })?;
        Self::from_value_for(&value, file, top)
    }

    /// Checks and converts a JSON value; `file` is only used in errors.
    pub fn from_value(value: &Value, file: &str) -> Result<Self, Error> {
        Self::from_value_for(value, file, None)
    }

    /// Like [`from_value`](Delta::from_value), for a description whose top is `top`.
    pub fn from_value_for(value: &Value, file: &str, top: Option<&str>) -> Result<Self, Error> {
        let mut at = Place::top(file, value);
        if let (Some(top), None) = (top, value.get("name")) {
            at.path = ComponentPath::top(top);
        }
        let delta = delta(value, &at, true)?;
        if delta.module == Patch::Null {
            return Err(at.invalid("module", "the top component cannot be deleted"));
        }
        Ok(delta)
    }
}

/// Where the parser is, for error messages.
struct Place<'a> {
    file: &'a str,
    path: ComponentPath,
}

impl<'a> Place<'a> {
    fn top(file: &'a str, value: &Value) -> Self {
        let name = value.get("name").and_then(Value::as_str).unwrap_or("<top>");
        Place {
            file,
            path: ComponentPath::top(name),
        }
    }

    fn child(&self, index: usize, value: &Value) -> Self {
        let name = match value.get("name").and_then(Value::as_str) {
            Some(name) => name.to_owned(),
            None => format!("components[{index}]"),
        };
        Place {
            file: self.file,
            path: self.path.child(&name),
        }
    }

    fn invalid(&self, key: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            file: self.file.to_owned(),
            path: self.path.clone(),
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

fn object<'v>(value: &'v Value, at: &Place<'_>) -> Result<&'v Map<String, Value>, Error> {
    let Value::Object(object) = value else {
        return Err(at.invalid(
            "",
            format!("a component must be a JSON object, not {value}"),
        ));
    };
    if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(at.invalid(
            unknown,
            format!("unknown key (expected one of {})", KEYS.join(", ")),
        ));
    }
    Ok(object)
}

fn string_patch(
    object: &Map<String, Value>,
    key: &str,
    at: &Place<'_>,
) -> Result<Patch<String>, Error> {
    match object.get(key) {
        None => Ok(Patch::Keep),
        Some(Value::Null) => Ok(Patch::Null),
        Some(Value::String(s)) if s.is_empty() && key != "description" => {
            Err(at.invalid(key, "must not be empty"))
        }
        Some(Value::String(s)) => Ok(Patch::Set(s.clone())),
        Some(other) => Err(at.invalid(key, format!("must be a string, not {other}"))),
    }
}

fn name(object: &Map<String, Value>, at: &Place<'_>) -> Result<Option<String>, Error> {
    match string_patch(object, "name", at)? {
        Patch::Keep => Ok(None),
        Patch::Null => Err(at.invalid("name", "must be a string, not null")),
        Patch::Set(name) if name.contains('/') => Err(at.invalid(
            "name",
            "must not contain `/` (it separates component paths)",
        )),
        Patch::Set(name) => Ok(Some(name)),
    }
}

fn env(object: &Map<String, Value>, at: &Place<'_>) -> Result<Map<String, Value>, Error> {
    match object.get("env") {
        None => Ok(Map::new()),
        Some(Value::Object(env)) => Ok(env.clone()),
        Some(other) => Err(at.invalid("env", format!("must be an object, not {other}"))),
    }
}

fn children<'v>(object: &'v Map<String, Value>, at: &Place<'_>) -> Result<&'v [Value], Error> {
    match object.get("components") {
        None => Ok(&[]),
        Some(Value::Array(children)) => Ok(children),
        Some(other) => Err(at.invalid("components", format!("must be an array, not {other}"))),
    }
}

fn unique<'n>(names: impl Iterator<Item = &'n str>, at: &Place<'_>) -> Result<(), Error> {
    let mut seen = BTreeSet::new();
    for (index, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(at.invalid(
                &format!("components[{index}]"),
                format!("the name `{name}` is used twice among siblings"),
            ));
        }
    }
    Ok(())
}

fn description(value: &Value, at: &Place<'_>) -> Result<Description, Error> {
    let object = object(value, at)?;
    let module = match string_patch(object, "module", at)? {
        Patch::Set(module) => module,
        Patch::Keep => return Err(at.invalid("module", "missing")),
        Patch::Null => return Err(at.invalid("module", "must be a string, not null")),
    };
    let Some(name) = name(object, at)? else {
        return Err(at.invalid("name", "missing"));
    };
    let text = match string_patch(object, "description", at)? {
        Patch::Set(text) => Some(text),
        Patch::Keep | Patch::Null => None,
    };
    let components = children(object, at)?
        .iter()
        .enumerate()
        .map(|(index, child)| description(child, &at.child(index, child)))
        .collect::<Result<Vec<_>, _>>()?;
    unique(components.iter().map(|c| c.name.as_str()), at)?;
    Ok(Description {
        module,
        name,
        description: text,
        env: env(object, at)?,
        components,
    })
}

fn delta(value: &Value, at: &Place<'_>, top: bool) -> Result<Delta, Error> {
    let object = object(value, at)?;
    let name = name(object, at)?;
    if !top && name.is_none() {
        return Err(at.invalid("name", "missing (children of a delta are matched by name)"));
    }
    let components = children(object, at)?
        .iter()
        .enumerate()
        .map(|(index, child)| delta(child, &at.child(index, child), false))
        .collect::<Result<Vec<_>, _>>()?;
    unique(components.iter().filter_map(|c| c.name.as_deref()), at)?;
    Ok(Delta {
        module: string_patch(object, "module", at)?,
        name,
        description: string_patch(object, "description", at)?,
        env: env(object, at)?,
        components,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invalid(result: Result<impl fmt::Debug, Error>) -> (String, String, String) {
        match result {
            Err(Error::Invalid {
                file, path, key, ..
            }) => (file, path.to_string(), key),
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_nested_description_with_defaults() -> Result<(), Error> {
        let d = Description::from_value(
            &json!({"module": "m#top", "name": "top", "components": [
                {"module": "m#a", "name": "a", "env": {"x": 1}},
                {"module": "m#b", "name": "b", "description": "bee"}
            ]}),
            "base.json",
        )?;
        assert_eq!(d.components.len(), 2);
        assert_eq!(d.components[0].env["x"], json!(1));
        assert_eq!(d.components[1].description.as_deref(), Some("bee"));
        assert!(d.env.is_empty());
        assert_eq!(d.find(&["b"]).map(|b| b.module.as_str()), Some("m#b"));
        Ok(())
    }

    #[test]
    fn errors_name_file_path_and_key() {
        let bad_env = json!({"module": "m", "name": "top", "components": [
            {"module": "m", "name": "h2", "components": [
                {"module": "m", "name": "h21", "env": 3}
            ]}
        ]});
        assert_eq!(
            invalid(Description::from_value(&bad_env, "base.json")),
            ("base.json".into(), "top/h2/h21".into(), "env".into())
        );
        let no_module = json!({"module": "m", "name": "top", "components": [{"name": "a"}]});
        assert_eq!(
            invalid(Description::from_value(&no_module, "f")).2,
            "module"
        );
        let no_name = json!({"module": "m", "name": "top", "components": [{"module": "m"}]});
        assert_eq!(
            invalid(Description::from_value(&no_name, "f")).1,
            "top/components[0]"
        );
        let typo = json!({"module": "m", "name": "top", "component": []});
        assert_eq!(invalid(Description::from_value(&typo, "f")).2, "component");
        let twice = json!({"module": "m", "name": "top", "components": [
            {"module": "m", "name": "a"}, {"module": "m", "name": "a"}
        ]});
        assert_eq!(
            invalid(Description::from_value(&twice, "f")).2,
            "components[1]"
        );
        let slash = json!({"module": "m", "name": "a/b"});
        assert_eq!(invalid(Description::from_value(&slash, "f")).2, "name");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        match Description::from_json("{\"module\": ", "broken.json") {
            Err(Error::Syntax { file, .. }) => assert_eq!(file, "broken.json"),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn deltas_distinguish_absent_null_and_set() -> Result<(), Error> {
        let d = Delta::from_value(
            &json!({"env": {"a": null}, "components": [
                {"name": "x", "module": null},
                {"name": "y", "module": "m#y", "description": null},
                {"name": "z"}
            ]}),
            "base++.json",
        )?;
        assert_eq!(d.name, None);
        assert_eq!(d.env["a"], Value::Null);
        assert_eq!(d.components[0].module, Patch::Null);
        assert_eq!(d.components[1].module, Patch::Set("m#y".into()));
        assert_eq!(d.components[1].description, Patch::Null);
        assert_eq!(d.components[2].module, Patch::Keep);
        let unnamed = json!({"components": [{"module": "m"}]});
        assert_eq!(invalid(Delta::from_value(&unnamed, "d")).2, "name");
        let delete_top = json!({"module": null});
        assert_eq!(invalid(Delta::from_value(&delete_top, "d")).2, "module");
        Ok(())
    }

    #[test]
    fn serde_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let value = json!({"module": "m", "name": "top", "env": {"k": [1, "two"]},
                           "components": [{"module": "n", "name": "c", "env": {}, "components": []}]});
        let d: Description = serde_json::from_value(value.clone())?;
        assert_eq!(d.to_value(), value);
        let bad: Result<Description, _> = serde_json::from_value(json!({"name": "top"}));
        assert!(bad.is_err_and(|e| e.to_string().contains("`module`")));
        Ok(())
    }
}
