//! Controller metrics (prefix `podvault_`).
//!
//! Labels are bounded: `namespace` and `series` come from objects in the cluster (one value per
//! scheduled series), `reason`, `result` and `kind` are fixed strings from `match`es — never
//! error text. The series gauges (`podvault_backup_*` with `namespace` and `series`) are
//! recomputed from scratch on every sweep from [`crate::history::series_states`], so series of
//! deleted pods and retired series disappear from them; they are what the shipped alerts
//! (`deploy/prometheus/podvault-rules.yaml`) read, together with the agent's gauges of the
//! same names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use podvault_proto::crd::Phase;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::history::SeriesState;

/// When this process first tracked each (namespace, series label).
pub type SeriesSeen = Arc<Mutex<BTreeMap<(String, String), DateTime<Utc>>>>;

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
    /// Completion time of the newest Failed backup of a series (unix seconds).
    pub last_failure: GaugeVec,
    /// When a tracked series was first seen (unix seconds); present for every tracked series.
    pub first_seen: GaugeVec,
    /// Creation (`New`) or start (`InProgress`) time of the oldest unfinished backup of a
    /// series, by `phase`.
    pub oldest_unfinished: GaugeVec,
    /// When the series gauges were last refreshed (unix seconds; the time the sweep began).
    pub last_sweep: Gauge,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// Last successful maintenance run per repository and kind (unix seconds).
    pub repository_maintenance_last_success: GaugeVec,
    /// Last failed maintenance run per repository and kind (unix seconds).
    pub repository_maintenance_last_failure: GaugeVec,
    /// Expected seconds between maintenance runs per repository and kind (its schedule).
    pub repository_maintenance_interval: GaugeVec,
    /// Stored bytes per repository (as of its last maintenance run).
    pub repository_size: GaugeVec,
    /// Snapshots per repository (as of its last maintenance run).
    pub repository_snapshots: GaugeVec,
    /// Packs per repository (as of its last maintenance run).
    pub repository_packs: GaugeVec,
    /// Last passing restore drill per series (unix seconds).
    pub drill_last_success: GaugeVec,
    /// Last failing restore drill per series (unix seconds).
    pub drill_last_failure: GaugeVec,
    /// Creation time of each BackupRepository (unix seconds).
    pub repository_created: GaugeVec,
    /// Per repository: twice the time a full rotation of its drills takes.
    pub drill_window: GaugeVec,
    /// The sweep's memory of when each series was first tracked (see [`SeriesState`]).
    pub series_seen: SeriesSeen,
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
        let last_failure = GaugeVec::new(
            Opts::new(
                "podvault_backup_last_failure_timestamp_seconds",
                "Completion time of the newest failed backup of a series",
            ),
            &["namespace", "series"],
        )?;
        let first_seen = GaugeVec::new(
            Opts::new(
                "podvault_backup_series_first_seen_timestamp_seconds",
                "When a tracked series was first seen (its oldest PodVolumeBackup, or when the \
                 controller first tracked it): where staleness counts from before any success",
            ),
            &["namespace", "series"],
        )?;
        let oldest_unfinished = GaugeVec::new(
            Opts::new(
                "podvault_backup_oldest_unfinished_timestamp_seconds",
                "Creation (New) or start (InProgress) time of the oldest unfinished \
                 PodVolumeBackup of a series",
            ),
            &["namespace", "series", "phase"],
        )?;
        let last_sweep = Gauge::new(
            "podvault_controller_last_sweep_timestamp_seconds",
            "When the controller last refreshed the series gauges from the PodVolumeBackups",
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
        registry.register(Box::new(last_failure.clone()))?;
        registry.register(Box::new(first_seen.clone()))?;
        registry.register(Box::new(oldest_unfinished.clone()))?;
        registry.register(Box::new(last_sweep.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let g = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let repository_maintenance_last_success = gauge(
            "podvault_repository_maintenance_last_success_timestamp_seconds",
            "End of the last successful maintenance run (prune, check, drill) of a repository",
            &["repository", "kind"],
        )?;
        let repository_maintenance_last_failure = gauge(
            "podvault_repository_maintenance_last_failure_timestamp_seconds",
            "End of the last failed maintenance run (prune, check, drill) of a repository",
            &["repository", "kind"],
        )?;
        let repository_maintenance_interval = gauge(
            "podvault_repository_maintenance_interval_seconds",
            "Expected seconds between maintenance runs of a repository (from its schedule)",
            &["repository", "kind"],
        )?;
        let repository_size = gauge(
            "podvault_repository_size_bytes",
            "Bytes stored in a repository's packs, as of its last maintenance run",
            &["repository"],
        )?;
        let repository_snapshots = gauge(
            "podvault_repository_snapshots",
            "Snapshots in a repository, as of its last maintenance run",
            &["repository"],
        )?;
        let repository_packs = gauge(
            "podvault_repository_packs",
            "Packs in a repository, as of its last maintenance run",
            &["repository"],
        )?;
        let drill_last_success = gauge(
            "podvault_restore_drill_last_success_timestamp_seconds",
            "When a restore drill of a series' latest snapshot last passed",
            &["repository", "namespace", "series"],
        )?;
        let drill_last_failure = gauge(
            "podvault_restore_drill_last_failure_timestamp_seconds",
            "When a restore drill of a series' latest snapshot last failed",
            &["repository", "namespace", "series"],
        )?;
        let repository_created = gauge(
            "podvault_repository_created_timestamp_seconds",
            "When a BackupRepository was created",
            &["repository"],
        )?;
        let drill_window = gauge(
            "podvault_restore_drill_window_seconds",
            "Twice the time a full rotation of a repository's restore drills takes",
            &["repository"],
        )?;
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
            last_failure,
            first_seen,
            oldest_unfinished,
            last_sweep,
            leader,
            repository_maintenance_last_success,
            repository_maintenance_last_failure,
            repository_maintenance_interval,
            repository_size,
            repository_snapshots,
            repository_packs,
            drill_last_success,
            drill_last_failure,
            repository_created,
            drill_window,
            series_seen: SeriesSeen::default(),
        })
    }

    /// Replaces every series gauge with `states` (series not in it disappear) and records
    /// `swept_at` as the time they describe.
    pub fn set_series(
        &self,
        states: &BTreeMap<(String, String), SeriesState>,
        swept_at: DateTime<Utc>,
    ) {
        let secs = |t: DateTime<Utc>| t.timestamp() as f64;
        for g in [
            &self.schedule_interval,
            &self.last_success,
            &self.last_failure,
            &self.first_seen,
            &self.oldest_unfinished,
        ] {
            g.reset();
        }
        for ((ns, series), s) in states {
            let labels = [ns.as_str(), series.as_str()];
            self.first_seen
                .with_label_values(&labels)
                .set(secs(s.first_seen));
            if let Some(i) = s.interval {
                self.schedule_interval.with_label_values(&labels).set(i);
            }
            for (gauge, value) in [
                (&self.last_success, s.last_success),
                (&self.last_failure, s.last_failure),
            ] {
                if let Some(t) = value {
                    gauge.with_label_values(&labels).set(secs(t));
                }
            }
            for (phase, value) in [
                (Phase::New, s.oldest_new),
                (Phase::InProgress, s.oldest_in_progress),
            ] {
                if let Some(t) = value {
                    self.oldest_unfinished
                        .with_label_values(&[ns.as_str(), series.as_str(), phase.as_str()])
                        .set(secs(t));
                }
            }
        }
        self.last_sweep.set(secs(swept_at));
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

    #[test]
    fn series_gauges_are_replaced_each_sweep() {
        let m = Metrics::new().unwrap();
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        let state = SeriesState {
            interval: None,
            first_seen: t(100),
            last_success: None,
            last_failure: Some(t(200)),
            oldest_new: Some(t(300)),
            oldest_in_progress: None,
        };
        let key = ("shop".to_string(), "pod/job-1/data".to_string());
        m.set_series(&[(key, state)].into(), t(400));
        let text = m.render();
        for needle in [
            r#"podvault_backup_series_first_seen_timestamp_seconds{namespace="shop",series="pod/job-1/data"} 100"#,
            r#"podvault_backup_last_failure_timestamp_seconds{namespace="shop",series="pod/job-1/data"} 200"#,
            r#"podvault_backup_oldest_unfinished_timestamp_seconds{namespace="shop",phase="New",series="pod/job-1/data"} 300"#,
            "podvault_controller_last_sweep_timestamp_seconds 400",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Not scheduled: no interval; no success or InProgress backup: no sample.
        for absent in [
            "podvault_backup_schedule_interval_seconds{",
            "podvault_backup_last_success_timestamp_seconds{",
            "phase=\"InProgress\"",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // The pod is gone: the next sweep drops every series gauge.
        m.set_series(&BTreeMap::new(), t(460));
        let text = m.render();
        assert!(!text.contains("series=\"pod/job-1/data\""), "{text}");
        assert!(text.contains("podvault_controller_last_sweep_timestamp_seconds 460"));
    }
}
