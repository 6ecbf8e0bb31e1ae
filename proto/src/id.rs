//! Typed 32-byte object ids.
//!
//! Every id in a repository is 32 bytes: blob ids (chunks and trees) are BLAKE3 keyed with a
//! secret derived from the master key, so the store learns nothing from them; object ids
//! (packs, indexes, snapshots, keys) are the plain BLAKE3 hash of the stored bytes, so any
//! object can be verified against its name without a key. Ids print as lowercase hex and
//! serialize as hex in human-readable formats (JSON) and as 32 raw bytes otherwise.

use std::fmt;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length in bytes of every id.
pub const ID_LEN: usize = 32;

/// Error parsing an id from its hex form.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid id {input:?}: expected {} hex digits", ID_LEN * 2)]
pub struct ParseIdError {
    /// The text that failed to parse.
    pub input: String,
}

/// Ids that name repository objects, built from the hash of the stored bytes.
pub trait ObjectId: Copy + fmt::Display {
    /// Wraps raw id bytes.
    fn from_bytes(bytes: [u8; ID_LEN]) -> Self;
}

macro_rules! define_id {
    ($($(#[$meta:meta])* $name:ident;)+) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// The raw bytes of the id.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Lowercase hex form, as used in object names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, for display.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// Reads an id from the start of `bytes`, if there are enough of them.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.get(..ID_LEN).and_then(|b| b.try_into().ok()).map(Self)
            }
        }

        impl ObjectId for $name {
            fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| ParseIdError { input: s.to_owned() })?;
                Ok(Self(out))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    self.0.serialize(s)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                if d.is_human_readable() {
                    let s = String::deserialize(d)?;
                    s.parse().map_err(D::Error::custom)
                } else {
                    <[u8; ID_LEN]>::deserialize(d).map(Self)
                }
            }
        }
    )+};
}

define_id! {
    /// Id of a blob of any type: keyed BLAKE3 of its plaintext.
    BlobId;
    /// Id of a file-content chunk: keyed BLAKE3 of the chunk's bytes.
    ChunkId;
    /// Id of a directory tree blob: keyed BLAKE3 of its encoded record.
    TreeId;
    /// Id of a pack object: BLAKE3 of the stored pack bytes.
    PackId;
    /// Id of an index object: BLAKE3 of the stored (encrypted) bytes.
    IndexId;
    /// Id of a snapshot object: BLAKE3 of the stored (encrypted) bytes.
    SnapshotId;
    /// Id of a key file: BLAKE3 of its stored bytes.
    KeyId;
    /// Hash of the stored `config` object (it always lives at the fixed name `config`).
    ConfigId;
}

impl From<ChunkId> for BlobId {
    fn from(id: ChunkId) -> Self {
        BlobId(id.0)
    }
}

impl From<TreeId> for BlobId {
    fn from(id: TreeId) -> Self {
        BlobId(id.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let id = PackId([0xab; ID_LEN]);
        let text = id.to_hex();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PackId>(), Ok(id));
        assert_eq!(id.short(), "abababab");
        assert!("abc".parse::<PackId>().is_err());
        assert!("zz".repeat(32).parse::<PackId>().is_err());
    }

    #[test]
    fn json_is_hex_and_postcard_is_raw() {
        let id = SnapshotId([7; ID_LEN]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(32)));
        assert_eq!(serde_json::from_str::<SnapshotId>(&json).unwrap(), id);
        let raw = postcard::to_stdvec(&id).unwrap();
        assert_eq!(raw, vec![7; ID_LEN]);
        assert_eq!(postcard::from_bytes::<SnapshotId>(&raw).unwrap(), id);
    }
}
