//! Packing sealed blobs into pack objects.
//!
//! A [`Packer`] collects sealed blobs of one type until the pack reaches the target size,
//! then [`Packer::finish`] appends the sealed header and trailer (see `proto::pack`) and names
//! the pack by the BLAKE3 hash of its bytes. Packers never upload; the caller decides when a
//! finished pack is durable and only then indexes it.
//!
//! A pack being filled lives in a temporary file in the backend's spool directory (see
//! [`crate::backend::Backend::spool_dir`]), not in memory: only its header is kept, and the
//! id is hashed as the bytes go by. Memory per open pack is therefore a small write buffer,
//! whatever the pack size; to a local repository the finished file is simply renamed into
//! place.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use podvault_proto::index::PackInfo;
use podvault_proto::pack::{trailer, BlobType, PackHeader, PackedBlob};
use podvault_proto::{BlobId, ObjectKind, PackId, Record};
use tempfile::NamedTempFile;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};

/// Write buffer of an open pack: tree blobs are small, data blobs pass straight through.
const WRITE_BUFFER: usize = 64 << 10;

/// A complete pack ready to upload, in a temporary file that is removed when dropped.
#[derive(Debug)]
pub struct FinishedPack {
    /// Pack id (hash of the file's bytes).
    pub id: PackId,
    /// The file holding the pack bytes (removed when dropped, unless persisted).
    pub file: NamedTempFile,
    /// Its length in bytes.
    pub size: u64,
    /// Its header (what the index will list).
    pub header: PackHeader,
}

impl FinishedPack {
    /// What the index lists about this pack.
    pub fn info(&self) -> PackInfo {
        PackInfo {
            id: self.id,
            size: self.size as u32,
            blob_type: self.header.blob_type,
        }
    }
}

/// The pack being filled.
struct OpenPack {
    file: BufWriter<NamedTempFile>,
    len: u64,
    hasher: blake3::Hasher,
}

/// Accumulates blobs of one type.
pub struct Packer {
    blob_type: BlobType,
    target: u64,
    spool: PathBuf,
    open: Option<OpenPack>,
    blobs: Vec<PackedBlob>,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer")
            .field("blob_type", &self.blob_type)
            .field("target", &self.target)
            .field("spool", &self.spool)
            .field("blobs", &self.blobs.len())
            .finish()
    }
}

impl Packer {
    /// A packer closing packs at `target` bytes, spooling them in `spool`.
    pub fn new(blob_type: BlobType, target: usize, spool: &Path) -> Self {
        Packer {
            blob_type,
            target: target as u64,
            spool: spool.to_owned(),
            open: None,
            blobs: Vec::new(),
        }
    }

    fn spool_err(&self, e: std::io::Error) -> Error {
        Error::io(&self.spool, e)
    }

    /// Appends a sealed blob; returns true when the pack has reached its target size.
    pub fn add(&mut self, id: BlobId, sealed: &[u8], raw_length: u32) -> Result<bool> {
        if self.open.is_none() {
            let file = tempfile::Builder::new()
                .prefix("pack-")
                .tempfile_in(&self.spool)
                .map_err(|e| self.spool_err(e))?;
            self.open = Some(OpenPack {
                file: BufWriter::with_capacity(WRITE_BUFFER, file),
                len: 0,
                hasher: blake3::Hasher::new(),
            });
        }
        let open = self.open.as_mut().expect("opened above");
        let offset = u32::try_from(open.len)
            .ok()
            .filter(|o| o.checked_add(sealed.len() as u32).is_some())
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "pack would exceed 4 GiB (target {} bytes)",
                    self.target
                ))
            })?;
        if let Err(e) = open.file.write_all(sealed) {
            // The file is in an unknown state: start the pack over rather than index a hole.
            self.open = None;
            self.blobs.clear();
            return Err(self.spool_err(e));
        }
        open.hasher.update(sealed);
        open.len += sealed.len() as u64;
        self.blobs.push(PackedBlob {
            id,
            offset,
            length: sealed.len() as u32,
            raw_length,
        });
        Ok(open.len >= self.target)
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
    pub fn finish(&mut self, key: &MasterKey) -> Result<Option<FinishedPack>> {
        let Some(mut open) = self.open.take() else {
            return Ok(None);
        };
        if self.blobs.is_empty() {
            return Ok(None);
        }
        let header = PackHeader {
            blob_type: self.blob_type,
            blobs: std::mem::take(&mut self.blobs),
        };
        let sealed = key.seal(ObjectKind::Pack.aad(), &header.encode());
        let trailer = trailer(sealed.len() as u32);
        for part in [&sealed[..], &trailer[..]] {
            open.file.write_all(part).map_err(|e| self.spool_err(e))?;
            open.hasher.update(part);
            open.len += part.len() as u64;
        }
        let file = open
            .file
            .into_inner()
            .map_err(|e| self.spool_err(e.into_error()))?;
        let id = PackId(*open.hasher.finalize().as_bytes());
        Ok(Some(FinishedPack {
            id,
            file,
            size: open.len,
            header,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_pack_is_named_by_its_bytes_and_lists_its_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::from_secret([7; 32]);
        let mut p = Packer::new(BlobType::Data, 100, dir.path());
        assert!(p.finish(&key).unwrap().is_none());
        let a = BlobId([1; 32]);
        let b = BlobId([2; 32]);
        assert!(!p.add(a, &[0xaa; 60], 70).unwrap());
        assert!(p.add(b, &[0xbb; 50], 50).unwrap());
        let pack = p.finish(&key).unwrap().unwrap();
        let bytes = std::fs::read(pack.file.path()).unwrap();
        assert_eq!(bytes.len() as u64, pack.size);
        assert_eq!(pack.id, PackId(*blake3::hash(&bytes).as_bytes()));
        assert_eq!(&bytes[..60], &[0xaa; 60][..]);
        assert_eq!(&bytes[60..110], &[0xbb; 50][..]);
        let offsets: Vec<_> = pack
            .header
            .blobs
            .iter()
            .map(|b| (b.offset, b.length))
            .collect();
        assert_eq!(offsets, vec![(0, 60), (60, 50)]);
        // The next pack starts empty, in a new file.
        assert!(p.is_empty());
        assert!(!p.add(a, &[1; 10], 10).unwrap());
        let next = p.finish(&key).unwrap().unwrap();
        assert_ne!(next.id, pack.id);
        assert_eq!(next.header.blobs[0].offset, 0);
        // Dropping a finished pack removes its file.
        let path = next.file.path().to_path_buf();
        drop(next);
        assert!(!path.exists());
    }

    #[test]
    fn missing_spool_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let mut p = Packer::new(BlobType::Tree, 100, &gone);
        let e = p.add(BlobId([1; 32]), b"x", 1).unwrap_err().to_string();
        assert!(e.contains("gone"), "{e}");
    }
}
