//! The walking thread: metadata, change detection, reading, chunking, hashing, dedup, trees.
//!
//! One thread walks the source depth first in name order and builds every tree, so a
//! snapshot's structure never depends on timing. Helper threads ([`Prefetch`]) list
//! directories and load the parent snapshot's trees just ahead of it, so an incremental
//! backup whose files are unchanged — where `stat` and tree reads are nearly all the work —
//! is not limited to one core. An unchanged file is never opened: its metadata is compared
//! with the parent's node and the parent's chunk list reused (each chunk must still be in a
//! live pack, which is recorded as a dependency of the snapshot).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
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
    /// Entries not visited yet, in name order.
    entries: std::vec::IntoIter<Listed>,
}

/// True when `path` (under `root`) matches an exclude glob; free when there are none.
fn excluded(excludes: &Excludes, root: &Path, path: &Path) -> bool {
    !(excludes.names.is_empty() && excludes.paths.is_empty())
        && excludes.matches(path.strip_prefix(root).unwrap_or(path))
}

/// A directory entry as listed: its name and what `lstat` said about it.
struct Listed {
    name: OsString,
    meta: io::Result<Metadata>,
}

/// A directory's entries sorted by name, or why it could not be read.
type Listing = io::Result<Vec<Listed>>;

/// Lists a directory: `readdir` plus an `fstatat` per entry relative to the open directory
/// (no path lookups), sorted by name (byte order, like the trees).
fn list_dir(dir: &Path) -> Listing {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        out.push(Listed {
            meta: e.metadata(),
            name: e.file_name(),
        });
    }
    out.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(out)
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

