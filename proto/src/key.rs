//! Key files (`keys/<id>`): the random master key, wrapped by a password-derived key.
//!
//! Key files are plaintext JSON so an operator can see which KDF and parameters a key uses.
//! Any number may exist; each wraps the same master key under a different password. The
//! wrapped key is sealed with AES-256-GCM under the Argon2id output (see the agent's crypto
//! module), so a wrong password fails authentication instead of yielding a wrong key.
//!
//! Key files are the one record anybody with write access to the store can forge without a
//! key (they are plaintext and named by their plain hash), and every open runs the KDF each
//! one asks for. Decoding therefore rejects KDF parameters beyond [`KdfParams::check`]'s
//! ceilings, so a planted key file cannot make every `podvault` run allocate terabytes or
//! hash for hours; the repository treats such a key as damaged and tries the others.

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

impl KdfParams {
    /// Most memory a key may ask for: 4 GiB.
    pub const MAX_MEMORY_KIB: u32 = 4 << 20;
    /// Most work a key may ask for, as memory × passes: 64 GiB (a minute or so of Argon2id).
    pub const MAX_WORK_KIB: u64 = 64 << 20;
    /// Most lanes a key may ask for.
    pub const MAX_PARALLELISM: u32 = 255;

    /// Checks the costs against the ceilings above (the KDF itself checks the rest).
    pub fn check(&self) -> Result<(), String> {
        if self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err(format!(
                "KDF memory {} KiB exceeds the {} KiB ceiling",
                self.memory_kib,
                Self::MAX_MEMORY_KIB
            ));
        }
        if self.memory_kib as u64 * self.iterations as u64 > Self::MAX_WORK_KIB {
            return Err(format!(
                "KDF cost {} KiB x {} passes exceeds the ceiling of {} KiB-passes",
                self.memory_kib,
                self.iterations,
                Self::MAX_WORK_KIB
            ));
        }
        if !(1..=Self::MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(format!(
                "KDF parallelism {} is outside 1..={}",
                self.parallelism,
                Self::MAX_PARALLELISM
            ));
        }
        Ok(())
    }
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
        let key: KeyFile = serde_json::from_slice(bytes).map_err(malformed)?;
        key.kdf.check().map_err(|detail| DecodeError::Malformed {
            record: Self::NAME,
            detail,
        })?;
        Ok(key)
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

    #[test]
    fn rejects_absurd_kdf_costs() {
        for (memory_kib, iterations, parallelism) in [
            (u32::MAX, 1, 1),
            (1 << 20, 1 << 20, 1),
            (65536, 3, 0),
            (65536, 3, 1 << 20),
        ] {
            let mut k = sample();
            k.kdf.memory_kib = memory_kib;
            k.kdf.iterations = iterations;
            k.kdf.parallelism = parallelism;
            assert!(
                matches!(
                    KeyFile::decode(&k.encode()),
                    Err(DecodeError::Malformed { .. })
                ),
                "{memory_kib} {iterations} {parallelism}"
            );
        }
        let mut k = sample();
        k.kdf.memory_kib = KdfParams::MAX_MEMORY_KIB;
        k.kdf.iterations = 16;
        assert!(KeyFile::decode(&k.encode()).is_ok());
    }
}
