//! The crate's one error type: every variant says what was touched (file, component path, key).

use std::path::PathBuf;
use std::time::Duration;

use crate::description::ComponentPath;

/// What a component's own code returns when it fails (factories, `checkup`, `shutdown`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong while loading, building, supervising or shutting down components.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A description file could not be read.
    #[error("{file}: cannot read", file = .file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A description file is not JSON.
    #[error("{file}: not valid JSON")]
    Syntax {
        /// The file, or `<spec>`/`<input>` for descriptions that do not come from a file.
        file: String,
        #[source]
        source: serde_json::Error,
    },
    /// A description, delta or spec is JSON but breaks a rule of DESIGN.md §10.
    #[error("{file}: component {path}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        path: ComponentPath,
        /// The offending key, e.g. `module`, `components[2]` or `env.ports[1]`.
        key: String,
        reason: String,
    },
    /// A setting in a description's env has the wrong type (e.g. supervision settings).
    #[error("component {path}: key `{key}`: {reason}")]
    Config {
        path: ComponentPath,
        key: String,
        reason: String,
    },
    /// Registering a factory under a name that is already taken.
    #[error("module `{module}` is already registered")]
    DuplicateModule { module: String },
    /// A description names a module no factory was registered for.
    #[error("component {path}: no factory registered for module `{module}`")]
    UnknownModule { path: ComponentPath, module: String },
    /// A component's name is already taken in its container.
    #[error("component {path}: the name is already taken in its container")]
    DuplicateName { path: ComponentPath },
    /// A factory returned an error.
    #[error("component {path}: factory `{module}` failed")]
    Create {
        path: ComponentPath,
        module: String,
        #[source]
        source: BoxError,
    },
    /// A component's `checkup` returned an error.
    #[error("component {path}: checkup failed")]
    Checkup {
        path: ComponentPath,
        #[source]
        source: BoxError,
    },
    /// A component's `shutdown` returned an error.
    #[error("component {path}: shutdown failed")]
    Shutdown {
        path: ComponentPath,
        #[source]
        source: BoxError,
    },
    /// Restarting a failed component (or all children of a static container) kept failing.
    #[error("component {path}: gave up restarting after {attempts} attempts")]
    GaveUp {
        path: ComponentPath,
        attempts: u32,
        #[source]
        source: Box<Error>,
    },
    /// A checkup was still pending at more than `max_hang_retries` ticks in a row.
    #[error(
        "component {path}: checkup still pending after {ticks} ticks of {interval:?} \
         (max_hang_retries = {max_hang_retries})"
    )]
    Hang {
        /// The component whose checkup was running when the supervisor gave up.
        path: ComponentPath,
        ticks: u32,
        interval: Duration,
        max_hang_retries: u32,
    },
    /// A checkup task panicked.
    #[error("component {path}: checkup panicked")]
    Panicked { path: ComponentPath },
    /// Adding a child to a container that was already shut down.
    #[error("component {path}: its container is shut down")]
    Closed { path: ComponentPath },
}

impl Error {
    /// The error and its causes on one line, `: `-separated, as an operator should read them.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}
