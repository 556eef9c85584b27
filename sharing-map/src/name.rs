//! Names of CAs, maps and apps (DESIGN.md §2).
//!
//! A name part is `[a-z0-9]+`, parts are joined by `-`, and a user (owner or publisher) part has at
//! least three characters. Names are short: at most [`MAX_NAME_LEN`] bytes in all.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted name, in bytes, for any kind of name.
pub const MAX_NAME_LEN: usize = 128;
/// Shortest user (owner or publisher) part.
pub const MIN_USER_LEN: usize = 3;

/// Why a name was rejected. The message quotes the name and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: {rule}")]
pub struct NameError {
    /// Which kind of name was being parsed ("CA", "map" or "app").
    pub kind: &'static str,
    /// The rejected input, verbatim.
    pub name: String,
    /// The rule it broke, in words a person can act on.
    pub rule: String,
}

fn split_parts<'a>(
    kind: &'static str,
    name: &'a str,
    expected: &[&str],
) -> Result<Vec<&'a str>, NameError> {
    let fail = |rule: String| NameError {
        kind,
        name: name.to_string(),
        rule,
    };
    let shape = expected.join("-");
    if name.len() > MAX_NAME_LEN {
        return Err(fail(format!(
            "is {} bytes long; names are at most {MAX_NAME_LEN}",
            name.len()
        )));
    }
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() != expected.len() {
        return Err(fail(format!(
            "must have {} parts separated by '-' ({shape}), found {}",
            expected.len(),
            parts.len()
        )));
    }
    for (part, what) in parts.iter().zip(expected) {
        if part.is_empty() {
            return Err(fail(format!("the {what} part is empty (expected {shape})")));
        }
        if let Some(bad) = part
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(fail(format!(
                "the {what} part {part:?} contains {bad:?}; parts may only contain [a-z0-9]"
            )));
        }
    }
    if parts[0].len() < MIN_USER_LEN {
        return Err(fail(format!(
            "the {} part {:?} is shorter than {MIN_USER_LEN} characters",
            expected[0], parts[0]
        )));
    }
    Ok(parts)
}

macro_rules! name_type {
    ($ty:ident, $kind:literal, [$($part:literal),+], $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty {
            full: Arc<str>,
        }

        impl $ty {
            /// Parses and validates a name.
            pub fn parse(name: &str) -> Result<Self, NameError> {
                split_parts($kind, name, &[$($part),+])?;
                Ok(Self { full: Arc::from(name) })
            }

            /// The whole name, as written.
            pub fn as_str(&self) -> &str {
                &self.full
            }

            fn part(&self, index: usize) -> &str {
                self.full.split('-').nth(index).unwrap_or_default()
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.full)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.full)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.full
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.full)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    CaName,
    "CA",
    ["owner", "local"],
    "A Cloud Assistant's name, `owner-local` (e.g. `alice-phone`)."
);
name_type!(
    MapName,
    "map",
    ["owner", "local", "map"],
    "A Sharing Map's name, `owner-local-map` (e.g. `alice-phone-prices`); its writer is the CA `owner-local`."
);
name_type!(
    AppName,
    "app",
    ["publisher", "app"],
    "An app's name, `publisher-app`: every map lives in one app's namespace."
);

impl CaName {
    /// The user who owns this CA.
    pub fn owner(&self) -> &str {
        self.part(0)
    }
    /// The CA's name within its owner.
    pub fn local(&self) -> &str {
        self.part(1)
    }
}

/// The local map name reserved for CAs' private state maps.
pub const PRIVATE_STATE_MAP: &str = "castate";

impl MapName {
    /// The CA that is this map's only writer.
    pub fn writer(&self) -> CaName {
        let end = self.full.rfind('-').unwrap_or(self.full.len());
        CaName {
            full: Arc::from(&self.full[..end]),
        }
    }
    /// The map's own part of the name.
    pub fn local_map(&self) -> &str {
        self.part(2)
    }
    /// Whether this is a CA's private state map (`owner-local-castate`, DESIGN.md §9.2): the
    /// Spine lets only admins (CA hosts) create, read, write or follow one.
    pub fn is_private_state(&self) -> bool {
        self.local_map() == PRIVATE_STATE_MAP
    }
    /// Whether `ca` may write this map.
    pub fn is_written_by(&self, ca: &CaName) -> bool {
        self.full
            .strip_prefix(ca.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// A map's identity: the app whose namespace holds it and its name (a map name is unique within
/// its app only). The Spine's state, the node agent's registry and a resuming subscription all
/// key their maps by it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MapKey {
    /// The app whose namespace holds the map.
    pub app: AppName,
    /// The map's name.
    pub map: MapName,
}

impl MapKey {
    /// The key of `map` in `app`.
    pub fn new(app: AppName, map: MapName) -> Self {
        Self { app, map }
    }
}

impl AppName {
    /// The user who publishes the app.
    pub fn publisher(&self) -> &str {
        self.part(0)
    }
    /// The app's name within its publisher.
    pub fn app(&self) -> &str {
        self.part(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_parse_and_split() -> Result<(), NameError> {
        let ca = CaName::parse("alice-phone")?;
        assert_eq!((ca.owner(), ca.local()), ("alice", "phone"));
        let map = MapName::parse("alice-phone-prices")?;
        assert_eq!(map.writer(), ca);
        assert_eq!(map.local_map(), "prices");
        assert!(map.is_written_by(&ca));
        assert!(!map.is_written_by(&CaName::parse("alice-phon")?));
        assert!(!map.is_written_by(&CaName::parse("bob-phone")?));
        let app = AppName::parse("acme-shop")?;
        assert_eq!((app.publisher(), app.app()), ("acme", "shop"));
        assert_eq!(app.to_string(), "acme-shop");
        Ok(())
    }

    #[test]
    fn errors_quote_the_name_and_the_rule() {
        let cases = [
            ("Alice-phone", "contains 'A'"),
            ("al-phone", "shorter than 3"),
            ("alice", "must have 2 parts"),
            ("alice--x", "must have 2 parts"),
            ("alice-", "local part is empty"),
            ("alice-ph_one", "contains '_'"),
        ];
        for (input, rule) in cases {
            let err = match CaName::parse(input) {
                Err(e) => e.to_string(),
                Ok(n) => panic!("{input} parsed as {n}"),
            };
            assert!(err.contains(&format!("{input:?}")), "{err}");
            assert!(err.contains(rule), "{input}: {err}");
        }
        let long = format!("alice-{}", "a".repeat(MAX_NAME_LEN));
        assert!(CaName::parse(&long).is_err());
        assert!(MapName::parse("alice-phone").is_err());
        assert!(AppName::parse("ab-shop").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Result<MapName, _> = serde_json::from_str("\"bob-tv-x\"");
        assert!(ok.is_ok());
        let bad: Result<MapName, _> = serde_json::from_str("\"bob-tv\"");
        assert!(bad.is_err());
    }
}
