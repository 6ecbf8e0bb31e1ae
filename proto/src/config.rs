//! The repository `config` object: parameters fixed when the repository is created.
//!
//! Stored encrypted with the master key. Chunker parameters live here (not in code) so that
//! every writer of a repository cuts the same chunk boundaries and deduplicates against the
//! others, whatever version wrote first.

use serde::{Deserialize, Serialize};

use crate::record::{ObjectKind, ObjectRecord};

/// Content-defined chunking parameters (FastCDC 2020).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk, except a file's last one; files below this are one chunk.
    pub min_size: u32,
    /// Target average chunk size.
    pub avg_size: u32,
    /// Largest chunk.
    pub max_size: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min_size: 512 * 1024,
            avg_size: 1024 * 1024,
            max_size: 8 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the parameters against what FastCDC accepts.
    pub fn validate(&self) -> Result<(), String> {
        let ChunkerParams {
            min_size,
            avg_size,
            max_size,
        } = *self;
        if !(64..=1 << 26).contains(&min_size)
            || !(256..=1 << 28).contains(&avg_size)
            || !(1024..=1 << 30).contains(&max_size)
        {
            return Err(format!(
                "chunk sizes {min_size}/{avg_size}/{max_size} are outside FastCDC's limits"
            ));
        }
        if !(min_size <= avg_size && avg_size <= max_size) {
            return Err(format!(
                "chunk sizes must satisfy min <= avg <= max, got {min_size}/{avg_size}/{max_size}"
            ));
        }
        Ok(())
    }
}

/// The repository configuration record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Random id naming this repository (shown to users, used in cache paths).
    pub repository_id: [u8; 32],
    /// Chunker parameters shared by every writer.
    pub chunker: ChunkerParams,
    /// zstd level for blobs (blobs are stored raw when compression does not pay).
    pub compression_level: i32,
    /// Packs are closed once they reach this many bytes.
    pub pack_target_size: u32,
}

impl Config {
    /// Default pack size: large enough that S3 request counts stay low.
    pub const DEFAULT_PACK_SIZE: u32 = 16 * 1024 * 1024;
    /// Default zstd level, chosen for throughput on small nodes (see the benchmarks).
    pub const DEFAULT_COMPRESSION: i32 = 1;
}

crate::postcard_record!(Config, "config", 1);

impl ObjectRecord for Config {
    const KIND: ObjectKind = ObjectKind::Config;
    type Id = crate::id::ConfigId;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{DecodeError, Record};

    fn sample() -> Config {
        Config {
            repository_id: [3; 32],
            chunker: ChunkerParams::default(),
            compression_level: 3,
            pack_target_size: Config::DEFAULT_PACK_SIZE,
        }
    }

    #[test]
    fn encoding_is_stable() {
        insta::assert_snapshot!(hex::encode(sample().encode()));
    }

    #[test]
    fn round_trip_and_version_check() {
        let bytes = sample().encode();
        assert_eq!(Config::decode(&bytes).unwrap(), sample());
        let mut future = bytes.clone();
        future[0] = 9;
        assert_eq!(
            Config::decode(&future),
            Err(DecodeError::UnknownVersion {
                record: "config",
                found: 9,
                supported: 1
            })
        );
        assert!(Config::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn chunker_validation() {
        assert!(ChunkerParams::default().validate().is_ok());
        let bad = ChunkerParams {
            min_size: 2 << 20,
            avg_size: 1 << 20,
            max_size: 8 << 20,
        };
        assert!(bad.validate().is_err());
    }
}
