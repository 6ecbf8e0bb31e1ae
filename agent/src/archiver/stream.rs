//! Stream backups: one byte stream (a database dump on standard input) stored as one file.
//!
//! The stream goes through the file backup's pipeline ([`super::store`]): the same FastCDC
//! chunker, keyed ids, deduplication against the index, compression and sealing workers,
//! packer, index and snapshot writing; memory is bounded the same way (one chunk being read
//! plus the in-flight budget), never by the stream's length. Only the source differs: the
//! snapshot's root tree holds one regular file, and its `paths` are
//! `["<stdin>/NAME"]` ([`stream_path`]), so `podvault snapshots` says where it came from and
//! the next backup of the same name on the same host finds it as its parent (like file
//! backups: same host, same paths). A parent cannot spare reading a stream; it is recorded
//! for `diff` and the summary, and unchanged chunks deduplicate by content anyway.
//!
//! ## A failed stream writes no snapshot
//! The snapshot is written only after the reader reported a clean end (`Ok(0)`). When the
//! reader returns an error — a file that cannot be read, or a wrapper around a dump
//! command's output that returns an error at the end when the command exited non-zero — the
//! backup fails with [`Error::Stream`] and writes no snapshot. Packs already uploaded are
//! unreferenced: the next backup reuses them, prune deletes them. The reader is the only
//! channel for that signal: a producer that dies and closes its end of a pipe looks like a
//! clean end, which is why the caller must turn a failed producer into a read error (or the
//! shell pipeline must be checked with `set -o pipefail`, see the README). Cancellation is
//! checked once more after the end of the stream, since Ctrl-C in a shell pipeline also ends
//! the producer.
//!
//! ## Metadata
//! Mode `0600`: dumps often hold credentials (`pg_dumpall` writes role password hashes), so
//! a restored dump is readable by its owner only. Owner: the backing-up process's uid and
//! gid. Modification and change times: when the stream ended. No inode or device (there is
//! no file behind a stream).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

use podvault_proto::tree::{Node, NodeKind};

use super::walker::ReadError;
use super::{
    commit, finalize_totals, find_parent, load_index, store, BackupOptions, BackupOutcome,
};
use super::{Excludes, PackSink};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repository::{hostname, Repository};

/// Permission and type bits of a file stored from a stream: a regular file, `rw-------`.
pub const STREAM_FILE_MODE: u32 = 0o100_600;

/// Prefix of a stream backup's path in the snapshot's `paths`.
const STREAM_PREFIX: &str = "<stdin>";

/// The path a stream backup of `name` records in its snapshot's `paths`: `<stdin>/NAME`.
pub fn stream_path(name: &str) -> String {
    format!("{STREAM_PREFIX}/{name}")
}

/// Checks that `name` can be the name of a stream's file at the snapshot root: one path
/// component.
pub fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(Error::InvalidInput(format!(
            "{name:?} cannot be the name of the file stored from the stream: give one path \
             component (not empty, no '/', not '.' or '..'), e.g. db.sql"
        )));
    }
    Ok(())
}

/// Backs up everything `reader` yields as the file `name` at the root of a new snapshot.
///
/// `opts` supplies the tags, host, parent and worker count; it must name no paths (its
/// excludes and file-walk options do not apply). The snapshot is written only if `reader`
/// reaches its end without an error: a read error fails the backup with [`Error::Stream`]
/// and no snapshot is written (see the module docs). `cancel` stops the backup likewise,
/// with [`Error::Canceled`].
pub fn backup_stream(
    repo: &Repository,
    name: &str,
    reader: impl Read,
    opts: &BackupOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<BackupOutcome> {
    check_stream_name(name)?;
    if !opts.paths.is_empty() {
        return Err(Error::InvalidInput(
            "a stream backup stores one stream; it takes no paths".into(),
        ));
    }
    let started = chrono::Utc::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let path = stream_path(name);
    let paths = vec![path.clone()];
    let parent = find_parent(repo, opts, &host, &paths)?;
    let index = load_index(repo)?;
    // Only to tell a new file from a changed one in the summary: not worth failing for.
    let in_parent = parent.as_ref().is_some_and(|(id, s)| {
        repo.load_tree(&index, &s.tree)
            .inspect_err(|e| tracing::warn!(parent = %id, "parent snapshot's tree: {e}"))
            .is_ok_and(|t| t.find(name.as_bytes()).is_some())
    });

    let sink = PackSink::new(repo)?;
    let excludes = Excludes::new(&[])?;
    let stored = store(
        repo,
        &index,
        &sink,
        opts,
        &excludes,
        progress,
        cancel,
        |walker| {
            progress.set_current(&path);
            Progress::add(&progress.files_total, 1);
            Progress::add(&progress.files_done, 1);
            let chunker = walker.chunker;
            let mut content = Vec::new();
            let read = chunker
                .chunk_stream(reader, |c| {
                    content.push(walker.chunk(c)?);
                    Ok::<(), ReadError>(())
                })
                .map_err(|e| match e {
                    ReadError::Io(source) => Error::Stream {
                        name: path.clone(),
                        source,
                    },
                    ReadError::Fatal(e) => e,
                })?;
            // Ctrl-C in a shell pipeline also stops the producer: what ended may be a fragment.
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Canceled);
            }
            let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
            let mut node = Node::new(name.as_bytes().to_vec(), NodeKind::File);
            node.mode = STREAM_FILE_MODE;
            node.uid = rustix::process::getuid().as_raw();
            node.gid = rustix::process::getgid().as_raw();
            node.size = read;
            node.mtime_ns = now;
            node.ctime_ns = now;
            node.links = 1;
            node.content = content;
            if in_parent {
                walker.summary.files_changed += 1;
            } else {
                walker.summary.files_new += 1;
            }
            walker.summary.total_bytes += read;
            walker.store_tree(vec![node])
        },
    )?;
    finalize_totals(progress);
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }
    commit(
        repo, &index, &sink, stored, opts, started, host, paths, parent,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_component() {
        for ok in ["db.sql", "stdin", "a b", "..x", ".hidden"] {
            assert!(check_stream_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/db.sql", "db.sql/", "a\0b"] {
            let e = check_stream_name(bad).unwrap_err().to_string();
            assert!(e.contains("one path"), "{bad:?}: {e}");
        }
        assert_eq!(stream_path("db.sql"), "<stdin>/db.sql");
    }
}
