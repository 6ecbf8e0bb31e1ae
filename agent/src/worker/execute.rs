//! The executor bodies: one backup or one restore of a pod volume, given objects already
//! fetched from the API server. Plain blocking functions (run them on a blocking thread); no
//! API server, no async runtime of their own beyond the engine's.
//!
//! Each returns the final status to write (phase, message, snapshot id, progress, …) plus what
//! the metrics need. Every failure becomes `Failed` with a message naming what is wrong; a
//! canceled operation becomes `Canceled`. A failed backup writes no snapshot (the engine
//! writes the snapshot last), so earlier snapshots are untouched.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podvault_proto::crd::{
    Phase, PodVolumeBackupSpec, PodVolumeBackupStatus, PodVolumeRestoreSpec, PodVolumeRestoreStatus,
};
use podvault_proto::k8s::{
    check_restore_namespace, resolve_volume, snapshot_namespace, snapshot_tags, Series,
    VolumeLocation, VolumePolicy, RESTORE_MARKER_DIR,
};
use podvault_proto::retention::RetentionPolicy;

use super::decide::{
    backup_options, forget_options, restore_options, restore_series, status_progress,
};
use super::repo::{open_or_init, RepoSettings};
use crate::error::Error;
use crate::progress::Progress;
use crate::repository::Repository;

/// Metric `result` label of a finished operation.
pub mod result {
    /// Completed with every file.
    pub const COMPLETED: &str = "completed";
    /// Completed, but some files could not be read (listed in the snapshot summary).
    pub const PARTIAL: &str = "partial";
    /// Failed.
    pub const FAILED: &str = "failed";
    /// Canceled.
    pub const CANCELED: &str = "canceled";
}

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

/// What a backup did.
#[derive(Debug, Clone)]
pub struct BackupReport {
    /// The final status (from the claimed status, with the outcome filled in).
    pub status: PodVolumeBackupStatus,
    /// The series, when the volume could be resolved.
    pub series: Option<Series>,
    /// Metric result label (see [`result`]).
    pub result: &'static str,
    /// Fixed failure reason for metrics (`""` on success).
    pub reason: &'static str,
    /// Bytes read from the volume.
    pub bytes_read: u64,
    /// Bytes added to the repository.
    pub bytes_added: u64,
}

/// A failure: message for the status, fixed reason for metrics.
#[derive(Debug, Clone)]
pub struct Failure {
    /// `status.message`.
    pub message: String,
    /// Metric label.
    pub reason: &'static str,
}

impl Failure {
    /// A failure with a fixed reason.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            reason,
        }
    }

    fn engine(context: &str, e: &Error) -> Self {
        Failure::new(e.reason(), format!("{context}: {e}"))
    }
}

