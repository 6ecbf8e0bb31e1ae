//! Dump: stream the content of one file of a snapshot to a writer.
//!
//! `podvault dump latest db.sql | psql` restores a database from a stream backup (see
//! [`crate::archiver::backup_stream`]); the node agent will use [`dump`] to feed a restore
//! command in a pod. Any regular file of any snapshot can be dumped.
//!
//! ## Verified like a restore
//! Every blob is opened and verified as the restorer does (AEAD tag, keyed content id,
//! plaintext length). Before the first byte is written, every chunk must be in the index
//! and the chunks' lengths must add up to the file's size, so a file whose blobs are
//! missing from the index fails without any output. A blob found damaged while streaming
//! stops the dump with an error naming the file, the chunk, the blob and the pack: the
//! writer then holds a prefix of the file, never wrong bytes, and the caller must treat the
//! output as failed (the CLI exits non-zero).
//!
//! ## Bounded memory, few requests
//! Blobs are written one at a time, in order. Consecutive chunks stored close together in
//! one pack (the common case: a stream's chunks are packed in the order they were read) are
//! fetched with one ranged read of at most [`MAX_SPAN`] bytes, so memory is bounded by one
//! span plus one plaintext blob, and a large file costs one request per span rather than
//! one per chunk.

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use podvault_proto::snapshot::Snapshot;
use podvault_proto::tree::{Node, NodeKind};
use podvault_proto::BlobId;

use crate::error::{Error, Result};
use crate::index::{BlobLocation, MasterIndex};
use crate::repository::{pack_path, Repository};

/// Largest range of a pack read at once.
pub const MAX_SPAN: u32 = 16 << 20;
/// Largest gap between two blobs read in one range (bytes read and thrown away).
const MAX_GAP: u32 = 256 << 10;

/// Writes the content of the regular file at `path` (relative to the snapshot root, `/`
/// separated) in `snapshot` to `out`; returns the bytes written.
///
/// Fails if `path` does not exist or is not a regular file (a directory is named as such),
/// if a chunk is missing or damaged (naming the file, the blob and its pack), if writing
/// fails, or with [`Error::Canceled`] when `cancel` is set. After an error `out` may hold a
/// prefix of the file.
pub fn dump(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &str,
    out: &mut impl Write,
    cancel: &AtomicBool,
) -> Result<u64> {
    let index = repo.load_index()?;
    let node = find_file(repo, &index, snapshot, path)?;
    stream_node(repo, &index, &node, path, out, cancel)
}

/// Streams the content of one file node to `out` (see [`dump`]).
fn stream_node(
    repo: &Repository,
    index: &MasterIndex,
    node: &Node,
    path: &str,
    out: &mut impl Write,
    cancel: &AtomicBool,
) -> Result<u64> {
    let locations = locate(index, node, path)?;
    let mut written = 0u64;
    let mut i = 0;
    while i < locations.len() {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Canceled);
        }
        let run = run_len(&locations[i..]);
        let first = &locations[i].1;
        let last = &locations[i + run - 1].1;
        let span = first.offset..last.offset + last.length;
        let bytes = repo
            .backend()
            .read_range(&pack_path(&first.pack), to_u64(&span))
            .map_err(|e| in_file(e, path, i))?;
        for (n, (id, loc)) in locations[i..i + run].iter().enumerate() {
            let at = (loc.offset - span.start) as usize;
            let sealed = bytes
                .get(at..at + loc.length as usize)
                .ok_or_else(|| Error::Corrupt {
                    object: pack_path(&loc.pack),
                    detail: format!("shorter than the index says (blob {id})"),
                })
                .map_err(|e| in_file(e, path, i + n))?;
            let plain = repo
                .open_sealed(loc, id, sealed)
                .map_err(|e| in_file(e, path, i + n))?;
            out.write_all(&plain)
                .map_err(|e| Error::io(format!("{path} (writing it out)"), e))?;
            written += plain.len() as u64;
        }
        i += run;
    }
    out.flush()
        .map_err(|e| Error::io(format!("{path} (writing it out)"), e))?;
    Ok(written)
}

/// What a restore drill read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verified {
    /// Regular files streamed to their end.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Directories, symlinks and other entries seen.
    pub others: u64,
}

/// A restore drill without a disk: every regular file of `snapshot` is streamed to its end
/// exactly as [`dump`] (and the restorer) read it — every chunk located, fetched, its AEAD
/// tag, keyed content id and length verified — and thrown away. Passing proves a restore of
/// the snapshot gets every byte it records; it does not exercise the target's disk.
/// Stops at the first file that cannot be read, naming it.
pub fn verify_snapshot(
    repo: &Repository,
    snapshot: &Snapshot,
    cancel: &AtomicBool,
) -> Result<Verified> {
    let index = repo.load_index()?;
    let mut v = Verified::default();
    let mut stack = vec![(String::new(), snapshot.tree)];
    while let Some((dir, tree_id)) = stack.pop() {
        let tree = repo.load_tree(&index, &tree_id)?;
        for node in &tree.nodes {
            let path = match dir.is_empty() {
                true => String::from_utf8_lossy(&node.name).into_owned(),
                false => format!("{dir}/{}", String::from_utf8_lossy(&node.name)),
            };
            match (node.kind, node.subtree) {
                (NodeKind::File, _) => {
                    let n = stream_node(repo, &index, node, &path, &mut std::io::sink(), cancel)?;
                    v.files += 1;
                    v.bytes += n;
                }
                (NodeKind::Dir, Some(sub)) => {
                    v.others += 1;
                    stack.push((path, sub));
                }
                _ => v.others += 1,
            }
        }
    }
    Ok(v)
}

