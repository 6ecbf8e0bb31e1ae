//! The `podvault` command line.
//!
//! Exit codes: 0 success; 1 failure (nothing was written, or a restore is incomplete);
//! 2 usage error; 3 the backup completed but some files could not be read (they are listed
//! in the snapshot summary).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::archiver::BackupOptions;
use crate::backend::Location;
use crate::commands;
use crate::error::{Error, Result};
use crate::forget::ForgetOptions;
use crate::restorer::RestoreOptions;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for failure.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for a backup that completed with unreadable files.
pub const EXIT_PARTIAL: u8 = 3;

/// podvault: encrypted, deduplicating, incremental backups of directories and Kubernetes volumes.
#[derive(Debug, Parser)]
#[command(name = "podvault", version, about, propagate_version = true)]
pub struct Cli {
    /// Repository: a directory, file:///path, or s3://bucket/prefix.
    #[arg(
        short,
        long,
        global = true,
        env = "PODVAULT_REPOSITORY",
        value_name = "REPO"
    )]
    pub repo: Option<String>,
    /// File holding the repository password (else $PODVAULT_PASSWORD, else a prompt).
    #[arg(
        long,
        global = true,
        env = "PODVAULT_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub password_file: Option<PathBuf>,
    /// S3 endpoint URL for S3-compatible servers.
    #[arg(long, global = true, env = "PODVAULT_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, global = true, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Use virtual-host-style S3 addressing (default: path style).
    #[arg(long, global = true)]
    pub s3_virtual_host: bool,
    /// PEM file of CA certificates to trust for the S3 endpoint, besides the system's.
    #[arg(long, global = true, env = "PODVAULT_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Directory of the local metadata cache (snapshots, index, trees; safe to delete)
    /// [default: $XDG_CACHE_HOME/podvault, else ~/.cache/podvault].
    #[arg(long, global = true, env = "PODVAULT_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size limit of one repository's cache, MiB (least recently used entries go first).
    #[arg(
        long,
        global = true,
        env = "PODVAULT_CACHE_MAX_MIB",
        default_value_t = 4096
    )]
    pub cache_max_mib: u64,
    /// Use no local cache: read all metadata from the repository.
    #[arg(long, global = true, env = "PODVAULT_NO_CACHE")]
    pub no_cache: bool,
    /// Log format: `text` (no colours unless on a terminal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "PODVAULT_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository.
    Init(commands::init::InitArgs),
    /// Back up files and directories.
    Backup(Box<BackupOptions>),
    /// List snapshots.
    Snapshots(commands::snapshots::SnapshotsArgs),
    /// List the files in a snapshot.
    Ls(commands::snapshots::LsArgs),
    /// Show what changed between two snapshots.
    Diff(commands::snapshots::DiffArgs),
    /// Restore a snapshot.
    Restore(RestoreOptions),
    /// Write one file of a snapshot to standard output (e.g. a database dump).
    Dump(commands::dump::DumpArgs),
    /// Remove snapshots according to a retention policy.
    Forget(ForgetOptions),
    /// Reclaim space from forgotten snapshots (two-phase; safe beside running backups).
    Prune(crate::prune::PruneOptions),
    /// Verify the repository's structure, and with --read-data its data.
    Check(crate::check::CheckOptions),
    /// Manage the repository's keys (passwords).
    Key(commands::key::KeyArgs),
    /// Run the node agent (DaemonSet): execute PodVolumeBackups and PodVolumeRestores.
    Agent(crate::worker::AgentArgs),
    /// Init-container mode: wait until a restore into this volume has completed.
    RestoreWait(crate::worker::restore_wait::RestoreWaitArgs),
    /// One scheduled prune, check or restore drill of a BackupRepository (run in a Job by
    /// the controller).
    Maintenance(crate::worker::maintenance::MaintenanceArgs),
}

