//! Scheduled repository maintenance: prune, check and restore drills, one Job at a time per
//! BackupRepository.
//!
//! Every tick (the leader only) and for every BackupRepository with maintenance enabled:
//! 1. The repository's Lease (`podvault-maintenance-<repository>`, in the controller's
//!    namespace) names the Job that holds it, if any. While that Job runs, nothing else
//!    starts. Once it has ended (or is gone), the Lease is released; a run the Job did not
//!    record itself (killed, out of memory, deleted) is recorded as Failed from the Job's
//!    state, so a crashed runner still shows in the history and the metrics.
//! 2. With the Lease free, the first kind that is due ([`due_kinds`]: its latest cron time
//!    lies after its last start, or after the repository's creation when it never ran —
//!    missed times are made up once) gets a Job with a deterministic name (repository,
//!    kind, cron time): the Lease is taken in the Job's name first (a conflict means
//!    another replica won), then the Job is created (an existing one is fine). The runner
//!    in the Job refuses to start unless the Lease names it.
//!
//! The Lease outlives controller restarts and leader changes, so exactly one run per
//! repository is active cluster-wide. Its duration is the Job's deadline plus a margin: a
//! Lease whose Job vanished without trace is free again after it.
//!
//! Metrics are read from the BackupRepositories' status ([`export`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodSpec, PodTemplateSpec, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use podvault_proto::crd::{
    maintenance_job_name, maintenance_lease_name as lease_name, BackupRepository, MaintenanceKind,
    MaintenanceRun, MaintenanceStatus,
};

use crate::lease::try_acquire_or_renew;
use crate::plan::MANAGER;
use crate::schedule::Schedule;

/// Label naming the repository on maintenance Jobs.
pub const REPOSITORY_LABEL: &str = "podvault.dev/maintenance-repository";
/// Label naming the kind on maintenance Jobs.
pub const KIND_LABEL: &str = "podvault.dev/maintenance-kind";

/// How maintenance Jobs are made.
#[derive(Debug, Clone, PartialEq)]
pub struct MaintenanceOptions {
    /// Namespace of the Jobs, Leases and Secrets (the controller's).
    pub namespace: String,
    /// Image of the Jobs (the podvault image).
    pub image: String,
    /// Service account of the Jobs.
    pub service_account: String,
    /// Memory limit of a Job (the bound the runner must fit in).
    pub memory: String,
    /// Longest a run may take before Kubernetes stops it.
    pub deadline: Duration,
}

/// The Job of run `kind` of `repository` for cron time `slot`.
pub fn job_name(repository: &str, kind: MaintenanceKind, slot: DateTime<Utc>) -> String {
    maintenance_job_name(repository, kind, slot.timestamp())
}

/// The kinds due at `now`, in [`MaintenanceKind::ALL`] order, each with its cron time.
/// A kind is due when its latest cron time at or before `now` lies after its last start
/// (or, never started, after `created`); an empty schedule never runs. Schedules that do not
/// parse are returned as errors (reported, the other kinds still run).
pub fn due_kinds(
    maintenance: &podvault_proto::crd::Maintenance,
    status: Option<&MaintenanceStatus>,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<(MaintenanceKind, DateTime<Utc>)>, Vec<String>) {
    let (mut due, mut errors) = (Vec::new(), Vec::new());
    if !maintenance.enabled {
        return (due, errors);
    }
    for kind in MaintenanceKind::ALL {
        let text = kind.schedule(maintenance);
        if text.trim().is_empty() {
            continue;
        }
        let schedule = match Schedule::parse(text) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("spec.maintenance.{kind}.schedule: {e}"));
                continue;
            }
        };
        let Some(slot) = schedule.latest_tick(now) else {
            continue;
        };
        let since = status
            .and_then(|s| s.last_start.get(kind))
            .and_then(to_chrono)
            .unwrap_or(created);
        if slot > since {
            due.push((kind, slot));
        }
    }
    (due, errors)
}

