//! Progress counters shared between an operation and whoever displays it.
//!
//! The engine only increments atomics; the CLI renders them with a progress bar on a
//! terminal and the node agent copies them into a custom resource's status every few
//! seconds. Neither display can slow the engine down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Live counters of a backup or restore.
#[derive(Debug, Default)]
pub struct Progress {
    /// Files expected (grows while the scanner runs).
    pub files_total: AtomicU64,
    /// Bytes expected (grows while the scanner runs).
    pub bytes_total: AtomicU64,
    /// True once the totals are final.
    pub totals_final: AtomicBool,
    /// Files processed.
    pub files_done: AtomicU64,
    /// Bytes processed (read, or skipped as unchanged).
    pub bytes_done: AtomicU64,
    /// Entries that could not be processed.
    pub errors: AtomicU64,
    current: Mutex<String>,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See [`Progress::files_total`].
    pub files_total: u64,
    /// See [`Progress::bytes_total`].
    pub bytes_total: u64,
    /// See [`Progress::totals_final`].
    pub totals_final: bool,
    /// See [`Progress::files_done`].
    pub files_done: u64,
    /// See [`Progress::bytes_done`].
    pub bytes_done: u64,
    /// See [`Progress::errors`].
    pub errors: u64,
    /// Path being processed.
    pub current: String,
}

impl Progress {
    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the path being processed.
    pub fn set_current(&self, path: &str) {
        if let Ok(mut c) = self.current.lock() {
            c.clear();
            c.push_str(path);
        }
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            totals_final: self.totals_final.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            current: self.current.lock().map(|c| c.clone()).unwrap_or_default(),
        }
    }
}
