//! Custom resources of the `podvault.dev/v1alpha1` API group.
//!
//! Three kinds:
//! - [`PodVolumeBackup`] (`pvb`, namespaced): back up one volume of one pod, once.
//! - [`PodVolumeRestore`] (`pvr`, namespaced): restore one snapshot into one pod's volume.
//! - [`BackupRepository`] (`bkrepo`, cluster-scoped): where a repository lives and which
//!   Secrets hold its password and S3 credentials.
//!
//! PVBs and PVRs live in the namespace of the pod they act on. Their `spec` is written by users
//! or the controller and never changed by the agent; their `status` is written only by the agent
//! that claimed them (claim = a status update from [`Phase::New`] to [`Phase::InProgress`] with a
//! `resourceVersion` precondition, so exactly one agent runs each object). An object with no
//! status at all is [`Phase::New`]. Finished phases ([`Phase::Completed`], [`Phase::Failed`],
//! [`Phase::Canceled`]) are final: nothing moves an object out of them.
//!
//! Timestamps are `meta/v1` `Time` (RFC 3339, UTC) so `kubectl` and other tools read them as
//! usual; conditions are standard `meta/v1` `Condition`s keyed by `type`.

// Repeated `printcolumn(type_ = "string", …)` arguments are distinct columns, not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every podvault resource.
pub const GROUP: &str = "podvault.dev";
/// API version of every podvault resource.
pub const VERSION: &str = "v1alpha1";

/// Where an operation (backup or restore) is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Created, not yet claimed by an agent (also what a missing status means).
    #[default]
    New,
    /// Claimed by the agent on the pod's node and running.
    InProgress,
    /// Finished successfully.
    Completed,
    /// Finished with an error; `status.message` says which.
    Failed,
    /// Stopped because `spec.cancel` was set.
    Canceled,
}

impl Phase {
    /// True for the final phases (Completed, Failed, Canceled).
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Completed | Phase::Failed | Phase::Canceled)
    }

    /// The phase as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::InProgress => "InProgress",
            Phase::Completed => "Completed",
            Phase::Failed => "Failed",
            Phase::Canceled => "Canceled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far an operation has got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Bytes processed so far.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes to process in total (0 while still counting).
    #[serde(default)]
    pub bytes_total: u64,
    /// Files processed so far.
    #[serde(default)]
    pub files_done: u64,
    /// Files to process in total (0 while still counting).
    #[serde(default)]
    pub files_total: u64,
    /// `bytes_done / bytes_total` in percent, 0–100 (the `Progress` printer column).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub percent: u32,
}

impl Progress {
    /// Builds a progress record and computes `percent` (clamped to 0–100; 0 when the total is
    /// unknown, 100 when both are 0 and files are all done).
    pub fn new(bytes_done: u64, bytes_total: u64, files_done: u64, files_total: u64) -> Self {
        let percent = if bytes_total > 0 {
            ((u128::from(bytes_done) * 100) / u128::from(bytes_total)).min(100) as u32
        } else if files_total > 0 && files_done >= files_total {
            100
        } else {
            0
        };
        Progress {
            bytes_done,
            bytes_total,
            files_done,
            files_total,
            percent,
        }
    }
}

/// Desired state of a [`PodVolumeBackup`]: back up `volume` of `pod` once.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.dev",
    version = "v1alpha1",
    kind = "PodVolumeBackup",
    plural = "podvolumebackups",
    shortname = "pvb",
    category = "podvault",
    namespaced,
    status = "OperationStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Backs up one volume of one pod (in this namespace) into a podvault repository, once.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.pod"),
    printcolumn(name = "Volume", type_ = "string", json_path = ".spec.volume"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent",
        description = "percent of bytes done"
    ),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshot"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    /// Name of the pod, in this object's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// Name of the volume in the pod's `spec.volumes`; with `dump`, the name the dump gets
    /// in the snapshot (and its series).
    #[schemars(length(min = 1, max = 255))]
    pub volume: String,
    /// Back up the output of the pod's `backup.podvault.dev/backup-command` (a logical
    /// dump, run in its container through `pods/exec`) as the one file `volume` of a snapshot,
    /// instead of a volume's files. Needs an agent running with `--allow-exec`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dump: bool,
    /// BackupRepository to write to; the agent's default repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Extra tags recorded on the snapshot. Keys reserved for the snapshot's identity
    /// (`series`, `namespace`, `pod`, `pod-uid`, `pvc`, `volume`, `node`, `dump`, `kind`,
    /// `podvault.dev/…`) are refused (`invalid_spec`): the agent records the identity itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Path globs inside the volume not to back up (e.g. `*.tmp`, `cache/**`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Retention policy applied to the series after a successful backup, in the annotation
    /// format (`last=3,daily=7,…`); no retention when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<String>,
    /// Set to true to stop the backup; an unfinished backup then ends as Canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// How a PodVolumeRestore feeds a logical dump back to the application: into the restore
