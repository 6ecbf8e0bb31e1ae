//! Backup: walk a source, store new content, write a snapshot.
//!
//! ## Pipeline
//! The walking thread reads files, cuts chunks (FastCDC) and hashes them (keyed BLAKE3) —
//! together about 1 GB/s on one core — and decides deduplication on the spot against the
//! sorted index and the set of blobs queued in this session. Only new chunks travel on, over
//! a bounded channel, to one worker per core that compresses (zstd, the expensive step) and
//! seals them and appends them to the data packer. Full packs upload beside the work (one at a
//! time to a local directory, two to S3). Memory is bounded by the chunk bytes in flight
//! (`InFlight`, a byte budget rather than a job count), the chunk being read, the open packs
//! and the uploading ones — not by input size. A large file is spread over all workers chunk
//! by chunk.
//!
//! ## Incremental
//! Each directory is compared with the same directory in the parent snapshot. A file whose
//! size, mtime, ctime, inode and mode are unchanged (and whose chunks are all still indexed)
//! reuses the parent's chunk list without being opened.
//!
//! ## Order of writes
//! packs → index → snapshot. The snapshot is saved only after [`PackSink::finish`] confirms
//! every pack is durable and indexed, so a crash leaves at most unreferenced packs (and
//! index objects for packs that were completed). The next backup reuses both: it starts by
//! indexing packs no index object lists yet ([`prune::adopt_orphan_packs`]).
//!
//! ## Prune running beside
//! The walker records every pack it deduplicates against; just before the snapshot is
//! written, [`prune::check_dependencies`] makes sure no prune has marked one of them for
//! deletion long enough ago that it may already be gone (see [`crate::prune`]).

mod sink;
mod stream;
mod walker;

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;

use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::{Identity, Snapshot, Summary};
use podvault_proto::{BlobId, PackId, SnapshotId, TreeId};

use crate::blob::BlobEncoder;
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::fsat;
use crate::index::MasterIndex;
use crate::progress::Progress;
use crate::prune;
use crate::repository::{hostname, Repository};
pub use sink::PackSink;
pub use stream::{backup_stream, check_stream_name, stream_path, STREAM_FILE_MODE};
use walker::Walker;

/// What to back up and how.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackupOptions {
    /// Files or directories to back up. A single directory becomes the snapshot's root;
    /// otherwise each path is an entry of the root named by its last component.
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub paths: Vec<PathBuf>,
    /// Back up what is read from standard input as one file at the snapshot root (a
    /// database dump: `pg_dumpall | podvault backup --stdin --stdin-filename db.sql`). If
    /// reading fails, no snapshot is written.
    #[arg(long)]
    pub stdin: bool,
    /// Run the command given in place of paths and back up its standard output as one
    /// file, like `--stdin`; the backup fails and writes no snapshot unless the command
    /// exits 0 (`podvault backup --stdin-from-command --stdin-filename db.sql -- pg_dumpall`).
    /// Unlike a shell pipe into `--stdin`, a dump that dies part-way is never stored.
    #[arg(long, conflicts_with = "stdin")]
    pub stdin_from_command: bool,
    /// Name of the file `--stdin` stores (one path component; default `stdin`).
    #[arg(long, value_name = "NAME")]
    pub stdin_filename: Option<String>,
    /// Tag the snapshot (`key=value` or a plain word); repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Skip paths matching a glob; repeatable. Globs without `/` match any name, globs with
    /// `/` match the path relative to the backed-up directory (`cache/**`).
    #[arg(long = "exclude", value_name = "GLOB", conflicts_with_all = ["stdin", "stdin_from_command"])]
    pub excludes: Vec<String>,
    /// Parent snapshot for change detection (default: latest with the same host and paths).
    #[arg(long)]
    pub parent: Option<String>,
    /// What the snapshot is of, recorded by the node agent (never set from user input: the
    /// CLI has no flag for it). With an identity, the default parent is the latest snapshot
    /// whose identity has the same series — never one found by host and paths, which other
    /// writers can imitate.
    #[arg(skip)]
    pub identity: Option<Identity>,
    /// Read every file even if unchanged since the parent.
    #[arg(long, conflicts_with_all = ["stdin", "stdin_from_command"])]
    pub force: bool,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// Compression workers (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Stay on the file system of each path: file systems mounted below it are not entered
    /// (a mount point is stored as an empty directory). The node agent always sets this: a
    /// mount inside a volume is not the volume owner's to back up.
    #[arg(long)]
    pub one_file_system: bool,
    /// The directory every path must be (device and inode), set by the node agent when it
    /// found the path from a trusted root without following symlinks (a hostPath
    /// PersistentVolume below an allowed host directory); a path reaching anything else
    /// fails the operation. Never set from user input.
    #[arg(skip)]
    pub pinned_root: Option<crate::fsat::DirId>,
}

