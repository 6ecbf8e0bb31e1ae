//! How an operation ends: one failure-reason enum for both kinds (it is the `reason` metric
//! label and `status.reason`), the result classes, and the report both executors return.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podvault_proto::crd::{OperationStatus, Phase};
use podvault_proto::k8s::Series;

use crate::error::Error;

/// Why an operation did not complete. `as_str` is stable: it is a metric label and
/// `status.reason`, so alerts and scripts may match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The spec cannot be acted on (bad retention, bad snapshot selector, …).
    InvalidSpec,
    /// The volume cannot be backed up or restored (secret volume, unknown name, …).
    Volume,
    /// The volume's directory is not on this node (not mounted, or gone).
    VolumeNotMounted,
    /// The restore would cross namespaces and its BackupRepository does not allow it.
    Isolation,
    /// No snapshot matches.
    SnapshotNotFound,
    /// The pod does not exist.
    PodNotFound,
    /// The pod is now on another node.
    PodMoved,
    /// The pod is not scheduled to a node.
    PodNotScheduled,
    /// The pod has terminated; its volumes are being torn down.
    PodTerminated,
    /// The PersistentVolumeClaim behind the volume does not exist.
    PvcNotFound,
    /// The PersistentVolume bound to the claim does not exist.
    PvNotFound,
    /// A Secret the BackupRepository names does not exist.
    SecretNotFound,
    /// The BackupRepository does not exist.
    RepositoryNotFound,
    /// The BackupRepository's `spec.allowedNamespaces` does not allow the operation's
    /// namespace.
    RepositoryNotAllowed,
    /// The BackupRepository or its Secrets are incomplete or invalid.
    RepositoryConfig,
    /// Another agent is creating the repository and did not finish in time.
    RepositoryBusy,
    /// The Kubernetes API failed.
    Api,
    /// The executor panicked (a bug).
    Panic,
    /// Failed before it started (pod missing or terminated when claimed).
    NotStarted,
    /// Interrupted twice by agent restarts.
    Interrupted,
    /// The object was deleted while it ran.
    Deleted,
    /// `spec.cancel` was set.
    Canceled,
    /// The repository does not exist (restores never create one).
    NotInitialised,
    /// The repository password is wrong.
    WrongPassword,
    /// The storage backend failed (S3 or filesystem errors).
    Backend,
    /// Repository objects are damaged.
    Corrupt,
    /// Local I/O failed (reading the volume, writing the restore).
    Io,
    /// Some files could not be restored.
    RestoreIncomplete,
    /// The engine refused an input.
    InvalidInput,
    /// A backup hook failed (non-zero or unknown exit) with on-error Fail.
    HookFailed,
    /// A backup hook ran longer than its timeout with on-error Fail.
    HookTimeout,
    /// A backup command (logical dump) failed, timed out, or its output could not be saved.
    DumpFailed,
    /// A restore command (PodVolumeRestore with `spec.dump`) failed or stopped reading.
    RestoreCommandFailed,
    /// The pod's hook or backup-command annotations are malformed.
    InvalidHook,
    /// The pod has hook or backup-command annotations and the agent runs without
    /// `--allow-exec`.
    ExecNotAllowed,
}

impl Reason {
    /// The label / `status.reason` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "invalid_spec",
            Reason::Volume => "volume",
            Reason::VolumeNotMounted => "volume_not_mounted",
            Reason::Isolation => "isolation",
            Reason::SnapshotNotFound => "snapshot_not_found",
            Reason::PodNotFound => "pod_not_found",
            Reason::PodMoved => "pod_moved",
            Reason::PodNotScheduled => "pod_not_scheduled",
            Reason::PodTerminated => "pod_terminated",
            Reason::PvcNotFound => "pvc_not_found",
            Reason::PvNotFound => "pv_not_found",
            Reason::SecretNotFound => "secret_not_found",
            Reason::RepositoryNotFound => "repository_not_found",
            Reason::RepositoryNotAllowed => "repository_not_allowed",
            Reason::RepositoryConfig => "repository_config",
            Reason::RepositoryBusy => "repository_busy",
            Reason::Api => "api",
            Reason::Panic => "panic",
            Reason::NotStarted => "not_started",
            Reason::Interrupted => "interrupted",
            Reason::Deleted => "deleted",
            Reason::Canceled => "canceled",
            Reason::NotInitialised => "not_initialised",
            Reason::WrongPassword => "wrong_password",
            Reason::Backend => "backend",
            Reason::Corrupt => "corrupt",
            Reason::Io => "io",
            Reason::RestoreIncomplete => "restore_incomplete",
            Reason::InvalidInput => "invalid_input",
            Reason::HookFailed => "hook_failed",
            Reason::HookTimeout => "hook_timeout",
            Reason::DumpFailed => "dump_failed",
            Reason::RestoreCommandFailed => "restore_command_failed",
            Reason::InvalidHook => "invalid_hook",
            Reason::ExecNotAllowed => "exec_not_allowed",
        }
    }

    /// The reason of an engine error.
    pub fn of_engine(e: &Error) -> Self {
        match e {
            Error::NotInitialised { .. } => Reason::NotInitialised,
            // Only reachable if a concurrent creation were mishandled; treat as config.
            Error::AlreadyInitialised { .. } => Reason::RepositoryConfig,
            Error::WrongPassword { .. } => Reason::WrongPassword,
            Error::Backend { .. } => Reason::Backend,
            Error::Corrupt { .. } | Error::Decode { .. } | Error::MissingBlob { .. } => {
                Reason::Corrupt
            }
            Error::Io { .. } | Error::Stream { .. } => Reason::Io,
            Error::SnapshotNotFound(_) | Error::AmbiguousSnapshot(_) => Reason::SnapshotNotFound,
            Error::InvalidInput(_) => Reason::InvalidInput,
            Error::RestoreIncomplete { .. } => Reason::RestoreIncomplete,
            Error::Canceled => Reason::Canceled,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure: the fixed reason and the message for `status.message`.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Why.
    pub reason: Reason,
    /// `status.message`: what is wrong, naming the object.
    pub message: String,
}

impl Failure {
    /// A failure with a fixed reason.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Failure {
            reason,
            message: message.into(),
        }
    }

    /// A failure from an engine error, with `context` naming what was being done.
    pub fn engine(context: &str, e: &Error) -> Self {
        Failure::new(Reason::of_engine(e), format!("{context}: {e}"))
    }
}

