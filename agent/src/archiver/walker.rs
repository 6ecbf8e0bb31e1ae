//! The walking thread: metadata, change detection, reading, chunking, hashing, dedup, trees.

use std::collections::{HashMap, HashSet};
use std::fs::{Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use crossbeam_channel::Sender;
use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::{PathError, Summary};
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, ChunkId, PackId, Record, TreeId};

use super::{Excludes, Job, PackSink};
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
    pub tx: Option<Sender<Job>>,
    pub sink: &'a PackSink,
    pub summary: Summary,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    pub excludes: &'a Excludes,
    pub hardlinks: HashMap<(u64, u64), (u64, Vec<ChunkId>)>,
    pub tree_encoder: BlobEncoder,
    /// Packs this backup deduplicated against: the snapshot depends on them.
    pub used_packs: HashSet<PackId>,
}

/// A directory being assembled.
struct Frame {
    node: Option<Node>,
    nodes: Vec<Node>,
    parent: Option<Tree>,
    parent_subtree: Option<TreeId>,
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
        let mut base = Frame {
            node: None,
            nodes: Vec::new(),
            parent,
            parent_subtree: None,
        };
        for root in roots {
            base = self.walk(root, base, if single_dir { 1 } else { 0 })?;
        }
        self.close(base)
    }

    fn walk(&mut self, root: &Path, base: Frame, first_depth: usize) -> Result<Frame> {
        let walk = walkdir::WalkDir::new(root)
            .follow_links(false)
            .min_depth(first_depth)
            .sort_by(|a, b| a.file_name().cmp(b.file_name()));
        let excludes = self.excludes;
        let entries = walk.into_iter().filter_entry(|e| {
            e.depth() == 0 || !excludes.matches(e.path().strip_prefix(root).unwrap_or(e.path()))
        });
        let mut stack = vec![base];
        for entry in entries {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(Error::Canceled);
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_owned();
                    self.record_error(&path, &e.to_string());
                    continue;
                }
            };
            let depth = entry.depth() - first_depth;
            while stack.len() > depth + 1 {
                self.pop(&mut stack)?;
            }
            let path = entry.path();
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    self.record_error(path, &e.to_string());
                    continue;
                }
            };
            let name = match path.file_name() {
                Some(n) => n.as_bytes().to_vec(),
                None => b"root".to_vec(),
            };
            let top = stack.last().expect("the base frame is never popped here");
            let previous = top.parent.as_ref().and_then(|t| t.find(&name)).cloned();
            let kind = kind_of(&meta);
            let mut node = node_from(name, kind, &meta);
            if kind == NodeKind::Dir {
                let parent_subtree = previous
                    .as_ref()
                    .and_then(|p| (p.kind == NodeKind::Dir).then_some(p.subtree).flatten());
                let parent = match parent_subtree {
                    Some(id) => Some(self.repo.load_tree(self.index, &id)?),
                    None => None,
                };
                if previous.is_none() {
                    self.summary.dirs_new += 1;
                }
                stack.push(Frame {
                    node: Some(node),
                    nodes: Vec::new(),
                    parent,
                    parent_subtree,
                });
                continue;
            }
            match kind {
                NodeKind::File if !self.file(path, &meta, &mut node, previous.as_ref())? => {
                    continue
                }
                NodeKind::Symlink => match std::fs::read_link(path) {
                    Ok(t) => node.symlink_target = t.as_os_str().as_bytes().to_vec(),
                    Err(e) => {
                        self.record_error(path, &e.to_string());
                        continue;
                    }
                },
                _ => {}
            }
            stack.last_mut().expect("base frame").nodes.push(node);
        }
        while stack.len() > 1 {
            self.pop(&mut stack)?;
        }
        Ok(stack.pop().expect("base frame"))
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
            if tx
                .send(Job {
                    ty: BlobType::Data,
                    id,
                    data,
                })
                .is_err()
            {
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
