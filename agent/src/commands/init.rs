//! `podvault init`.

use podvault_proto::config::ChunkerParams;

use crate::cli::{Cli, EXIT_OK};
use crate::crypto::KdfCost;
use crate::error::Result;
use crate::repository::{InitOptions, Repository};

/// Repository creation settings.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// zstd compression level (0 = off).
    #[arg(long, default_value_t = podvault_proto::config::Config::DEFAULT_COMPRESSION)]
    pub compression: i32,
    /// Target pack size in MiB.
    #[arg(long, default_value_t = 16)]
    pub pack_size_mib: u32,
    /// Average chunk size in KiB (min is half, max eight times).
    #[arg(long, default_value_t = 1024)]
    pub chunk_avg_kib: u32,
    /// Argon2id memory for the key, KiB.
    #[arg(long, default_value_t = KdfCost::default().memory_kib)]
    pub kdf_memory_kib: u32,
    /// Argon2id passes for the key.
    #[arg(long, default_value_t = KdfCost::default().iterations)]
    pub kdf_iterations: u32,
}

/// Runs `init`.
pub fn run(cli: &Cli, a: &InitArgs) -> Result<u8> {
    let location = cli.location()?;
    let password = cli.password(true)?;
    let avg = a.chunk_avg_kib.saturating_mul(1024);
    let opts = InitOptions {
        chunker: ChunkerParams {
            min_size: avg / 2,
            avg_size: avg,
            max_size: avg.saturating_mul(8),
        },
        compression_level: a.compression,
        pack_size: a.pack_size_mib.saturating_mul(1 << 20),
        kdf: KdfCost {
            memory_kib: a.kdf_memory_kib,
            iterations: a.kdf_iterations,
            parallelism: 1,
        },
    };
    let repo = Repository::init(&location, &password, &opts)?;
    let id = hex::encode(repo.config().repository_id);
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "repository_id": id, "location": location.to_string() })
        );
    } else {
        println!("created podvault repository {} at {location}", &id[..8]);
    }
    Ok(EXIT_OK)
}
