//! One published version of an app's code, compiled once and shared by every CA that runs it;
//! [`Programs`] keeps the few newest versions of one app.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use code_map::{Compiled, Package, Published};
use semver::Version;
use sharing_map::Snapshot;

use super::engine::ScriptEngine;
use crate::CaError;
use crate::app::CodeVersion;

/// Versions of one app's code kept compiled; older ones are compiled again if a CA still pins
/// one (a message pinned before a publish).
pub const PROGRAMS_KEPT: usize = 8;

/// A compiled code version.
#[derive(Debug)]
pub struct Program {
    /// The code map version.
    pub version: u64,
    /// The content.
    pub package: Package,
    /// Who published it, when, and its digest.
    pub published: Published,
    /// The scripts, compiled.
    pub compiled: Compiled,
}

impl Program {
    /// What the checkpoint records of it.
    pub fn code_version(&self) -> CodeVersion {
        CodeVersion {
            state_version: self.state_version().clone(),
            code: Some(self.version),
        }
    }

    /// The state version it declares.
    pub fn state_version(&self) -> &Version {
        &self.package.manifest.state_version
    }
}

type Slot = Arc<OnceLock<Result<Arc<Program>, CaError>>>;

/// The compiled versions of one app: each compiled once, by whichever CA needs it first, while
/// the others wait for it.
#[derive(Debug, Default)]
pub struct Programs {
    by_version: Mutex<BTreeMap<u64, Slot>>,
}

impl Programs {
    /// The program of the code map version `snapshot` holds (`app` names it in errors).
    pub fn get(
        &self,
        app: &str,
        snapshot: &Snapshot,
        engine: &ScriptEngine,
    ) -> Result<Arc<Program>, CaError> {
        let version = snapshot.version();
        let slot = {
            let mut by_version = self.by_version.lock().unwrap_or_else(|p| p.into_inner());
            let slot = by_version.entry(version).or_default().clone();
            while by_version.len() > PROGRAMS_KEPT {
                let Some(oldest) = by_version.keys().next().copied() else {
                    break;
                };
                by_version.remove(&oldest);
            }
            slot
        };
        slot.get_or_init(|| compile(app, snapshot, engine).map(Arc::new))
            .clone()
    }
}

fn compile(app: &str, snapshot: &Snapshot, engine: &ScriptEngine) -> Result<Program, CaError> {
    let version = snapshot.version();
    if snapshot.is_empty() {
        return Err(CaError::not_found(format!(
            "app {app} has nothing published: its code map {} is empty (publish with `spinectl app publish DIR`)",
            snapshot.name()
        )));
    }
    let (package, published) = Package::from_map(snapshot).map_err(|e| {
        CaError::exception(format!(
            "version {version} of app {app}'s code map is not an app: {e}"
        ))
    })?;
    if package.manifest.app != app {
        return Err(CaError::exception(format!(
            "version {version} of app {app}'s code map is the code of app {}",
            package.manifest.app
        )));
    }
    let compiled = engine.compile(&package.scripts).map_err(|e| {
        CaError::exception(format!(
            "version {version} of app {app}'s code does not compile: {e}"
        ))
    })?;
    Ok(Program {
        version,
        package,
        published,
        compiled,
    })
}
