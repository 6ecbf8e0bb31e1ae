//! The executor bodies: one backup or one restore of a pod volume, given objects already
//! fetched from the API server. Plain blocking functions (run them on a blocking thread); no
//! API server, no async runtime of their own beyond the engine's.
//!
//! Each returns the final status to write (phase, message, snapshot id, progress, …) plus what
//! the metrics need. Every failure becomes `Failed` with a message naming what is wrong; a
//! canceled operation becomes `Canceled`. A failed backup writes no snapshot (the engine
//! writes the snapshot last), so earlier snapshots are untouched.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podvault_proto::crd::{OperationStatus, PodVolumeBackupSpec, PodVolumeRestoreSpec};
use podvault_proto::k8s::{
    check_restore_namespace, check_user_tags, host_path_under_root, resolve_volume,
    volume_identity, Series, VolumeLocation, VolumePolicy, RESTORE_MARKER_DIR,
};
use podvault_proto::retention::RetentionPolicy;

use super::decide::{backup_options, forget_options, restore_options, restore_series, was_resumed};
use super::outcome::{Failure, OpResult, Reason, Report};
use super::repo::{open_or_init, open_repository, RepoSettings};
use crate::archiver::BackupOptions;
use crate::error::Error;
use crate::fsat::{self, DirId};
use crate::progress::Progress;
use crate::repository::Repository;
use crate::restorer::RestoreOptions;
use podvault_proto::snapshot::Snapshot;
use podvault_proto::SnapshotId;

/// Where the executor finds the volume.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's name (snapshot host and `node=` tag).
    pub node: String,
    /// The kubelet root directory.
    pub kubelet_root: PathBuf,
    /// Volume skip rules.
    pub policy: VolumePolicy,
}

/// One backup to run.
#[derive(Debug, Clone)]
pub struct BackupJob {
    /// The PodVolumeBackup's namespace.
    pub namespace: String,
    /// Its uid (recorded in the snapshot's identity).
    pub uid: String,
    /// Its spec.
    pub spec: PodVolumeBackupSpec,
    /// The pod (fetched).
    pub pod: Pod,
    /// The PersistentVolume bound to the volume's claim, if claim-backed.
    pub pv: Option<PersistentVolume>,
    /// The repository.
    pub repo: RepoSettings,
    /// Node settings.
    pub node: NodeSettings,
}

/// A volume's directory on this node.
#[derive(Debug, Clone)]
pub struct Located {
    /// Where it is.
    pub loc: VolumeLocation,
    /// For a hostPath PersistentVolume below an allowed host directory: the directory found
    /// from that root without following symlinks, which backup and restore insist on.
    pub pinned: Option<DirId>,
}

/// Resolves the volume's directory on this node and checks it is there. A hostPath
/// PersistentVolume below an allowed host directory is reached from that directory one plain
/// name at a time, never through a symlink (another PersistentVolume's owner may control a
/// directory on its path), and pinned by device and inode.
pub fn locate_volume(
    pod: &Pod,
    volume: &str,
    pv: Option<&PersistentVolume>,
    node: &NodeSettings,
) -> Result<Located, Failure> {
    let loc = resolve_volume(&node.kubelet_root, pod, volume, pv, &node.policy)
        .map_err(|e| Failure::new(Reason::Volume, e.to_string()))?;
    let below_root = match loc.persistent_volume.is_some() {
        true => host_path_under_root(&node.policy.host_path_roots, &loc.path.to_string_lossy()),
        false => None,
    };
    if let Some((root, rel)) = below_root {
        let pinned = fsat::pin_beneath(root, &rel).map_err(|e| {
            Failure::new(
                Reason::VolumeNotMounted,
                format!(
                    "volume {volume:?} of pod {}/{}: hostPath PersistentVolume directory {} on node {} cannot be reached from the allowed host directory {} without following a symlink: {e}{}",
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    loc.path.display(),
                    node.node,
                    root.display(),
                    match e.kind() {
                        std::io::ErrorKind::NotFound if !root.is_dir() => " (the host directory is not mounted in the agent: mount it at the same path, chart agent.hostPathRoots)",
                        _ => "",
                    }
                ),
            )
        })?;
        return Ok(Located {
            loc,
            pinned: Some(pinned),
        });
    }
    if !loc.path.is_dir() {
        return Err(Failure::new(
            Reason::VolumeNotMounted,
            format!(
                "volume {volume:?} of pod {}/{} is not mounted on node {}: {} is not a directory",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                node.node,
                loc.path.display()
            ),
        ));
    }
    Ok(Located { loc, pinned: None })
}

