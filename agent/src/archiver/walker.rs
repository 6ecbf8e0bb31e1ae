//! The walking thread: metadata, change detection, reading, chunking, hashing, dedup, trees.
//!
//! One thread walks the source depth first in name order and builds every tree, so a
//! snapshot's structure never depends on timing. Helper threads ([`Prefetch`]) list
//! directories and load the parent snapshot's trees just ahead of it, so an incremental
//! backup whose files are unchanged — where `stat` and tree reads are nearly all the work —
//! is not limited to one core. An unchanged file is never opened: its metadata is compared
//! with the parent's node and the parent's chunk list reused (each chunk must still be in a
//! live pack, which is recorded as a dependency of the snapshot).
//!
//! ## Hostile volumes
//! The source may be changed by its owner while it is read (see [`crate::fsat`]). Every
//! directory is opened relative to its parent's open descriptor with `O_NOFOLLOW`, listed
//! with `getdents` and `fstatat(AT_SYMLINK_NOFOLLOW)` relative to that descriptor, and
//! checked to be the directory its parent listed (device, inode, type); files are opened
//! relative to their directory with `O_NOFOLLOW` and checked the same way; symlinks are read
//! with `readlinkat`. An entry replaced between listing and opening is not followed: it is
//! recorded as an error naming it and left out, the backup goes on. With
//! `one_file_system` a directory on another device (a mount point inside the source) is
//! stored empty and a non-directory on another device is left out, so a mount the volume's
//! owner does not control is never read.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;

use bytes::Bytes;
use crossbeam_channel::Sender;
use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::{PathError, Summary};
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, ChunkId, PackId, Record, TreeId};

use super::{Excludes, InFlight, Job, PackSink};
use crate::blob::BlobEncoder;
use crate::chunker::Chunker;
use crate::error::{Error, Result};
use crate::fsat::{self, Meta};
use crate::index::MasterIndex;
use crate::progress::Progress;
use crate::repository::Repository;

/// State of the walking thread.
pub(super) struct Walker<'a> {
    pub repo: &'a Repository,
    pub index: &'a MasterIndex,
    pub chunker: Chunker,
    pub session: HashSet<BlobId>,
    pub tx: Option<Sender<Job<'a>>>,
    pub sink: &'a PackSink,
    pub summary: Summary,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    pub excludes: &'a Excludes,
    pub hardlinks: HashMap<(u64, u64), (u64, Vec<ChunkId>)>,
    pub tree_encoder: BlobEncoder,
    /// Packs this backup deduplicated against: the snapshot depends on them.
    pub used_packs: HashSet<PackId>,
    /// Byte budget of chunks on their way to the workers.
    pub in_flight: &'a InFlight,
    /// Stay on each root's file system (see the module docs).
    pub one_file_system: bool,
    /// The directory each root must be ([`super::BackupOptions::pinned_root`]).
    pub pinned_root: Option<fsat::DirId>,
}

/// A directory being assembled.
struct Frame {
    node: Option<Node>,
    nodes: Vec<Node>,
    parent: Option<Tree>,
    parent_subtree: Option<TreeId>,
    /// Where it is on disk.
    dir: PathBuf,
    /// The backup root it is under (exclude globs are relative to it).
    root: PathBuf,
    /// The open directory (`None` only for the base frame of several roots).
    fd: Option<Arc<OwnedFd>>,
    /// The root's device when staying on one file system.
    dev: Option<u64>,
    /// Entries not visited yet, in name order.
    entries: std::vec::IntoIter<Listed>,
}

/// True when `path` (under `root`) matches an exclude glob; free when there are none.
fn excluded(excludes: &Excludes, root: &Path, path: &Path) -> bool {
    !(excludes.names.is_empty() && excludes.paths.is_empty())
        && excludes.matches(path.strip_prefix(root).unwrap_or(path))
}

/// A directory entry as listed: its name and what `fstatat(AT_SYMLINK_NOFOLLOW)` relative
/// to its directory said about it.
struct Listed {
    name: Vec<u8>,
    meta: io::Result<Meta>,
}

/// An open directory and its entries sorted by name, or why it could not be opened or read.
type Listing = io::Result<(Arc<OwnedFd>, Vec<Listed>)>;

/// Where a directory is: its parent's open descriptor, its name there, and what the parent's
/// listing said about it (checked against what is opened).
#[derive(Clone)]
struct DirRef {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
    meta: Meta,
}

