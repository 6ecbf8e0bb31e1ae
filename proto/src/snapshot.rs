//! Snapshots (`snapshots/<id>`): the root of one backup.
//!
//! A snapshot is written last, after every pack and index it depends on is durable, so a
//! visible snapshot is always complete.
//!
//! ## Identity
//!
//! A snapshot taken by the node agent records what it is of (namespace, series, pod, pod uid,
//! claim, volume or dump, node, and the PodVolumeBackup that asked for it) in
//! [`Snapshot::identity`], a field of its own. The agent fills it from the objects it read
//! from the API server; nothing a user writes (tags, PodVolumeBackup specs, annotations, the
//! CLI's `--tag`) reaches it, so tags can never make a snapshot look like another series'.
//! Every decision that selects snapshots by what they are of (parent of an incremental
//! backup, retention, `latest` for a restore, namespace isolation) reads the identity only.
//!
//! Format versions: version 2 added the identity. Version-1 snapshots (written before it)
//! are still read: their identity is derived from their tags ([`Identity::from_legacy_tags`]),
//! where the agent of that time always wrote `series=`, `namespace=`, `pod=`, `pod-uid=`,
//! `pvc=`/`volume=` or `dump=`, and `node=`. A user's tags could only be added next to those,
//! never remove them, so a version-1 snapshot whose tags name two series, two namespaces, or
//! two values of any identity key was forged by its author and has no identity at all
//! (foreign to every series). Builds that read only version 1 refuse version-2 snapshots with
//! an "unknown format version" error rather than misreading them.

use serde::{Deserialize, Serialize};

use crate::id::{SnapshotId, TreeId};
use crate::record::{
    check_version_in, decode_postcard_body, DecodeError, ObjectKind, ObjectRecord, Record,
};

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
    /// What the snapshot is of, when the node agent took it (see the module docs); `None`
    /// for CLI backups and for version-1 snapshots whose tags are ambiguous.
    pub identity: Option<Identity>,
}

/// Whether an agent snapshot holds a volume's files or a logical dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IdentityKind {
    /// The files of a pod volume.
    Volume,
    /// The output of a pod's backup command, stored as one file.
    Dump,
}

impl IdentityKind {
    /// `volume` or `dump`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Volume => "volume",
            IdentityKind::Dump => "dump",
        }
    }
}

/// What an agent snapshot is of. Written by the node agent alone, from the API server's
/// objects; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Volume files or a dump.
    pub kind: IdentityKind,
    /// Namespace of the pod (and of the series).
    pub namespace: String,
    /// Series key: `<namespace>/pod/<pod>/<volume>` or `<namespace>/pvc/<claim>`.
    pub series: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub pod_uid: String,
    /// PersistentVolumeClaim behind the volume, if claim-backed.
    pub pvc: Option<String>,
    /// Volume name in the pod spec (volume snapshots).
    pub volume: Option<String>,
    /// Dump file name (dump snapshots).
    pub dump: Option<String>,
    /// Node whose agent took it.
    pub node: String,
    /// Uid of the PodVolumeBackup that asked for it (`None` in version-1 snapshots).
    pub operation_uid: Option<String>,
    /// True when derived from a version-1 snapshot's tags rather than recorded.
    #[serde(skip)]
    pub legacy: bool,
}

/// Tag keys (`key=value`) that version-1 snapshots used for their identity. Tags with these
/// keys are not identity in version-2 snapshots; the agent refuses them in user tags so that
/// no new snapshot carries look-alikes.
pub const LEGACY_IDENTITY_KEYS: [&str; 8] = [
    "series",
    "namespace",
    "pod",
    "pod-uid",
    "pvc",
    "volume",
    "node",
    "dump",
];