/// command the pod declares in its `backup.podvault.dev/restore-command` annotation (container
/// `backup.podvault.dev/restore-command-container`). The command is the pod owner's to
/// declare, never the PodVolumeRestore's: whoever may create a PodVolumeRestore need not be
/// allowed to run commands in the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DumpRestore {
    /// Not accepted (a restore that sets it fails with `invalid_spec`): declare the command
    /// on the pod with the `backup.podvault.dev/restore-command` annotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Not accepted (a restore that sets it fails with `invalid_spec`): the pod's
    /// `backup.podvault.dev/restore-command-container` annotation names the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// How long the command may run (`30m`, `2h`); the pod's
    /// `backup.podvault.dev/restore-command-timeout`, else 1 h, when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Observed state of a [`PodVolumeBackup`] (the status both operation kinds share).
pub type PodVolumeBackupStatus = OperationStatus;

/// Observed state of a PodVolumeBackup or PodVolumeRestore, written only by the agent that
/// claimed it. Both kinds share this one type; fields that belong to one kind say so.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    /// Where the operation is in its life; New when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Node whose agent claimed the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Identity of the agent instance (its pod name) that claimed the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Volume directory on the node that was read (backup) or written (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// Backups: series the snapshot belongs to (`<namespace>/pod/<pod>/<volume>` or
    /// `<namespace>/pvc/<claim>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    /// Id of the snapshot written (backup, on Completed) or restored (restore; resolved when
    /// `latest` was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// The first 8 hex digits of `snapshotId`, as `podvault snapshots` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Bytes and files done so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Backups: bytes of new (deduplicated, compressed) data added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<u64>,
    /// Restores: files written into the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_restored: Option<u64>,
    /// When the agent claimed the operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When the operation reached a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<Time>,
    /// Human-readable detail; on Failed, the precise error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// On Failed or Canceled: a stable, machine-readable reason (`pod_not_found`,
    /// `wrong_password`, `deleted`, …), the same as the agent's error metric label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Standard conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl OperationStatus {
    /// Sets `snapshotId` and its short form together.
    pub fn set_snapshot(&mut self, id: &str) {
        self.snapshot_id = Some(id.to_string());
        self.snapshot = Some(id.chars().take(8).collect());
    }
}

/// How a restore treats files already in the target volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RestoreMode {
    /// Write the snapshot's files over the volume; keep files the snapshot does not have.
    #[default]
    Merge,
    /// Like Merge, then delete files (under the included paths) the snapshot does not have.
    Clean,
}

/// Which series "latest" refers to. Every field defaults to the restore's own target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesSelector {
    /// Namespace the series was backed up in; the PVR's namespace when absent. Another namespace
    /// is allowed only when the BackupRepository sets `allowCrossNamespaceRestore`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod of a pod series (volumes that are not PVCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Volume of a pod series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// PersistentVolumeClaim of a PVC series (takes precedence over pod/volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
}

/// The snapshot to restore: exactly one of `id` or `latest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSelector {
    /// Snapshot id (full hex id or a unique prefix of at least 8 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{8,64}$"))]
    pub id: Option<String>,
    /// The newest snapshot of a series (`latest: {}` = the target's own series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<SeriesSelector>,
}

impl SnapshotSelector {
    /// Checks that exactly one of `id` and `latest` is set.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.id, &self.latest) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err("spec.snapshot: set either id or latest, not both".into()),
            (None, None) => Err("spec.snapshot: set id or latest".into()),
        }
    }
}

