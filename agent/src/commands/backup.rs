//! `podvault backup`.

use std::time::Instant;

use crate::archiver::{self, BackupOptions};
use crate::cli::{Cli, EXIT_OK, EXIT_PARTIAL};
use crate::commands::{bytes, cancel_on_ctrl_c, with_progress};
use crate::error::Result;
use crate::progress::Progress;

/// Runs `backup`.
pub fn run(cli: &Cli, opts: &BackupOptions) -> Result<u8> {
    let repo = cli.open_repo()?;
    let progress = Progress::default();
    let cancel = cancel_on_ctrl_c();
    let start = Instant::now();
    let out = with_progress(cli.show_progress(), "backup", &progress, || {
        archiver::backup(&repo, opts, &progress, cancel)
    })?;
    let s = &out.snapshot.summary;
    let code = if s.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    };
    if cli.json {
        let v = serde_json::json!({
            "snapshot": out.id.to_hex(),
            "parent": out.snapshot.parent.map(|p| p.to_hex()),
            "summary": s,
            "duration_seconds": start.elapsed().as_secs_f64(),
        });
        println!("{v}");
        return Ok(code);
    }
    for e in &s.errors {
        eprintln!("warning: {}: {}", e.path, e.message);
    }
    for p in &s.changed_during_read {
        eprintln!("warning: {p}: changed while it was read");
    }
    println!(
        "Files: {} new, {} changed, {} unchanged\nDirs:  {} new, {} changed, {} unchanged",
        s.files_new,
        s.files_changed,
        s.files_unchanged,
        s.dirs_new,
        s.dirs_changed,
        s.dirs_unchanged
    );
    println!(
        "Added to the repository: {} ({} stored), read {} of {}",
        bytes(s.bytes_added),
        bytes(s.bytes_stored),
        bytes(s.bytes_read),
        bytes(s.total_bytes)
    );
    let secs = start.elapsed().as_secs_f64();
    println!("snapshot {} saved in {secs:.2}s", out.id.short());
    if !s.errors.is_empty() {
        eprintln!(
            "{} path(s) could not be read; see warnings above",
            s.errors.len()
        );
    }
    Ok(code)
}
