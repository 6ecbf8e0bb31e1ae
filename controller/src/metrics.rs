//! Controller metrics (prefix `podvault_`).
//!
//! Labels are bounded: `namespace` and `series` come from objects in the cluster (one value per
//! scheduled series), `reason`, `result` and `kind` are fixed strings from `match`es — never
//! error text. The two series gauges are recomputed from scratch on every sweep, so series
//! whose pods are gone disappear from them.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the controller exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Reconciliations started.
    pub reconciliations: IntCounter,
    /// Reconciliations that failed, by fixed reason.
    pub reconcile_errors: IntCounterVec,
    /// Time spent in one reconciliation.
    pub reconcile_duration: Histogram,
    /// PodVolumeBackups the controller tried to create, by result (`created`, `exists`).
    pub backups_scheduled: IntCounterVec,
    /// Requested volumes refused by the skip rules, by fixed reason.
    pub volumes_skipped: IntCounterVec,
    /// Finished objects deleted by history limits, by kind (`backup`, `restore`).
    pub history_deleted: IntCounterVec,
    /// Expected seconds between backups of a series (from its schedule).
    pub schedule_interval: GaugeVec,
    /// Completion time of the newest Completed backup of a series (unix seconds).
    pub last_success: GaugeVec,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounter::new(
            "podvault_controller_reconciliations_total",
            "Pod reconciliations started",
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "podvault_controller_reconcile_errors_total",
                "Pod reconciliations that failed, by reason",
            ),
            &["reason"],
        )?;
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                "podvault_controller_reconcile_duration_seconds",
                "Duration of one pod reconciliation",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
        )?;
        let backups_scheduled = IntCounterVec::new(
            Opts::new(
                "podvault_controller_backups_scheduled_total",
                "PodVolumeBackups the controller created (or found already created) per tick",
            ),
            &["namespace", "result"],
        )?;
        let volumes_skipped = IntCounterVec::new(
            Opts::new(
                "podvault_controller_volumes_skipped_total",
                "Requested volumes that podvault refuses to back up, by reason",
            ),
            &["reason"],
        )?;
        let history_deleted = IntCounterVec::new(
            Opts::new(
                "podvault_controller_history_deleted_total",
                "Finished PodVolumeBackups/Restores deleted by history limits",
            ),
            &["kind"],
        )?;
        let schedule_interval = GaugeVec::new(
            Opts::new(
                "podvault_backup_schedule_interval_seconds",
                "Expected seconds between two backups of a series",
            ),
            &["namespace", "series"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "podvault_backup_last_success_timestamp_seconds",
                "Completion time of the newest successful backup of a series",
            ),
            &["namespace", "series"],
        )?;
        let leader = IntGauge::new(
            "podvault_controller_leader",
            "1 while this replica is the leader",
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(backups_scheduled.clone()))?;
        registry.register(Box::new(volumes_skipped.clone()))?;
        registry.register(Box::new(history_deleted.clone()))?;
        registry.register(Box::new(schedule_interval.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            registry,
            reconciliations,
            reconcile_errors,
            reconcile_duration,
            backups_scheduled,
            volumes_skipped,
            history_deleted,
            schedule_interval,
            last_success,
            leader,
        })
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new().unwrap();
        m.reconcile_errors
            .with_label_values(&["create_backup"])
            .inc();
        m.schedule_interval
            .with_label_values(&["shop", "pvc/db"])
            .set(21600.0);
        let text = m.render();
        assert!(
            text.contains("podvault_controller_reconcile_errors_total{reason=\"create_backup\"} 1")
        );
        assert!(text.contains(
            "podvault_backup_schedule_interval_seconds{namespace=\"shop\",series=\"pvc/db\"} 21600"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("podvault_"), "{line}");
        }
    }
}