/// Desired state of a [`PodVolumeRestore`]: restore a snapshot into `volume` of `pod`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.dev",
    version = "v1alpha1",
    kind = "PodVolumeRestore",
    plural = "podvolumerestores",
    shortname = "pvr",
    category = "podvault",
    namespaced,
    status = "OperationStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Restores a podvault snapshot into one volume of one pod (in this namespace).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pod", type_ = "string", json_path = ".spec.pod"),
    printcolumn(name = "Volume", type_ = "string", json_path = ".spec.volume"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent",
        description = "percent of bytes done"
    ),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshot"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreSpec {
    /// Name of the target pod, in this object's namespace (a running pod, or a new pod held by
    /// a `podvault restore-wait` init container).
    #[schemars(length(min = 1, max = 253))]
    pub pod: String,
    /// Name of the target volume in the pod's `spec.volumes`; with `dump`, the dump's name.
    #[schemars(length(min = 1, max = 255))]
    pub volume: String,
    /// The snapshot to restore.
    pub snapshot: SnapshotSelector,
    /// BackupRepository to read from; the agent's default repository when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Restore only these paths (relative to the volume root); everything when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_paths: Vec<String>,
    /// Merge into the volume (default) or also delete files the snapshot does not have.
    #[serde(default)]
    pub mode: RestoreMode,
    /// Stream a logical dump into a command in the pod instead of restoring files: `volume`
    /// is then the dump's file name in the snapshot (and, with `snapshot.latest`, its series).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpRestore>,
    /// Set to true to stop the restore; an unfinished restore then ends as Canceled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
}

/// Observed state of a [`PodVolumeRestore`] (the status both operation kinds share).
pub type PodVolumeRestoreStatus = OperationStatus;

/// What PodVolumeBackups and PodVolumeRestores share: the pod and volume they act on, the
/// repository, the cancel flag and the status. Agent and controller build on it.
pub trait VolumeOperation {
    /// The kind (`PodVolumeBackup`, `PodVolumeRestore`), for messages.
    const KIND_NAME: &'static str;
    /// `spec.pod`.
    fn pod_name(&self) -> &str;
    /// `spec.volume`.
    fn volume(&self) -> &str;
    /// `spec.repository`.
    fn repository(&self) -> Option<&str>;
    /// `spec.cancel`.
    fn cancel_requested(&self) -> bool;
    /// The status (default when absent).
    fn operation_status(&self) -> OperationStatus;
    /// A copy whose status is `status`.
    fn with_status(&self, status: OperationStatus) -> Self;
    /// `status.phase` (New when absent).
    fn phase(&self) -> Phase {
        self.operation_status().phase.unwrap_or_default()
    }
}

macro_rules! volume_operation {
    ($kind:ty, $name:literal) => {
        impl VolumeOperation for $kind {
            const KIND_NAME: &'static str = $name;
            fn pod_name(&self) -> &str {
                &self.spec.pod
            }
            fn volume(&self) -> &str {
                &self.spec.volume
            }
            fn repository(&self) -> Option<&str> {
                self.spec.repository.as_deref()
            }
            fn cancel_requested(&self) -> bool {
                self.spec.cancel
            }
            fn operation_status(&self) -> OperationStatus {
                self.status.clone().unwrap_or_default()
            }
            fn with_status(&self, status: OperationStatus) -> Self {
                let mut o = self.clone();
                o.status = Some(status);
                o
            }
        }
    };
}

volume_operation!(PodVolumeBackup, "PodVolumeBackup");
volume_operation!(PodVolumeRestore, "PodVolumeRestore");

/// An S3 (or S3-compatible) location.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Backend {
    /// Endpoint URL (e.g. `https://minio.storage:9000`); AWS when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Bucket name (must exist).
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region; `us-east-1` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Use path-style requests (`endpoint/bucket/key`), as most self-hosted servers need.
    #[serde(default)]
    pub path_style: bool,
    /// PEM CA certificates trusted for an HTTPS endpoint besides the system's roots (a
    /// private CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A repository on a filesystem the agent can reach (e.g. an NFS mount in the agent pod).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FsBackend {
    /// Absolute path inside the agent container.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
}

/// Where a repository's objects are stored: exactly one of `s3` or `fs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryBackend {
    /// S3-compatible object store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Backend>,
    /// Filesystem path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsBackend>,
}

/// A key inside a Secret in the agent's own namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name (in the namespace podvault runs in).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A Secret holding S3 credentials, in the agent's own namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsRef {
    /// Secret name (in the namespace podvault runs in).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the access key id; `AWS_ACCESS_KEY_ID` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_key: Option<String>,
    /// Key holding the secret access key; `AWS_SECRET_ACCESS_KEY` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_key: Option<String>,
}

