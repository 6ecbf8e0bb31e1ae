//! `podvault backup`.

use std::io::IsTerminal;
use std::time::Instant;

use crate::archiver::{self, BackupOptions};
use crate::cli::{Cli, EXIT_OK, EXIT_PARTIAL};
use crate::commands::{bytes, cancel_on_ctrl_c, with_progress};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Runs `backup`.
pub fn run(cli: &Cli, opts: &BackupOptions) -> Result<u8> {
    let name = opts.stdin_filename.as_deref().unwrap_or("stdin");
    if opts.stdin_filename.is_some() && !opts.stdin {
        // clap's `requires` counts the flag's default `false` as present.
        return Err(Error::InvalidInput(
            "--stdin-filename names the file --stdin stores; it needs --stdin".into(),
        ));
    }
    if opts.stdin {
        // Refused before the repository is opened: nothing to read yet.
        archiver::check_stream_name(name)?;
        if std::io::stdin().is_terminal() {
            return Err(Error::InvalidInput(
                "--stdin reads the data to back up from standard input, which is a terminal; \
                 pipe the data in (e.g. `pg_dumpall | podvault backup --stdin --stdin-filename db.sql`)"
                    .into(),
            ));
        }
    }
    let repo = cli.open_repo()?;
    let progress = Progress::default();
    let cancel = cancel_on_ctrl_c();
    let start = Instant::now();
    let out = if opts.stdin {
        let stdin = std::io::stdin();
        with_progress(cli.show_progress(), "backup", &progress, || {
            archiver::backup_stream(&repo, name, stdin.lock(), opts, &progress, cancel)
        })?
    } else {
        with_progress(cli.show_progress(), "backup", &progress, || {
            archiver::backup(&repo, opts, &progress, cancel)
        })?
    };
    let s = &out.snapshot.summary;
    let code = if s.errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_PARTIAL
    };
    if opts.stdin && s.total_bytes == 0 {
        eprintln!("warning: standard input was empty; the snapshot holds an empty file");
    }
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