/// The current time as the API's `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs one backup; never panics on bad input; returns the final status.
pub fn execute_backup(
    job: &BackupJob,
    base: &OperationStatus,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Report {
    let mut report = Report::pending(base);
    let outcome = run_backup(job, &mut report, progress, cancel);
    report.finish(
        outcome,
        progress,
        "canceled; no snapshot was written",
        now(),
    );
    report
}

fn run_backup(
    job: &BackupJob,
    report: &mut Report,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<String, Failure> {
    let spec = &job.spec;
    let status = &mut report.status;
    let series = Series::of_pod_volume(&job.pod, &spec.volume)
        .map_err(|e| Failure::new(Reason::Volume, e.to_string()))?;
    status.series = Some(series.key());
    let retention = retention_of(spec)?;
    check_user_tags(&spec.tags).map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))?;
    let Located { loc, pinned } =
        locate_volume(&job.pod, &spec.volume, job.pv.as_ref(), &job.node)?;
    status.host_path = Some(loc.path.display().to_string());
    let identity = volume_identity(&job.pod, &spec.volume, &job.node.node, Some(&job.uid))
        .map_err(|e| Failure::new(Reason::Volume, e.to_string()))?;
    let repo = open_or_init(&job.repo)
        .map_err(|e| Failure::engine(&format!("BackupRepository {}", job.repo.name), &e))?;
    // An agent stopped after saving this PVB's snapshot and before recording it: adopt it.
    // Only a resumed operation can have one (no extra snapshot listing otherwise).
    let earlier = match was_resumed(status) {
        true => saved_for(&repo, &job.uid)?,
        false => None,
    };
    let (outcome, adopted) = match earlier {
        Some(saved) => (saved, true),
        None => {
            // The engine takes the series' latest snapshot (by identity) as the parent.
            let opts = BackupOptions {
                pinned_root: pinned,
                ..backup_options(
                    &loc.path,
                    identity,
                    &spec.tags,
                    &spec.excludes,
                    &job.node.node,
                )
            };
            let outcome =
                crate::archiver::backup(&repo, &opts, progress, cancel).map_err(|e| match e {
                    Error::Canceled => Failure::new(Reason::Canceled, "canceled"),
                    e => Failure::engine(&format!("backup of {}", loc.path.display()), &e),
                })?;
            (outcome, false)
        }
    };
    let summary = &outcome.snapshot.summary;
    status.set_snapshot(&outcome.id.to_hex());
    status.bytes_added = Some(summary.bytes_added);
    let mut message = format!(
        "snapshot {} {}: {} files new, {} changed, {} unchanged; {} bytes added",
        &outcome.id.to_hex()[..8],
        if adopted { ADOPTED } else { "saved" },
        summary.files_new,
        summary.files_changed,
        summary.files_unchanged,
        summary.bytes_added
    );
    report.series = Some(series.clone());
    report.bytes_read = summary.bytes_read;
    report.bytes_added = summary.bytes_added;
    if !summary.errors.is_empty() {
        report.result = OpResult::Partial;
        let first: Vec<String> = summary
            .errors
            .iter()
            .take(3)
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        message.push_str(&format!(
            "; {} file(s) could not be read and are missing from the snapshot (first: {})",
            summary.errors.len(),
            first.join("; ")
        ));
    }
    if let Some(policy) = retention {
        message.push_str(&apply_retention(&repo, &policy, &series));
    }
    Ok(message)
}