/// Which namespaces may use a BackupRepository: those named, and those whose labels match
/// the selector. Neither set allows none; `selector: {}` allows every namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllowedNamespaces {
    /// Namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces whose labels match this selector (`{}` matches every namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Desired state of a [`BackupRepository`].
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "podvault.dev",
    version = "v1alpha1",
    kind = "BackupRepository",
    plural = "backuprepositories",
    shortname = "bkrepo",
    category = "podvault",
    status = "BackupRepositoryStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A podvault repository: where it lives and which Secrets hold its password and credentials.",
    printcolumn(
        name = "Bucket",
        type_ = "string",
        json_path = ".spec.backend.s3.bucket"
    ),
    printcolumn(name = "Location", type_ = "string", json_path = ".status.location"),
    printcolumn(
        name = "Initialized",
        type_ = "boolean",
        json_path = ".status.initialized"
    ),
    printcolumn(
        name = "Last Prune",
        type_ = "date",
        json_path = ".status.maintenance.lastSuccess.prune"
    ),
    printcolumn(
        name = "Last Check",
        type_ = "date",
        json_path = ".status.maintenance.lastSuccess.check"
    ),
    printcolumn(
        name = "Last Drill",
        type_ = "date",
        json_path = ".status.maintenance.lastSuccess.drill"
    ),
    printcolumn(
        name = "Size",
        type_ = "integer",
        json_path = ".status.maintenance.sizeBytes",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositorySpec {
    /// Where the repository's objects are stored.
    pub backend: RepositoryBackend,
    /// Secret key holding the repository password.
    pub password_secret: SecretKeyRef,
    /// Secret holding S3 credentials (S3 backend only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<S3CredentialsRef>,
    /// Namespaces whose PodVolumeBackups and PodVolumeRestores may use this repository (by
    /// name, or by a label selector on the Namespace). Absent: no namespace may. The
    /// controller schedules no backup into a repository the pod's namespace may not use, and
    /// the agent refuses such operations (`repository_not_allowed`), checked again before
    /// each one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<AllowedNamespaces>,
    /// Allow PodVolumeRestores to restore snapshots taken in another namespace (of those this
    /// repository allows).
    #[serde(default)]
    pub allow_cross_namespace_restore: bool,
    /// Let restores recreate device nodes and setuid-root/setgid-root files (owners are
    /// always restored as recorded).
    /// Off by default: a snapshot's content is whatever the pod owning the volume wrote, and
    /// the agent restores as root. Only a cluster admin can set it (BackupRepositories are
    /// cluster-scoped); a PodVolumeRestore cannot, since the namespace that creates it is the
    /// one the policy protects against.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_privileged_restore: bool,
    /// Scheduled prune, check and restore drills (on by default; see [`Maintenance`]).
    #[serde(default)]
    pub maintenance: Maintenance,
}

/// Scheduled upkeep of a repository. The controller runs each kind as a Kubernetes Job in
/// its own namespace, one at a time per repository cluster-wide (a Lease per repository
/// names the Job holding it), and records the runs in the BackupRepository's status.
/// Schedules are five-field cron expressions in UTC; runs missed while no controller ran
/// are made up once, not once per missed time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Run scheduled maintenance at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Reclaiming space: `podvault prune`.
    #[serde(default)]
    pub prune: PruneMaintenance,
    /// Verifying the repository: `podvault check`, reading a rotating part of the data.
    #[serde(default)]
    pub check: CheckMaintenance,
    /// Restore drills: the latest snapshot of each series read back and verified.
    #[serde(default)]
    pub drill: DrillMaintenance,
}

fn yes() -> bool {
    true
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            enabled: true,
            prune: PruneMaintenance::default(),
            check: CheckMaintenance::default(),
            drill: DrillMaintenance::default(),
        }
    }
}

/// When and how prune runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PruneMaintenance {
    /// Cron schedule (UTC); empty: never.
    #[serde(default = "prune_schedule")]
    pub schedule: String,
    /// How long marked packs wait before deletion (`podvault prune --grace`).
    #[serde(default = "prune_grace")]
    pub grace: String,
}

fn prune_schedule() -> String {
    "0 3 * * *".into()
}

fn prune_grace() -> String {
    "24h".into()
}

