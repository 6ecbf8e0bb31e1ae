//! `podvault prune`.

use crate::cli::{Cli, EXIT_OK};
use crate::commands::bytes;
use crate::error::Result;
use crate::prune::{self, PruneOptions};

/// Runs `prune`.
pub fn run(cli: &Cli, opts: &PruneOptions) -> Result<u8> {
    let repo = cli.open_repo()?;
    let r = prune::prune(&repo, opts)?;
    if cli.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let would = if opts.dry_run { "would be " } else { "" };
    println!(
        "{} snapshot(s) keep {} blob(s); {} pack(s) in the repository",
        r.snapshots, r.blobs_referenced, r.packs_before
    );
    println!(
        "{} pack(s) {would}marked for deletion ({} repacked into {} new pack(s), {} copied)",
        r.packs_marked,
        r.packs_repacked,
        r.packs_written,
        bytes(r.bytes_repacked)
    );
    println!(
        "{} pack(s) {would}deleted ({} freed); {} marked pack(s) needed again; {} still waiting \
         for their grace period",
        r.packs_deleted,
        bytes(r.bytes_deleted),
        r.packs_resurrected,
        r.packs_pending
    );
    Ok(EXIT_OK)
}
