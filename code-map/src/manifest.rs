//! The app manifest (`app.json`): the app's name, the state version its code reads and writes,
//! settings, and what its CAs write and read besides their state.

use semver::Version;
use serde::{Deserialize, Serialize};
use sharing_map::{AppName, MapName};

use crate::CodeError;

/// Local map names a scripted app may not declare: `code` would let CA `acme-shop` of app
/// `acme-shop` write its own app's code map; `castate` is every CA's private state.
pub const RESERVED_MAPS: [&str; 2] = ["code", sharing_map::PRIVATE_STATE_MAP];

/// What `app.json` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The app, `publisher-app` (`acme-shop`): its code map is `acme-shop-code` in that app.
    pub app: String,
    /// The version (semver) of the state layout this code reads and writes. A CA checkpointed
    /// by another version runs `__ca_upgrade__(old, new)` before its next message.
    pub state_version: Version,
    /// What the app is, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Settings of the runtime's plugins for this app.
    #[serde(default, skip_serializing_if = "Settings::is_empty")]
    pub settings: Settings,
    /// Local names of the Sharing Maps each CA writes (`orders` is `alice-phone-orders` for CA
    /// `alice-phone`), committed with its turns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<String>,
    /// Maps of other writers every message reads (pinned once per message); `{ca}` and
    /// `{owner}` stand for the CA's name and its owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<String>,
    /// Aggregates (roots of linked ACL maps) every message reads, named like `reads`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregates: Vec<String>,
}

/// Per-app settings of the runtime's plugins. They travel with the code (a publish changes
/// them atomically with it); each plugin reads its own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How often `__ca_pulse__` runs, in milliseconds (the timers plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulse_ms: Option<u64>,
    /// Most notifications queued per session (the session plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<u64>,
}

impl Settings {
    fn is_empty(&self) -> bool {
        self == &Settings::default()
    }
}

impl Manifest {
    /// Parses and checks `app.json`'s text (`source` names it in errors).
    pub fn parse(text: &str, source: &str) -> Result<Self, CodeError> {
        let bad = |reason: String| CodeError::Manifest {
            source_name: source.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(v) = value.get("state_version").and_then(|v| v.as_str()) {
            Version::parse(v).map_err(|e| {
                bad(format!(
                    "state_version {v:?} is not a semver version such as 1.0.0: {e}"
                ))
            })?;
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        manifest.check(source)?;
        Ok(manifest)
    }

    /// The app's name, parsed.
    pub fn app_name(&self) -> Result<AppName, CodeError> {
        AppName::parse(&self.app).map_err(|e| CodeError::Manifest {
            source_name: "app".into(),
            reason: e.to_string(),
        })
    }

    /// Checks names: the app, the maps (valid local names, none reserved), the reads (valid
    /// map names once `{ca}` and `{owner}` are filled in).
    pub fn check(&self, source: &str) -> Result<(), CodeError> {
        let bad = |reason: String| CodeError::Manifest {
            source_name: source.to_string(),
            reason,
        };
        let app = AppName::parse(&self.app).map_err(|e| bad(e.to_string()))?;
        // A name of the app's shape stands for any CA's: the rules are the same.
        let sample_ca = format!("{app}");
        let owner = app.as_str().split('-').next().unwrap_or_default();
        for local in &self.maps {
            if RESERVED_MAPS.contains(&local.as_str()) {
                return Err(bad(format!(
                    "maps: {local:?} is reserved (the app's code map, or a CA's private state)"
                )));
            }
            MapName::parse(&format!("{sample_ca}-{local}"))
                .map_err(|e| bad(format!("maps: {local:?} is not a local map name: {e}")))?;
        }
        for (what, patterns) in [("reads", &self.reads), ("aggregates", &self.aggregates)] {
            for pattern in patterns {
                let name = pattern
                    .replace("{ca}", &sample_ca)
                    .replace("{owner}", owner);
                let map =
                    MapName::parse(&name).map_err(|e| bad(format!("{what}: {pattern:?}: {e}")))?;
                if map.is_private_state() {
                    return Err(bad(format!(
                        "{what}: {pattern:?} names a CA's private state map, which no app may read"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The code map of this app: `<app>-code`.
    pub fn code_map(&self) -> Result<MapName, CodeError> {
        code_map_of(&self.app_name()?)
    }
}

/// The code map of `app`: map `code` of CA `<app>` (`acme-shop-code` for `acme-shop`), written
/// only with a token that speaks for that CA.
pub fn code_map_of(app: &AppName) -> Result<MapName, CodeError> {
    MapName::parse(&format!("{app}-code")).map_err(|e| CodeError::Manifest {
        source_name: "app".into(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_names_its_app_and_state_version_and_refuses_what_it_cannot_be() {
        let m = Manifest::parse(
            r#"{"app": "acme-shop", "state_version": "1.2.0", "maps": ["orders"],
                "reads": ["{owner}-shop-prices"], "settings": {"pulse_ms": 1000}}"#,
            "app.json",
        )
        .expect("parses");
        assert_eq!(m.code_map().expect("name").as_str(), "acme-shop-code");
        assert_eq!(m.settings.pulse_ms, Some(1000));
        for (text, needle) in [
            (r#"{"app": "Acme", "state_version": "1.0.0"}"#, "Acme"),
            (
                r#"{"app": "acme-shop", "state_version": "one"}"#,
                "state_version",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "extra": 1}"#,
                "extra",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "maps": ["code"]}"#,
                "reserved",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "maps": ["a-b"]}"#,
                "a-b",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "reads": ["x"]}"#,
                "\"x\"",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "reads": ["{ca}-castate"]}"#,
                "private state",
            ),
            (
                r#"{"app": "acme-shop", "state_version": "1.0.0", "settings": {"pulse": 1}}"#,
                "pulse",
            ),
        ] {
            let e = Manifest::parse(text, "app.json").expect_err(text);
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(e.to_string().contains("app.json"), "{e}");
        }
    }
}
