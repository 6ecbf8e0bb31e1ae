//! Pack objects (`data/<xx>/<pack-id>`): many encrypted blobs of one type, then a header.
//!
//! Layout: `blob* | sealed(PackHeader) | header_len: u32 LE | "PVPK"`. The header sits at the
//! end so a pack can be streamed out as blobs are produced; it lists every blob with its offset
//! and lengths so the index can be rebuilt from packs alone. Data and tree blobs never share a
//! pack, so reading all trees never downloads file content.

use serde::{Deserialize, Serialize};

use crate::id::BlobId;

/// Magic bytes closing every pack.
pub const PACK_MAGIC: [u8; 4] = *b"PVPK";
/// Length of the trailer after the sealed header.
pub const TRAILER_LEN: usize = 8;

/// The two kinds of blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BlobType {
    /// File content chunk.
    Data,
    /// Directory tree.
    Tree,
}

impl BlobType {
    /// Byte used in binary layouts and associated data.
    pub fn as_u8(self) -> u8 {
        match self {
            BlobType::Data => 0,
            BlobType::Tree => 1,
        }
    }

    /// Inverse of [`BlobType::as_u8`].
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

/// Where one blob sits inside its pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBlob {
    /// Blob id.
    pub id: BlobId,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Plaintext length of the blob.
    pub raw_length: u32,
}

/// The pack header record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackHeader {
    /// Type of every blob in the pack.
    pub blob_type: BlobType,
    /// Blobs in offset order.
    pub blobs: Vec<PackedBlob>,
}

crate::postcard_record!(PackHeader, "pack header", 1);

/// Builds the trailer that follows a sealed header of `header_len` bytes.
pub fn trailer(header_len: u32) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    t[..4].copy_from_slice(&header_len.to_le_bytes());
    t[4..].copy_from_slice(&PACK_MAGIC);
    t
}

/// Reads the sealed header length from a pack's last [`TRAILER_LEN`] bytes.
pub fn parse_trailer(tail: &[u8]) -> Option<u32> {
    let t: &[u8; TRAILER_LEN] = tail.try_into().ok()?;
    (t[4..] == PACK_MAGIC).then(|| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn encoding_is_stable() {
        let h = PackHeader {
            blob_type: BlobType::Data,
            blobs: vec![
                PackedBlob {
                    id: BlobId([4; 32]),
                    offset: 0,
                    length: 100,
                    raw_length: 300,
                },
                PackedBlob {
                    id: BlobId([5; 32]),
                    offset: 100,
                    length: 60,
                    raw_length: 20,
                },
            ],
        };
        insta::assert_snapshot!(hex::encode(h.encode()));
        assert_eq!(PackHeader::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn trailer_round_trip() {
        assert_eq!(parse_trailer(&trailer(1234)), Some(1234));
        assert_eq!(parse_trailer(b"\0\0\0\0PVPX"), None);
        assert_eq!(parse_trailer(b"short"), None);
    }
}
