//! Index objects (`index/<id>`): which pack holds each blob.
//!
//! A compact, fixed-width binary layout sorted by blob id, so lookups are a binary search over
//! the decoded bytes — no per-entry allocation and no hash map:
//!
//! ```text
//! u16 version | u16 flags(0) | u32 packs | u32 entries | u32 supersedes | u32 pending
//!   [version 3: | u32 sessions]
//! supersedes × IndexId (32)
//! packs      × { PackId (32) | u32 size | u8 blob type | 3 × 0 }          (40 bytes)
//! pending    × { PackId (32) | i64 marked at | i64 delete after }   (48 bytes, Unix seconds)
//! [version 3: sessions × { id (16) | i64 started | i64 written | u32 flags | 4 × 0 }
//!                                         (40 bytes, Unix seconds; flag 1: finished)]
//! entries    × { BlobId (32) | u32 pack | u32 offset | u32 length | u32 raw_length }  (48 bytes)
//! ```
//!
//! `sessions` says which backups were running when the object was written: a backup writes
//! index objects as it goes, each naming its session (a random id, when it started and when
//! it wrote this object, both by its clock, and whether it has finished), and prune rewrites the sessions it still
//! counts as alive into its own index object. Prune leaves alone packs uploaded while a live
//! backup runs (see the engine's `prune` module). An object without sessions is written as
//! version 2, which every earlier build reads; version 3 needs this build or later.
//!
//! Entries are strictly increasing by id. `supersedes` lists index objects whose contents this
//! one includes (written by prune when it rewrites the index), so readers can ignore them.
//! `pending` lists packs prune has marked for deletion (phase one of its two-phase protocol,
//! see the engine's `prune` module): new backups must not reuse their blobs, and a later prune
//! deletes them once the grace period has passed and no snapshot needs them. A pending pack
//! may or may not also appear in `packs` (an orphan pack left by a killed backup has no
//! entries), and may already be deleted: prune keeps deleted packs pending for a while, so an
//! index object written late that still lists one is not taken as live.

use crate::id::{BlobId, IndexId, PackId, ID_LEN};
use crate::pack::BlobType;
use crate::record::{check_version_in, DecodeError, ObjectKind, ObjectRecord, Record};

const HEADER_LEN: usize = 20;
const PACK_LEN: usize = 40;
const PENDING_LEN: usize = 48;
const SESSION_LEN: usize = 40;
const SESSION_FINISHED: u32 = 1;
/// The version written when an object has no sessions.
const VERSION_WITHOUT_SESSIONS: u16 = 2;
/// Size of one encoded entry.
pub const ENTRY_LEN: usize = 48;

/// A pack listed in an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInfo {
    /// Pack id.
    pub id: PackId,
    /// Stored size of the pack object.
    pub size: u32,
    /// Type of the blobs it holds.
    pub blob_type: BlobType,
}

/// A pack marked for deletion by prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingPack {
    /// Pack id.
    pub id: PackId,
    /// When prune marked it (Unix seconds, prune's clock).
    pub marked_at: i64,
    /// Earliest time a prune may delete it (the mark plus the grace period).
    pub delete_after: i64,
}

/// A backup running when an index object was written (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    /// Random id, the same in every index object the backup writes.
    pub id: [u8; 16],
    /// When the backup started (Unix seconds, its clock).
    pub started: i64,
    /// When it wrote this index object (Unix seconds, its clock): its heartbeat.
    pub written: i64,
    /// The backup has ended (its snapshot is saved, or it failed): it protects nothing.
    pub finished: bool,
}

/// One blob's location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Blob id.
    pub id: BlobId,
    /// Position of the pack in [`IndexFile::packs`].
    pub pack: u32,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

impl IndexEntry {
    /// Encodes the entry in its fixed 48-byte form.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..ID_LEN].copy_from_slice(&self.id.0);
        b[32..36].copy_from_slice(&self.pack.to_le_bytes());
        b[36..40].copy_from_slice(&self.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.length.to_le_bytes());
        b[44..48].copy_from_slice(&self.raw_length.to_le_bytes());
        b
    }

    /// Decodes the fixed 48-byte form.
    pub fn from_bytes(b: &[u8; ENTRY_LEN]) -> Self {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&b[..ID_LEN]);
        IndexEntry {
            id: BlobId(id),
            pack: u(32),
            offset: u(36),
            length: u(40),
            raw_length: u(44),
        }
    }
}

/// A decoded index object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Index objects this one replaces.
    pub supersedes: Vec<IndexId>,
    /// Packs referenced by the entries.
    pub packs: Vec<PackInfo>,
    /// Packs marked for deletion.
    pub pending: Vec<PendingPack>,
    /// Backups in progress (see the module docs).
    pub sessions: Vec<Session>,
    /// Entries sorted by id.
    pub entries: Vec<IndexEntry>,
}

