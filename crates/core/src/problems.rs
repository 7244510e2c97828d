//! Problems met while reading a source: unreadable files, vanished directories, failed dumps.
//!
//! rustic_core only logs read errors and leaves the file out of the snapshot, so every adapter
//! records what it could not read here; the run turns a non-empty list into status `partial`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One thing that could not be backed up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The path on the source (or `/burrow-dumps/<name>` for a dump).
    pub path: PathBuf,
    pub message: String,
}

/// A shared, append-only list of problems; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Problems(Arc<Mutex<Vec<Problem>>>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, path: impl Into<PathBuf>, message: impl Into<String>) {
        let problem = Problem {
            path: path.into(),
            message: message.into(),
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(problem);
    }

    pub fn snapshot(&self) -> Vec<Problem> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}
