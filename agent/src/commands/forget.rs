//! `podvault forget`.

use crate::cli::{Cli, EXIT_OK};
use crate::error::Result;
use crate::forget::{self, ForgetOptions};

/// Runs `forget`.
pub fn run(cli: &Cli, opts: &ForgetOptions) -> Result<u8> {
    let repo = cli.open_repo()?;
    let groups = forget::forget(&repo, opts)?;
    if cli.json {
        println!("{}", serde_json::to_string(&groups).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    let verb = if opts.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for g in &groups {
        println!("series {}", g.series);
        for (id, why) in &g.keep {
            let why: Vec<String> = why
                .iter()
                .map(|r| format!("{r:?}").to_lowercase())
                .collect();
            println!("  keep   {} ({})", id.short(), why.join(", "));
        }
        for id in &g.remove {
            println!("  {verb} {}", id.short());
        }
    }
    Ok(EXIT_OK)
}
