//! Loading a description from disk: the base file, its optional `NAME++.json` delta, the caller's
//! spec, then environment properties and links. The I/O is here; the rules are in
//! [`merge`](mod@crate::merge) and [`resolve`](mod@crate::resolve).

use std::path::{Path, PathBuf};

use crate::description::{Delta, Description};
use crate::error::Error;
use crate::merge::{Rename, merge};
use crate::resolve::{Environment, ProcessEnv, resolve};

/// Loads `FILE.json` as a host will be built from it.
///
/// The delta `FILE++.json` is looked for in the [`dir`](Loader::dir)s, in order, then beside the
/// base file; the first that has it wins, and at most one delta applies.
pub struct Loader {
    file: PathBuf,
    dirs: Vec<PathBuf>,
    spec: Option<Spec>,
    environment: Box<dyn Environment + Send + Sync>,
}

enum Spec {
    Value(Delta),
    File(PathBuf),
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("file", &self.file)
            .field("dirs", &self.dirs)
            .field(
                "spec",
                &self.spec.as_ref().map(|s| match s {
                    Spec::Value(d) => format!("{d:?}"),
                    Spec::File(p) => p.display().to_string(),
                }),
            )
            .finish_non_exhaustive()
    }
}

impl Loader {
    /// Loads `file`, reading environment properties from the process environment.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Loader {
            file: file.into(),
            dirs: Vec::new(),
            spec: None,
            environment: Box::new(ProcessEnv),
        }
    }

    /// Adds a directory to look for the delta in (before the base file's own directory).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dirs.push(dir.into());
        self
    }

    /// Merges `spec` over the templated description; it may rename the top.
    pub fn spec(mut self, spec: Delta) -> Self {
        self.spec = Some(Spec::Value(spec));
        self
    }

    /// Like [`spec`](Loader::spec), read from a JSON file at load time.
    pub fn spec_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.spec = Some(Spec::File(file.into()));
        self
    }

    /// Reads environment properties from `environment` instead of the process environment.
    pub fn environment(mut self, environment: impl Environment + Send + Sync + 'static) -> Self {
        self.environment = Box::new(environment);
        self
    }

    /// The delta file that applies, if any.
    pub fn delta_file(&self) -> Option<PathBuf> {
        let file_name = self.file.file_name()?.to_string_lossy();
        let stem = file_name.strip_suffix(".json").unwrap_or(&file_name);
        let delta_name = format!("{stem}++.json");
        let beside = self
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.dirs
            .iter()
            .chain(std::iter::once(&beside))
            .map(|dir| dir.join(&delta_name))
            .find(|candidate| candidate.is_file())
    }

    /// The fully merged and resolved description.
    pub fn load(&self) -> Result<Description, Error> {
        let base_label = self.file.display().to_string();
        let mut description = Description::from_json(&read(&self.file)?, &base_label)?;
        let mut label = base_label;
        if let Some(delta_file) = self.delta_file() {
            let delta_label = delta_file.display().to_string();
            let delta =
                Delta::from_json_for(&read(&delta_file)?, &delta_label, Some(&description.name))?;
            description = merge(&description, &delta, &delta_label, Rename::Forbidden)?;
            label = format!("{label} + {delta_label}");
        }
        match &self.spec {
            Some(Spec::Value(spec)) => {
                description = merge(&description, spec, "<spec>", Rename::Allowed)?;
                label.push_str(" + <spec>");
            }
            Some(Spec::File(file)) => {
                let spec_label = file.display().to_string();
                let spec =
                    Delta::from_json_for(&read(file)?, &spec_label, Some(&description.name))?;
                description = merge(&description, &spec, &spec_label, Rename::Allowed)?;
                label = format!("{label} + {spec_label}");
            }
            None => {}
        }
        resolve(&description, self.environment.as_ref(), &label)
    }
}

fn read(file: &Path) -> Result<String, Error> {
    std::fs::read_to_string(file).map_err(|source| Error::Read {
        file: file.to_path_buf(),
        source,
    })
}