/// Opens a listed directory relative to its parent (checking it is the one listed) and
/// lists it: `getdents` plus an `fstatat` per entry relative to the open directory (no path
/// lookups), sorted by name (byte order, like the trees).
fn list_dir(at: &DirRef) -> Listing {
    let fd = fsat::open_dir_verified(at.parent.as_fd(), &at.name, &at.meta)?;
    let mut out: Vec<Listed> = fsat::read_names(fd.as_fd())?
        .into_iter()
        .map(|name| Listed {
            meta: fsat::stat_at(fd.as_fd(), &name),
            name,
        })
        .collect();
    out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok((Arc::new(fd), out))
}

/// True when `meta` is on another device than the root (with `one_file_system`).
fn other_device(dev: Option<u64>, meta: &Meta) -> bool {
    dev.is_some_and(|d| d != meta.dev)
}

/// Directory listings (and the parent snapshot's trees for them) fetched ahead of the walker.
///
/// The walker alone decides the snapshot's structure and order; helpers only list
/// directories (and load the matching parent trees) before it asks for them, so the
/// `stat` calls of an incremental backup — its main cost when nothing changed — and the
/// tree reads run on several cores. Work is a stack: listing a directory pushes its
/// subdirectories in reverse name order, so the top is always the next directory of the
/// walker's depth-first, name-ordered walk. Helpers stop while [`AHEAD`] entries are
/// listed but not yet taken, which bounds memory; the walker lists a directory itself when
/// no helper has started it, so it never waits for a helper that has not begun.
pub(super) struct Prefetch<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    excludes: &'a Excludes,
    state: Mutex<PrefetchState>,
    /// A listing finished.
    listed: Condvar,
    /// Work arrived, room was freed, or the walk ended.
    wake: Condvar,
}

/// Entries (plus tree nodes) listed ahead of the walker before helpers pause.
const AHEAD: usize = 8192;
/// Directories listed ahead of the walker before helpers pause: each holds an open
/// descriptor until the walker is done with it.
const AHEAD_DIRS: usize = 256;

/// A directory to list and the parent snapshot's tree for it.
struct Todo {
    dir: PathBuf,
    root: PathBuf,
    subtree: Option<TreeId>,
    at: DirRef,
    dev: Option<u64>,
}

/// What a helper fetched for one directory.
struct Fetched {
    listing: Listing,
    subtree: Option<TreeId>,
    tree: Result<Option<Tree>>,
    cost: usize,
}

#[derive(Default)]
struct PrefetchState {
    todo: Vec<Todo>,
    busy: HashSet<PathBuf>,
    done: HashMap<PathBuf, Fetched>,
    ahead: usize,
    stop: bool,
}

/// Stops the helpers when dropped.
struct StopOnDrop<'p, 'a>(&'p Prefetch<'a>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.wake.notify_all();
        self.0.listed.notify_all();
    }
}

