//! Agent metrics (prefix `podvault_`) and the `/metrics` + `/healthz` server.
//!
//! Names and labels match `deploy/` (alerts and dashboard). Labels are bounded: `namespace`
//! and `series` come from the cluster (one value per backed-up series), `node` is this node,
//! `kind`, `result` and `reason` are fixed strings from `match`es — never error text.
//!
//! Failures are visible from the first one: alerts read the per-series
//! `podvault_backup_last_failure_timestamp_seconds` / `…_last_success_…` gauges (and the
//! restore ones per namespace), which exist from the moment a result is counted, rather than
//! `increase()` of a counter that is born at 1. The result counters are still created for
//! every result at 0 the first time a series (or namespace) is counted, so dashboards'
//! `increase()` sees later changes of any result.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the agent exports.
#[derive(Clone)]
pub struct AgentMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Finished backups by namespace, series and result.
    pub backups: IntCounterVec,
    /// Finished restores by namespace and result.
    pub restores: IntCounterVec,
    /// Backup duration by namespace.
    pub backup_duration: HistogramVec,
    /// Bytes read from volumes by backups.
    pub bytes_read: IntCounterVec,
    /// Bytes added to repositories by backups.
    pub bytes_added: IntCounterVec,
    /// Time of the last successful backup of a series (unix seconds).
    pub last_success: GaugeVec,
    /// Time of the last failed backup of a series (unix seconds).
    pub last_failure: GaugeVec,
    /// Time of the last successful restore in a namespace (unix seconds).
    pub restore_last_success: GaugeVec,
    /// Time of the last failed restore in a namespace (unix seconds).
    pub restore_last_failure: GaugeVec,
    /// Operations running on this node.
    pub in_flight: IntGaugeVec,
    /// Failed operations by kind and fixed reason.
    pub errors: IntCounterVec,
}

