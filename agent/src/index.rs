//! The in-memory view of all index objects: blob id → pack location.
//!
//! ## Layout
//! Entries live in sorted arrays of small fixed-size records (no hash map, no per-entry
//! allocation); a lookup reads one slot of a bucket table keyed by the id's top bits (about
//! four entries per bucket) and then binary-searches those few entries. Packs are kept once
//! each, sorted by id, and entries name them by a `u32` ordinal.
//!
//! The view is built one index object at a time ([`IndexBuilder::add`]; see
//! `Repository::load_index`), so peak memory while loading is the finished view plus one
//! decoded object, not every decoded object and the merged copy side by side.
//!
//! ## Precision
//! - [`Precision::Exact`] keeps every blob's full 32-byte id and location: 48 bytes per blob.
//!   Restore, check, prune and `ls` use it — everywhere a wrong answer could lose data or
//!   hide damage.
//! - [`Precision::Dedup`] is the backup's view. Tree blobs keep full ids and locations (the
//!   backup reads its parent's trees). Data blobs keep only the first 96 bits of their id and
//!   their pack: 16 bytes each, plus about one byte of bucket table — a repository with 10
//!   million blobs costs ~170 MiB instead of ~480 MiB. [`MasterIndex::lookup`] never answers
//!   for such a blob (it cannot give a location), only [`MasterIndex::live_pack`] and
//!   [`MasterIndex::contains`] do, from the 96-bit prefix.
//!
//! Why a 96-bit prefix is safe for deduplication: ids are BLAKE3 outputs keyed with a secret
//! derived from the master key, so they are uniformly distributed and nobody without the key
//! can aim for a collision. A backup goes wrong only if a chunk the repository does *not*
//! hold shares its 96-bit prefix with one it does hold (the chunk would then not be stored).
//! For M chunks looked up against N indexed blobs that probability is at most M·N/2⁹⁶: with
//! N = 10⁷ blobs and a backup of M = 10⁷ new chunks (~10 TiB) it is 1.3·10⁻¹⁵ — below the
//! rate of undetected hardware errors (memory, disks) every backup already accepts, and a
//! thousand such backups a day for a century stay below 10⁻⁷. Two indexed blobs sharing a
//! prefix (probability N²/2⁹⁷ ≈ 6·10⁻¹⁶) would only make the backup record the other's pack
//! as a dependency.
//!
//! ## Duplicates and prune marks
//! Blobs present in several packs (concurrent writers may store the same blob) keep one
//! location, preferring a pack that is not marked for deletion, then the lowest pack id.
//! Index objects superseded by another are skipped.
//!
//! Packs prune has marked for deletion ("pending", see [`crate::prune`]) stay readable — a
//! snapshot written by a backup that started before the mark may still need them — but
//! [`MasterIndex::contains`] does not count their blobs, so new backups store such blobs
//! again instead of depending on data that is about to go.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use podvault_proto::index::{IndexFile, PackInfo, PendingPack};
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

/// How precisely a [`MasterIndex`] remembers data blobs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Full ids and locations of every blob.
    #[default]
    Exact,
    /// Full ids and locations of tree blobs; a 96-bit id prefix and the pack of data blobs.
    Dedup,
}

/// A blob with its full id and location (48 bytes).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: BlobId,
    pack: u32,
    offset: u32,
    length: u32,
    raw_length: u32,
}

/// A data blob in the deduplication view: the first 96 bits of its id and its pack
/// (16 bytes).
#[derive(Debug, Clone, Copy)]
struct Short {
    hi: u64,
    lo: u32,
    pack: u32,
}

impl Short {
    fn key(id: &BlobId) -> (u64, u32) {
        (
            top(id),
            u32::from_be_bytes([id.0[8], id.0[9], id.0[10], id.0[11]]),
        )
    }
}

