//! An app's code and data as one [`Package`]: read from an app directory, laid out as the
//! entries of its code map, and read back from a map version or from the change set that
//! published it.
//!
//! ```text
//!  app directory                       code map acme-shop-code (one version per publish)
//!  ─────────────                       ──────────────────────────────────────────────────
//!  app.json            ──────────────▶ manifest         the Manifest
//!  cart.rhai, util.rhai ─────────────▶ script/cart.rhai the script's text
//!  data/prices.json    ──────────────▶ data/prices      the JSON value
//!                                      published        {at_ms, digest, rollback_of?}
//! ```
//!
//! Every publish puts *every* key (and removes keys the new content lacks), so the change set
//! that made a version holds that version's whole content: a rollback rebuilds an old version
//! from the map's retained history.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sharing_map::{Entry, SharingMap};

use crate::{CodeError, Manifest};

/// The file holding the manifest in an app directory.
pub const MANIFEST_FILE: &str = "app.json";
/// The folder of data entries in an app directory (`data/prices.json` is entry `data/prices`).
pub const DATA_DIR: &str = "data";
/// The code map key of the manifest.
pub const MANIFEST_KEY: &str = "manifest";
/// The code map key of the publish record.
pub const PUBLISHED_KEY: &str = "published";
/// The prefix of scripts' keys.
pub const SCRIPT_PREFIX: &str = "script/";
/// The prefix of data entries' keys.
pub const DATA_PREFIX: &str = "data/";

/// One operation on a map: `(key, None)` removes it, `(key, Some(entry))` puts it.
pub type Op = (Arc<str>, Option<Entry>);

/// An app's code and data, as published in one version of its code map.
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    /// `app.json`.
    pub manifest: Manifest,
    /// Scripts by file name (`cart.rhai`).
    pub scripts: BTreeMap<String, String>,
    /// Data entries by name (`prices` for `data/prices.json`).
    pub data: BTreeMap<String, Value>,
}

/// Who published a version, when, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Milliseconds since the Unix epoch, by the publisher's clock.
    pub at_ms: u64,
    /// [`Package::digest`] of the content.
    pub digest: String,
    /// The version whose content this one published again (a rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
}

fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl Package {
    /// Reads an app directory: `app.json`, the `*.rhai` files beside it, and `data/*.json`.
    /// Other files are left out.
    pub fn from_dir(dir: &Path) -> Result<Self, CodeError> {
        let io = |path: &Path, e: std::io::Error| CodeError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| io(&manifest_path, e))?;
        let manifest = Manifest::parse(&text, &manifest_path.display().to_string())?;
        let mut scripts = BTreeMap::new();
        for (name, path) in files(dir, "rhai").map_err(|e| io(dir, e))? {
            let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
            scripts.insert(name, text);
        }
        let mut data = BTreeMap::new();
        let data_dir = dir.join(DATA_DIR);
        if data_dir.is_dir() {
            for (name, path) in files(&data_dir, "json").map_err(|e| io(&data_dir, e))? {
                let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
                let value = serde_json::from_str(&text).map_err(|e| CodeError::Data {
                    name: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let key = name.trim_end_matches(".json").to_string();
                data.insert(key, value);
            }
        }
        let package = Self {
            manifest,
            scripts,
            data,
        };
        package.check_names()?;
        Ok(package)
    }

    fn check_names(&self) -> Result<(), CodeError> {
        if self.scripts.is_empty() {
            return Err(CodeError::Layout(
                "the app has no script (*.rhai beside app.json)".into(),
            ));
        }
        for name in self.scripts.keys() {
            if !is_file_name(name) || !name.ends_with(".rhai") {
                return Err(CodeError::Layout(format!(
                    "script name {name:?}: use letters, digits, '_', '-' and '.', ending in .rhai"
                )));
            }
        }
        for name in self.data.keys() {
            if !is_file_name(name) {
                return Err(CodeError::Layout(format!(
                    "data entry {name:?}: use letters, digits, '_', '-' and '.'"
                )));
            }
        }
        Ok(())
    }

    /// The content as code map entries (the publish record aside), in key order.
    pub fn entries(&self) -> Result<Vec<(Arc<str>, Entry)>, CodeError> {
        let manifest = serde_json::to_value(&self.manifest)
            .map_err(|e| CodeError::Layout(format!("the manifest does not serialize: {e}")))?;
        let mut out: Vec<(Arc<str>, Entry)> =
            vec![(Arc::from(MANIFEST_KEY), Entry::value(manifest))];
        for (name, text) in &self.scripts {
            out.push((
                Arc::from(format!("{SCRIPT_PREFIX}{name}")),
                Entry::value(Value::String(text.clone())),
            ));
        }
        for (name, value) in &self.data {
            out.push((
                Arc::from(format!("{DATA_PREFIX}{name}")),
                Entry::value(value.clone()),
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// `sha256:` and the hex SHA-256 of the content entries (key, NUL, compact JSON, NUL, in key
    /// order): equal content, equal digest, whichever version holds it.
    pub fn digest(&self) -> Result<String, CodeError> {
        let mut hash = Sha256::new();
        for (key, entry) in self.entries()? {
            hash.update(key.as_bytes());
            hash.update([0]);
            let json = serde_json::to_vec(entry.as_value().unwrap_or(&Value::Null))
                .map_err(|e| CodeError::Layout(e.to_string()))?;
            hash.update(&json);
            hash.update([0]);
        }
        let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("sha256:{hex}"))
    }

    /// The operations that make `current` hold exactly this content and `published`: every key
    /// put, every other key removed.
    pub fn ops(&self, published: &Published, current: &SharingMap) -> Result<Vec<Op>, CodeError> {
        let mut ops: Vec<Op> = self
            .entries()?
            .into_iter()
            .map(|(k, e)| (k, Some(e)))
            .collect();
        let record = serde_json::to_value(published)
            .map_err(|e| CodeError::Layout(format!("the publish record: {e}")))?;
        ops.push((Arc::from(PUBLISHED_KEY), Some(Entry::value(record))));
        for (key, _) in current.iter() {
            if !ops.iter().any(|(k, _)| k == key) {
                ops.push((key.clone(), None));
            }
        }
        Ok(ops)
    }

    /// Reads a package and its publish record back from entries (a map version's, or the puts
    /// of the change set that published it).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a Entry)>,
    ) -> Result<(Self, Published), CodeError> {
        let mut manifest = None;
        let mut published = None;
        let mut scripts = BTreeMap::new();
        let mut data = BTreeMap::new();
        for (key, entry) in entries {
            let value = entry.as_value().ok_or_else(|| {
                CodeError::Layout(format!("key {key:?} holds a method, not a value"))
            })?;
            if key == MANIFEST_KEY {
                let m: Manifest =
                    serde_json::from_value(value.clone()).map_err(|e| CodeError::Manifest {
                        source_name: format!("key {MANIFEST_KEY}"),
                        reason: e.to_string(),
                    })?;
                m.check(&format!("key {MANIFEST_KEY}"))?;
                manifest = Some(m);
            } else if key == PUBLISHED_KEY {
                published = Some(
                    serde_json::from_value(value.clone())
                        .map_err(|e| CodeError::Layout(format!("key {PUBLISHED_KEY}: {e}")))?,
                );
            } else if let Some(name) = key.strip_prefix(SCRIPT_PREFIX) {
                let text = value.as_str().ok_or_else(|| {
                    CodeError::Layout(format!("key {key:?}: a script must be a string"))
                })?;
                scripts.insert(name.to_string(), text.to_string());
            } else if let Some(name) = key.strip_prefix(DATA_PREFIX) {
                data.insert(name.to_string(), value.clone());
            } else {
                return Err(CodeError::Layout(format!(
                    "key {key:?} is not part of a code map (manifest, published, script/*, data/*)"
                )));
            }
        }
        let manifest = manifest.ok_or_else(|| {
            CodeError::Layout(format!("no {MANIFEST_KEY} entry: nothing was published"))
        })?;
        let published =
            published.ok_or_else(|| CodeError::Layout(format!("no {PUBLISHED_KEY} entry")))?;
        let package = Self {
            manifest,
            scripts,
            data,
        };
        package.check_names()?;
        Ok((package, published))
    }

    /// Reads the package a code map version holds.
    pub fn from_map(map: &SharingMap) -> Result<(Self, Published), CodeError> {
        Self::from_entries(map.iter().map(|(k, e)| (&**k, e)))
    }
}

/// `(file name, path)` of the files named `*.<ext>` directly in `dir`, sorted.
fn files(dir: &Path, ext: &str) -> std::io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !entry.file_type()?.is_file() || path.extension().and_then(|e| e.to_str()) != Some(ext) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sharing_map::{ChangeSet, MapName, UpdateId};

    pub(crate) fn sample() -> Package {
        Package {
            manifest: Manifest::parse(
                r#"{"app": "acme-shop", "state_version": "1.0.0"}"#,
                "app.json",
            )
            .expect("manifest"),
            scripts: [("cart.rhai".to_string(), "fn add(n) { n }".to_string())].into(),
            data: [("prices".to_string(), json!({"apple": 3}))].into(),
        }
    }

    fn apply(map: &SharingMap, ops: Vec<(Arc<str>, Option<Entry>)>) -> (SharingMap, ChangeSet) {
        let id = UpdateId::parse(&format!("p{}", map.version())).expect("id");
        let cs = ChangeSet::from_ops(map.name().clone(), map.version(), id, ops);
        match map.apply(&cs).expect("applies") {
            sharing_map::Applied::New(m) => (m, cs),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_publish_replaces_the_whole_content_and_its_change_set_holds_all_of_it() {
        let name = MapName::parse("acme-shop-code").expect("name");
        let v1 = sample();
        let record = |p: &Package| Published {
            at_ms: 1,
            digest: p.digest().expect("digest"),
            rollback_of: None,
        };
        let (map, _) = apply(
            &SharingMap::new(name),
            v1.ops(
                &record(&v1),
                &SharingMap::new(MapName::parse("acme-shop-code").expect("n")),
            )
            .expect("ops"),
        );
        let mut v2 = v1.clone();
        v2.scripts
            .insert("more.rhai".into(), "fn more() { 1 }".into());
        v2.data.clear();
        let (map, cs) = apply(&map, v2.ops(&record(&v2), &map).expect("ops"));
        assert_eq!(Package::from_map(&map).expect("reads").0, v2);
        assert!(map.get("data/prices").is_none(), "removed");
        // The change set alone rebuilds version 2, unchanged keys included.
        let from_cs =
            Package::from_entries(cs.puts().iter().map(|(k, e)| (&**k, e))).expect("reads");
        assert_eq!(from_cs.0, v2);
        assert_eq!(from_cs.1.digest, v2.digest().expect("digest"));
        assert_ne!(v1.digest().expect("d"), v2.digest().expect("d"));
        assert_eq!(v1.digest().expect("d"), sample().digest().expect("d"));
    }

    #[test]
    fn a_directory_is_read_with_its_data_and_other_files_left_out() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path();
        std::fs::write(
            p.join("app.json"),
            r#"{"app": "acme-shop", "state_version": "1.0.0"}"#,
        )
        .expect("write");
        std::fs::write(p.join("cart.rhai"), "fn add(n) { n }").expect("write");
        std::fs::write(p.join("README.md"), "hi").expect("write");
        std::fs::create_dir(p.join("data")).expect("mkdir");
        std::fs::write(p.join("data/prices.json"), r#"{"apple": 3}"#).expect("write");
        assert_eq!(Package::from_dir(p).expect("reads"), sample());
        std::fs::write(p.join("data/bad.json"), "{").expect("write");
        let e = Package::from_dir(p).expect_err("bad data");
        assert!(e.to_string().contains("bad.json"), "{e}");
        let empty = tempfile::tempdir().expect("dir");
        let e = Package::from_dir(empty.path()).expect_err("no manifest");
        assert!(e.to_string().contains("app.json"), "{e}");
    }

    #[test]
    fn entries_that_are_not_a_code_map_are_refused() {
        let other = Entry::value(json!(1));
        let e = Package::from_entries([("count", &other)]).expect_err("refused");
        assert!(e.to_string().contains("count"), "{e}");
        let e = Package::from_entries(std::iter::empty()).expect_err("empty");
        assert!(e.to_string().contains("nothing was published"), "{e}");
    }
}