impl Default for PruneMaintenance {
    fn default() -> Self {
        PruneMaintenance {
            schedule: prune_schedule(),
            grace: prune_grace(),
        }
    }
}

/// When and how check runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckMaintenance {
    /// Cron schedule (UTC); empty: never.
    #[serde(default = "check_schedule")]
    pub schedule: String,
    /// All data is read over this many runs: run k reads part (k mod N) + 1 of N
    /// (`--read-data-subset`). 0: structure only, no data read.
    #[serde(default = "check_parts")]
    pub read_data_parts: u32,
}

fn check_schedule() -> String {
    "0 5 * * *".into()
}

fn check_parts() -> u32 {
    7
}

impl Default for CheckMaintenance {
    fn default() -> Self {
        CheckMaintenance {
            schedule: check_schedule(),
            read_data_parts: check_parts(),
        }
    }
}

/// When and how restore drills run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrillMaintenance {
    /// Cron schedule (UTC); empty: never.
    #[serde(default = "drill_schedule")]
    pub schedule: String,
    /// Series drilled per run, those drilled longest ago first (every series in turn).
    #[serde(default = "drill_series")]
    pub series_per_run: u32,
    /// Bytes read per run at most; a series whose latest snapshot would pass the cap is
    /// left for a later run (reported), unless it is the run's first.
    #[serde(default = "drill_bytes")]
    pub max_bytes_per_run: u64,
}

fn drill_schedule() -> String {
    "30 4 * * *".into()
}

fn drill_series() -> u32 {
    20
}

fn drill_bytes() -> u64 {
    20 << 30
}

impl Default for DrillMaintenance {
    fn default() -> Self {
        DrillMaintenance {
            schedule: drill_schedule(),
            series_per_run: drill_series(),
            max_bytes_per_run: drill_bytes(),
        }
    }
}

/// The kinds of maintenance.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MaintenanceKind {
    /// `podvault prune`.
    Prune,
    /// `podvault check`.
    Check,
    /// Restore drills.
    Drill,
}

impl MaintenanceKind {
    /// Every kind, in the order runs are started when several are due.
    pub const ALL: [MaintenanceKind; 3] = [
        MaintenanceKind::Prune,
        MaintenanceKind::Check,
        MaintenanceKind::Drill,
    ];

    /// The lowercase name (`prune`, `check`, `drill`).
    pub fn as_str(self) -> &'static str {
        match self {
            MaintenanceKind::Prune => "prune",
            MaintenanceKind::Check => "check",
            MaintenanceKind::Drill => "drill",
        }
    }

    /// The cron schedule `m` sets for this kind.
    pub fn schedule(self, m: &Maintenance) -> &str {
        match self {
            MaintenanceKind::Prune => &m.prune.schedule,
            MaintenanceKind::Check => &m.check.schedule,
            MaintenanceKind::Drill => &m.drill.schedule,
        }
    }
}

impl std::fmt::Display for MaintenanceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MaintenanceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MaintenanceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown maintenance kind {s:?} (prune, check or drill)"))
    }
}

/// One maintenance run, as recorded in the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceRun {
    /// What ran.
    pub kind: MaintenanceKind,
    /// The Job that ran it.
    pub job: String,
    /// When it started.
    pub started: Time,
    /// When it ended (absent while running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Time>,
    /// `Running`, `Succeeded` or `Failed`.
    pub result: String,
    /// Bytes freed (prune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_freed: Option<u64>,
    /// Packs downloaded and verified (check), or series verified (drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<u64>,
    /// What happened, in a sentence.
    #[serde(default)]
    pub message: String,
}

/// The last drill of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeriesDrill {
    /// The series key (`<namespace>/…`).
    pub series: String,
    /// The snapshot drilled last.
    pub snapshot: String,
    /// When a drill of it last passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<Time>,
    /// When a drill of it last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Time>,
    /// What the last drill found.
    #[serde(default)]
    pub message: String,
}

/// The last successful run of each kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastRuns {
    /// Prune.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<Time>,
    /// Check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<Time>,
    /// Drill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<Time>,
}

impl LastRuns {
    /// The time recorded for `kind`.
    pub fn get(&self, kind: MaintenanceKind) -> Option<&Time> {
        match kind {
            MaintenanceKind::Prune => self.prune.as_ref(),
            MaintenanceKind::Check => self.check.as_ref(),
            MaintenanceKind::Drill => self.drill.as_ref(),
        }
    }

