//! One module per CLI verb. Each turns parsed arguments into an engine call and prints the
//! result for people (or as JSON with `--json`).

pub mod backup;
pub mod check;
pub mod dump;
pub mod forget;
pub mod init;
pub mod key;
pub mod prune;
pub mod restore;
pub mod snapshots;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

/// Human-readable byte count.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Runs `work` while drawing `progress` on the terminal when `show` is set.
pub fn with_progress<T>(
    show: bool,
    verb: &str,
    progress: &Progress,
    work: impl FnOnce() -> T,
) -> T {
    if !show {
        return work();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(verb.to_owned());
            while !done.load(Ordering::Relaxed) {
                let p = progress.snapshot();
                bar.set_length(p.bytes_total.max(p.bytes_done));
                bar.set_position(p.bytes_done);
                let total = if p.totals_final { p.files_total.to_string() } else { format!("{}+", p.files_total) };
                bar.set_message(format!("{}/{} files{}", p.files_done, total, if p.errors > 0 { format!(", {} errors", p.errors) } else { String::new() }));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    })
}

/// A cancellation flag set by Ctrl-C.
pub fn cancel_on_ctrl_c() -> &'static AtomicBool {
    static CANCEL: AtomicBool = AtomicBool::new(false);
    drop(crate::backend::runtime().spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            CANCEL.store(true, Ordering::Relaxed);
        }
    }));
    &CANCEL
}
