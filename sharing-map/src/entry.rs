//! What a key holds: a JSON value or a method, never both.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An immutable JSON value, cheap to clone and share between versions.
///
/// In human-readable formats (JSON) it is the value itself; in binary formats it is carried as JSON
/// text, because compact binary formats cannot describe an arbitrary JSON tree on their own.
#[derive(Clone, PartialEq)]
pub struct Json(Arc<serde_json::Value>);

impl Json {
    /// Wraps a value.
    pub fn new(value: serde_json::Value) -> Self {
        Self(Arc::new(value))
    }
    /// The value.
    pub fn get(&self) -> &serde_json::Value {
        &self.0
    }
    /// Size of the value's compact JSON text, the unit size limits are stated in.
    pub fn encoded_len(&self) -> usize {
        // Writing into a counter never fails and never allocates the text.
        let mut counter = ByteCounter(0);
        let _ = serde_json::to_writer(&mut counter, &*self.0);
        counter.0
    }
}

struct ByteCounter(usize);
impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Self::new(v)
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            self.0.serialize(s)
        } else {
            let text = serde_json::to_string(&*self.0).map_err(serde::ser::Error::custom)?;
            s.serialize_str(&text)
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d).map(Json::new)
        } else {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            serde_json::from_str(&text)
                .map(Json::new)
                .map_err(serde::de::Error::custom)
        }
    }
}

/// A method bound to a map: argument names and a Rhai script body.
///
/// The compiled form is cached inside the method, so a body is compiled once however many versions
/// and readers share it.
#[derive(Serialize, Deserialize)]
pub struct Method {
    /// Names the body uses for its arguments, in call order.
    pub args: Vec<String>,
    /// The script; `this` is the pinned snapshot of the map.
    pub body: String,
    #[serde(skip)]
    pub(crate) compiled: OnceLock<Result<Arc<rhai::AST>, crate::MethodError>>,
}

impl Method {
    /// A method with the given argument names and body.
    pub fn new(args: Vec<String>, body: impl Into<String>) -> Self {
        Self {
            args,
            body: body.into(),
            compiled: OnceLock::new(),
        }
    }
    /// Bytes counted against the value size limit.
    pub fn encoded_len(&self) -> usize {
        self.body.len() + self.args.iter().map(|a| a.len() + 1).sum::<usize>()
    }
}

impl Clone for Method {
    fn clone(&self) -> Self {
        Self::new(self.args.clone(), self.body.clone())
    }
}

impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.args == other.args && self.body == other.body
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("args", &self.args)
            .field("body", &self.body)
            .finish()
    }
}

/// The content of one key.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// Data.
    Value(Json),
    /// Code.
    Method(Arc<Method>),
}

impl Entry {
    /// A data entry.
    pub fn value(v: serde_json::Value) -> Self {
        Entry::Value(Json::new(v))
    }
    /// A method entry.
    pub fn method(args: Vec<String>, body: impl Into<String>) -> Self {
        Entry::Method(Arc::new(Method::new(args, body)))
    }
    /// The JSON value, if this is data.
    pub fn as_value(&self) -> Option<&serde_json::Value> {
        match self {
            Entry::Value(v) => Some(v.get()),
            Entry::Method(_) => None,
        }
    }
    /// The method, if this is code.
    pub fn as_method(&self) -> Option<&Method> {
        match self {
            Entry::Value(_) => None,
            Entry::Method(m) => Some(m),
        }
    }
    /// Bytes counted against the value size limit.
    pub fn encoded_len(&self) -> usize {
        match self {
            Entry::Value(v) => v.encoded_len(),
            Entry::Method(m) => m.encoded_len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_form_is_tagged() -> Result<(), serde_json::Error> {
        let v = Entry::value(json!({"a": [1, 2]}));
        assert_eq!(serde_json::to_string(&v)?, r#"{"value":{"a":[1,2]}}"#);
        let m = Entry::method(vec!["x".into()], "x + 1");
        let text = serde_json::to_string(&m)?;
        assert_eq!(text, r#"{"method":{"args":["x"],"body":"x + 1"}}"#);
        assert_eq!(serde_json::from_str::<Entry>(&text)?, m);
        Ok(())
    }

    #[test]
    fn binary_form_round_trips_any_json() -> Result<(), postcard::Error> {
        let v = Entry::value(json!({"n": null, "f": 1.5, "s": "é", "l": [true, {"x": -3}]}));
        let bytes = postcard::to_allocvec(&v)?;
        assert_eq!(postcard::from_bytes::<Entry>(&bytes)?, v);
        Ok(())
    }

    #[test]
    fn encoded_len_is_compact_json_length() {
        let v = Json::new(json!({"k": "abc"}));
        assert_eq!(v.encoded_len(), r#"{"k":"abc"}"#.len());
    }
}