/// Resolves the volume's directory on this node and checks it is there.
pub fn locate_volume(
    pod: &Pod,
    volume: &str,
    pv: Option<&PersistentVolume>,
    node: &NodeSettings,
) -> Result<VolumeLocation, Failure> {
    let loc = resolve_volume(&node.kubelet_root, pod, volume, pv, &node.policy)
        .map_err(|e| Failure::new("volume", e.to_string()))?;
    if !loc.path.is_dir() {
        return Err(Failure::new(
            "volume_not_mounted",
            format!(
                "volume {volume:?} of pod {}/{} is not mounted on node {}: {} is not a directory",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                node.node,
                loc.path.display()
            ),
        ));
    }
    Ok(loc)
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs one backup; never panics on bad input; returns the final status.
pub fn execute_backup(
    job: &BackupJob,
    base: &PodVolumeBackupStatus,
    progress: &Progress,
    cancel: &AtomicBool,
) -> BackupReport {
    let mut status = base.clone();
    let mut report = BackupReport {
        status: PodVolumeBackupStatus::default(),
        series: None,
        result: result::FAILED,
        reason: "",
        bytes_read: 0,
        bytes_added: 0,
    };
    match run_backup(job, &mut status, &mut report, progress, cancel) {
        Ok(message) => {
            status.phase = Some(Phase::Completed);
            status.message = Some(message);
        }
        Err(f) if f.reason == "canceled" => {
            status.phase = Some(Phase::Canceled);
            status.message = Some("canceled (spec.cancel); no snapshot was written".into());
            report.result = result::CANCELED;
            report.reason = f.reason;
        }
        Err(f) => {
            status.phase = Some(Phase::Failed);
            status.message = Some(f.message);
            report.result = result::FAILED;
            report.reason = f.reason;
        }
    }
    status.progress = Some(status_progress(&progress.snapshot()));
    status.completion_timestamp = Some(now());
    report.status = status;
    report
}

fn run_backup(
    job: &BackupJob,
    status: &mut PodVolumeBackupStatus,
    report: &mut BackupReport,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<String, Failure> {
    let spec = &job.spec;
    let series = Series::of_pod_volume(&job.pod, &spec.volume)
        .map_err(|e| Failure::new("volume", e.to_string()))?;
    status.series = Some(series.key());
    report.series = Some(series.clone());
    // Validate the retention policy before doing any work: a typo should not cost a backup
    // window silently, and it is cheap to fix.
    let retention: Option<RetentionPolicy> = match &spec.retention {
        Some(text) => Some(
            text.parse()
                .map_err(|e| Failure::new("invalid_spec", format!("spec.retention: {e}")))?,
        ),
        None => None,
    };
    let loc = locate_volume(&job.pod, &spec.volume, job.pv.as_ref(), &job.node)?;
    status.host_path = Some(loc.path.display().to_string());
    let mut tags = snapshot_tags(&job.pod, &spec.volume, &job.node.node)
        .map_err(|e| Failure::new("volume", e.to_string()))?;
    tags.extend(spec.tags.iter().cloned());
    let repo = open_or_init(&job.repo)
        .map_err(|e| Failure::engine(&format!("BackupRepository {}", job.repo.name), &e))?;
    let parent = match repo.find_snapshot_where("latest", |s| s.has_tag(&series.tag())) {
        Ok((id, _)) => Some(id.to_hex()),
        Err(Error::SnapshotNotFound(_)) => None,
        Err(e) => {
            return Err(Failure::engine(
                "looking up the series' latest snapshot",
                &e,
            ))
        }
    };
    let opts = backup_options(&loc.path, tags, &spec.excludes, parent, &job.node.node);
    let outcome = crate::archiver::backup(&repo, &opts, progress, cancel).map_err(|e| match e {
        Error::Canceled => Failure::new("canceled", "canceled"),
        e => Failure::engine(&format!("backup of {}", loc.path.display()), &e),
    })?;
    let summary = &outcome.snapshot.summary;
    report.bytes_read = summary.bytes_read;
    report.bytes_added = summary.bytes_added;
    status.snapshot_id = Some(outcome.id.to_hex());
    status.bytes_added = Some(summary.bytes_added);
    let mut message = format!(
        "snapshot {} saved: {} files new, {} changed, {} unchanged; {} bytes added",
        &outcome.id.to_hex()[..8],
        summary.files_new,
        summary.files_changed,
        summary.files_unchanged,
        summary.bytes_added
    );
    report.result = result::COMPLETED;
    if !summary.errors.is_empty() {
        report.result = result::PARTIAL;
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
        match crate::forget::forget(&repo, &forget_options(&policy, &series)) {
            Ok(d) => {
                let removed: usize = d.iter().map(|s| s.remove.len()).sum();
                message.push_str(&format!("; retention removed {removed} snapshot(s)"));
            }
            // The snapshot is saved; retention runs again after the next backup.
            Err(e) => message.push_str(&format!("; retention failed: {e}")),
        }
    }
    Ok(message)
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

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// The final status.
    pub status: PodVolumeRestoreStatus,
    /// Metric result label (see [`result`]).
    pub result: &'static str,
    /// Fixed failure reason for metrics (`""` on success).
    pub reason: &'static str,
    /// The marker written on success.
    pub marker: Option<PathBuf>,
}

/// Path of the completion marker of restore `uid` in volume directory `volume_dir`.
pub fn marker_path(volume_dir: &Path, uid: &str) -> PathBuf {
    volume_dir.join(RESTORE_MARKER_DIR).join(uid)
}

/// Runs one restore; returns the final status. Success only when every file was restored and
/// the marker was written.
pub fn execute_restore(
    job: &RestoreJob,
    base: &PodVolumeRestoreStatus,
    progress: &Progress,
    cancel: &AtomicBool,
) -> RestoreReport {
    let mut status = base.clone();
    let mut report = RestoreReport {
        status: PodVolumeRestoreStatus::default(),
        result: result::FAILED,
        reason: "",
        marker: None,
    };
    match run_restore(job, &mut status, &mut report, progress, cancel) {
        Ok(message) => {
            status.phase = Some(Phase::Completed);
            status.message = Some(message);
            report.result = result::COMPLETED;
        }
        Err(f) if f.reason == "canceled" => {
            status.phase = Some(Phase::Canceled);
            status.message = Some(
                "canceled (spec.cancel); the volume may hold a partial restore and no marker was written"
                    .into(),
            );
            report.result = result::CANCELED;
            report.reason = f.reason;
        }
        Err(f) => {
            status.phase = Some(Phase::Failed);
            status.message = Some(f.message);
            report.result = result::FAILED;
            report.reason = f.reason;
        }
    }
    status.progress = Some(status_progress(&progress.snapshot()));
    status.completion_timestamp = Some(now());
    report.status = status;
    report
}

fn run_restore(
    job: &RestoreJob,
    status: &mut PodVolumeRestoreStatus,
    report: &mut RestoreReport,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<String, Failure> {
    let spec = &job.spec;
    spec.snapshot
        .validate()
        .map_err(|e| Failure::new("invalid_spec", e))?;
    let loc = locate_volume(&job.pod, &spec.volume, job.pv.as_ref(), &job.node)?;
    status.host_path = Some(loc.path.display().to_string());
    let repo: Repository = Repository::open(&job.repo.location, &job.repo.password)
        .map_err(|e| Failure::engine(&format!("BackupRepository {}", job.repo.name), &e))?;
    let (id, snapshot) = match (&spec.snapshot.id, &spec.snapshot.latest) {
        (Some(id), _) => repo
            .find_snapshot(id)
            .map_err(|e| Failure::engine(&format!("spec.snapshot.id {id}"), &e))?,
        (None, _) => {
            let series = restore_series(spec, &job.namespace, &job.pod)
                .map_err(|e| Failure::new("invalid_spec", e))?;
            // Refuse before searching: the series' namespace alone decides.
            check_restore_namespace(
                &job.namespace,
                &format!("latest of {series}"),
                Some(&series.namespace),
                &job.repo.name,
                &job.repo.spec,
            )
            .map_err(|e| Failure::new("isolation", e.to_string()))?;
            repo.find_snapshot_where("latest", |s| s.has_tag(&series.tag()))
                .map_err(|e| match e {
                    Error::SnapshotNotFound(_) => Failure::new(
                        "snapshot_not_found",
                        format!(
                            "series {series} has no snapshot in BackupRepository {}",
                            job.repo.name
                        ),
                    ),
                    e => Failure::engine(&format!("latest snapshot of {series}"), &e),
                })?
        }
    };
    let hex = id.to_hex();
    status.snapshot_id = Some(hex.clone());
    check_restore_namespace(
        &job.namespace,
        &hex,
        snapshot_namespace(&snapshot.tags),
        &job.repo.name,
        &job.repo.spec,
    )
    .map_err(|e| Failure::new("isolation", e.to_string()))?;
    let opts = restore_options(spec, &hex, &loc.path);
    let outcome = crate::restorer::restore(&repo, &snapshot, &opts, progress, cancel).map_err(
        |e| match e {
            Error::Canceled => Failure::new("canceled", "canceled"),
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
    let marker = write_marker(&loc.path, &job.uid, &hex)?;
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
pub fn write_marker(volume_dir: &Path, uid: &str, snapshot: &str) -> Result<PathBuf, Failure> {
    let dir = volume_dir.join(RESTORE_MARKER_DIR);
    let fail = |what: &str, p: &Path, e: std::io::Error| {
        Failure::new(
            "io",
            format!("writing the completion marker: {what} {}: {e}", p.display()),
        )
    };
    fs::create_dir_all(&dir).map_err(|e| fail("creating", &dir, e))?;
    let tmp = dir.join(format!(".{uid}.tmp"));
    let path = marker_path(volume_dir, uid);
    fs::write(&tmp, format!("{snapshot}\n")).map_err(|e| fail("writing", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| fail("renaming", &path, e))?;
    Ok(path)
}