impl Cli {
    /// The repository location, with S3 settings from flags and the environment.
    pub fn location(&self) -> Result<Location> {
        let text = self.repo.as_deref().ok_or_else(|| {
            Error::InvalidInput("no repository given: use --repo or set PODVAULT_REPOSITORY".into())
        })?;
        let mut loc = Location::parse(text)?;
        if let Location::S3(s3) = &mut loc {
            s3.endpoint = self
                .s3_endpoint
                .clone()
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            s3.region = self.s3_region.clone();
            s3.access_key_id = std::env::var("AWS_ACCESS_KEY_ID").ok();
            s3.secret_access_key = std::env::var("AWS_SECRET_ACCESS_KEY").ok();
            s3.session_token = std::env::var("AWS_SESSION_TOKEN").ok();
            s3.virtual_host_style = self.s3_virtual_host;
            if let Some(path) = &self.cacert {
                s3.ca_bundle = Some(crate::tls::read_ca_bundle(path)?);
            }
        }
        Ok(loc)
    }

    /// Opens the repository with the local metadata cache (unless `--no-cache`).
    pub fn open_repo(&self) -> Result<crate::repository::Repository> {
        let repo = crate::repository::Repository::open(&self.location()?, &self.password(false)?)?;
        Ok(repo.with_cache(self.cache_root().as_deref(), self.cache_limit()))
    }

    /// The cache size limit in bytes.
    pub fn cache_limit(&self) -> u64 {
        self.cache_max_mib.saturating_mul(1 << 20)
    }

    /// The cache root in use, if any.
    pub fn cache_root(&self) -> Option<PathBuf> {
        if self.no_cache {
            return None;
        }
        self.cache_dir.clone().or_else(crate::cache::default_root)
    }

    /// The repository password from a file, the environment, or a terminal prompt.
    pub fn password(&self, confirm: bool) -> Result<Vec<u8>> {
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
            return Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
        }
        if let Ok(p) = std::env::var("PODVAULT_PASSWORD") {
            return Ok(p.into_bytes());
        }
        if !std::io::stdin().is_terminal() {
            return Err(Error::InvalidInput(
                "no password: set PODVAULT_PASSWORD or PODVAULT_PASSWORD_FILE, or run on a terminal".into(),
            ));
        }
        let p = rpassword::prompt_password("repository password: ")
            .map_err(|e| Error::io("<terminal>", e))?;
        if confirm {
            let again = rpassword::prompt_password("repeat password: ")
                .map_err(|e| Error::io("<terminal>", e))?;
            if again != p {
                return Err(Error::InvalidInput("the passwords do not match".into()));
            }
        }
        Ok(p.into_bytes())
    }

    /// True when a progress display should be drawn.
    pub fn show_progress(&self) -> bool {
        !self.quiet && !self.json && std::io::stderr().is_terminal()
    }
}

/// Sets up logging to stderr: `PODVAULT_LOG` or `RUST_LOG` filters (default `warn`); plain
/// text with colours only on a terminal, or one JSON object per line.
fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODVAULT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Runs the CLI with the process arguments and returns the exit code.
pub fn main() -> ExitCode {
    crate::tls::install_provider();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match &cli.command {
        Command::Init(a) => commands::init::run(&cli, a),
        Command::Backup(o) => commands::backup::run(&cli, o),
        Command::Snapshots(a) => commands::snapshots::run(&cli, a),
        Command::Ls(a) => commands::snapshots::ls(&cli, a),
        Command::Diff(a) => commands::snapshots::diff(&cli, a),
        Command::Restore(o) => commands::restore::run(&cli, o),
        Command::Dump(a) => commands::dump::run(&cli, a),
        Command::Forget(o) => commands::forget::run(&cli, o),
        Command::Prune(o) => commands::prune::run(&cli, o),
        Command::Check(o) => commands::check::run(&cli, o),
        Command::Key(a) => commands::key::run(&cli, a),
        Command::Agent(a) => {
            crate::worker::repo::set_cache_root(cli.cache_root(), cli.cache_limit());
            crate::worker::agent_command(a)
        }
        Command::RestoreWait(a) => crate::worker::restore_wait::run(a),
        Command::Maintenance(a) => {
            crate::worker::repo::set_cache_root(cli.cache_root(), cli.cache_limit());
            crate::worker::maintenance::maintenance_command(a)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
