//! The in-memory view of all index objects: blob id → pack location.
//!
//! All entries live in one sorted array of fixed 48-byte records plus one table of packs, so a
//! lookup is a binary search and memory is ~48 bytes per blob with no per-entry allocation
//! (no hash map). Blobs present in several packs (concurrent writers may store the same blob)
//! keep the first location. Index objects superseded by another are skipped.

use std::collections::HashSet;

use podvault_proto::index::{IndexEntry, IndexFile, PackInfo};
use podvault_proto::pack::BlobType;
use podvault_proto::{BlobId, IndexId, PackId};

/// Where a blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobLocation {
    /// Pack holding it.
    pub pack: PackId,
    /// Blob type (the pack's type).
    pub blob_type: BlobType,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Sealed length.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// All index entries of a repository, merged and sorted.
#[derive(Debug, Default)]
pub struct MasterIndex {
    packs: Vec<PackInfo>,
    entries: Vec<IndexEntry>,
    ids: Vec<IndexId>,
}

impl MasterIndex {
    /// Merges index objects, skipping superseded ones.
    pub fn from_files(files: Vec<(IndexId, IndexFile)>) -> Self {
        let superseded: HashSet<IndexId> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut m = MasterIndex::default();
        for (id, file) in files {
            if superseded.contains(&id) {
                continue;
            }
            m.ids.push(id);
            let base = m.packs.len() as u32;
            m.packs.extend_from_slice(&file.packs);
            m.entries.extend(file.entries.into_iter().map(|mut e| {
                e.pack += base;
                e
            }));
        }
        // Stable sort keeps the first location of duplicated blobs first; dedup keeps it.
        m.entries.sort_by_key(|e| e.id);
        m.entries.dedup_by(|later, first| later.id == first.id);
        m.entries.shrink_to_fit();
        m
    }

    /// Index objects merged into this view.
    pub fn index_ids(&self) -> &[IndexId] {
        &self.ids
    }

    /// Looks up a blob.
    pub fn lookup(&self, id: &BlobId) -> Option<BlobLocation> {
        let i = self.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        let e = &self.entries[i];
        let p = &self.packs[e.pack as usize];
        Some(BlobLocation {
            pack: p.id,
            blob_type: p.blob_type,
            offset: e.offset,
            length: e.length,
            raw_length: e.raw_length,
        })
    }

    /// True when the blob is stored.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.entries.binary_search_by(|e| e.id.cmp(id)).is_ok()
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every (distinct) pack referenced.
    pub fn packs(&self) -> impl Iterator<Item = &PackInfo> {
        let mut seen = HashSet::new();
        self.packs.iter().filter(move |p| seen.insert(p.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pack: u8, ids: &[u8]) -> IndexFile {
        let mut f = IndexFile {
            supersedes: vec![],
            packs: vec![PackInfo {
                id: PackId([pack; 32]),
                size: 1000,
                blob_type: BlobType::Data,
            }],
            entries: ids
                .iter()
                .map(|&i| IndexEntry {
                    id: BlobId([i; 32]),
                    pack: 0,
                    offset: i as u32,
                    length: 1,
                    raw_length: 1,
                })
                .collect(),
        };
        f.sort();
        f
    }

    #[test]
    fn merges_files_and_skips_superseded() {
        let mut replacement = file(3, &[1, 2]);
        replacement.supersedes = vec![IndexId([9; 32])];
        let m = MasterIndex::from_files(vec![
            (IndexId([8; 32]), file(1, &[5, 1])),
            (IndexId([9; 32]), file(2, &[7])),
            (IndexId([10; 32]), replacement),
        ]);
        assert_eq!(m.len(), 3);
        assert_eq!(m.lookup(&BlobId([5; 32])).unwrap().pack, PackId([1; 32]));
        assert_eq!(m.lookup(&BlobId([1; 32])).unwrap().pack, PackId([1; 32]));
        assert!(!m.contains(&BlobId([7; 32])));
        assert_eq!(m.index_ids().len(), 2);
        assert_eq!(m.packs().count(), 2);
    }
}
