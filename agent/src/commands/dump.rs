//! `podvault dump`.

use crate::cli::{Cli, EXIT_OK};
use crate::commands::cancel_on_ctrl_c;
use crate::dump;
use crate::error::Result;

/// `dump` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// Snapshot id, unique id prefix, or `latest`.
    pub snapshot: String,
    /// Regular file inside the snapshot (relative to its root, e.g. `db.sql`).
    pub path: String,
}

/// Runs `dump`: the file's content goes to standard output, messages to standard error.
pub fn run(cli: &Cli, a: &DumpArgs) -> Result<u8> {
    let repo = cli.open_repo()?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let cancel = cancel_on_ctrl_c();
    let mut out = std::io::stdout().lock();
    dump::dump(&repo, &snap, &a.path, &mut out, cancel)?;
    Ok(EXIT_OK)
}