/// Expected seconds between runs of `kind` (for the not-run alert), if scheduled.
pub fn interval(
    maintenance: &podvault_proto::crd::Maintenance,
    kind: MaintenanceKind,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if !maintenance.enabled {
        return None;
    }
    Schedule::parse(kind.schedule(maintenance))
        .ok()?
        .interval_after(now)
}

/// Twice the time a full rotation of the drills takes: `series` series, `per_run` a run,
/// one run per `interval` (seconds).
pub fn drill_window(interval: Duration, series: usize, per_run: u32) -> i64 {
    let runs = series.div_ceil(per_run.max(1) as usize).max(1) as i64;
    2 * interval.num_seconds() * runs
}

fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(t.timestamp()).unwrap_or_default())
}

/// How a Job ended: `Some(true)` succeeded, `Some(false)` failed, `None` still running.
pub fn job_result(job: &Job) -> Option<(bool, String)> {
    let status = job.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" | "SuccessCriteriaMet" => return Some((true, "completed".into())),
            "Failed" | "FailureTarget" => {
                return Some((
                    false,
                    format!(
                        "Job {} failed: {} {}",
                        job.name_any(),
                        c.reason.as_deref().unwrap_or_default(),
                        c.message.as_deref().unwrap_or_default()
                    )
                    .trim_end()
                    .to_string(),
                ))
            }
            _ => {}
        }
    }
    None
}

/// The run to record for a Job that ended without recording its own end (`None` when the
/// runner recorded it: its entry is no longer `Running`).
pub fn unrecorded_end(
    status: Option<&MaintenanceStatus>,
    job: &str,
    kind: MaintenanceKind,
    ended: Option<(bool, String)>,
    now: DateTime<Utc>,
) -> Option<MaintenanceRun> {
    let entry = status.and_then(|s| s.runs.iter().find(|r| r.job == job));
    if entry.is_some_and(|r| r.result != "Running") {
        return None;
    }
    let (ok, why) = ended.unwrap_or((false, format!("Job {job} disappeared")));
    Some(MaintenanceRun {
        kind,
        job: job.to_string(),
        started: entry.map_or_else(|| to_time(now), |r| r.started.clone()),
        finished: Some(to_time(now)),
        // A Job that succeeded without recording its run did not do its work.
        result: "Failed".into(),
        bytes_freed: None,
        verified: None,
        message: match ok {
            true => format!("{why}, but the run recorded no result"),
            false => format!("{why} before recording a result (see the Job's pod)"),
        },
    })
}

