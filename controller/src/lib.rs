//! The podvault controller.
//!
//! It watches pods (one watch, all namespaces), and for every pod that opts in with
//! `backup.podvault.dev/backup-volumes` (or Velero's `backup.velero.io/backup-volumes`), or
//! every pod in all-volumes mode, creates one PodVolumeBackup per volume and schedule tick. The
//! agents on the nodes execute them, apply retention after success, and report status. A sweep
//! deletes finished PodVolumeBackups/Restores beyond the history limits and refreshes the
//! series gauges the staleness alert joins on. One replica acts at a time (a Lease).
//!
//! Layout: [`schedule`] (cron ticks), [`plan`] (what to create, pure), [`history`] (what to
//! delete, pure), [`reconciler`] (the API calls), [`lease`] (leader election), [`metrics`],
//! [`server`] (`/metrics`, `/healthz`), [`options`]. The controller never depends on the
//! engine: retention is carried to the agent in the PodVolumeBackup spec.

pub mod history;
pub mod lease;
pub mod metrics;
pub mod options;
pub mod plan;
pub mod reconciler;
pub mod schedule;
pub mod server;

use kube::CustomResourceExt;
use podvault_proto::crd::{BackupRepository, PodVolumeBackup, PodVolumeRestore};

/// All CRDs as one multi-document YAML stream: what `crdgen` prints and `deploy/crds/` holds.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [
        PodVolumeBackup::crd(),
        PodVolumeRestore::crd(),
        BackupRepository::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}
