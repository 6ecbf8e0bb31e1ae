//! `podvault check`.

use crate::check::{self, CheckOptions};
use crate::cli::{Cli, EXIT_FAILURE, EXIT_OK};
use crate::commands::bytes;
use crate::error::Result;
use crate::repository::Repository;

/// Runs `check`; exits 1 when damage is found.
pub fn run(cli: &Cli, opts: &CheckOptions) -> Result<u8> {
    // Checks the repository itself: no cache.
    let repo = Repository::open(&cli.location()?, &cli.password(false)?)?;
    let r = check::check(&repo, opts)?;
    let code = if r.is_clean() { EXIT_OK } else { EXIT_FAILURE };
    if cli.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
        return Ok(code);
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    for e in &r.errors {
        eprintln!("error: {}: {}", e.object, e.detail);
    }
    for a in &r.affected {
        eprintln!(
            "snapshot {} is damaged; {} path(s) cannot be restored intact:",
            &a.snapshot[..8],
            a.paths.len()
        );
        for p in &a.paths {
            eprintln!("  {}: {}", p.object, p.detail);
        }
    }
    println!(
        "checked {} snapshot(s), {} tree(s), {} blob(s), {} pack(s); read {} pack(s) ({}), verified {} blob(s)",
        r.snapshots,
        r.trees,
        r.blobs,
        r.packs,
        r.packs_read,
        bytes(r.bytes_read),
        r.blobs_read
    );
    if r.is_clean() {
        println!("no errors were found");
    } else {
        println!(
            "{} error(s) found; {} snapshot(s) affected",
            r.errors.len(),
            r.affected.len()
        );
    }
    Ok(code)
}
