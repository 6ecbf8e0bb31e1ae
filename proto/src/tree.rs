//! Directory trees: one tree blob per directory, entries sorted by name.
//!
//! Trees are blobs (stored encrypted inside tree packs) whose id is the keyed hash of the
//! encoded record, so an unchanged directory encodes to the same bytes and deduplicates.
//! Names are raw bytes: non-UTF-8 names round-trip exactly. A name is a single path
//! component; the restorer rejects anything else (`/`, `.`, `..`, empty, NUL).

use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, TreeId};

/// What a tree entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// Regular file with content chunks.
    File,
    /// Directory with a subtree.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Named pipe (metadata only).
    Fifo,
    /// Unix socket (metadata only; not recreated on restore).
    Socket,
    /// Character device (metadata only; recreated when restoring as root).
    CharDevice,
    /// Block device (metadata only; recreated when restoring as root).
    BlockDevice,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name, raw bytes.
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// Entry type.
    pub kind: NodeKind,
    /// Permission bits and file-type bits as in `st_mode`.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes (files) or target length (symlinks).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number on the source file system.
    pub inode: u64,
    /// Device id of the source file system.
    pub device: u64,
    /// Hard-link count; entries with `links > 1` sharing (device, inode) are one file.
    pub links: u64,
    /// Device number for device nodes.
    pub rdev: u64,
    /// Symlink target, raw bytes.
    #[serde(with = "serde_bytes")]
    pub symlink_target: Vec<u8>,
    /// File content, in order.
    pub content: Vec<ChunkId>,
    /// Subtree of a directory.
    pub subtree: Option<TreeId>,
}

impl Node {
    /// A node of the given kind and name with every other field zero.
    pub fn new(name: Vec<u8>, kind: NodeKind) -> Self {
        Node {
            name,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            device: 0,
            links: 0,
            rdev: 0,
            symlink_target: Vec::new(),
            content: Vec::new(),
            subtree: None,
        }
    }

    /// Name for display (lossy for non-UTF-8 names).
    pub fn display_name(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }

    /// True when `name` is a single, safe path component.
    pub fn name_is_safe(&self) -> bool {
        let n = self.name.as_slice();
        !n.is_empty() && n != b"." && n != b".." && !n.contains(&b'/') && !n.contains(&0)
    }
}

/// A directory listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Entries sorted by name bytes, names unique.
    pub nodes: Vec<Node>,
}

crate::postcard_record!(Tree, "tree", 1);

impl Tree {
    /// Finds an entry by name (binary search; entries are sorted).
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// True when names are strictly increasing (sorted and unique).
    pub fn is_sorted(&self) -> bool {
        self.nodes.windows(2).all(|w| w[0].name < w[1].name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    fn sample() -> Tree {
        let mut file = Node::new(b"a\xffb.txt".to_vec(), NodeKind::File);
        file.mode = 0o100644;
        file.size = 5;
        file.mtime_ns = 1_700_000_000_123_456_789;
        file.content = vec![ChunkId([1; 32])];
        let mut dir = Node::new(b"sub".to_vec(), NodeKind::Dir);
        dir.mode = 0o40755;
        dir.subtree = Some(TreeId([2; 32]));
        let mut link = Node::new(b"z".to_vec(), NodeKind::Symlink);
        link.symlink_target = b"../x".to_vec();
        Tree {
            nodes: vec![file, dir, link],
        }
    }

    #[test]
    fn encoding_is_stable() {
        insta::assert_snapshot!(hex::encode(sample().encode()));
    }

    #[test]
    fn round_trip_find_and_name_safety() {
        let t = sample();
        assert!(t.is_sorted());
        assert_eq!(Tree::decode(&t.encode()).unwrap(), t);
        assert_eq!(t.find(b"sub").unwrap().kind, NodeKind::Dir);
        assert!(t.find(b"nope").is_none());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            assert!(!Node::new(bad.to_vec(), NodeKind::File).name_is_safe());
        }
        assert!(Node::new(b"..a".to_vec(), NodeKind::File).name_is_safe());
    }
}