    /// Sets the time for `kind`.
    pub fn set(&mut self, kind: MaintenanceKind, at: Time) {
        match kind {
            MaintenanceKind::Prune => self.prune = Some(at),
            MaintenanceKind::Check => self.check = Some(at),
            MaintenanceKind::Drill => self.drill = Some(at),
        }
    }
}

/// Maintenance state of a repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    /// The latest runs, newest first (at most [`MAINTENANCE_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<MaintenanceRun>,
    /// When each kind last started (scheduling).
    #[serde(default)]
    pub last_start: LastRuns,
    /// When each kind last succeeded.
    #[serde(default)]
    pub last_success: LastRuns,
    /// When each kind last failed.
    #[serde(default)]
    pub last_failure: LastRuns,
    /// Checks run so far (picks the part of the data the next one reads).
    #[serde(default)]
    pub checks_run: u64,
    /// Stored bytes (all packs), as of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Snapshots, as of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<u64>,
    /// Packs, as of the last run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packs: Option<u64>,
    /// Per series: the last drill.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<SeriesDrill>,
}

/// The Lease guarding maintenance of `repository` (in podvault's namespace): a valid object
/// name, long repository names shortened with a hash.
pub fn maintenance_lease_name(repository: &str) -> String {
    let name = format!("podvault-maintenance-{repository}");
    if name.len() <= 63 {
        return name;
    }
    let hash = blake3::hash(repository.as_bytes()).to_hex();
    let prefix: String = repository.chars().take(30).collect();
    format!("podvault-maintenance-{prefix}-{}", &hash[..8])
}

/// The Job of run `kind` of `repository` for the cron time `slot` (Unix seconds):
/// deterministic, so two controller replicas acting at once make one Job.
pub fn maintenance_job_name(repository: &str, kind: MaintenanceKind, slot: i64) -> String {
    let hash = blake3::hash(format!("{repository}\0{kind}\0{slot}").as_bytes()).to_hex();
    let prefix: String = repository.chars().take(38).collect();
    format!(
        "podvault-{kind}-{}-{}",
        prefix.trim_end_matches('-'),
        &hash[..8]
    )
}

/// Runs kept in [`MaintenanceStatus::runs`].
pub const MAINTENANCE_HISTORY: usize = 10;

impl MaintenanceStatus {
    /// Records a run (replacing the entry of the same Job), newest first, keeping
    /// [`MAINTENANCE_HISTORY`], and the per-kind times.
    pub fn record(&mut self, run: MaintenanceRun) {
        let kind = run.kind;
        match run.result.as_str() {
            "Running" => self.last_start.set(kind, run.started.clone()),
            "Succeeded" => {
                self.last_success
                    .set(kind, run.finished.clone().unwrap_or(run.started.clone()));
            }
            _ => self
                .last_failure
                .set(kind, run.finished.clone().unwrap_or(run.started.clone())),
        }
        self.runs.retain(|r| r.job != run.job);
        self.runs.insert(0, run);
        self.runs.truncate(MAINTENANCE_HISTORY);
    }
}

impl BackupRepositorySpec {
    /// Checks that exactly one backend is set and that credentials go with S3 only.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.backend.s3, &self.backend.fs) {
            (Some(_), None) => Ok(()),
            (None, Some(_)) if self.credentials_secret.is_some() => {
                Err("spec.credentialsSecret is only used with spec.backend.s3".into())
            }
            (None, Some(_)) => Ok(()),
            (Some(_), Some(_)) => Err("spec.backend: set either s3 or fs, not both".into()),
            (None, None) => Err("spec.backend: set s3 or fs".into()),
        }
    }
}