/// The result of a backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The snapshot written.
    pub snapshot: Snapshot,
}

/// A chunk on its way to a compression worker.
struct Job<'a> {
    ty: BlobType,
    id: BlobId,
    data: Bytes,
    /// Its share of [`InFlight`], returned when the worker drops the job.
    _permit: Permit<'a>,
}

/// Bounds the bytes of chunk data between the walker and the sealing workers (queued or
/// being sealed), so memory follows the work in flight whatever the chunk sizes: a queue
/// bounded in jobs would hold eight 8 MiB chunks as readily as eight empty files.
struct InFlight {
    limit: usize,
    /// Bytes held, and whether the workers have stopped.
    state: Mutex<(usize, bool)>,
    freed: Condvar,
}

/// Bytes taken from an [`InFlight`] budget; returned on drop.
struct Permit<'a> {
    budget: &'a InFlight,
    bytes: usize,
}

impl InFlight {
    fn new(limit: usize) -> Self {
        InFlight {
            limit,
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit (a chunk larger than the limit waits for an empty pipeline);
    /// `None` once the workers have stopped.
    fn acquire(&self, bytes: usize) -> Option<Permit<'_>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !s.1 && s.0 > 0 && s.0 + bytes > self.limit {
            s = self.freed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.1 {
            return None;
        }
        s.0 += bytes;
        Some(Permit {
            budget: self,
            bytes,
        })
    }

    /// Wakes and fails every waiter: no worker is left to free anything.
    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.freed.notify_all();
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 -= self.bytes;
        drop(s);
        self.budget.freed.notify_all();
    }
}