/// The Job running `kind` of `repository`.
pub fn job_for(
    repository: &str,
    kind: MaintenanceKind,
    name: &str,
    opts: &MaintenanceOptions,
) -> Job {
    let labels: BTreeMap<String, String> = [
        ("app.kubernetes.io/name", "podvault-maintenance"),
        ("app.kubernetes.io/part-of", "podvault"),
        (REPOSITORY_LABEL, repository),
        (KIND_LABEL, kind.as_str()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let quantity = |s: &str| Quantity(s.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(opts.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(opts.deadline.num_seconds()),
            ttl_seconds_after_finished: Some(7 * 24 * 3600),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(opts.service_account.clone()),
                    restart_policy: Some("Never".into()),
                    containers: vec![Container {
                        name: "maintenance".into(),
                        image: Some(opts.image.clone()),
                        image_pull_policy: Some("IfNotPresent".into()),
                        args: Some(vec![
                            "maintenance".into(),
                            "--repository".into(),
                            repository.into(),
                            "--kind".into(),
                            kind.as_str().into(),
                            "--job".into(),
                            name.into(),
                        ]),
                        env: Some(vec![
                            EnvVar {
                                name: "POD_NAMESPACE".into(),
                                value_from: Some(EnvVarSource {
                                    field_ref: Some(ObjectFieldSelector {
                                        field_path: "metadata.namespace".into(),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                            env("PODVAULT_CACHE_DIR", "/var/cache/podvault"),
                            env("PODVAULT_LOG_FORMAT", "json"),
                            env("RUST_LOG", "info"),
                        ]),
                        resources: Some(ResourceRequirements {
                            requests: Some(
                                [("cpu", "100m"), ("memory", "256Mi")]
                                    .into_iter()
                                    .map(|(k, v)| (k.to_string(), quantity(v)))
                                    .collect(),
                            ),
                            limits: Some(
                                [("memory".to_string(), quantity(&opts.memory))]
                                    .into_iter()
                                    .collect(),
                            ),
                            ..Default::default()
                        }),
                        security_context: Some(SecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(65532),
                            run_as_group: Some(65532),
                            read_only_root_filesystem: Some(true),
                            allow_privilege_escalation: Some(false),
                            capabilities: Some(Capabilities {
                                drop: Some(vec!["ALL".into()]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        volume_mounts: Some(vec![
                            VolumeMount {
                                name: "cache".into(),
                                mount_path: "/var/cache/podvault".into(),
                                ..Default::default()
                            },
                            VolumeMount {
                                name: "tmp".into(),
                                mount_path: "/tmp".into(),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }],
                    volumes: Some(vec![
                        Volume {
                            name: "cache".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// What one tick did for one repository (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickAction {
    /// Maintenance is off, or nothing is due.
    Idle,
    /// A Job holds the Lease and runs.
    Running(String),
    /// The holder Job ended; the Lease was released (and its run recorded if it had not).
    Released(String),
    /// A Job was started.
    Started(String),
    /// Another replica took the Lease first.
    Lost,
}

/// One maintenance tick for one repository.
pub async fn tick(
    client: &kube::Client,
    repo: &BackupRepository,
    opts: &MaintenanceOptions,
    now: DateTime<Utc>,
) -> Result<TickAction, kube::Error> {
    let name = repo.name_any();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &opts.namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &opts.namespace);
    let lease_name = lease_name(&name);
    let status = repo.status.as_ref().and_then(|s| s.maintenance.as_ref());
    let lease = leases.get_opt(&lease_name).await?;
    let holder = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty());
    if let (Some(holder), Some(mut lease)) = (holder, lease) {
        let job = jobs.get_opt(&holder).await?;
        let ended = job.as_ref().and_then(job_result);
        if job.is_some() && ended.is_none() {
            return Ok(TickAction::Running(holder));
        }
        let kind = job
            .as_ref()
            .and_then(|j| j.labels().get(KIND_LABEL).cloned())
            .and_then(|k| k.parse().ok())
            .or_else(|| {
                status
                    .and_then(|s| s.runs.iter().find(|r| r.job == holder))
                    .map(|r| r.kind)
            });
        if let Some(kind) = kind {
            if let Some(run) = unrecorded_end(status, &holder, kind, ended, now) {
                record(client, &name, run).await?;
            }
        }
        // Release: an empty holder, conditional on the version read.
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        let pp = PostParams {
            field_manager: Some(MANAGER.to_string()),
            ..Default::default()
        };
        match leases.replace(&lease_name, &pp, &lease).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_conflict() => return Ok(TickAction::Lost),
            Err(e) => return Err(e),
        }
        return Ok(TickAction::Released(holder));
    }
    let created = repo
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(to_chrono)
        .unwrap_or(now);
    let (due, errors) = due_kinds(&repo.spec.maintenance, status, created, now);
    for e in errors {
        tracing::warn!(repository = %name, error = %e, "maintenance schedule");
    }
    let Some((kind, slot)) = due.first().copied() else {
        return Ok(TickAction::Idle);
    };
    let job = job_name(&name, kind, slot);
    let hold = opts.deadline + Duration::minutes(5);
    if !try_acquire_or_renew(&leases, &lease_name, &job, now, hold).await? {
        return Ok(TickAction::Lost);
    }
    let pp = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    };
    match jobs.create(&pp, &job_for(&name, kind, &job, opts)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => {}
        Err(e) => return Err(e),
    }
    // The start is recorded now, so a Job that never runs does not start again and again.
    record(
        client,
        &name,
        MaintenanceRun {
            kind,
            job: job.clone(),
            started: to_time(now),
            finished: None,
            result: "Running".into(),
            bytes_freed: None,
            verified: None,
            message: format!("scheduled for {}", slot.to_rfc3339()),
        },
    )
    .await?;
    Ok(TickAction::Started(job))
}

/// Records `run` in the repository's `status.maintenance` (read, change, write back on the
/// version read).
async fn record(client: &kube::Client, name: &str, run: MaintenanceRun) -> Result<(), kube::Error> {
    let repos: Api<BackupRepository> = Api::all(client.clone());
    for _ in 0..5 {
        let obj = repos.get_status(name).await?;
        let mut m = obj
            .status
            .as_ref()
            .and_then(|s| s.maintenance.clone())
            .unwrap_or_default();
        m.record(run.clone());
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": obj.metadata.resource_version},
            "status": {"maintenance": m},
        });
        let pp = PatchParams {
            field_manager: Some(MANAGER.to_string()),
            ..Default::default()
        };
        match repos.patch_status(name, &pp, &Patch::Merge(&patch)).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets the repository gauges from the BackupRepositories' status.
pub fn export(
    metrics: &crate::metrics::Metrics,
    repos: &[std::sync::Arc<BackupRepository>],
    now: DateTime<Utc>,
) {
    metrics.repository_maintenance_last_success.reset();
    metrics.repository_maintenance_last_failure.reset();
    metrics.repository_maintenance_interval.reset();
    metrics.repository_size.reset();
    metrics.repository_snapshots.reset();
    metrics.repository_packs.reset();
    metrics.drill_last_success.reset();
    metrics.drill_last_failure.reset();
    metrics.repository_created.reset();
    metrics.drill_window.reset();
    let secs = |t: &Time| t.0.as_second() as f64;
    for repo in repos {
        let name = repo.name_any();
        if let Some(t) = &repo.metadata.creation_timestamp {
            metrics
                .repository_created
                .with_label_values(&[&name])
                .set(secs(t));
        }
        for kind in MaintenanceKind::ALL {
            if let Some(i) = interval(&repo.spec.maintenance, kind, now) {
                metrics
                    .repository_maintenance_interval
                    .with_label_values(&[&name, kind.as_str()])
                    .set(i.num_seconds() as f64);
            }
        }
        let Some(m) = repo.status.as_ref().and_then(|s| s.maintenance.as_ref()) else {
            continue;
        };
        for kind in MaintenanceKind::ALL {
            if let Some(t) = m.last_success.get(kind) {
                metrics
                    .repository_maintenance_last_success
                    .with_label_values(&[&name, kind.as_str()])
                    .set(secs(t));
            }
            if let Some(t) = m.last_failure.get(kind) {
                metrics
                    .repository_maintenance_last_failure
                    .with_label_values(&[&name, kind.as_str()])
                    .set(secs(t));
            }
        }
        for (gauge, value) in [
            (&metrics.repository_size, m.size_bytes),
            (&metrics.repository_snapshots, m.snapshots),
            (&metrics.repository_packs, m.packs),
        ] {
            if let Some(v) = value {
                gauge.with_label_values(&[&name]).set(v as f64);
            }
        }
        if let Some(i) = interval(&repo.spec.maintenance, MaintenanceKind::Drill, now) {
            metrics
                .drill_window
                .with_label_values(&[&name])
                .set(drill_window(
                    i,
                    m.drills.len(),
                    repo.spec.maintenance.drill.series_per_run,
                ) as f64);
        }
        for d in &m.drills {
            let ns = d.series.split('/').next().unwrap_or_default();
            if let Some(t) = &d.last_success {
                metrics
                    .drill_last_success
                    .with_label_values(&[&name, ns, &d.series])
                    .set(secs(t));
            }
            if let Some(t) = &d.last_failure {
                metrics
                    .drill_last_failure
                    .with_label_values(&[&name, ns, &d.series])
                    .set(secs(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_proto::crd::Maintenance;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn started(kind: MaintenanceKind, at: &str) -> MaintenanceStatus {
        let mut m = MaintenanceStatus::default();
        m.record(MaintenanceRun {
            kind,
            job: format!("job-{kind}-{at}"),
            started: to_time(t(at)),
            finished: None,
            result: "Running".into(),
            bytes_freed: None,
            verified: None,
            message: String::new(),
        });
        m
    }

    #[test]
    fn due_after_the_latest_cron_time_once_for_missed_runs() {
        let m = Maintenance::default(); // prune 03:00, drill 04:30, check 05:00 daily
        let created = t("2026-01-01T12:00:00Z");
        // Created at noon: nothing due before the first 03:00 after creation.
        let (due, _) = due_kinds(&m, None, created, t("2026-01-02T02:59:00Z"));
        assert!(due.is_empty(), "{due:?}");
        let (due, _) = due_kinds(&m, None, created, t("2026-01-02T03:00:30Z"));
        assert_eq!(
            due,
            vec![(MaintenanceKind::Prune, t("2026-01-02T03:00:00Z"))]
        );
        // Controller down for three days: one prune for the latest time, not three.
        let s = started(MaintenanceKind::Prune, "2026-01-02T03:00:30Z");
        let (due, _) = due_kinds(&m, Some(&s), created, t("2026-01-05T03:10:00Z"));
        assert_eq!(
            due,
            vec![
                (MaintenanceKind::Prune, t("2026-01-05T03:00:00Z")),
                (MaintenanceKind::Check, t("2026-01-04T05:00:00Z")),
                (MaintenanceKind::Drill, t("2026-01-04T04:30:00Z")),
            ]
        );
        // Started for the latest time: not due again until the next.
        let s = started(MaintenanceKind::Prune, "2026-01-05T03:00:10Z");
        let (due, _) = due_kinds(&m, Some(&s), created, t("2026-01-05T04:00:00Z"));
        assert!(
            due.iter().all(|(k, _)| *k != MaintenanceKind::Prune),
            "{due:?}"
        );
    }

    #[test]
    fn disabled_empty_and_invalid_schedules() {
        let now = t("2026-01-05T06:00:00Z");
        let created = t("2026-01-01T00:00:00Z");
        let off = Maintenance {
            enabled: false,
            ..Maintenance::default()
        };
        assert!(due_kinds(&off, None, created, now).0.is_empty());
        let mut m = Maintenance::default();
        m.check.schedule = String::new();
        m.drill.schedule = "61 * * * *".into();
        let (due, errors) = due_kinds(&m, None, created, now);
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].0, MaintenanceKind::Prune);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("spec.maintenance.drill.schedule"),
            "{errors:?}"
        );
        assert_eq!(
            interval(&Maintenance::default(), MaintenanceKind::Prune, now),
            Some(Duration::days(1))
        );
        assert_eq!(interval(&off, MaintenanceKind::Prune, now), None);
    }

    #[test]
    fn drill_windows_cover_a_full_rotation_twice() {
        let day = Duration::days(1);
        assert_eq!(drill_window(day, 0, 20), 2 * 86400);
        assert_eq!(drill_window(day, 20, 20), 2 * 86400);
        assert_eq!(drill_window(day, 21, 20), 4 * 86400);
        assert_eq!(
            drill_window(day, 100, 0),
            200 * 86400,
            "0 per run counts as 1"
        );
    }

    #[test]
    fn job_names_are_deterministic_and_valid() {
        let slot = t("2026-01-05T03:00:00Z");
        let a = job_name("shared", MaintenanceKind::Prune, slot);
        assert_eq!(a, job_name("shared", MaintenanceKind::Prune, slot));
        assert_ne!(a, job_name("shared", MaintenanceKind::Check, slot));
        assert_ne!(
            a,
            job_name("shared", MaintenanceKind::Prune, t("2026-01-06T03:00:00Z"))
        );
        assert!(a.starts_with("podvault-prune-shared-"), "{a}");
        let long = job_name(&"x".repeat(250), MaintenanceKind::Drill, slot);
        assert!(long.len() <= 63, "{long}");
        assert!(lease_name(&"x".repeat(250)).len() <= 63);
    }

    fn job_with(condition: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "j"},
            "status": {"conditions": [{"type": condition, "status": "True", "reason": "DeadlineExceeded"}]}
        }))
        .unwrap()
    }

    #[test]
    fn ended_jobs_and_runs_they_did_not_record() {
        assert!(job_result(&job_with("Complete")).unwrap().0);
        let (ok, why) = job_result(&job_with("Failed")).unwrap();
        assert!(!ok);
        assert!(why.contains("DeadlineExceeded"), "{why}");
        assert!(job_result(&Job::default()).is_none());
        let now = t("2026-01-05T06:00:00Z");
        // The runner was killed while Running: recorded as Failed with the Job's reason.
        let s = started(MaintenanceKind::Check, "2026-01-05T05:00:00Z");
        let job = &s.runs[0].job.clone();
        let run = unrecorded_end(
            Some(&s),
            job,
            MaintenanceKind::Check,
            job_result(&job_with("Failed")),
            now,
        )
        .unwrap();
        assert_eq!(run.result, "Failed");
        assert_eq!(run.started, s.runs[0].started);
        assert!(run.message.contains("DeadlineExceeded"), "{}", run.message);
        // The runner recorded its end: nothing to add.
        let mut done = s.clone();
        let mut r = done.runs[0].clone();
        r.result = "Succeeded".into();
        done.record(r);
        assert!(unrecorded_end(Some(&done), job, MaintenanceKind::Check, None, now).is_none());
        // The Job vanished.
        let gone = unrecorded_end(Some(&s), job, MaintenanceKind::Check, None, now).unwrap();
        assert!(gone.message.contains("disappeared"), "{}", gone.message);
    }

    #[test]
    fn history_keeps_the_newest_runs_and_per_kind_times() {
        let mut m = MaintenanceStatus::default();
        for i in 0..15 {
            let at = to_time(t("2026-01-01T00:00:00Z") + Duration::hours(i));
            m.record(MaintenanceRun {
                kind: MaintenanceKind::Prune,
                job: format!("j{i}"),
                started: at.clone(),
                finished: Some(at),
                result: if i % 2 == 0 { "Succeeded" } else { "Failed" }.into(),
                bytes_freed: Some(1),
                verified: None,
                message: String::new(),
            });
        }
        assert_eq!(m.runs.len(), podvault_proto::crd::MAINTENANCE_HISTORY);
        assert_eq!(m.runs[0].job, "j14");
        assert_eq!(
            m.last_success.prune,
            Some(to_time(t("2026-01-01T14:00:00Z")))
        );
        assert_eq!(
            m.last_failure.prune,
            Some(to_time(t("2026-01-01T13:00:00Z")))
        );
    }

    #[test]
    fn the_job_is_bounded_and_unprivileged() {
        let opts = MaintenanceOptions {
            namespace: "podvault".into(),
            image: "ghcr.io/podvault/podvault:0.1.0".into(),
            service_account: "podvault-maintenance".into(),
            memory: "4Gi".into(),
            deadline: Duration::hours(12),
        };
        let job = job_for(
            "shared",
            MaintenanceKind::Prune,
            "podvault-prune-shared-1",
            &opts,
        );
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(12 * 3600));
        let pod = spec.template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.args.as_ref().unwrap().join(" "),
            "maintenance --repository shared --kind prune --job podvault-prune-shared-1"
        );
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["memory"].0, "4Gi");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("podvault-maintenance")
        );
        assert_eq!(job.labels()[REPOSITORY_LABEL], "shared");
    }
}