/// Checks that the regular file at `path` in `snapshot` can be dumped — it exists, every
/// chunk is indexed and the sizes add up — without reading its data; returns its size.
pub fn dump_size(repo: &Repository, snapshot: &Snapshot, path: &str) -> Result<u64> {
    let index = repo.load_index()?;
    let node = find_file(repo, &index, snapshot, path)?;
    locate(&index, &node, path)?;
    Ok(node.size)
}

/// Finds the node of the regular file at `path` in the snapshot.
fn find_file(
    repo: &Repository,
    index: &MasterIndex,
    snapshot: &Snapshot,
    path: &str,
) -> Result<Node> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let not_found = || Error::InvalidInput(format!("{path:?}: no such file in the snapshot"));
    let Some((last, dirs)) = parts.split_last() else {
        return Err(Error::InvalidInput(format!(
            "{path:?} is the snapshot's root directory; dump writes one regular file \
             (use `restore` for directories)"
        )));
    };
    let mut tree = repo.load_tree(index, &snapshot.tree)?;
    for (n, part) in dirs.iter().enumerate() {
        let node = tree.find(part.as_bytes()).ok_or_else(not_found)?;
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(id)) => tree = repo.load_tree(index, &id)?,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{path:?}: {:?} is not a directory in the snapshot",
                    parts[..=n].join("/")
                )))
            }
        }
    }
    let node = tree.find(last.as_bytes()).ok_or_else(not_found)?;
    match node.kind {
        NodeKind::File => Ok(node.clone()),
        NodeKind::Dir => Err(Error::InvalidInput(format!(
            "{path:?} is a directory in the snapshot; dump writes one regular file \
             (use `restore --include {path}` for directories)"
        ))),
        NodeKind::Symlink => Err(Error::InvalidInput(format!(
            "{path:?} is a symbolic link (to {:?}) in the snapshot, not a regular file",
            String::from_utf8_lossy(&node.symlink_target)
        ))),
        kind => Err(Error::InvalidInput(format!(
            "{path:?} is a {} in the snapshot, not a regular file",
            format!("{kind:?}").to_lowercase()
        ))),
    }
}

/// Where every chunk of `node` is; fails (before anything is written) if one is missing
/// or the chunks do not add up to the file's size.
fn locate(index: &MasterIndex, node: &Node, path: &str) -> Result<Vec<(BlobId, BlobLocation)>> {
    let mut out = Vec::with_capacity(node.content.len());
    let mut total = 0u64;
    for (i, chunk) in node.content.iter().enumerate() {
        let id = BlobId(chunk.0);
        let loc = index.lookup(&id).ok_or_else(|| Error::MissingBlob {
            id: id.to_hex(),
            what: format!("chunk {i} of {path:?}"),
        })?;
        total += u64::from(loc.raw_length);
        out.push((id, loc));
    }
    if total != node.size {
        return Err(Error::Corrupt {
            object: format!("{path:?} in the snapshot"),
            detail: format!(
                "its chunks hold {total} bytes where the tree says {}",
                node.size
            ),
        });
    }
    Ok(out)
}

/// How many of `locs` (at least one) can be read with one ranged read: same pack, in
/// ascending order with small gaps, within [`MAX_SPAN`].
fn run_len(locs: &[(BlobId, BlobLocation)]) -> usize {
    let first = &locs[0].1;
    let mut end = first.offset + first.length;
    let mut n = 1;
    for (_, loc) in &locs[1..] {
        let next_end = loc.offset.saturating_add(loc.length);
        if loc.pack != first.pack
            || loc.offset < end
            || loc.offset - end > MAX_GAP
            || next_end - first.offset > MAX_SPAN
        {
            break;
        }
        end = next_end;
        n += 1;
    }
    n
}

fn to_u64(r: &Range<u32>) -> Range<u64> {
    u64::from(r.start)..u64::from(r.end)
}

/// Adds the file and chunk to an error about a pack, so the message names all three.
fn in_file(e: Error, path: &str, chunk: usize) -> Error {
    let context = |object: String| format!("{object} (chunk {chunk} of {path:?})");
    match e {
        Error::Corrupt { object, detail } => Error::Corrupt {
            object: context(object),
            detail,
        },
        Error::Backend {
            action,
            object,
            location,
            source,
        } => Error::Backend {
            action,
            object: context(object),
            location,
            source,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_proto::pack::BlobType;
    use podvault_proto::PackId;

    fn loc(pack: u8, offset: u32, length: u32) -> (BlobId, BlobLocation) {
        (
            BlobId([offset as u8; 32]),
            BlobLocation {
                pack: PackId([pack; 32]),
                blob_type: BlobType::Data,
                offset,
                length,
                raw_length: length,
                pending: false,
            },
        )
    }

    #[test]
    fn runs_stay_in_one_pack_ascending_and_bounded() {
        let mb = 1 << 20;
        // Adjacent in one pack: one read.
        let a = [loc(1, 0, mb), loc(1, mb, mb), loc(1, 2 * mb, mb)];
        assert_eq!(run_len(&a), 3);
        // Another pack, a step back (a repeated chunk) or a large gap ends the run.
        assert_eq!(run_len(&[loc(1, 0, mb), loc(2, mb, mb)]), 1);
        assert_eq!(run_len(&[loc(1, mb, mb), loc(1, mb, mb)]), 1);
        assert_eq!(run_len(&[loc(1, 0, mb), loc(1, mb + MAX_GAP + 1, mb)]), 1);
        assert_eq!(run_len(&[loc(1, 0, mb), loc(1, mb + MAX_GAP, mb)]), 2);
        // Never more than MAX_SPAN.
        let many: Vec<_> = (0..40).map(|i| loc(1, i * mb, mb)).collect();
        assert_eq!(run_len(&many), (MAX_SPAN / mb) as usize);
    }
}