impl Identity {
    /// True when the series key belongs to the namespace and parses as a series
    /// (`<ns>/pod/<pod>/<volume>` or `<ns>/pvc/<claim>`, no empty part).
    pub fn is_consistent(&self) -> bool {
        let Some(rest) = self
            .series
            .strip_prefix(self.namespace.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        !self.namespace.is_empty()
            && !parts.iter().any(|p| p.is_empty())
            && matches!(parts.as_slice(), ["pod", _, _] | ["pvc", _])
    }

    /// The identity a version-1 snapshot's tags give, if they give exactly one (see the
    /// module docs): every identity key has at most one value, `series=` and `namespace=`
    /// are present and agree.
    pub fn from_legacy_tags(tags: &[String]) -> Option<Identity> {
        let mut values: [Option<&str>; 8] = [None; 8];
        for tag in tags {
            let Some((key, value)) = tag.split_once('=') else {
                continue;
            };
            let Some(i) = LEGACY_IDENTITY_KEYS.iter().position(|k| *k == key) else {
                continue;
            };
            match values[i] {
                Some(seen) if seen != value => return None,
                _ => values[i] = Some(value),
            }
        }
        let [series, namespace, pod, pod_uid, pvc, volume, node, dump] = values;
        let own = |v: Option<&str>| v.map(str::to_string);
        let identity = Identity {
            kind: if dump.is_some() {
                IdentityKind::Dump
            } else {
                IdentityKind::Volume
            },
            namespace: namespace?.to_string(),
            series: series?.to_string(),
            pod: pod.unwrap_or_default().to_string(),
            pod_uid: pod_uid.unwrap_or_default().to_string(),
            pvc: own(pvc),
            volume: own(volume),
            dump: own(dump),
            node: node.unwrap_or_default().to_string(),
            operation_uid: None,
            legacy: true,
        };
        identity.is_consistent().then_some(identity)
    }
}

/// The version-1 body: everything but the identity.
#[derive(Deserialize)]
struct SnapshotV1 {
    time_ns: i64,
    hostname: String,
    paths: Vec<String>,
    tags: Vec<String>,
    parent: Option<SnapshotId>,
    tree: TreeId,
    program_version: String,
    summary: Summary,
}

impl Record for Snapshot {
    const NAME: &'static str = "snapshot";
    const VERSION: u16 = 2;

    fn encode(&self) -> Vec<u8> {
        crate::record::encode_postcard(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (version, body) = check_version_in::<Self>(bytes, &[1, 2])?;
        if version == 2 {
            return decode_postcard_body(Self::NAME, body);
        }
        let v1: SnapshotV1 = decode_postcard_body(Self::NAME, body)?;
        Ok(Snapshot {
            identity: Identity::from_legacy_tags(&v1.tags),
            time_ns: v1.time_ns,
            hostname: v1.hostname,
            paths: v1.paths,
            tags: v1.tags,
            parent: v1.parent,
            tree: v1.tree,
            program_version: v1.program_version,
            summary: v1.summary,
        })
    }
}

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

    /// The agent-recorded identity, when it is consistent (a series key of its own
    /// namespace); `None` makes the snapshot foreign to every series and namespace.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref().filter(|i| i.is_consistent())
    }

    /// The series key of the identity (see [`Snapshot::identity`]).
    pub fn series(&self) -> Option<&str> {
        self.identity().map(|i| i.series.as_str())
    }

