//! Packing sealed blobs into pack objects.
//!
//! A [`Packer`] collects sealed blobs of one type until the pack reaches the target size,
//! then [`Packer::finish`] appends the sealed header and trailer (see `proto::pack`) and names
//! the pack by the BLAKE3 hash of its bytes. Packers never upload; the caller decides when a
//! finished pack is durable and only then indexes it.

use podvault_proto::pack::{trailer, BlobType, PackHeader, PackedBlob};
use podvault_proto::{BlobId, ObjectKind, PackId, Record};

use crate::crypto::MasterKey;

/// A complete pack ready to upload.
#[derive(Debug)]
pub struct FinishedPack {
    /// Pack id (hash of `data`).
    pub id: PackId,
    /// The pack bytes.
    pub data: Vec<u8>,
    /// Its header (what the index will list).
    pub header: PackHeader,
}

/// Accumulates blobs of one type.
#[derive(Debug)]
pub struct Packer {
    blob_type: BlobType,
    target: usize,
    data: Vec<u8>,
    blobs: Vec<PackedBlob>,
}

impl Packer {
    /// A packer closing packs at `target` bytes.
    pub fn new(blob_type: BlobType, target: usize) -> Self {
        Packer {
            blob_type,
            target,
            data: Vec::new(),
            blobs: Vec::new(),
        }
    }

    /// Appends a sealed blob; returns true when the pack has reached its target size.
    pub fn add(&mut self, id: BlobId, sealed: &[u8], raw_length: u32) -> bool {
        if self.data.capacity() == 0 {
            self.data.reserve(self.target + self.target / 8);
        }
        self.blobs.push(PackedBlob {
            id,
            offset: self.data.len() as u32,
            length: sealed.len() as u32,
            raw_length,
        });
        self.data.extend_from_slice(sealed);
        self.data.len() >= self.target
    }

    /// Number of blobs waiting.
    pub fn len(&self) -> usize {
        self.blobs.len()
    }

    /// True when no blob is waiting.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }

    /// Closes the current pack, if it holds any blob.
    pub fn finish(&mut self, key: &MasterKey) -> Option<FinishedPack> {
        if self.blobs.is_empty() {
            return None;
        }
        let header = PackHeader {
            blob_type: self.blob_type,
            blobs: std::mem::take(&mut self.blobs),
        };
        let mut data = std::mem::take(&mut self.data);
        let sealed = key.seal(ObjectKind::Pack.aad(), &header.encode());
        data.extend_from_slice(&sealed);
        data.extend_from_slice(&trailer(sealed.len() as u32));
        let id = PackId(*blake3::hash(&data).as_bytes());
        Some(FinishedPack { id, data, header })
    }
}
