//! `podvault-controller` options: one struct shared by the command line and the environment.

use std::net::SocketAddr;

use clap::Parser;
use podvault_proto::k8s::VolumePolicy;

use crate::history::HistoryLimits;
use crate::plan::PlanOptions;

/// Options of the controller binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "podvault-controller",
    version,
    about = "Schedules podvault PodVolumeBackups from pod annotations"
)]
pub struct ControllerOptions {
    /// Schedule (5-field cron, UTC) of pods without a `backup.podvault.dev/schedule` annotation.
    #[arg(long, env = "PODVAULT_DEFAULT_SCHEDULE", default_value = "0 */6 * * *")]
    pub default_schedule: String,
    /// BackupRepository of pods without a `backup.podvault.dev/repository` annotation.
    #[arg(long, env = "PODVAULT_DEFAULT_REPOSITORY")]
    pub default_repository: Option<String>,
    /// Back up every volume of every pod, minus `backup.podvault.dev/backup-volumes-excludes`.
    #[arg(long, env = "PODVAULT_ALL_VOLUMES")]
    pub all_volumes: bool,
    /// Schedule hostPath volumes too (the agents must be started with the same flag).
    #[arg(long, env = "PODVAULT_ALLOW_HOST_PATH")]
    pub allow_host_path: bool,
    /// Completed PodVolumeBackups kept per series (at least 1).
    #[arg(long, env = "PODVAULT_SUCCESSFUL_HISTORY_LIMIT", default_value_t = 3)]
    pub successful_history_limit: usize,
    /// Failed or Canceled PodVolumeBackups kept per series.
    #[arg(long, env = "PODVAULT_FAILED_HISTORY_LIMIT", default_value_t = 3)]
    pub failed_history_limit: usize,
    /// Finished PodVolumeRestores kept per target pod volume (per outcome class).
    #[arg(long, env = "PODVAULT_RESTORE_HISTORY_LIMIT", default_value_t = 3)]
    pub restore_history_limit: usize,
    /// Address of the `/metrics` and `/healthz` server.
    #[arg(long, env = "PODVAULT_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        env = "PODVAULT_LEASE_NAME",
        default_value = "podvault-controller"
    )]
    pub lease_name: String,
    /// Image of the maintenance Jobs (prune, check, drills): the podvault image.
    #[arg(
        long,
        env = "PODVAULT_MAINTENANCE_IMAGE",
        default_value = "ghcr.io/podvault/podvault:0.1.0"
    )]
    pub maintenance_image: String,
    /// Service account of the maintenance Jobs.
    #[arg(
        long,
        env = "PODVAULT_MAINTENANCE_SERVICE_ACCOUNT",
        default_value = "podvault-maintenance"
    )]
    pub maintenance_service_account: String,
    /// Memory limit of a maintenance Job. Prune needs about 300 bytes per index entry
    /// (3 GB for a 10 M-entry index).
    #[arg(long, env = "PODVAULT_MAINTENANCE_MEMORY", default_value = "4Gi")]
    pub maintenance_memory: String,
    /// Longest a maintenance run may take, in hours.
    #[arg(
        long,
        env = "PODVAULT_MAINTENANCE_DEADLINE_HOURS",
        default_value_t = 12
    )]
    pub maintenance_deadline_hours: u32,
    /// Seconds between maintenance ticks (0: no scheduled maintenance from this controller).
    #[arg(long, env = "PODVAULT_MAINTENANCE_INTERVAL", default_value_t = 60)]
    pub maintenance_interval_secs: u64,
    /// Namespace of the Lease (the controller's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "podvault")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (its pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration in seconds; renewed every third of it.
    #[arg(long, env = "PODVAULT_LEASE_DURATION", default_value_t = 15)]
    pub lease_duration_secs: u32,
    /// Seconds a deleted PodVolumeBackup/Restore that is still InProgress may wait for its
    /// agent to stop it before the controller removes the agent's finalizer anyway (the
    /// agent is gone, or its node is down).
    #[arg(long, env = "PODVAULT_FINALIZER_TIMEOUT", default_value_t = 300)]
    pub finalizer_timeout_secs: u64,
    /// Log format: `text` (no colours unless on a terminal) or `json` (one object per line).
    #[arg(
        long,
        env = "PODVAULT_LOG_FORMAT",
        default_value = "text",
        value_parser = ["text", "json"]
    )]
    pub log_format: String,
    /// Seconds between history/metrics sweeps.
    #[arg(long, env = "PODVAULT_SWEEP_INTERVAL", default_value_t = 60)]
    pub sweep_interval_secs: u64,
}

impl ControllerOptions {
    /// How maintenance Jobs are made.
    pub fn maintenance_options(&self) -> crate::maintenance::MaintenanceOptions {
        crate::maintenance::MaintenanceOptions {
            namespace: self.lease_namespace.clone(),
            image: self.maintenance_image.clone(),
            service_account: self.maintenance_service_account.clone(),
            memory: self.maintenance_memory.clone(),
            deadline: chrono::Duration::hours(i64::from(self.maintenance_deadline_hours.max(1))),
        }
    }

    /// The planning part of the options.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            default_schedule: self.default_schedule.clone(),
            default_repository: self.default_repository.clone(),
            all_volumes: self.all_volumes,
            volume_policy: VolumePolicy {
                allow_host_path: self.allow_host_path,
                ..VolumePolicy::default()
            },
        }
    }

    /// History limits for PodVolumeBackups.
    pub fn backup_history(&self) -> HistoryLimits {
        HistoryLimits {
            successful: self.successful_history_limit.max(1),
            failed: self.failed_history_limit,
        }
    }

    /// History limits for PodVolumeRestores.
    pub fn restore_history(&self) -> HistoryLimits {
        HistoryLimits {
            successful: self.restore_history_limit.max(1),
            failed: self.restore_history_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_floor_of_one_success() {
        let o = ControllerOptions::try_parse_from([
            "podvault-controller",
            "--successful-history-limit",
            "0",
        ])
        .unwrap();
        assert_eq!(o.default_schedule, "0 */6 * * *");
        assert_eq!(o.backup_history().successful, 1);
        assert_eq!(o.backup_history().failed, 3);
        assert!(!o.plan_options().volume_policy.allow_host_path);
    }
}