    /// The namespace of the identity (see [`Snapshot::identity`]).
    pub fn namespace(&self) -> Option<&str> {
        self.identity().map(|i| i.namespace.as_str())
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

    fn sample(identity: Option<Identity>) -> Snapshot {
        Snapshot {
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
            identity,
        }
    }

    fn shop_identity() -> Identity {
        Identity {
            kind: IdentityKind::Volume,
            namespace: "shop".into(),
            series: "shop/pvc/data-web-0".into(),
            pod: "web-0".into(),
            pod_uid: "1111-2222".into(),
            pvc: Some("data-web-0".into()),
            volume: Some("data".into()),
            dump: None,
            node: "node-a".into(),
            operation_uid: Some("3333-4444".into()),
            legacy: false,
        }
    }

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn encoding_is_stable() {
        let s = sample(Some(shop_identity()));
        insta::assert_snapshot!(hex::encode(s.encode()));
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
        assert_eq!(s.tag_value("volume"), Some("data"));
        assert_eq!(s.tag_value("vol"), None);
        assert!(s.has_tag("namespace=shop"));
        assert_eq!(s.series(), Some("shop/pvc/data-web-0"));
        assert_eq!(s.namespace(), Some("shop"));
        // The `namespace=shop` tag is a tag, not an identity.
        assert_eq!(sample(None).namespace(), None);
    }

    /// A version-1 snapshot as written before the identity existed (the bytes pinned by the
    /// version-1 encoding test): still read, its identity derived from its tags.
    #[test]
    fn version_1_is_read_with_an_identity_from_its_tags() {
        const V1: &str = "01008080d0e2c6bfce972f066e6f64652d6101052f64617461020e6e616d6573706163653d73686f700b766f6c756d653d6461746100090909090909090909090909090909090909090909090909090909090909090905302e312e300200000000000a0000000001072f646174612f78117065726d697373696f6e2064656e696564000000";
        let s = Snapshot::decode(&hex::decode(V1).unwrap()).unwrap();
        // Its tags have a namespace but no series: no identity.
        assert_eq!(s.identity, None);
        assert_eq!(s.tags, tags(&["namespace=shop", "volume=data"]));
        assert_eq!(s.summary.files_new, 2);

        let mut v1 = 1u16.to_le_bytes().to_vec();
        let mut legacy = sample(None);
        legacy.tags = tags(&[
            "node=node-a",
            "namespace=shop",
            "pod-uid=1111-2222",
            "pod=web-0",
            "pvc=data-web-0",
            "series=shop/pvc/data-web-0",
            "volume=data",
            "weekly",
        ]);
        let body = postcard::to_allocvec(&(
            legacy.time_ns,
            &legacy.hostname,
            &legacy.paths,
            &legacy.tags,
            legacy.parent,
            legacy.tree,
            &legacy.program_version,
            &legacy.summary,
        ))
        .unwrap();
        v1.extend(body);
        let read = Snapshot::decode(&v1).unwrap();
        let id = read.identity().unwrap();
        assert!(id.legacy);
        assert_eq!(id.series, "shop/pvc/data-web-0");
        assert_eq!(id.namespace, "shop");
        assert_eq!(id.pod_uid, "1111-2222");
        assert_eq!(id.kind, IdentityKind::Volume);
        assert_eq!(id.operation_uid, None);
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = sample(None).encode();
        bytes[0] = 3;
        let err = Snapshot::decode(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "snapshot has format version 3; this podvault reads version 2"
        );
    }

    #[test]
    fn legacy_tags_with_two_values_of_any_identity_key_are_foreign() {
        let own = [
            "series=attacker/pod/app/data",
            "namespace=attacker",
            "pod=app",
            "pod-uid=u-att",
            "volume=data",
            "node=n",
        ];
        assert_eq!(
            Identity::from_legacy_tags(&tags(&own)).unwrap().series,
            "attacker/pod/app/data"
        );
        // The forged look-alikes of the tenant attack: appended to the agent's own tags.
        for forged in [
            "series=victim/pod/app/data",
            "namespace=victim",
            "pod-uid=u-victim",
            "pod=other",
            "node=m",
            "volume=logs",
            "pvc=x",
        ] {
            let mut t = tags(&own);
            t.push(forged.to_string());
            t.sort();
            let id = Identity::from_legacy_tags(&t);
            if forged.starts_with("pvc=") {
                // A claim the series does not name: still one value per key.
                assert!(id.is_some());
            } else {
                assert_eq!(id, None, "{forged}");
            }
        }
        // The same tag twice is one value.
        let mut t = tags(&own);
        t.push("namespace=attacker".into());
        assert!(Identity::from_legacy_tags(&t).is_some());
        // A series of another namespace, a missing namespace, a malformed key.
        for bad in [
            &["series=victim/pod/app/data", "namespace=attacker"][..],
            &["series=attacker/pod/app/data"][..],
            &["namespace=attacker"][..],
            &["series=attacker/pod/app", "namespace=attacker"][..],
            &["series=attacker//x", "namespace=attacker"][..],
            &["series=attacker/pvc/c/d", "namespace=attacker"][..],
        ] {
            assert_eq!(Identity::from_legacy_tags(&tags(bad)), None, "{bad:?}");
        }
        let dump = Identity::from_legacy_tags(&tags(&[
            "series=db/pod/pg-0/db.sql",
            "namespace=db",
            "dump=db.sql",
        ]))
        .unwrap();
        assert_eq!(dump.kind, IdentityKind::Dump);
    }

    #[test]
    fn an_inconsistent_recorded_identity_is_no_identity() {
        let mut id = shop_identity();
        id.series = "bank/pvc/data-web-0".into();
        let s = sample(Some(id));
        assert!(s.identity.is_some());
        assert_eq!(s.identity(), None);
        assert_eq!(s.series(), None);
        assert_eq!(s.namespace(), None);
    }
}
