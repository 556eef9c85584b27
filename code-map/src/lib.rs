//! Scripted CA apps as code maps (DESIGN.md §9.10): the app directory a developer writes, the
//! layout of the app's **code map** in the Spine, and compiling its Rhai scripts.
//!
//! ```text
//!  examples/counter/            spinectl app publish DIR             ca-host (every CA's turn)
//!  app.json, *.rhai, data/ ──▶  Package::from_dir ─▶ Compiled::new   pins one version of
//!                               (refused if it does not compile)     acme-counter-code, runs
//!                               ─▶ Package::ops ─▶ one atomic update  its Compiled program
//!                                  of map acme-counter-code
//! ```
//!
//! Pure but for [`Package::from_dir`]: both the publisher (`spinectl`, which checks every script
//! before writing anything) and the CA runtime (which compiles each published version once)
//! build on it, so they agree on what compiles.
//!
//! ```
//! use code_map::{Compiled, Manifest, Package, sandbox};
//! use sharing_map::MethodLimits;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let package = Package {
//!     manifest: Manifest::parse(r#"{"app": "acme-counter", "state_version": "1.0.0"}"#, "app.json")?,
//!     scripts: [("counter.rhai".to_string(), "fn increment(n) { this.state.count += n; this.state.count }".to_string())].into(),
//!     data: Default::default(),
//! };
//! let compiled = Compiled::new(&sandbox(&MethodLimits::default()), &package.scripts)?;
//! assert!(compiled.functions["increment"][0].public);
//! assert_eq!(package.manifest.code_map()?.as_str(), "acme-counter-code");
//! assert!(package.digest()?.starts_with("sha256:"));
//! # Ok(())
//! # }
//! ```

mod compile;
mod manifest;
mod package;

pub use compile::{
    APP_ERROR_KEY, BUDGET_MARKER, Compiled, Failure, Function, HOOKS, Place, ResolveError,
    SYSTEM_PREFIX, sandbox,
};
pub use manifest::{Manifest, RESERVED_MAPS, Settings, code_map_of};
pub use package::{
    DATA_DIR, DATA_PREFIX, MANIFEST_FILE, MANIFEST_KEY, Op, PUBLISHED_KEY, Package, Published,
    SCRIPT_PREFIX,
};

/// Why an app's code cannot be read or compiled. Each says which file or key, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// The manifest is malformed or names something invalid.
    #[error("{source_name}: {reason}")]
    Manifest {
        /// Where the manifest came from (a file, a key).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// A script does not compile (or breaks a rule of scripted apps).
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Script {
        /// The script's file name.
        file: String,
        /// The line, from 1.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A data entry is not JSON.
    #[error("data entry {name}: {reason}")]
    Data {
        /// The file or key.
        name: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The content is not laid out as an app (no script, a bad name, a foreign key).
    #[error("{0}")]
    Layout(String),
}