impl<'a> Prefetch<'a> {
    fn new(repo: &'a Repository, index: &'a MasterIndex, excludes: &'a Excludes) -> Self {
        Prefetch {
            repo,
            index,
            excludes,
            state: Mutex::new(PrefetchState::default()),
            listed: Condvar::new(),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PrefetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A helper: lists the top directory of the stack until the walk ends.
    fn run(&self) {
        loop {
            let todo = {
                let mut s = self.lock();
                while !s.stop
                    && (s.todo.is_empty() || s.ahead >= AHEAD || s.done.len() >= AHEAD_DIRS)
                {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.stop {
                    return;
                }
                let todo = s.todo.pop().expect("checked non-empty");
                s.busy.insert(todo.dir.clone());
                todo
            };
            let listing = list_dir(&todo.at);
            let tree = todo
                .subtree
                .map(|id| self.repo.load_tree(self.index, &id))
                .transpose();
            let cost = 1
                + listing.as_ref().map_or(0, |l| l.1.len())
                + tree
                    .as_ref()
                    .ok()
                    .and_then(Option::as_ref)
                    .map_or(0, |t| t.nodes.len());
            let mut s = self.lock();
            self.push_children(
                &mut s,
                &todo,
                &listing,
                tree.as_ref().ok().and_then(Option::as_ref),
            );
            s.busy.remove(&todo.dir);
            s.ahead += cost;
            s.done.insert(
                todo.dir,
                Fetched {
                    listing,
                    subtree: todo.subtree,
                    tree,
                    cost,
                },
            );
            drop(s);
            self.listed.notify_all();
            self.wake.notify_all();
        }
    }

    /// Queues the subdirectories the walker will enter, next one on top.
    fn push_children(
        &self,
        s: &mut PrefetchState,
        todo: &Todo,
        listing: &Listing,
        tree: Option<&Tree>,
    ) {
        let Ok((fd, entries)) = listing else { return };
        for e in entries.iter().rev() {
            let Ok(meta) = &e.meta else { continue };
            if !meta.is_dir() || other_device(todo.dev, meta) {
                continue;
            }
            let dir = todo.dir.join(fsat::os(&e.name));
            if excluded(self.excludes, &todo.root, &dir) {
                continue;
            }
            let subtree = tree
                .and_then(|t| t.find(&e.name))
                .and_then(|p| (p.kind == NodeKind::Dir).then_some(p.subtree).flatten());
            s.todo.push(Todo {
                dir,
                root: todo.root.clone(),
                subtree,
                at: DirRef {
                    parent: fd.clone(),
                    name: e.name.clone(),
                    meta: *meta,
                },
                dev: todo.dev,
            });
        }
    }

    /// The listing of `dir` and the parent snapshot's tree `subtree`: from a helper if one
    /// has fetched them (waiting if one is at it), otherwise fetched here.
    fn take(
        &self,
        dir: &Path,
        root: &Path,
        subtree: Option<TreeId>,
        at: &DirRef,
        dev: Option<u64>,
    ) -> Result<(Listing, Option<Tree>)> {
        let mut s = self.lock();
        loop {
            if let Some(f) = s.done.remove(dir) {
                s.ahead -= f.cost;
                drop(s);
                self.wake.notify_all();
                // Helpers derive `subtree` from the same parent tree as the walker; check
                // anyway rather than trust it.
                let tree = if f.subtree == subtree {
                    f.tree?
                } else {
                    self.load(subtree)?
                };
                return Ok((f.listing, tree));
            }
            if !s.busy.contains(dir) || s.stop {
                break;
            }
            s = self.listed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        // Nobody has started it: take it off the stack (it is near the top) and do it here.
        if let Some(i) = s.todo.iter().rposition(|t| t.dir == dir) {
            s.todo.remove(i);
        }
        drop(s);
        let tree = self.load(subtree)?;
        let listing = self.list_here(dir, root, tree.as_ref(), at, dev);
        Ok((listing, tree))
    }

    /// Lists `dir` on the calling thread and queues its subdirectories for the helpers,
    /// with their trees found in `tree` (the parent snapshot's tree for `dir`).
    fn list_here(
        &self,
        dir: &Path,
        root: &Path,
        tree: Option<&Tree>,
        at: &DirRef,
        dev: Option<u64>,
    ) -> Listing {
        let listing = list_dir(at);
        let todo = Todo {
            dir: dir.to_owned(),
            root: root.to_owned(),
            subtree: None,
            at: at.clone(),
            dev,
        };
        let mut s = self.lock();
        self.push_children(&mut s, &todo, &listing, tree);
        drop(s);
        self.wake.notify_all();
        listing
    }

    fn load(&self, subtree: Option<TreeId>) -> Result<Option<Tree>> {
        subtree
            .map(|id| self.repo.load_tree(self.index, &id))
            .transpose()
    }
}

/// Why reading a file stopped.
pub(super) enum ReadError {
    /// The file could not be read: recorded, the backup goes on.
    Io(io::Error),
    /// The backup must stop.
    Fatal(Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl Walker<'_> {
    /// Walks every root and returns the snapshot's root tree.
    pub fn walk_roots(&mut self, roots: &[PathBuf], parent: Option<Tree>) -> Result<TreeId> {
        fsat::raise_fd_limit();
        let single_dir =
            roots.len() == 1 && std::fs::symlink_metadata(&roots[0]).is_ok_and(|m| m.is_dir());
        let prefetch = Prefetch::new(self.repo, self.index, self.excludes);
        let helpers = thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        thread::scope(|scope| {
            for _ in 0..helpers {
                scope.spawn(|| prefetch.run());
            }
            // Stops the helpers however the walk ends (error, cancellation, panic).
            let _stop = StopOnDrop(&prefetch);
            let mut base = Frame {
                node: None,
                nodes: Vec::new(),
                parent,
                parent_subtree: None,
                dir: PathBuf::new(),
                root: PathBuf::new(),
                fd: None,
                dev: None,
                entries: Vec::new().into_iter(),
            };
            for root in roots {
                base = self.walk(&prefetch, root, base, single_dir)?;
            }
            self.close(base)
        })
    }

    /// Walks one root depth first, entries in name order, directories listed ahead by the
    /// prefetch helpers.
    fn walk(
        &mut self,
        prefetch: &Prefetch<'_>,
        root: &Path,
        mut base: Frame,
        single_dir: bool,
    ) -> Result<Frame> {
        base.root = root.to_owned();
        base.dir = root.to_owned();
        // The root is reached through its parent, opened by the (trusted) path given; from
        // there on everything is relative to open descriptors.
        let (parent_dir, leaf) = match root.file_name() {
            Some(n) => (root.parent().unwrap_or(Path::new("/")), n.as_bytes()),
            None => (root, &b"."[..]),
        };
        let parent_fd = match fsat::open_root(parent_dir) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                self.record_error(root, &e.to_string());
                return Ok(base);
            }
        };
        let meta = fsat::stat_at(parent_fd.as_fd(), leaf);
        if let (Some(pin), Ok(m)) = (self.pinned_root, &meta) {
            if !pin.is(m) {
                return Err(Error::io(root, fsat::not_pinned(root)));
            }
        }
        let dev = match &meta {
            Ok(m) if self.one_file_system => Some(m.dev),
            _ => None,
        };
        base.fd = Some(parent_fd.clone());
        base.dev = dev;
        let mut stack = vec![base];
        if single_dir {
            // The directory's entries are the snapshot root's; the root tree is the parent.
            let listing = meta.and_then(|meta| {
                let at = DirRef {
                    parent: parent_fd,
                    name: leaf.to_vec(),
                    meta,
                };
                prefetch.list_here(root, root, stack[0].parent.as_ref(), &at, dev)
            });
            match listing {
                Ok((fd, l)) => {
                    stack[0].fd = Some(fd);
                    stack[0].entries = l.into_iter();
                }
                Err(e) => self.record_error(root, &e.to_string()),
            }
        } else {
            let name = match root.file_name() {
                Some(n) => n.as_bytes().to_vec(),
                None => b"root".to_vec(),
            };
            self.visit(prefetch, &mut stack, root.to_owned(), leaf, name, meta)?;
        }
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Canceled);
            }
            let top = stack
                .last_mut()
                .expect("the base frame is never popped here");
            match top.entries.next() {
                Some(entry) => {
                    let path = top.dir.join(fsat::os(&entry.name));
                    if excluded(self.excludes, &top.root, &path) {
                        continue;
                    }
                    let name = entry.name;
                    self.visit(prefetch, &mut stack, path, &name, name.clone(), entry.meta)?;
                }
                None if stack.len() > 1 => self.pop(&mut stack)?,
                None => break,
            }
        }
        Ok(stack.pop().expect("base frame"))
    }