/// Observed state of a [`BackupRepository`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepositoryStatus {
    /// True once an agent has found or created the repository's `config`.
    #[serde(default)]
    pub initialized: bool,
    /// Human-readable detail about the last access error, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Standard conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Where the repository is (`s3://bucket/prefix` or a path), as the agent or the
    /// maintenance runner last opened it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Scheduled maintenance: history and results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::{CustomResourceExt, Resource};

    #[test]
    fn names_and_scopes_match_the_design() {
        let pvb = PodVolumeBackup::crd();
        assert_eq!(pvb.spec.group, "podvault.dev");
        assert_eq!(pvb.spec.scope, "Namespaced");
        assert_eq!(
            pvb.spec.names.short_names.as_deref(),
            Some(&["pvb".to_string()][..])
        );
        let pvr = PodVolumeRestore::crd();
        assert_eq!(pvr.spec.scope, "Namespaced");
        assert_eq!(
            pvr.spec.names.short_names.as_deref(),
            Some(&["pvr".to_string()][..])
        );
        let repo = BackupRepository::crd();
        assert_eq!(repo.spec.scope, "Cluster");
        assert_eq!(
            repo.spec.names.short_names.as_deref(),
            Some(&["bkrepo".to_string()][..])
        );
        assert_eq!(PodVolumeBackup::api_version(&()), "podvault.dev/v1alpha1");
    }

    #[test]
    fn printer_columns_and_status_subresource() {
        for crd in [PodVolumeBackup::crd(), PodVolumeRestore::crd()] {
            let v = &crd.spec.versions[0];
            let cols: Vec<_> = v
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert_eq!(
                cols,
                ["Phase", "Pod", "Volume", "Node", "Progress", "Snapshot", "Age"]
            );
            assert!(v.subresources.as_ref().unwrap().status.is_some());
        }
    }

    #[test]
    fn schema_validates_phases_and_lengths() {
        let crd = serde_json::to_value(PodVolumeBackup::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let phases = &schema["status"]["properties"]["phase"]["enum"];
        assert_eq!(
            phases,
            &serde_json::json!(["New", "InProgress", "Completed", "Failed", "Canceled"])
        );
        assert_eq!(
            schema["spec"]["properties"]["volume"]["maxLength"], 255,
            "a file name: the dump's with spec.dump"
        );
        assert_eq!(
            schema["spec"]["required"],
            serde_json::json!(["pod", "volume"])
        );
    }

    #[test]
    fn pvb_reads_from_yaml_and_missing_status_is_new() {
        let pvb: PodVolumeBackup = serde_yaml::from_str(
            "apiVersion: podvault.dev/v1alpha1\nkind: PodVolumeBackup\nmetadata:\n  name: b1\n  namespace: shop\nspec:\n  pod: web-0\n  volume: data\n  excludes: ['*.tmp']\n",
        )
        .unwrap();
        assert_eq!(pvb.spec.pod, "web-0");
        assert_eq!(pvb.spec.excludes, vec!["*.tmp".to_string()]);
        assert!(!pvb.spec.cancel);
        let phase = pvb
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default();
        assert_eq!(phase, Phase::New);
    }

    #[test]
    fn progress_percent() {
        assert_eq!(Progress::new(50, 200, 1, 4).percent, 25);
        assert_eq!(Progress::new(300, 200, 1, 4).percent, 100);
        assert_eq!(Progress::new(10, 0, 0, 0).percent, 0);
        assert_eq!(Progress::new(0, 0, 3, 3).percent, 100);
        assert_eq!(Progress::new(u64::MAX, u64::MAX, 0, 0).percent, 100);
    }

    #[test]
    fn finished_phases() {
        assert!(!Phase::New.is_finished());
        assert!(!Phase::InProgress.is_finished());
        assert!(Phase::Completed.is_finished());
        assert!(Phase::Failed.is_finished());
        assert!(Phase::Canceled.is_finished());
    }

    #[test]
    fn snapshot_selector_needs_exactly_one() {
        let mut s = SnapshotSelector::default();
        assert!(s.validate().unwrap_err().contains("set id or latest"));
        s.id = Some("0123abcd".into());
        assert!(s.validate().is_ok());
        s.latest = Some(SeriesSelector::default());
        assert!(s.validate().unwrap_err().contains("not both"));
    }

    #[test]
    fn repository_needs_exactly_one_backend() {
        let mut spec = BackupRepositorySpec::default();
        assert!(spec.validate().unwrap_err().contains("set s3 or fs"));
        spec.backend.fs = Some(FsBackend {
            path: "/repo".into(),
        });
        assert!(spec.validate().is_ok());
        spec.credentials_secret = Some(S3CredentialsRef {
            name: "s3".into(),
            ..Default::default()
        });
        assert!(spec.validate().unwrap_err().contains("credentialsSecret"));
        spec.backend.s3 = Some(S3Backend {
            bucket: "b".into(),
            ..Default::default()
        });
        assert!(spec.validate().unwrap_err().contains("not both"));
    }
}
