//! Snapshots (`snapshots/<id>`): the root of one backup.
//!
//! A snapshot is written last, after every pack and index it depends on is durable, so a
//! visible snapshot is always complete.

use serde::{Deserialize, Serialize};

use crate::id::{SnapshotId, TreeId};
use crate::record::{ObjectKind, ObjectRecord};

/// A path that could not be backed up, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathError {
    /// Path (lossy UTF-8).
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// Counters describing what a backup did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose metadata differed from the parent, so they were read again.
    pub files_changed: u64,
    /// Files taken from the parent without reading.
    pub files_unchanged: u64,
    /// Directories not in the parent.
    pub dirs_new: u64,
    /// Directories whose tree differs from the parent's.
    pub dirs_changed: u64,
    /// Directories identical to the parent's.
    pub dirs_unchanged: u64,
    /// Total size of the files in the snapshot.
    pub total_bytes: u64,
    /// File bytes actually read.
    pub bytes_read: u64,
    /// Plaintext bytes of blobs new to the repository.
    pub bytes_added: u64,
    /// Stored (compressed + encrypted) bytes of those blobs.
    pub bytes_stored: u64,
    /// Blobs new to the repository.
    pub blobs_added: u64,
    /// Paths that could not be read (the backup still completed).
    pub errors: Vec<PathError>,
    /// Files whose size or times changed while they were being read.
    pub changed_during_read: Vec<String>,
    /// Backup start, nanoseconds since the Unix epoch.
    pub started_ns: i64,
    /// Backup end, nanoseconds since the Unix epoch.
    pub finished_ns: i64,
}

/// The snapshot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, nanoseconds since the Unix epoch (UTC).
    pub time_ns: i64,
    /// Host (or Kubernetes node) that took it.
    pub hostname: String,
    /// Source paths as given.
    pub paths: Vec<String>,
    /// `key=value` or plain tags, sorted.
    pub tags: Vec<String>,
    /// Snapshot used to skip unchanged files, if any.
    pub parent: Option<SnapshotId>,
    /// Root directory tree.
    pub tree: TreeId,
    /// podvault version that wrote it.
    pub program_version: String,
    /// What the backup did.
    pub summary: Summary,
}

crate::postcard_record!(Snapshot, "snapshot", 1);

impl ObjectRecord for Snapshot {
    const KIND: ObjectKind = ObjectKind::Snapshot;
    type Id = crate::id::SnapshotId;
}

impl Snapshot {
    /// Snapshot time as a UTC date-time.
    pub fn time(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_nanos(self.time_ns)
    }

    /// True when the snapshot carries `tag` (exact match).
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Value of a `key=value` tag.
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn encoding_is_stable() {
        let s = Snapshot {
            time_ns: 1_700_000_000_000_000_000,
            hostname: "node-a".into(),
            paths: vec!["/data".into()],
            tags: vec!["namespace=shop".into(), "volume=data".into()],
            parent: None,
            tree: TreeId([9; 32]),
            program_version: "0.1.0".into(),
            summary: Summary {
                files_new: 2,
                total_bytes: 10,
                errors: vec![PathError {
                    path: "/data/x".into(),
                    message: "permission denied".into(),
                }],
                ..Summary::default()
            },
        };
        insta::assert_snapshot!(hex::encode(s.encode()));
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        assert_eq!(s.tag_value("volume"), Some("data"));
        assert_eq!(s.tag_value("vol"), None);
        assert!(s.has_tag("namespace=shop"));
    }
}