/// How a message calls a snapshot an earlier run of the same operation saved.
pub const ADOPTED: &str = "saved before the agent restarted (adopted, not taken again)";

/// The snapshot an earlier run of the PodVolumeBackup with uid `uid` saved, if any: an agent
/// that stops (SIGTERM, a crash) after the engine saved the snapshot and before the status
/// recorded it leaves the PVB InProgress; the agent that resumes it (and only a resumed
/// operation: see [`was_resumed`]) adopts that snapshot
/// instead of taking a second one (which would take a retention slot and misreport the
/// bytes added). Decided by the identity's operation uid, which only the agent writes.
pub fn saved_for(
    repo: &Repository,
    uid: &str,
) -> Result<Option<crate::archiver::BackupOutcome>, Failure> {
    if uid.is_empty() {
        return Ok(None);
    }
    let snapshots = repo
        .snapshots()
        .map_err(|e| Failure::engine("listing snapshots", &e))?;
    Ok(snapshots
        .into_iter()
        .rfind(|(_, s)| s.identity().and_then(|i| i.operation_uid.as_deref()) == Some(uid))
        .map(|(id, snapshot)| crate::archiver::BackupOutcome { id, snapshot }))
}

/// The spec's retention policy. Validated before any work: a typo should not cost a backup
/// window silently, and it is cheap to fix.
pub fn retention_of(spec: &PodVolumeBackupSpec) -> Result<Option<RetentionPolicy>, Failure> {
    spec.retention
        .as_deref()
        .map(|text| {
            text.parse()
                .map_err(|e| Failure::new(Reason::InvalidSpec, format!("spec.retention: {e}")))
        })
        .transpose()
}

/// Applies `policy` to `series` after a saved snapshot; returns the note for the message.
/// A failure is only noted: the snapshot is saved, and retention runs again next time.
pub fn apply_retention(repo: &Repository, policy: &RetentionPolicy, series: &Series) -> String {
    match crate::forget::forget(repo, &forget_options(policy, series)) {
        Ok(d) => {
            let removed: usize = d.iter().map(|s| s.remove.len()).sum();
            format!("; retention removed {removed} snapshot(s)")
        }
        Err(e) => format!("; retention failed: {e}"),
    }
}

/// One restore to run.
#[derive(Debug, Clone)]
pub struct RestoreJob {
    /// The PodVolumeRestore's namespace.
    pub namespace: String,
    /// Its uid (names the completion marker).
    pub uid: String,
    /// Its spec.
    pub spec: PodVolumeRestoreSpec,
    /// The target pod (fetched).
    pub pod: Pod,
    /// The PersistentVolume bound to the target volume's claim, if claim-backed.
    pub pv: Option<PersistentVolume>,
    /// The repository.
    pub repo: RepoSettings,
    /// Node settings.
    pub node: NodeSettings,
}

/// Path of the completion marker of restore `uid` in volume directory `volume_dir`.
pub fn marker_path(volume_dir: &Path, uid: &str) -> PathBuf {
    volume_dir.join(RESTORE_MARKER_DIR).join(uid)
}