impl IndexFile {
    /// Looks up a blob by binary search.
    pub fn lookup(&self, id: &BlobId) -> Option<&IndexEntry> {
        self.entries
            .binary_search_by(|e| e.id.cmp(id))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Sorts entries by id (call before encoding when built out of order).
    pub fn sort(&mut self) {
        self.entries.sort_unstable_by_key(|e| e.id);
    }
}

impl Record for IndexFile {
    const NAME: &'static str = "index";
    const VERSION: u16 = 3;

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 4
                + self.supersedes.len() * ID_LEN
                + self.packs.len() * PACK_LEN
                + self.pending.len() * PENDING_LEN
                + self.sessions.len() * SESSION_LEN
                + self.entries.len() * ENTRY_LEN,
        );
        let with_sessions = !self.sessions.is_empty();
        let version = match with_sessions {
            true => Self::VERSION,
            false => VERSION_WITHOUT_SESSIONS,
        };
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for n in [
            self.packs.len(),
            self.entries.len(),
            self.supersedes.len(),
            self.pending.len(),
        ] {
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        if with_sessions {
            out.extend_from_slice(&(self.sessions.len() as u32).to_le_bytes());
        }
        for s in &self.supersedes {
            out.extend_from_slice(&s.0);
        }
        for p in &self.packs {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.size.to_le_bytes());
            out.extend_from_slice(&[p.blob_type.as_u8(), 0, 0, 0]);
        }
        for p in &self.pending {
            out.extend_from_slice(&p.id.0);
            out.extend_from_slice(&p.marked_at.to_le_bytes());
            out.extend_from_slice(&p.delete_after.to_le_bytes());
        }
        for s in &self.sessions {
            out.extend_from_slice(&s.id);
            out.extend_from_slice(&s.started.to_le_bytes());
            out.extend_from_slice(&s.written.to_le_bytes());
            let flags = if s.finished { SESSION_FINISHED } else { 0 };
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&[0; 4]);
        }
        for e in &self.entries {
            out.extend_from_slice(&e.to_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let malformed = |detail: String| DecodeError::Malformed {
            record: Self::NAME,
            detail,
        };
        let (version, body) =
            check_version_in::<Self>(bytes, &[VERSION_WITHOUT_SESSIONS, Self::VERSION])?;
        let header = match version {
            VERSION_WITHOUT_SESSIONS => HEADER_LEN - 2,
            _ => HEADER_LEN + 2,
        };
        if body.len() < header {
            return Err(DecodeError::Truncated { record: Self::NAME });
        }
        let u = |i: usize| {
            u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]) as usize
        };
        if body[0] != 0 || body[1] != 0 {
            return Err(malformed("unknown flags".into()));
        }
        let (n_packs, n_entries, n_super, n_pending) = (u(2), u(6), u(10), u(14));
        let n_sessions = match version {
            VERSION_WITHOUT_SESSIONS => 0,
            _ => u(18),
        };
        let expected = header as u64
            + n_super as u64 * ID_LEN as u64
            + n_packs as u64 * PACK_LEN as u64
            + n_pending as u64 * PENDING_LEN as u64
            + n_sessions as u64 * SESSION_LEN as u64
            + n_entries as u64 * ENTRY_LEN as u64;
        if (body.len() as u64) < expected {
            return Err(DecodeError::Truncated { record: Self::NAME });
        }
        if body.len() as u64 != expected {
            return Err(malformed(format!(
                "{} bytes where the counts give {expected}",
                body.len()
            )));
        }
        let mut rest = &body[header..];
        let supersedes = (0..n_super)
            .map(|_| {
                let (id, r) = rest.split_at(ID_LEN);
                rest = r;
                IndexId::from_slice(id).ok_or_else(|| malformed("short id".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut packs = Vec::with_capacity(n_packs);
        for _ in 0..n_packs {
            let (p, r) = rest.split_at(PACK_LEN);
            rest = r;
            let blob_type = BlobType::from_u8(p[36])
                .ok_or_else(|| malformed(format!("unknown blob type {}", p[36])))?;
            if p[37..40] != [0, 0, 0] {
                return Err(malformed("reserved pack bytes are not zero".into()));
            }
            packs.push(PackInfo {
                id: PackId::from_slice(p).ok_or_else(|| malformed("short id".into()))?,
                size: u32::from_le_bytes([p[32], p[33], p[34], p[35]]),
                blob_type,
            });
        }
        let mut pending = Vec::with_capacity(n_pending);
        for _ in 0..n_pending {
            let (p, r) = rest.split_at(PENDING_LEN);
            rest = r;
            let time = |i: usize| {
                let mut at = [0u8; 8];
                at.copy_from_slice(&p[i..i + 8]);
                i64::from_le_bytes(at)
            };
            pending.push(PendingPack {
                id: PackId::from_slice(&p[..ID_LEN]).ok_or_else(|| malformed("short id".into()))?,
                marked_at: time(ID_LEN),
                delete_after: time(ID_LEN + 8),
            });
        }
        let mut sessions = Vec::with_capacity(n_sessions);
        for _ in 0..n_sessions {
            let (s, r) = rest.split_at(SESSION_LEN);
            rest = r;
            let time = |i: usize| {
                let mut at = [0u8; 8];
                at.copy_from_slice(&s[i..i + 8]);
                i64::from_le_bytes(at)
            };
            let mut id = [0u8; 16];
            id.copy_from_slice(&s[..16]);
            let flags = u32::from_le_bytes([s[32], s[33], s[34], s[35]]);
            if flags & !SESSION_FINISHED != 0 || s[36..40] != [0; 4] {
                return Err(malformed(format!("unknown session flags {flags:#x}")));
            }
            sessions.push(Session {
                id,
                started: time(16),
                written: time(24),
                finished: flags & SESSION_FINISHED != 0,
            });
        }
        let mut entries = Vec::with_capacity(n_entries);
        for chunk in rest.chunks_exact(ENTRY_LEN) {
            let e =
                IndexEntry::from_bytes(chunk.try_into().map_err(|_| malformed("entry".into()))?);
            let pack = packs.get(e.pack as usize).ok_or_else(|| {
                malformed(format!("entry refers to pack #{} of {n_packs}", e.pack))
            })?;
            if (e.offset as u64 + e.length as u64) > pack.size as u64 {
                return Err(malformed(format!("blob {} extends past its pack", e.id)));
            }
            if let Some(prev) = entries.last().map(|p: &IndexEntry| p.id) {
                if prev >= e.id {
                    return Err(malformed("entries are not strictly sorted".into()));
                }
            }
            entries.push(e);
        }
        Ok(IndexFile {
            supersedes,
            packs,
            pending,
            sessions,
            entries,
        })
    }
}

impl ObjectRecord for IndexFile {
    const KIND: ObjectKind = ObjectKind::Index;
    type Id = crate::id::IndexId;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> IndexFile {
        let mut idx = IndexFile {
            supersedes: vec![IndexId([8; 32])],
            packs: vec![
                PackInfo {
                    id: PackId([1; 32]),
                    size: 1000,
                    blob_type: BlobType::Data,
                },
                PackInfo {
                    id: PackId([2; 32]),
                    size: 500,
                    blob_type: BlobType::Tree,
                },
            ],
            pending: vec![PendingPack {
                id: PackId([4; 32]),
                marked_at: 1_700_000_000,
                delete_after: 1_700_086_400,
            }],
            sessions: Vec::new(),
            entries: vec![
                IndexEntry {
                    id: BlobId([9; 32]),
                    pack: 1,
                    offset: 0,
                    length: 100,
                    raw_length: 90,
                },
                IndexEntry {
                    id: BlobId([3; 32]),
                    pack: 0,
                    offset: 10,
                    length: 200,
                    raw_length: 400,
                },
            ],
        };
        idx.sort();
        idx
    }

    #[test]
    fn encoding_is_stable() {
        insta::assert_snapshot!(hex::encode(sample().encode()));
    }

    #[test]
    fn sessions_make_version_3_and_round_trip() {
        let mut idx = sample();
        assert_eq!(
            &idx.encode()[..2],
            &2u16.to_le_bytes(),
            "no sessions: version 2"
        );
        idx.sessions = vec![Session {
            id: [7; 16],
            started: 1_700_000_000,
            written: 1_700_000_600,
            finished: false,
        }];
        let bytes = idx.encode();
        assert_eq!(&bytes[..2], &3u16.to_le_bytes());
        insta::assert_snapshot!(hex::encode(&bytes));
        assert_eq!(IndexFile::decode(&bytes).unwrap(), idx);
        assert!(matches!(
            IndexFile::decode(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        idx.sessions[0].finished = true;
        assert_eq!(IndexFile::decode(&idx.encode()).unwrap(), idx);
    }

    #[test]
    fn round_trip_and_lookup() {
        let idx = sample();
        let back = IndexFile::decode(&idx.encode()).unwrap();
        assert_eq!(back, idx);
        assert_eq!(back.lookup(&BlobId([9; 32])).unwrap().pack, 1);
        assert!(back.lookup(&BlobId([4; 32])).is_none());
    }

    #[test]
    fn rejects_inconsistent_indexes() {
        let good = sample().encode();
        assert!(matches!(
            IndexFile::decode(&good[..good.len() - 1]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut extra = good.clone();
        extra.push(0);
        assert!(IndexFile::decode(&extra).is_err());
        let mut unsorted = sample();
        unsorted.entries.reverse();
        assert!(IndexFile::decode(&unsorted.encode()).is_err());
        let mut past_end = sample();
        past_end.entries[0].offset = 990;
        assert!(IndexFile::decode(&past_end.encode()).is_err());
        let mut bad_pack = sample();
        bad_pack.entries[0].pack = 7;
        assert!(IndexFile::decode(&bad_pack.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = IndexFile::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_valid_prefix(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
            let mut bytes = sample().encode();
            if flip < bytes.len() { bytes[flip] ^= 1 << bit; }
            bytes.truncate(cut.min(bytes.len()));
            let _ = IndexFile::decode(&bytes);
        }
    }
}
