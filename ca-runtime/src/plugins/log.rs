//! The `log` plugin: intents appended to a file, once per key.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Courier, IntentPlugin};
use crate::checkpoint::Intent;

/// The `log` plugin: appends `key<TAB>payload` lines to a file, once per key (it reads the file
/// before writing, so a redo after a crash finds the line and writes nothing). Each line is
/// written and fsync'd before the intent counts as done. While a file named like the log with
/// `.hold` appended exists, the plugin refuses every intent (as an unavailable service would), so
/// intents stay pending and are retried. Meant for tests and demos (each intent
/// reads the whole file); hosts may share one file, as they would share one external service.
#[derive(Debug)]
pub struct LogPlugin {
    path: PathBuf,
}

impl LogPlugin {
    /// The plugin name.
    pub const NAME: &'static str = "log";

    /// A log plugin writing to `path`.
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self { path })
    }
}

impl IntentPlugin for LogPlugin {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn carry_out(
        &self,
        intent: Intent,
        _courier: Arc<dyn Courier>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || append_once(&path, &intent))
                .await
                .map_err(|e| format!("log plugin task: {e}"))?
        })
    }
}

fn append_once(path: &std::path::Path, intent: &Intent) -> Result<(), String> {
    let io = |e: std::io::Error| format!("log file {}: {e}", path.display());
    let mut hold = path.as_os_str().to_owned();
    hold.push(".hold");
    if std::path::Path::new(&hold).exists() {
        return Err(format!(
            "held: {} exists",
            std::path::Path::new(&hold).display()
        ));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    // An exclusive lock keeps check-then-append atomic, also between hosts sharing the file.
    file.lock().map_err(io)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(io)?;
    if text
        .lines()
        .any(|line| line.split('\t').next() == Some(intent.key.as_str()))
    {
        return Ok(());
    }
    writeln!(file, "{}\t{}", intent.key, intent.payload).map_err(io)?;
    file.sync_data().map_err(io)
}