/// Backs up `opts.paths` into `repo`.
pub fn backup(
    repo: &Repository,
    opts: &BackupOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<BackupOutcome> {
    let started = chrono::Utc::now();
    let host = opts.host.clone().unwrap_or_else(hostname);
    let roots = resolve_roots(&opts.paths)?;
    let path_strings: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let excludes = Excludes::new(&opts.excludes)?;
    let parent = find_parent(repo, opts, &host, &path_strings)?;
    let index = load_index(repo)?;
    let parent_tree = match (&parent, opts.force) {
        (Some((_, s)), false) => Some(repo.load_tree(&index, &s.tree)?),
        _ => None,
    };

    let sink = PackSink::new(repo)?;
    let scan_done = AtomicBool::new(false);
    let stored = store(
        repo,
        &index,
        &sink,
        opts,
        &excludes,
        progress,
        cancel,
        |walker| {
            thread::scope(|scope| {
                scope.spawn(|| {
                    scan(
                        &roots,
                        &excludes,
                        opts.one_file_system,
                        opts.pinned_root,
                        progress,
                        &scan_done,
                    )
                });
                let walked = walker.walk_roots(&roots, parent_tree);
                scan_done.store(true, Ordering::Relaxed);
                walked
            })
        },
    )?;
    // The walk can finish before the pre-scan (a small tree, a busy machine); the walk's own
    // counts are then the exact totals.
    if !progress.totals_final.load(Ordering::Relaxed) {
        finalize_totals(progress);
    }
    commit(
        repo,
        &index,
        &sink,
        stored,
        opts,
        started,
        host,
        path_strings,
        parent,
    )
}

/// The parent snapshot: the one named in `opts`; else, for an agent backup (`opts.identity`),
/// the latest snapshot whose identity has the same series; else the latest snapshot without
/// an identity with the same host and paths (a CLI backup never builds on an agent's
/// snapshot, nor an agent's on anything its identity does not match).
///
/// Found before the index is loaded: a snapshot is written after the index objects it needs,
/// so the index loaded next covers the parent even if it was written a moment ago.
fn find_parent(
    repo: &Repository,
    opts: &BackupOptions,
    host: &str,
    paths: &[String],
) -> Result<Option<(SnapshotId, Snapshot)>> {
    Ok(match &opts.parent {
        Some(spec) => Some(repo.find_snapshot(spec)?),
        None => {
            let series = opts.identity.as_ref().map(|i| i.series.as_str());
            repo.snapshots()?.into_iter().rfind(|(_, s)| match series {
                Some(series) => s.series() == Some(series),
                None => s.identity.is_none() && s.hostname == host && s.paths == paths,
            })
        }
    })
}

/// The compact deduplication view of the index — full ids for trees, 96-bit prefixes for
/// data blobs (see `index::Precision::Dedup`), so a huge repository does not dominate
/// memory — with the packs of interrupted backups adopted.
fn load_index(repo: &Repository) -> Result<MasterIndex> {
    let mut index = repo.load_dedup_index()?;
    let adopted = prune::adopt_orphan_packs(repo, &mut index)?;
    if adopted > 0 {
        tracing::info!(
            packs = adopted,
            "reusing packs left by an interrupted backup"
        );
    }
    Ok(index)
}

/// Makes the work done so far the final progress totals.
fn finalize_totals(progress: &Progress) {
    progress.files_total.store(
        progress.files_done.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    progress.bytes_total.store(
        progress.bytes_done.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    progress.totals_final.store(true, Ordering::Relaxed);
}

/// What the pipeline stored: the root tree, the counters, and the packs it deduplicated
/// against.
struct Stored {
    root: TreeId,
    summary: Summary,
    used_packs: HashSet<PackId>,
}

/// Runs `body` with a [`Walker`] whose new chunks flow to compression workers and `sink`;
/// `body` returns the root tree. File backups walk directories, stream backups
/// ([`backup_stream`]) chunk one reader; both go through this one pipeline.
///
/// Whatever `body` returns, the workers drain and stop before this returns. Nothing here
/// writes a snapshot: that is [`commit`]'s job, after `sink` is finished.
#[allow(clippy::too_many_arguments)]
fn store<'a>(
    repo: &'a Repository,
    index: &'a MasterIndex,
    sink: &'a PackSink,
    opts: &BackupOptions,
    excludes: &'a Excludes,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    body: impl FnOnce(&mut Walker<'_>) -> Result<TreeId>,
) -> Result<Stored> {
    let threads = opts
        .threads
        .unwrap_or_else(|| thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    // Chunk bytes between walker and workers: two average chunks per worker (one being
    // sealed, one waiting) keep every worker busy on typical data. A chunk larger than what
    // is left waits for the pipeline to drain, so a run of maximum-size chunks (long
    // low-entropy stretches, which mostly deduplicate anyway) is sealed one at a time rather
    // than holding several 8 MiB buffers.
    let chunker = repo.config().chunker;
    let in_flight = InFlight::new(threads * 2 * chunker.avg_size as usize);
    thread::scope(|scope| -> Result<_> {
        // The byte budget bounds memory; the job count only needs to let many tiny files
        // queue up without the walker and the workers waking each other per file.
        let (tx, rx) = bounded::<Job>(threads * 64);
        let mut workers = Vec::new();
        for _ in 0..threads {
            let rx = rx.clone();
            let in_flight = &in_flight;
            let mut encoder = BlobEncoder::new(repo.config().compression_level)
                .map_err(|e| Error::InvalidInput(format!("zstd: {e}")))?;
            workers.push(scope.spawn(move || {
                let r = seal_worker(repo, &mut encoder, rx, sink);
                in_flight.close();
                r
            }));
        }
        drop(rx);
        let mut walker = Walker {
            repo,
            index,
            chunker: Chunker::new(repo.config().chunker),
            session: HashSet::new(),
            tx: Some(tx),
            sink,
            summary: Summary::default(),
            progress,
            cancel,
            excludes,
            hardlinks: HashMap::new(),
            tree_encoder: BlobEncoder::new(repo.config().compression_level)
                .map_err(|e| Error::InvalidInput(format!("zstd: {e}")))?,
            used_packs: HashSet::new(),
            in_flight: &in_flight,
            one_file_system: opts.one_file_system,
            pinned_root: opts.pinned_root,
        };
        let walked = body(&mut walker);
        // Closing the channel lets the workers drain and exit, whatever happened.
        walker.tx = None;
        let mut worker_result = Ok(());
        for w in workers {
            let r = w.join().unwrap_or_else(|_| {
                Err(Error::InvalidInput("a compression worker panicked".into()))
            });
            if worker_result.is_ok() {
                worker_result = r;
            }
        }
        let root = walked?;
        worker_result?;
        Ok(Stored {
            root,
            summary: walker.summary,
            used_packs: walker.used_packs,
        })
    })
}

/// Makes a backup visible: flushes `sink` (packs, then index), checks no prune is about to
/// delete a pack the snapshot depends on, and saves the snapshot — the last write.
#[allow(clippy::too_many_arguments)]
fn commit(
    repo: &Repository,
    index: &MasterIndex,
    sink: &PackSink,
    stored: Stored,
    opts: &BackupOptions,
    started: chrono::DateTime<chrono::Utc>,
    host: String,
    paths: Vec<String>,
    parent: Option<(SnapshotId, Snapshot)>,
) -> Result<BackupOutcome> {
    sink.finish()?;
    let mut depends = stored.used_packs;
    depends.extend(sink.written_packs());
    prune::check_dependencies(repo, index, &depends)?;

    let mut tags = opts.tags.clone();
    tags.sort();
    tags.dedup();
    let mut summary = stored.summary;
    summary.bytes_stored = sink.stored.load(Ordering::Relaxed);
    summary.started_ns = started.timestamp_nanos_opt().unwrap_or_default();
    summary.finished_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
    let snapshot = Snapshot {
        time_ns: summary.started_ns,
        hostname: host,
        paths,
        tags,
        parent: parent.map(|(id, _)| id),
        tree: stored.root,
        program_version: env!("CARGO_PKG_VERSION").into(),
        summary,
        identity: opts.identity.clone(),
    };
    let id = repo.save(&snapshot)?;
    sink.end_session();
    Ok(BackupOutcome { id, snapshot })
}

fn resolve_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to back up: give at least one path".into(),
        ));
    }
    let mut roots = Vec::new();
    let mut names = HashSet::new();
    for p in paths {
        let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
        std::fs::symlink_metadata(&abs).map_err(|e| Error::io(&abs, e))?;
        if paths.len() > 1 {
            let name = abs
                .file_name()
                .map(|n| n.as_bytes().to_vec())
                .unwrap_or_default();
            if !names.insert(name) {
                return Err(Error::InvalidInput(format!(
                    "two backup paths share the name {:?}; back them up separately",
                    abs.file_name().unwrap_or_default()
                )));
            }
        }
        roots.push(abs);
    }
    Ok(roots)
}