/// The first 64 bits of an id, in sort order.
fn top(id: &BlobId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

/// Start positions of the entries of each bucket (ids sharing their top bits) in a sorted
/// array, so a lookup searches about four entries instead of the whole array.
#[derive(Debug, Default)]
struct Buckets {
    bits: u32,
    starts: Vec<u32>,
}

impl Buckets {
    fn build(n: usize, top_of: impl Fn(usize) -> u64) -> Self {
        let bits = (n / 4).max(1).ilog2().min(24);
        let mut starts = Vec::with_capacity((1usize << bits) + 1);
        for i in 0..n {
            let b = Self::bucket(bits, top_of(i));
            while starts.len() <= b {
                starts.push(i as u32);
            }
        }
        starts.resize((1usize << bits) + 1, n as u32);
        Buckets { bits, starts }
    }

    fn bucket(bits: u32, top: u64) -> usize {
        top.checked_shr(64 - bits).unwrap_or(0) as usize
    }

    fn range(&self, top: u64) -> Range<usize> {
        if self.starts.is_empty() {
            return 0..0;
        }
        let b = Self::bucket(self.bits, top);
        self.starts[b] as usize..self.starts[b + 1] as usize
    }
}

/// All index entries of a repository, merged and sorted.
#[derive(Debug, Default)]
pub struct MasterIndex {
    precision: Precision,
    /// Distinct packs, sorted by id; entries refer to them by position.
    packs: Vec<PackInfo>,
    /// Parallel to `packs`: marked for deletion.
    pack_pending: Vec<bool>,
    /// Blobs with full ids (all of them when exact, trees only in the dedup view).
    entries: Vec<Entry>,
    entry_buckets: Buckets,
    /// Data blobs of the dedup view.
    shorts: Vec<Short>,
    short_buckets: Buckets,
    ids: Vec<IndexId>,
    pending: HashMap<PackId, PendingPack>,
}

/// Builds a [`MasterIndex`] from index objects added one at a time.
#[derive(Debug, Default)]
pub struct IndexBuilder {
    precision: Precision,
    files: Vec<IndexId>,
    /// Position in `packs` of the first pack of each added object.
    file_start: Vec<u32>,
    superseded: HashSet<IndexId>,
    pending: Vec<(u32, PendingPack)>,
    /// Packs as listed, object after object (a pack may appear more than once).
    packs: Vec<PackInfo>,
    entries: Vec<Entry>,
    shorts: Vec<Short>,
}

const NONE: u32 = u32::MAX;

impl IndexBuilder {
    /// Merges one index object (its entries must refer to its own packs).
    pub fn add(&mut self, id: IndexId, file: IndexFile) {
        let n = self.files.len() as u32;
        self.files.push(id);
        self.superseded.extend(file.supersedes.iter().copied());
        self.pending.extend(file.pending.iter().map(|p| (n, *p)));
        let base = self.packs.len() as u32;
        self.file_start.push(base);
        self.packs.extend_from_slice(&file.packs);
        for e in &file.entries {
            // Decoding checked the ordinal; an object built in memory is trusted no further.
            let Some(pack) = file.packs.get(e.pack as usize) else {
                continue;
            };
            let ordinal = base + e.pack;
            if self.precision == Precision::Dedup && pack.blob_type == BlobType::Data {
                let (hi, lo) = Short::key(&e.id);
                self.shorts.push(Short {
                    hi,
                    lo,
                    pack: ordinal,
                });
            } else {
                self.entries.push(Entry {
                    id: e.id,
                    pack: ordinal,
                    offset: e.offset,
                    length: e.length,
                    raw_length: e.raw_length,
                });
            }
        }
    }

    /// Finishes the view: drops superseded objects, merges packs listed more than once and
    /// sorts the entries.
    pub fn finish(self) -> MasterIndex {
        let IndexBuilder {
            precision,
            files,
            file_start,
            superseded,
            pending: marks,
            mut packs,
            mut entries,
            mut shorts,
        } = self;
        let kept: Vec<bool> = files.iter().map(|id| !superseded.contains(id)).collect();
        let file_of = |ordinal: u32| file_start.partition_point(|&s| s <= ordinal) - 1;

        let mut pending: HashMap<PackId, PendingPack> = HashMap::new();
        for (file, p) in marks {
            if kept[file as usize] {
                let at = pending.entry(p.id).or_insert(p);
                at.marked_at = at.marked_at.min(p.marked_at);
                at.delete_after = at.delete_after.min(p.delete_after);
            }
        }

        // Number the distinct packs of kept objects in id order; `remap` takes a listed
        // position to that number (NONE for a superseded object's listing).
        let mut order: Vec<u32> = (0..packs.len() as u32).collect();
        order.sort_unstable_by_key(|&i| (packs[i as usize].id, i));
        let mut remap = vec![NONE; packs.len()];
        let mut group_kept = Vec::new();
        let mut next = 0u32;
        let mut g = 0;
        while g < order.len() {
            let id = packs[order[g] as usize].id;
            let end = g + order[g..]
                .iter()
                .take_while(|&&i| packs[i as usize].id == id)
                .count();
            let any_kept = order[g..end].iter().any(|&i| kept[file_of(i)]);
            if any_kept {
                for &i in &order[g..end] {
                    if kept[file_of(i)] {
                        remap[i as usize] = next;
                    }
                }
                next += 1;
            }
            group_kept.push(any_kept);
            g = end;
        }
        drop(order);
        packs.sort_unstable_by_key(|p| p.id);
        packs.dedup_by_key(|p| p.id);
        let mut groups = group_kept.into_iter();
        packs.retain(|_| groups.next().unwrap_or(false));
        packs.shrink_to_fit();
        let pack_pending: Vec<bool> = packs.iter().map(|p| pending.contains_key(&p.id)).collect();

        entries.retain_mut(|e| {
            e.pack = remap[e.pack as usize];
            e.pack != NONE
        });
        shorts.retain_mut(|s| {
            s.pack = remap[s.pack as usize];
            s.pack != NONE
        });
        drop(remap);
        // Within one id: a live pack first, then the lowest pack id; dedup keeps that one.
        entries.sort_unstable_by_key(|e| (e.id, pack_pending[e.pack as usize], e.pack));
        entries.dedup_by_key(|e| e.id);
        entries.shrink_to_fit();
        shorts.sort_unstable_by_key(|s| (s.hi, s.lo, pack_pending[s.pack as usize], s.pack));
        shorts.dedup_by_key(|s| (s.hi, s.lo));
        shorts.shrink_to_fit();

        let entry_buckets = Buckets::build(entries.len(), |i| top(&entries[i].id));
        let short_buckets = Buckets::build(shorts.len(), |i| shorts[i].hi);
        let ids = files
            .into_iter()
            .zip(&kept)
            .filter_map(|(id, &k)| k.then_some(id))
            .collect();
        MasterIndex {
            precision,
            packs,
            pack_pending,
            entries,
            entry_buckets,
            shorts,
            short_buckets,
            ids,
            pending,
        }
    }
}

impl MasterIndex {
    /// An empty builder of the given precision.
    pub fn builder(precision: Precision) -> IndexBuilder {
        IndexBuilder {
            precision,
            ..IndexBuilder::default()
        }
    }

    /// Merges index objects, skipping superseded ones (exact precision).
    pub fn from_files(files: Vec<(IndexId, IndexFile)>) -> Self {
        let mut b = Self::builder(Precision::Exact);
        for (id, file) in files {
            b.add(id, file);
        }
        b.finish()
    }

    /// How precisely this view remembers data blobs.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Packs marked for deletion (earliest mark where several index objects mark one pack).
    pub fn pending(&self) -> &HashMap<PackId, PendingPack> {
        &self.pending
    }

    /// Index objects merged into this view.
    pub fn index_ids(&self) -> &[IndexId] {
        &self.ids
    }

    fn entry(&self, id: &BlobId) -> Option<&Entry> {
        let r = self.entry_buckets.range(top(id));
        let slice = &self.entries[r];
        let i = slice.binary_search_by(|e| e.id.cmp(id)).ok()?;
        Some(&slice[i])
    }

    /// The pack ordinal holding a blob, from the full id or (dedup view) the prefix.
    fn pack_of(&self, id: &BlobId) -> Option<u32> {
        if let Some(e) = self.entry(id) {
            return Some(e.pack);
        }
        if self.shorts.is_empty() {
            return None;
        }
        let (hi, lo) = Short::key(id);
        let slice = &self.shorts[self.short_buckets.range(hi)];
        let i = slice
            .binary_search_by(|s| (s.hi, s.lo).cmp(&(hi, lo)))
            .ok()?;
        Some(slice[i].pack)
    }

    /// Looks up a blob (in a live pack if it has one, else in a pack marked for deletion).
    /// The dedup view answers only for tree blobs.
    pub fn lookup(&self, id: &BlobId) -> Option<BlobLocation> {
        let e = self.entry(id)?;
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
        let p = self.pack_of(id)? as usize;
        (!self.pack_pending[p]).then(|| self.packs[p].id)
    }

    /// True when the blob is stored in a pack that is not marked for deletion.
    pub fn contains(&self, id: &BlobId) -> bool {
        self.live_pack(id).is_some()
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.entries.len() + self.shorts.len()
    }

    /// True when no blob is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every (distinct) pack referenced.
    pub fn packs(&self) -> impl Iterator<Item = &PackInfo> {
        self.packs.iter()
    }

    /// True when `pack` is listed by an index object or marked for deletion.
    pub fn knows_pack(&self, pack: &PackId) -> bool {
        self.pending.contains_key(pack) || self.packs.binary_search_by(|p| p.id.cmp(pack)).is_ok()
    }

    /// Approximate heap bytes held by this view.
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.packs.capacity() * size_of::<PackInfo>()
            + self.pack_pending.capacity()
            + self.entries.capacity() * size_of::<Entry>()
            + self.shorts.capacity() * size_of::<Short>()
            + (self.entry_buckets.starts.capacity() + self.short_buckets.starts.capacity()) * 4
            + self.ids.capacity() * size_of::<IndexId>()
            + self.pending.capacity() * (size_of::<PackId>() + size_of::<PendingPack>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_proto::index::IndexEntry;

    fn file_of(pack: u8, ty: BlobType, ids: &[u8]) -> IndexFile {
        let mut f = IndexFile {
            supersedes: vec![],
            pending: vec![],
            sessions: vec![],
            packs: vec![PackInfo {
                id: PackId([pack; 32]),
                size: 1000,
                blob_type: ty,
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

    fn file(pack: u8, ids: &[u8]) -> IndexFile {
        file_of(pack, BlobType::Data, ids)
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
        assert!(!m.knows_pack(&PackId([2; 32])));
    }

    #[test]
    fn pending_packs_are_readable_but_not_reusable() {
        let mut prune = file(2, &[1, 2]);
        prune.pending = vec![PendingPack {
            id: PackId([2; 32]),
            marked_at: 100,
            delete_after: 200,
        }];
        for precision in [Precision::Exact, Precision::Dedup] {
            let mut b = MasterIndex::builder(precision);
            b.add(IndexId([1; 32]), prune.clone());
            b.add(IndexId([2; 32]), file(3, &[2]));
            let m = b.finish();
            if precision == Precision::Exact {
                // Blob 1 lives only in the pending pack: readable, but a backup must store
                // it again.
                let loc = m.lookup(&BlobId([1; 32])).unwrap();
                assert!(loc.pending);
                assert!(!m.lookup(&BlobId([2; 32])).unwrap().pending);
            }
            assert!(!m.contains(&BlobId([1; 32])));
            // Blob 2 has a live copy, which wins.
            assert_eq!(m.live_pack(&BlobId([2; 32])), Some(PackId([3; 32])));
            assert_eq!(m.pending()[&PackId([2; 32])].marked_at, 100);
            assert!(m.knows_pack(&PackId([2; 32])));
            assert!(!m.knows_pack(&PackId([9; 32])));
        }
    }

    #[test]
    fn a_pack_listed_twice_is_one_pack() {
        let m = MasterIndex::from_files(vec![
            (IndexId([1; 32]), file(4, &[1, 2])),
            (IndexId([2; 32]), file(4, &[3])),
            (IndexId([3; 32]), file(5, &[2])),
        ]);
        assert_eq!(m.packs().count(), 2);
        assert_eq!(m.len(), 3);
        // Blob 2 is in packs 4 and 5, both live: the lowest pack id wins.
        assert_eq!(m.live_pack(&BlobId([2; 32])), Some(PackId([4; 32])));
        assert_eq!(m.lookup(&BlobId([3; 32])).unwrap().pack, PackId([4; 32]));
    }

    #[test]
    fn the_dedup_view_keeps_trees_exact_and_data_by_prefix() {
        let mut b = MasterIndex::builder(Precision::Dedup);
        b.add(IndexId([1; 32]), file(1, &[10, 20]));
        b.add(IndexId([2; 32]), file_of(2, BlobType::Tree, &[30]));
        let m = b.finish();
        assert_eq!(m.precision(), Precision::Dedup);
        assert_eq!(m.len(), 3);
        assert_eq!(m.live_pack(&BlobId([10; 32])), Some(PackId([1; 32])));
        assert!(
            m.lookup(&BlobId([10; 32])).is_none(),
            "no location for data"
        );
        let tree = m.lookup(&BlobId([30; 32])).unwrap();
        assert_eq!(
            (tree.pack, tree.blob_type),
            (PackId([2; 32]), BlobType::Tree)
        );
        assert!(!m.contains(&BlobId([11; 32])));
        // Only the first 96 bits count for data blobs.
        let mut near = [10u8; 32];
        near[31] = 0;
        assert!(m.contains(&BlobId(near)));
        near[11] = 0;
        assert!(!m.contains(&BlobId(near)));
    }

    #[test]
    fn many_random_blobs_are_all_found() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut id = || {
            let mut b = [0u8; 32];
            rng.fill_bytes(&mut b);
            b
        };
        let mut files = Vec::new();
        let mut all = Vec::new();
        for f in 0..5u8 {
            let mut file = IndexFile::default();
            for p in 0..20u32 {
                file.packs.push(PackInfo {
                    id: PackId(id()),
                    size: 1 << 20,
                    blob_type: if p == 0 {
                        BlobType::Tree
                    } else {
                        BlobType::Data
                    },
                });
                for k in 0..50u32 {
                    let blob = BlobId(id());
                    all.push((blob, p == 0));
                    file.entries.push(IndexEntry {
                        id: blob,
                        pack: p,
                        offset: k,
                        length: 1,
                        raw_length: 1,
                    });
                }
            }
            file.sort();
            files.push((IndexId([f; 32]), file));
        }
        let exact = MasterIndex::from_files(files.clone());
        let mut b = MasterIndex::builder(Precision::Dedup);
        for (id, f) in files {
            b.add(id, f);
        }
        let dedup = b.finish();
        assert_eq!(exact.len(), all.len());
        assert_eq!(dedup.len(), all.len());
        for (blob, tree) in &all {
            assert!(exact.lookup(blob).is_some());
            assert_eq!(exact.live_pack(blob), dedup.live_pack(blob));
            assert_eq!(dedup.lookup(blob).is_some(), *tree);
        }
        for _ in 0..1000 {
            let absent = BlobId(id());
            assert!(!exact.contains(&absent) && !dedup.contains(&absent));
        }
    }
}
