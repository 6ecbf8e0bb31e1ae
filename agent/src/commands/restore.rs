//! `podvault restore`.

use crate::cli::{Cli, EXIT_OK};
use crate::commands::{bytes, cancel_on_ctrl_c, with_progress};
use crate::error::Result;
use crate::progress::Progress;
use crate::restorer::{self, RestoreOptions};

/// Runs `restore`.
pub fn run(cli: &Cli, opts: &RestoreOptions) -> Result<u8> {
    let repo = cli.open_repo()?;
    let (id, snap) = repo.find_snapshot(&opts.snapshot)?;
    let progress = Progress::default();
    let cancel = cancel_on_ctrl_c();
    let out = with_progress(cli.show_progress(), "restore", &progress, || {
        restorer::restore(&repo, &snap, opts, &progress, cancel)
    })?;
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "snapshot": id.to_hex(), "restored": out })
        );
    } else {
        println!(
            "restored snapshot {} to {}: {} files ({}), {} dirs, {} other entries",
            id.short(),
            opts.target.display(),
            out.files,
            bytes(out.bytes),
            out.dirs,
            out.others
        );
        for s in &out.skipped {
            eprintln!("skipped {s} (socket, or device node without root or under --restricted)");
        }
    }
    Ok(EXIT_OK)
}