    /// Handles one entry of the innermost directory: a directory becomes a new frame, anything
    /// else a node of the current one.
    ///
    /// `leaf` is the entry's name in the innermost directory's descriptor, `name` the name
    /// its node gets (they differ only for a root given as a path).
    fn visit(
        &mut self,
        prefetch: &Prefetch<'_>,
        stack: &mut Vec<Frame>,
        path: PathBuf,
        leaf: &[u8],
        name: Vec<u8>,
        meta: io::Result<Meta>,
    ) -> Result<()> {
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                self.record_error(&path, &e.to_string());
                return Ok(());
            }
        };
        let top = stack.last().expect("the base frame is never popped here");
        let dir_fd = top.fd.clone().expect("frames holding entries are open");
        let dev = top.dev;
        let previous = top.parent.as_ref().and_then(|t| t.find(&name)).cloned();
        let kind = meta.kind();
        let mut node = node_from(name, kind, &meta);
        let mount_point = other_device(dev, &meta);
        if mount_point && kind != NodeKind::Dir {
            tracing::info!(path = %path.display(), "on another file system; not backed up (one file system)");
            return Ok(());
        }
        if kind == NodeKind::Dir {
            let parent_subtree = previous
                .as_ref()
                .and_then(|p| (p.kind == NodeKind::Dir).then_some(p.subtree).flatten());
            let root = top.root.clone();
            let (fd, entries, parent) = if mount_point {
                // A mount point: stored as an empty directory, never entered.
                tracing::info!(path = %path.display(), "a mount point; stored empty (one file system)");
                (None, Vec::new(), None)
            } else {
                let at = DirRef {
                    parent: dir_fd,
                    name: leaf.to_vec(),
                    meta,
                };
                let (listing, parent) = prefetch.take(&path, &root, parent_subtree, &at, dev)?;
                match listing {
                    Ok((fd, l)) => (Some(fd), l, parent),
                    Err(e) => {
                        // Stored as an empty directory; the error names it.
                        self.record_error(&path, &e.to_string());
                        (None, Vec::new(), parent)
                    }
                }
            };
            if previous.is_none() {
                self.summary.dirs_new += 1;
            }
            stack.push(Frame {
                node: Some(node),
                nodes: Vec::new(),
                parent,
                parent_subtree,
                dir: path,
                root,
                fd,
                dev,
                entries: entries.into_iter(),
            });
            return Ok(());
        }
        match kind {
            NodeKind::File
                if !self.file(
                    (dir_fd.as_fd(), leaf),
                    &path,
                    &meta,
                    &mut node,
                    previous.as_ref(),
                )? =>
            {
                return Ok(())
            }
            NodeKind::Symlink => match fsat::read_link_at(dir_fd.as_fd(), leaf) {
                Ok(t) => node.symlink_target = t,
                Err(e) => {
                    self.record_error(&path, &e.to_string());
                    return Ok(());
                }
            },
            _ => {}
        }
        stack.last_mut().expect("base frame").nodes.push(node);
        Ok(())
    }

    /// Closes the innermost directory and adds it to its parent.
    fn pop(&mut self, stack: &mut Vec<Frame>) -> Result<()> {
        let frame = stack.pop().expect("caller checked the depth");
        let mut node = frame.node.clone().expect("only the base frame has no node");
        let previous = frame.parent_subtree;
        let id = self.close(frame)?;
        node.subtree = Some(id);
        match previous {
            None => {}
            Some(p) if p == id => self.summary.dirs_unchanged += 1,
            Some(_) => self.summary.dirs_changed += 1,
        }
        stack.last_mut().expect("base frame").nodes.push(node);
        Ok(())
    }

    /// True when the repository already holds `id` in a live pack; records that pack as one
    /// the snapshot depends on.
    fn reuse(&mut self, id: &BlobId) -> bool {
        match self.index.live_pack(id) {
            Some(pack) => {
                self.used_packs.insert(pack);
                true
            }
            None => false,
        }
    }

    /// Stores a directory's tree and returns its id.
    fn close(&mut self, frame: Frame) -> Result<TreeId> {
        self.store_tree(frame.nodes)
    }

    /// Stores a tree of `nodes` (any order) unless the repository has it; returns its id.
    pub(super) fn store_tree(&mut self, mut nodes: Vec<Node>) -> Result<TreeId> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let bytes = Tree { nodes }.encode();
        let id = self.repo.key().blob_id(&bytes);
        if !self.reuse(&id) && self.session.insert(id) {
            let sealed = self
                .tree_encoder
                .seal(self.repo.key(), BlobType::Tree, &id, &bytes);
            self.sink
                .add(BlobType::Tree, id, &sealed, bytes.len() as u32)?;
            self.summary.blobs_added += 1;
            self.summary.bytes_added += bytes.len() as u64;
        }
        Ok(TreeId(id.0))
    }

    /// Fills in a file node's content; false when the file could not be read (recorded).
    fn file(
        &mut self,
        at: (BorrowedFd<'_>, &[u8]),
        path: &Path,
        meta: &Meta,
        node: &mut Node,
        previous: Option<&Node>,
    ) -> Result<bool> {
        self.progress.set_current(&path.to_string_lossy());
        Progress::add(&self.progress.files_done, 1);
        self.summary.total_bytes += meta.size;
        match previous {
            Some(p) if unchanged(p, node) && p.content.iter().all(|c| self.reuse(&BlobId(c.0))) => {
                node.content = p.content.clone();
                self.summary.files_unchanged += 1;
                Progress::add(&self.progress.bytes_done, meta.size);
                return Ok(true);
            }
            Some(_) => self.summary.files_changed += 1,
            None => self.summary.files_new += 1,
        }
        let link_key = (meta.dev, meta.ino);
        if meta.nlink > 1 {
            if let Some((size, content)) = self.hardlinks.get(&link_key) {
                if *size == meta.size {
                    node.content = content.clone();
                    Progress::add(&self.progress.bytes_done, meta.size);
                    return Ok(true);
                }
            }
        }
        match self.read_file(at, meta, path, node) {
            Ok(()) => {
                if meta.nlink > 1 {
                    self.hardlinks
                        .insert(link_key, (node.size, node.content.clone()));
                }
                Ok(true)
            }
            Err(ReadError::Io(e)) => {
                match previous {
                    Some(_) => self.summary.files_changed -= 1,
                    None => self.summary.files_new -= 1,
                }
                self.record_error(path, &e.to_string());
                Ok(false)
            }
            Err(ReadError::Fatal(e)) => Err(e),
        }
    }

    fn read_file(
        &mut self,
        (dir, name): (BorrowedFd<'_>, &[u8]),
        listed: &Meta,
        path: &Path,
        node: &mut Node,
    ) -> Result<(), ReadError> {
        // Relative to the open directory with O_NOFOLLOW, and checked to be the file that
        // was listed: never read through a symlink (or anything else) swapped in after the
        // walk saw a file. O_NONBLOCK: never hang on a FIFO swapped in likewise.
        let (file, before) = fsat::open_file_verified(dir, name, listed)?;
        node.content.clear();
        let chunker = self.chunker;
        let mut content = Vec::new();
        let read = if before.size < chunker.params().min_size as u64 {
            let mut buf = Vec::with_capacity(before.size as usize);
            (&file).read_to_end(&mut buf)?;
            let n = buf.len() as u64;
            if n > 0 {
                content.push(self.chunk(Bytes::from(buf))?);
            }
            n
        } else {
            chunker.chunk_stream(&file, |c| {
                content.push(self.chunk(c)?);
                Ok::<(), ReadError>(())
            })?
        };
        let after = fsat::fstat(file.as_fd())?;
        if read != before.size
            || after.size != before.size
            || after.mtime_ns != before.mtime_ns
            || after.ctime_ns != before.ctime_ns
        {
            let p = path.to_string_lossy().into_owned();
            tracing::warn!(path = %p, "file changed while it was read; the snapshot holds the bytes read");
            self.summary.changed_during_read.push(p);
        }
        node.content = content;
        node.size = read;
        node.mtime_ns = after.mtime_ns;
        node.ctime_ns = after.ctime_ns;
        Ok(())
    }

    /// Hashes a chunk and queues it for sealing if the repository lacks it.
    pub(super) fn chunk(&mut self, data: Bytes) -> Result<ChunkId, ReadError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ReadError::Fatal(Error::Canceled));
        }
        let len = data.len() as u64;
        let id = self.repo.key().blob_id(&data);
        if !self.reuse(&id) && self.session.insert(id) {
            self.summary.blobs_added += 1;
            self.summary.bytes_added += len;
            let tx = self.tx.as_ref().expect("channel open while walking");
            let sent = match self.in_flight.acquire(data.len()) {
                Some(permit) => tx
                    .send(Job {
                        ty: BlobType::Data,
                        id,
                        data,
                        _permit: permit,
                    })
                    .is_ok(),
                None => false,
            };
            if !sent {
                // Workers only stop early when an upload failed; report that failure.
                return Err(ReadError::Fatal(self.sink.check().err().unwrap_or_else(
                    || Error::InvalidInput("compression workers stopped".into()),
                )));
            }
        }
        self.summary.bytes_read += len;
        Progress::add(&self.progress.bytes_done, len);
        Ok(ChunkId(id.0))
    }

    fn record_error(&mut self, path: &Path, message: &str) {
        let path = path.to_string_lossy().into_owned();
        tracing::warn!(path = %path, "{message}");
        Progress::add(&self.progress.errors, 1);
        self.summary.errors.push(PathError {
            path,
            message: message.to_owned(),
        });
    }
}

/// True when a file's metadata says its content cannot have changed.
fn unchanged(previous: &Node, now: &Node) -> bool {
    previous.kind == NodeKind::File
        && previous.size == now.size
        && previous.mtime_ns == now.mtime_ns
        && previous.ctime_ns == now.ctime_ns
        && previous.inode == now.inode
        && previous.mode == now.mode
}

/// A node carrying everything the metadata says.
pub(crate) fn node_from(name: Vec<u8>, kind: NodeKind, meta: &Meta) -> Node {
    let mut n = Node::new(name, kind);
    n.mode = meta.mode;
    n.uid = meta.uid;
    n.gid = meta.gid;
    n.size = if matches!(kind, NodeKind::File | NodeKind::Symlink) {
        meta.size
    } else {
        0
    };
    n.mtime_ns = meta.mtime_ns;
    n.ctime_ns = meta.ctime_ns;
    n.inode = meta.ino;
    n.device = meta.dev;
    n.links = meta.nlink;
    n.rdev = if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        meta.rdev
    } else {
        0
    };
    n
}
