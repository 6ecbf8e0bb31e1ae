//! Key files (`keys/<id>`): the random master key, wrapped by a password-derived key.
//!
//! Key files are plaintext JSON so an operator can see which KDF and parameters a key uses.
//! Any number may exist; each wraps the same master key under a different password. The
//! wrapped key is sealed with AES-256-GCM under the Argon2id output (see the agent's crypto
//! module), so a wrong password fails authentication instead of yielding a wrong key.

use serde::{Deserialize, Serialize};

use crate::record::{DecodeError, ObjectKind, ObjectRecord, Record};

/// Parameters of the memory-hard key-derivation function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id` in this version.
    pub algorithm: String,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub parallelism: u32,
    /// Random salt, hex.
    pub salt: String,
}

/// A key file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyFile {
    /// Format version (checked on load).
    pub version: u16,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Host that created the key.
    pub hostname: String,
    /// How the wrapping key is derived from the password.
    pub kdf: KdfParams,
    /// The sealed master key, hex.
    pub master_key: String,
}

impl Record for KeyFile {
    const NAME: &'static str = "key file";
    const VERSION: u16 = 1;

    fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec_pretty(self).expect("key file JSON")
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Probe {
            version: u16,
        }
        let malformed = |e: serde_json::Error| DecodeError::Malformed {
            record: Self::NAME,
            detail: e.to_string(),
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(malformed)?;
        if probe.version != Self::VERSION {
            return Err(DecodeError::UnknownVersion {
                record: Self::NAME,
                found: probe.version,
                supported: Self::VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(malformed)
    }
}

impl ObjectRecord for KeyFile {
    const KIND: ObjectKind = ObjectKind::Key;
    type Id = crate::id::KeyId;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> KeyFile {
        KeyFile {
            version: 1,
            created: "2026-01-02T03:04:05Z".into(),
            hostname: "node-a".into(),
            kdf: KdfParams {
                algorithm: "argon2id".into(),
                memory_kib: 65536,
                iterations: 3,
                parallelism: 1,
                salt: "00".repeat(16),
            },
            master_key: "ab".repeat(8),
        }
    }

    #[test]
    fn encoding_is_stable() {
        insta::assert_snapshot!(String::from_utf8(sample().encode()).unwrap());
    }

    #[test]
    fn rejects_other_versions_and_garbage() {
        let mut k = sample();
        k.version = 2;
        assert!(matches!(
            KeyFile::decode(&k.encode()),
            Err(DecodeError::UnknownVersion { found: 2, .. })
        ));
        assert!(matches!(
            KeyFile::decode(b"{not json"),
            Err(DecodeError::Malformed { .. })
        ));
        assert_eq!(KeyFile::decode(&sample().encode()).unwrap(), sample());
    }
}
