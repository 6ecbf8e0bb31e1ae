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
//! delete, pure), [`reconciler`] (the API calls), [`operations`] (routing of PVBs/PVRs to
//! their node's agent, and the finalizer's safety net), [`lease`] (leader election), [`metrics`],
//! [`server`] (`/metrics`, `/healthz`), [`options`]. The controller never depends on the
//! engine: retention is carried to the agent in the PodVolumeBackup spec.

pub mod history;
pub mod lease;
pub mod maintenance;
pub mod metrics;
pub mod operations;
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
        let mut value =
            serde_json::to_value(&crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
        strip_unknown_formats(&mut value);
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&value)?);
    }
    Ok(out)
}

/// Removes `format` values the API server does not know (schemars writes `uint64`, `uint32`,
/// … for unsigned integers; `kubectl apply` warns "unrecognized format" for each). The
/// `minimum: 0` schemars writes beside them keeps the constraint.
pub fn strip_unknown_formats(v: &mut serde_json::Value) {
    const KNOWN: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "binary",
        "date",
        "date-time",
        "password",
        "uri",
        "uuid",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "duration",
    ];
    match v {
        serde_json::Value::Object(map) => {
            let unknown = map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| !KNOWN.contains(&f));
            if unknown {
                map.remove("format");
            }
            for child in map.values_mut() {
                strip_unknown_formats(child);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_unknown_formats),
        _ => {}
    }
}
