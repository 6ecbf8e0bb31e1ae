//! The in-memory view of all index objects: blob id → pack location.
//!
//! All entries live in one sorted array of fixed 48-byte records plus one table of packs, so a
//! lookup is a binary search and memory is ~48 bytes per blob with no per-entry allocation
//! (no hash map). Blobs present in several packs (concurrent writers may store the same blob)
//! keep one location, preferring a pack that is not marked for deletion. Index objects
//! superseded by another are skipped.
//!
//! Packs prune has marked for deletion ("pending", see [`crate::prune`]) stay readable — a
//! snapshot written by a backup that started before the mark may still need them — but
//! [`MasterIndex::contains`] does not count their blobs, so new backups store such blobs
//! again instead of depending on data that is about to go.

use std::collections::{HashMap, HashSet};

use podvault_proto::index::{IndexEntry, IndexFile, PackInfo, PendingPack};
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
    /// The pack is marked for deletion.
    pub pending: bool,
}

/// All index entries of a repository, merged and sorted.
#[derive(Debug, Default)]
pub struct MasterIndex {
    packs: Vec<PackInfo>,
    /// Parallel to `packs`: marked for deletion.
    pack_pending: Vec<bool>,
    entries: Vec<IndexEntry>,
    ids: Vec<IndexId>,
    pending: HashMap<PackId, PendingPack>,
}

impl MasterIndex {
    /// Merges index objects, skipping superseded ones.
    pub fn from_files(files: Vec<(IndexId, IndexFile)>) -> Self {
        let superseded: HashSet<IndexId> = files
            .iter()
            .flat_map(|(_, f)| f.supersedes.iter().copied())
            .collect();
        let mut m = MasterIndex::default();
        let files: Vec<_> = files
            .into_iter()
            .filter(|(id, _)| !superseded.contains(id))
            .collect();
        for (_, file) in &files {
            for p in &file.pending {
                let at = m.pending.entry(p.id).or_insert(*p);
                at.marked_at = at.marked_at.min(p.marked_at);
                at.delete_after = at.delete_after.min(p.delete_after);
            }
        }
        for (id, file) in files {
            m.ids.push(id);
            let base = m.packs.len() as u32;
            m.pack_pending
                .extend(file.packs.iter().map(|p| m.pending.contains_key(&p.id)));
            m.packs.extend_from_slice(&file.packs);
            m.entries.extend(file.entries.into_iter().map(|mut e| {
                e.pack += base;
                e
            }));
        }
        // Stable sort puts the location in a live pack first (else the first seen); dedup
        // keeps it.
        let pending = &m.pack_pending;
        m.entries.sort_by_key(|e| (e.id, pending[e.pack as usize]));
        m.entries.dedup_by(|later, first| later.id == first.id);
        m.entries.shrink_to_fit();
        m
    }

    /// Packs marked for deletion (earliest mark where several index objects mark one pack).
    pub fn pending(&self) -> &HashMap<PackId, PendingPack> {
        &self.pending
    }

    /// Index objects merged into this view.
    pub fn index_ids(&self) -> &[IndexId] {
        &self.ids
    }

    /// Looks up a blob (in a live pack if it has one, else in a pack marked for deletion).
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
            pending: self.pack_pending[e.pack as usize],
        })
    }

    /// The live pack holding a blob, if any: what a backup may deduplicate against.
    pub fn live_pack(&self, id: &BlobId) -> Option<PackId> {
        let i = self.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        let e = &self.entries[i];
        (!self.pack_pending[e.pack as usize]).then(|| self.packs[e.pack as usize].id)
    }

    /// True when the blob is stored in a pack that is not marked for deletion.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.live_pack(id).is_some()
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

    /// True when `pack` is listed by an index object or marked for deletion.
    pub fn knows_pack(&self, pack: &PackId) -> bool {
        self.pending.contains_key(pack) || self.packs.iter().any(|p| p.id == *pack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(pack: u8, ids: &[u8]) -> IndexFile {
        let mut f = IndexFile {
            supersedes: vec![],
            pending: vec![],
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

    #[test]
    fn pending_packs_are_readable_but_not_reusable() {
        let mut prune = file(2, &[1, 2]);
        prune.pending = vec![PendingPack {
            id: PackId([2; 32]),
            marked_at: 100,
            delete_after: 200,
        }];
        let m = MasterIndex::from_files(vec![
            (IndexId([1; 32]), prune),
            (IndexId([2; 32]), file(3, &[2])),
        ]);
        // Blob 1 lives only in the pending pack: readable, but a backup must store it again.
        let loc = m.lookup(&BlobId([1; 32])).unwrap();
        assert!(loc.pending);
        assert!(!m.contains(&BlobId([1; 32])));
        // Blob 2 has a live copy, which wins.
        assert_eq!(m.live_pack(&BlobId([2; 32])), Some(PackId([3; 32])));
        assert!(!m.lookup(&BlobId([2; 32])).unwrap().pending);
        assert_eq!(m.pending()[&PackId([2; 32])].marked_at, 100);
        assert!(m.knows_pack(&PackId([2; 32])));
        assert!(!m.knows_pack(&PackId([9; 32])));
    }
}
