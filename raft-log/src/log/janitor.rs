//! Removing freed segment files off the write path.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use crate::error::LogError;

/// The thread that removes freed segment files.
#[derive(Debug)]
pub(super) struct Janitor {
    pub(super) files: mpsc::Sender<PathBuf>,
    pub(super) errors: Arc<Mutex<Vec<LogError>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Janitor {
    pub(super) fn start() -> std::io::Result<Janitor> {
        let (files, queue) = mpsc::channel::<PathBuf>();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let report = errors.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-janitor".into())
            .spawn(move || {
                // Ends when the log (the sender) is dropped and the queue is empty.
                for path in queue {
                    if let Err(e) = remove_segment(&path) {
                        report.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                    }
                }
            })?;
        Ok(Janitor {
            files,
            errors,
            thread,
        })
    }

    /// Lets the queued removals finish. A log reopened in the same process must not list a
    /// file that is about to go.
    pub(super) fn finish(self) {
        drop(self.files);
        // A panic on the thread has nothing to report beyond the files it left, which the
        // next open removes.
        let _ = self.thread.join();
    }
}

pub(super) fn remove_segment(path: &Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io("remove", path, e)),
    }
}