/// The result class of a finished operation (the `result` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// Completed with every file.
    Completed,
    /// Backup completed, but some files could not be read (listed in the snapshot).
    Partial,
    /// Failed.
    Failed,
    /// Canceled (by `spec.cancel` or by deleting the object).
    Canceled,
}

impl OpResult {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            OpResult::Completed => "completed",
            OpResult::Partial => "partial",
            OpResult::Failed => "failed",
            OpResult::Canceled => "canceled",
        }
    }

    /// True for Completed and Partial (a snapshot was written or a restore finished).
    pub fn succeeded(self) -> bool {
        matches!(self, OpResult::Completed | OpResult::Partial)
    }
}

/// What one backup or restore did; the same for both kinds.
#[derive(Debug, Clone)]
pub struct Report {
    /// The final status to write.
    pub status: OperationStatus,
    /// Result class.
    pub result: OpResult,
    /// Why it did not complete (`None` on success).
    pub reason: Option<Reason>,
    /// Backups: the series, when the volume could be resolved.
    pub series: Option<Series>,
    /// Backups: bytes read from the volume.
    pub bytes_read: u64,
    /// Backups: bytes added to the repository.
    pub bytes_added: u64,
    /// Restores: the completion marker written on success.
    pub marker: Option<PathBuf>,
}

impl Report {
    /// A report for an operation about to run from the claimed status `base`.
    pub fn pending(base: &OperationStatus) -> Self {
        Report {
            status: base.clone(),
            result: OpResult::Completed,
            reason: None,
            series: None,
            bytes_read: 0,
            bytes_added: 0,
            marker: None,
        }
    }

    /// Records how the run ended: `Ok(message)` completes (keeping a Partial result the run
    /// set), a failure fails, a cancellation cancels with `canceled_message`. Progress and
    /// the completion time are filled in either way.
    pub fn finish(
        &mut self,
        outcome: Result<String, Failure>,
        progress: &crate::progress::Progress,
        canceled_message: &str,
        now: Time,
    ) {
        match outcome {
            Ok(message) => {
                self.status.phase = Some(Phase::Completed);
                self.status.message = Some(message);
                self.status.reason = None;
            }
            Err(f) => {
                let canceled = f.reason == Reason::Canceled;
                let message = if canceled {
                    canceled_message.to_string()
                } else {
                    f.message
                };
                let failed =
                    Report::failed(&self.status, Failure::new(f.reason, message), now.clone());
                self.status = failed.status;
                self.result = failed.result;
                self.reason = failed.reason;
            }
        }
        let p = progress.snapshot();
        self.status.progress = Some(podvault_proto::crd::Progress::new(
            p.bytes_done,
            p.bytes_total,
            p.files_done,
            p.files_total,
        ));
        self.status.completion_timestamp = Some(now);
    }

    /// A report for an operation that ends as `failure` before (or instead of) running,
    /// on top of the claimed status `base`. Canceled and Deleted end as Canceled.
    pub fn failed(base: &OperationStatus, failure: Failure, now: Time) -> Self {
        let mut status = base.clone();
        let result = match failure.reason {
            Reason::Canceled | Reason::Deleted => OpResult::Canceled,
            _ => OpResult::Failed,
        };
        status.phase = Some(if result == OpResult::Canceled {
            Phase::Canceled
        } else {
            Phase::Failed
        });
        status.message = Some(failure.message);
        status.reason = Some(failure.reason.as_str().to_string());
        status.completion_timestamp = Some(now);
        Report {
            status,
            result,
            reason: Some(failure.reason),
            series: None,
            bytes_read: 0,
            bytes_added: 0,
            marker: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_their_reasons() {
        let e = Error::WrongPassword {
            location: "/r".into(),
            keys: 1,
        };
        assert_eq!(Reason::of_engine(&e), Reason::WrongPassword);
        assert_eq!(Reason::of_engine(&Error::Canceled).as_str(), "canceled");
        let f = Failure::engine("BackupRepository default", &e);
        assert!(f.message.starts_with("BackupRepository default: "));
    }

    #[test]
    fn deleted_and_canceled_end_as_canceled_everything_else_as_failed() {
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let base = OperationStatus::default();
        let r = Report::failed(&base, Failure::new(Reason::Deleted, "deleted"), now.clone());
        assert_eq!(r.result, OpResult::Canceled);
        assert_eq!(r.status.phase, Some(Phase::Canceled));
        assert_eq!(r.status.reason.as_deref(), Some("deleted"));
        let r = Report::failed(&base, Failure::new(Reason::PodNotFound, "gone"), now);
        assert_eq!(r.result, OpResult::Failed);
        assert_eq!(r.status.phase, Some(Phase::Failed));
        assert_eq!(r.status.message.as_deref(), Some("gone"));
    }
}