/// Runs one restore; returns the final status. Success only when every file was restored and
/// the marker was written.
pub fn execute_restore(
    job: &RestoreJob,
    base: &OperationStatus,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Report {
    let mut report = Report::pending(base);
    let outcome = run_restore(job, &mut report, progress, cancel);
    report.finish(
        outcome,
        progress,
        "canceled; the volume may hold a partial restore and no marker was written",
        now(),
    );
    report
}

fn run_restore(
    job: &RestoreJob,
    report: &mut Report,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<String, Failure> {
    let spec = &job.spec;
    let status = &mut report.status;
    spec.snapshot
        .validate()
        .map_err(|e| Failure::new(Reason::InvalidSpec, e))?;
    let Located { loc, pinned } =
        locate_volume(&job.pod, &spec.volume, job.pv.as_ref(), &job.node)?;
    status.host_path = Some(loc.path.display().to_string());
    let repo: Repository = open_repository(&job.repo, false)
        .map_err(|e| Failure::engine(&format!("BackupRepository {}", job.repo.name), &e))?;
    let (id, snapshot) = restore_snapshot(&repo, spec, &job.namespace, &job.pod, &job.repo)?;
    let hex = id.to_hex();
    status.set_snapshot(&hex);
    let opts = RestoreOptions {
        pinned_root: pinned,
        ..restore_options(
            spec,
            &hex,
            &loc.path,
            job.repo.spec.allow_privileged_restore,
        )
    };
    let outcome = crate::restorer::restore(&repo, &snapshot, &opts, progress, cancel).map_err(
        |e| match e {
            Error::Canceled => Failure::new(Reason::Canceled, "canceled"),
            e => Failure::engine(
                &format!(
                    "restore of snapshot {} into {}",
                    &hex[..8],
                    loc.path.display()
                ),
                &e,
            ),
        },
    )?;
    status.files_restored = Some(outcome.files);
    let marker = write_marker(&loc.path, pinned, &job.uid, &hex)?;
    report.marker = Some(marker);
    let mut message = format!(
        "restored snapshot {}: {} files, {} bytes",
        &hex[..8],
        outcome.files,
        outcome.bytes
    );
    if !outcome.skipped.is_empty() {
        message.push_str(&format!(
            "; {} special entries not recreated",
            outcome.skipped.len()
        ));
    }
    Ok(message)
}

/// Writes `<volume>/.podvault/<uid>` (content: the snapshot id) atomically: a hidden temporary
/// file renamed into place, so `restore-wait` never sees a half-written marker.
pub fn write_marker(
    volume_dir: &Path,
    pinned: Option<DirId>,
    uid: &str,
    snapshot: &str,
) -> Result<PathBuf, Failure> {
    // Descriptor-relative, never through a symlink the pod put in its volume.
    super::restore_wait::put_marker(volume_dir, pinned, uid, snapshot)
        .map_err(|e| Failure::new(Reason::Io, format!("writing the completion marker: {e}")))
}

/// The snapshot `spec.snapshot` selects (by id, or the latest of a series), refused when the
/// restore's namespace may not read it.
pub fn restore_snapshot(
    repo: &Repository,
    spec: &PodVolumeRestoreSpec,
    namespace: &str,
    pod: &Pod,
    settings: &RepoSettings,
) -> Result<(SnapshotId, Snapshot), Failure> {
    let (id, snapshot) = match (&spec.snapshot.id, &spec.snapshot.latest) {
        (Some(id), _) => repo
            .find_snapshot(id)
            .map_err(|e| Failure::engine(&format!("spec.snapshot.id {id}"), &e))?,
        (None, _) => {
            let series = restore_series(spec, namespace, pod)
                .map_err(|e| Failure::new(Reason::InvalidSpec, e))?;
            // Refuse before searching: the series' namespace alone decides.
            check_restore_namespace(
                namespace,
                &format!("latest of {series}"),
                Some(&series.namespace),
                &settings.name,
                &settings.spec,
            )
            .map_err(|e| Failure::new(Reason::Isolation, e.to_string()))?;
            let key = series.key();
            repo.find_snapshot_where("latest", |s| s.series() == Some(key.as_str()))
                .map_err(|e| match e {
                    Error::SnapshotNotFound(_) => Failure::new(
                        Reason::SnapshotNotFound,
                        format!(
                            "series {series} has no snapshot in BackupRepository {}",
                            settings.name
                        ),
                    ),
                    e => Failure::engine(&format!("latest snapshot of {series}"), &e),
                })?
        }
    };
    let hex = id.to_hex();
    check_restore_namespace(
        namespace,
        &hex,
        snapshot.namespace(),
        &settings.name,
        &settings.spec,
    )
    .map_err(|e| Failure::new(Reason::Isolation, e.to_string()))?;
    Ok((id, snapshot))
}
