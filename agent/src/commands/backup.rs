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
    if opts.stdin_filename.is_some() && !opts.stdin && !opts.stdin_from_command {
        // clap's `requires` counts the flag's default `false` as present.
        return Err(Error::InvalidInput(
            "--stdin-filename names the file --stdin stores; it needs --stdin or \
             --stdin-from-command"
                .into(),
        ));
    }
    if opts.stdin_from_command {
        archiver::check_stream_name(name)?;
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
    let out = if opts.stdin_from_command {
        let output = CommandOutput::start(&opts.paths)?;
        let mut stream_opts = opts.clone();
        stream_opts.paths.clear();
        with_progress(cli.show_progress(), "backup", &progress, || {
            archiver::backup_stream(&repo, name, output, &stream_opts, &progress, cancel)
        })?
    } else if opts.stdin {
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
    if (opts.stdin || opts.stdin_from_command) && s.total_bytes == 0 {
        eprintln!("warning: the stream was empty; the snapshot holds an empty file");
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

/// The standard output of a command run by `--stdin-from-command`, read as a stream that
/// ends cleanly only if the command exits 0: otherwise the read at the end fails, so the
/// engine writes no snapshot.
struct CommandOutput {
    what: String,
    child: std::process::Child,
    stdout: std::process::ChildStdout,
}

impl CommandOutput {
    fn start(command: &[std::path::PathBuf]) -> Result<Self> {
        let (program, args) = command.split_first().ok_or_else(|| {
            Error::InvalidInput(
                "--stdin-from-command needs a command after `--` (e.g. `-- pg_dumpall`)".into(),
            )
        })?;
        let what = command
            .iter()
            .map(|a| a.display().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| Error::InvalidInput(format!("cannot run `{what}`: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::InvalidInput(format!("`{what}`: no standard output to read")))?;
        Ok(CommandOutput {
            what,
            child,
            stdout,
        })
    }
}

impl std::io::Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n > 0 || buf.is_empty() {
            return Ok(n);
        }
        // End of output: the stream is complete only if the command succeeded.
        let status = self.child.wait()?;
        if status.success() {
            Ok(0)
        } else {
            Err(std::io::Error::other(format!(
                "`{}` failed ({status}); its output may be cut short",
                self.what
            )))
        }
    }
}