fn seal_worker(
    repo: &Repository,
    encoder: &mut BlobEncoder,
    rx: Receiver<Job<'_>>,
    sink: &PackSink,
) -> Result<()> {
    let key = repo.key();
    for job in rx {
        let sealed = encoder.seal(key, job.ty, &job.id, &job.data);
        sink.add(job.ty, job.id, &sealed, job.data.len() as u32)?;
        // Dropping the job returns its bytes to the budget.
    }
    Ok(())
}

/// Glob exclusions.
struct Excludes {
    names: GlobSet,
    paths: GlobSet,
}

impl Excludes {
    fn new(patterns: &[String]) -> Result<Self> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p.trim_start_matches('/'))
                .literal_separator(true)
                .build()
                .map_err(|e| Error::InvalidInput(format!("exclude pattern {p:?}: {e}")))?;
            if p.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::InvalidInput(format!("exclude patterns: {e}")))
        };
        Ok(Excludes {
            names: build(names)?,
            paths: build(paths)?,
        })
    }

    fn matches(&self, rel: &Path) -> bool {
        rel.file_name().is_some_and(|n| self.names.is_match(n)) || self.paths.is_match(rel)
    }
}

/// Counts files and bytes ahead of the backup so progress can show totals and an ETA.
/// Stops early when the backup finishes first. Walks like the backup does (relative to open
/// directories, never following a symlink, on one file system if asked), one descriptor
/// per directory level.
fn scan(
    roots: &[PathBuf],
    excludes: &Excludes,
    one_file_system: bool,
    pinned_root: Option<fsat::DirId>,
    progress: &Progress,
    done: &AtomicBool,
) {
    use std::os::fd::AsFd;
    fsat::raise_fd_limit();
    for root in roots {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            continue;
        };
        if meta.is_file() {
            Progress::add(&progress.files_total, 1);
            Progress::add(&progress.bytes_total, meta.len());
        }
        let Ok(fd) = fsat::open_root(root) else {
            continue;
        };
        let pinned = |pin: fsat::DirId| fsat::fstat(fd.as_fd()).is_ok_and(|m| pin.is(&m));
        if pinned_root.is_some_and(|pin| !pinned(pin)) {
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        let dev = std::os::unix::fs::MetadataExt::dev(&meta);
        // Each level: its descriptor, its path relative to the root, its subdirectories
        // left to visit.
        let mut stack = vec![(
            fd,
            PathBuf::new(),
            Vec::<(Vec<u8>, fsat::Meta)>::new(),
            true,
        )];
        while let Some((fd, rel, pending, fresh)) = stack.last_mut() {
            if done.load(Ordering::Relaxed) {
                return;
            }
            if std::mem::take(fresh) {
                for name in fsat::read_names(fd.as_fd()).unwrap_or_default() {
                    let Ok(m) = fsat::stat_at(fd.as_fd(), &name) else {
                        continue;
                    };
                    if one_file_system && m.dev != dev {
                        continue;
                    }
                    let p = rel.join(fsat::os(&name));
                    if excludes.matches(&p)
                        && !(excludes.names.is_empty() && excludes.paths.is_empty())
                    {
                        continue;
                    }
                    if m.is_file() {
                        Progress::add(&progress.files_total, 1);
                        Progress::add(&progress.bytes_total, m.size);
                    } else if m.is_dir() {
                        pending.push((name, m));
                    }
                }
            }
            match pending.pop() {
                Some((name, m)) => {
                    let child = fsat::open_dir_verified(fd.as_fd(), &name, &m);
                    let p = rel.join(fsat::os(&name));
                    if let Ok(child) = child {
                        stack.push((child, p, Vec::new(), true));
                    }
                }
                None => {
                    stack.pop();
                }
            }
        }
    }
    progress.totals_final.store(true, Ordering::Relaxed);
}