impl AgentMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let backups = IntCounterVec::new(
            Opts::new(
                "podvault_backups_total",
                "Finished pod volume backups by result",
            ),
            &["namespace", "series", "result"],
        )?;
        let restores = IntCounterVec::new(
            Opts::new(
                "podvault_restores_total",
                "Finished pod volume restores by result",
            ),
            &["namespace", "result"],
        )?;
        let backup_duration = HistogramVec::new(
            HistogramOpts::new(
                "podvault_backup_duration_seconds",
                "Duration of pod volume backups (claim to final status)",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0,
            ]),
            &["namespace"],
        )?;
        let bytes_read = IntCounterVec::new(
            Opts::new(
                "podvault_backup_bytes_read_total",
                "Bytes read from volumes by backups",
            ),
            &["namespace", "series"],
        )?;
        let bytes_added = IntCounterVec::new(
            Opts::new(
                "podvault_backup_bytes_added_total",
                "Bytes of new (deduplicated) data added to repositories by backups",
            ),
            &["namespace", "series"],
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "podvault_backup_last_success_timestamp_seconds",
                "Completion time of the last successful backup of a series on this node",
            ),
            &["namespace", "series"],
        )?;
        let last_failure = GaugeVec::new(
            Opts::new(
                "podvault_backup_last_failure_timestamp_seconds",
                "Completion time of the last failed backup of a series on this node",
            ),
            &["namespace", "series"],
        )?;
        let restore_last_success = GaugeVec::new(
            Opts::new(
                "podvault_restore_last_success_timestamp_seconds",
                "Completion time of the last successful restore in a namespace on this node",
            ),
            &["namespace"],
        )?;
        let restore_last_failure = GaugeVec::new(
            Opts::new(
                "podvault_restore_last_failure_timestamp_seconds",
                "Completion time of the last failed restore in a namespace on this node",
            ),
            &["namespace"],
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "podvault_operations_in_flight",
                "Backups and restores running on this node",
            ),
            &["node"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "podvault_agent_operation_errors_total",
                "Failed backups and restores by kind and reason",
            ),
            &["kind", "reason"],
        )?;
        registry.register(Box::new(backups.clone()))?;
        registry.register(Box::new(restores.clone()))?;
        registry.register(Box::new(backup_duration.clone()))?;
        registry.register(Box::new(bytes_read.clone()))?;
        registry.register(Box::new(bytes_added.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(last_failure.clone()))?;
        registry.register(Box::new(restore_last_success.clone()))?;
        registry.register(Box::new(restore_last_failure.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        Ok(AgentMetrics {
            registry,
            backups,
            restores,
            backup_duration,
            bytes_read,
            bytes_added,
            last_success,
            last_failure,
            restore_last_success,
            restore_last_failure,
            in_flight,
            errors,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric names, which are fixed above.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The router serving `/metrics` and `/healthz`.
pub fn router(metrics: AgentMetrics) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: AgentMetrics) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every metric name this module registers (the `"podvault_…"` literals above).
    fn declared_names() -> Vec<String> {
        let src = include_str!("metrics.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        src.split('"')
            .filter(|t| {
                t.starts_with("podvault_") && t.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn names_and_labels_match_deploy() {
        let m = AgentMetrics::new().unwrap();
        m.backups
            .with_label_values(&["shop", "pvc/db", "failed"])
            .inc();
        m.restores.with_label_values(&["shop", "completed"]).inc();
        m.backup_duration.with_label_values(&["shop"]).observe(3.0);
        m.bytes_read
            .with_label_values(&["shop", "pvc/db"])
            .inc_by(5);
        m.bytes_added
            .with_label_values(&["shop", "pvc/db"])
            .inc_by(2);
        m.last_success
            .with_label_values(&["shop", "pvc/db"])
            .set(1.7e9);
        m.last_failure
            .with_label_values(&["shop", "pvc/db"])
            .set(1.8e9);
        m.restore_last_success
            .with_label_values(&["shop"])
            .set(1.7e9);
        m.restore_last_failure
            .with_label_values(&["shop"])
            .set(1.8e9);
        m.in_flight.with_label_values(&["node-a"]).set(1);
        m.errors.with_label_values(&["backup", "io"]).inc();
        let text = m.render();
        for needle in [
            r#"podvault_backups_total{namespace="shop",result="failed",series="pvc/db"} 1"#,
            r#"podvault_restores_total{namespace="shop",result="completed"} 1"#,
            r#"podvault_backup_duration_seconds_bucket{namespace="shop",le="5"} 1"#,
            r#"podvault_backup_bytes_read_total{namespace="shop",series="pvc/db"} 5"#,
            r#"podvault_backup_bytes_added_total{namespace="shop",series="pvc/db"} 2"#,
            r#"podvault_backup_last_success_timestamp_seconds{namespace="shop",series="pvc/db"} 1700000000"#,
            r#"podvault_backup_last_failure_timestamp_seconds{namespace="shop",series="pvc/db"} 1800000000"#,
            r#"podvault_restore_last_success_timestamp_seconds{namespace="shop"} 1700000000"#,
            r#"podvault_restore_last_failure_timestamp_seconds{namespace="shop"} 1800000000"#,
            r#"podvault_operations_in_flight{node="node-a"} 1"#,
            r#"podvault_agent_operation_errors_total{kind="backup",reason="io"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Every declared metric is exported (so deploy/'s checks may trust the declarations).
        let names = declared_names();
        assert_eq!(names.len(), 11, "{names:?}");
        for name in &names {
            assert!(text.contains(&format!("\n{name}")), "{name} not exported");
        }
        // The alerts read the per-series gauges, never increase() of a counter born at 1.
        let rules = include_str!("../../../deploy/prometheus/podvault-rules.yaml");
        for name in [
            "podvault_backup_last_success_timestamp_seconds",
            "podvault_backup_last_failure_timestamp_seconds",
            "podvault_restore_last_success_timestamp_seconds",
            "podvault_restore_last_failure_timestamp_seconds",
        ] {
            assert!(rules.contains(name), "{name} not used by the alerts");
        }
    }

    #[tokio::test]
    async fn serves_metrics_and_healthz_on_loopback() {
        let m = AgentMetrics::new().unwrap();
        m.in_flight.with_label_values(&["node-a"]).set(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router(m)).await });
        for (path, needle) in [
            ("/healthz", "ok"),
            (
                "/metrics",
                r#"podvault_operations_in_flight{node="node-a"} 2"#,
            ),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            assert!(out.contains(needle), "{out}");
        }
        server.abort();
    }
}