/// A directory to list and the parent snapshot's tree for it.
struct Todo {
    dir: PathBuf,
    root: PathBuf,
    subtree: Option<TreeId>,
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
                while !s.stop && (s.todo.is_empty() || s.ahead >= AHEAD) {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                if s.stop {
                    return;
                }
                let todo = s.todo.pop().expect("checked non-empty");
                s.busy.insert(todo.dir.clone());
                todo
            };
            let listing = list_dir(&todo.dir);
            let tree = todo
                .subtree
                .map(|id| self.repo.load_tree(self.index, &id))
                .transpose();
            let cost = listing.as_ref().map_or(0, Vec::len)
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
        let Ok(entries) = listing else { return };
        for e in entries.iter().rev() {
            if !e.meta.as_ref().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let dir = todo.dir.join(&e.name);
            if excluded(self.excludes, &todo.root, &dir) {
                continue;
            }
            let subtree = tree
                .and_then(|t| t.find(e.name.as_bytes()))
                .and_then(|p| (p.kind == NodeKind::Dir).then_some(p.subtree).flatten());
            s.todo.push(Todo {
                dir,
                root: todo.root.clone(),
                subtree,
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
        let listing = self.list_here(dir, root, tree.as_ref());
        Ok((listing, tree))
    }

    /// Lists `dir` on the calling thread and queues its subdirectories for the helpers,
    /// with their trees found in `tree` (the parent snapshot's tree for `dir`).
    fn list_here(&self, dir: &Path, root: &Path, tree: Option<&Tree>) -> Listing {
        let listing = list_dir(dir);
        let todo = Todo {
            dir: dir.to_owned(),
            root: root.to_owned(),
            subtree: None,
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
enum ReadError {
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
        let mut stack = vec![base];
        if single_dir {
            // The directory's entries are the snapshot root's; the root tree is the parent.
            let listing = prefetch.list_here(root, root, stack[0].parent.as_ref());
            stack[0].entries = match listing {
                Ok(l) => l.into_iter(),
                Err(e) => {
                    self.record_error(root, &e.to_string());
                    Vec::new().into_iter()
                }
            };
        } else {
            let name = root
                .file_name()
                .map_or(b"root".to_vec(), |n| n.as_bytes().to_vec());
            let meta = std::fs::symlink_metadata(root);
            self.visit(prefetch, &mut stack, root.to_owned(), name, meta)?;
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
                    let path = top.dir.join(&entry.name);
                    if excluded(self.excludes, &top.root, &path) {
                        continue;
                    }
                    let name = entry.name.into_vec();
                    self.visit(prefetch, &mut stack, path, name, entry.meta)?;
                }
                None if stack.len() > 1 => self.pop(&mut stack)?,
                None => break,
            }
        }
        Ok(stack.pop().expect("base frame"))
    }

    /// Handles one entry of the innermost directory: a directory becomes a new frame, anything
    /// else a node of the current one.
    fn visit(
        &mut self,
        prefetch: &Prefetch<'_>,
        stack: &mut Vec<Frame>,
        path: PathBuf,
        name: Vec<u8>,
        meta: io::Result<Metadata>,
    ) -> Result<()> {
        let meta = match meta {
            Ok(m) => m,
            Err(e) => {
                self.record_error(&path, &e.to_string());
                return Ok(());
            }
        };
        let top = stack.last().expect("the base frame is never popped here");
        let previous = top.parent.as_ref().and_then(|t| t.find(&name)).cloned();
        let kind = kind_of(&meta);
        let mut node = node_from(name, kind, &meta);
        if kind == NodeKind::Dir {
            let parent_subtree = previous
                .as_ref()
                .and_then(|p| (p.kind == NodeKind::Dir).then_some(p.subtree).flatten());
            let root = top.root.clone();
            let (listing, parent) = prefetch.take(&path, &root, parent_subtree)?;
            let entries = match listing {
                Ok(l) => l,
                Err(e) => {
                    // Stored as an empty directory; the error names it.
                    self.record_error(&path, &e.to_string());
                    Vec::new()
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
                entries: entries.into_iter(),
            });
            return Ok(());
        }
        match kind {
            NodeKind::File if !self.file(&path, &meta, &mut node, previous.as_ref())? => {
                return Ok(())
            }
            NodeKind::Symlink => match std::fs::read_link(&path) {
                Ok(t) => node.symlink_target = t.as_os_str().as_bytes().to_vec(),
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
        let mut nodes = frame.nodes;
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
        path: &Path,
        meta: &Metadata,
        node: &mut Node,
        previous: Option<&Node>,
    ) -> Result<bool> {
        self.progress.set_current(&path.to_string_lossy());
        Progress::add(&self.progress.files_done, 1);
        self.summary.total_bytes += meta.len();
        match previous {
            Some(p) if unchanged(p, node) && p.content.iter().all(|c| self.reuse(&BlobId(c.0))) => {
                node.content = p.content.clone();
                self.summary.files_unchanged += 1;
                Progress::add(&self.progress.bytes_done, meta.len());
                return Ok(true);
            }
            Some(_) => self.summary.files_changed += 1,
            None => self.summary.files_new += 1,
        }
        let link_key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some((size, content)) = self.hardlinks.get(&link_key) {
                if *size == meta.len() {
                    node.content = content.clone();
                    Progress::add(&self.progress.bytes_done, meta.len());
                    return Ok(true);
                }
            }
        }
        match self.read_file(path, node) {
            Ok(()) => {
                if meta.nlink() > 1 {
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

    fn read_file(&mut self, path: &Path, node: &mut Node) -> Result<(), ReadError> {
        // O_NOFOLLOW: never read through a symlink swapped in after the walk saw a file;
        // O_NONBLOCK: never hang on a FIFO swapped in likewise.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let before = file.metadata()?;
        if !before.is_file() {
            return Err(io::Error::other(
                "changed from a regular file to another type during backup",
            )
            .into());
        }
        node.content.clear();
        let chunker = self.chunker;
        let mut content = Vec::new();
        let read = if before.len() < chunker.params().min_size as u64 {
            let mut buf = Vec::with_capacity(before.len() as usize);
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
        let after = file.metadata()?;
        if read != before.len()
            || after.len() != before.len()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.mtime() != before.mtime()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec()
        {
            let p = path.to_string_lossy().into_owned();
            tracing::warn!(path = %p, "file changed while it was read; the snapshot holds the bytes read");
            self.summary.changed_during_read.push(p);
        }
        node.content = content;
        node.size = read;
        node.mtime_ns = after.mtime() * 1_000_000_000 + after.mtime_nsec();
        node.ctime_ns = after.ctime() * 1_000_000_000 + after.ctime_nsec();
        Ok(())
    }

    /// Hashes a chunk and queues it for sealing if the repository lacks it.
    fn chunk(&mut self, data: Bytes) -> Result<ChunkId, ReadError> {
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

fn kind_of(meta: &Metadata) -> NodeKind {
    let t = meta.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else if t.is_fifo() {
        NodeKind::Fifo
    } else if t.is_socket() {
        NodeKind::Socket
    } else if t.is_char_device() {
        NodeKind::CharDevice
    } else if t.is_block_device() {
        NodeKind::BlockDevice
    } else {
        NodeKind::File
    }
}

/// A node carrying everything the metadata says.
pub(crate) fn node_from(name: Vec<u8>, kind: NodeKind, meta: &Metadata) -> Node {
    let mut n = Node::new(name, kind);
    n.mode = meta.mode();
    n.uid = meta.uid();
    n.gid = meta.gid();
    n.size = if matches!(kind, NodeKind::File | NodeKind::Symlink) {
        meta.size()
    } else {
        0
    };
    n.mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    n.ctime_ns = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
    n.inode = meta.ino();
    n.device = meta.dev();
    n.links = meta.nlink();
    n.rdev = if matches!(kind, NodeKind::CharDevice | NodeKind::BlockDevice) {
        meta.rdev()
    } else {
        0
    };
    n
}
