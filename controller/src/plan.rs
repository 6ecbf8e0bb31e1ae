//! What the controller should do for one pod at one instant: a pure function of the pod,
//! the controller's options and the time.
//!
//! Invariants:
//! - A pod takes part when it carries the opt-in annotation (or Velero's alias), or when the
//!   controller runs in all-volumes mode. It is acted on only while `Running` on a node and not
//!   being deleted.
//! - Per series and tick there is exactly one PodVolumeBackup name ([`backup_name`]): derived
//!   from the series key and the tick time, never from the pod or the controller instance. A
//!   restart, a second replica or a second pod mounting the same claim computes the same name,
//!   and the API server's AlreadyExists turns the duplicate into a no-op.
//! - Only the latest tick at or before "now" is considered, and only when it is not older than
//!   the pod: ticks missed while the controller was down collapse into one catch-up backup.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ObjectMeta;
use podvault_proto::crd::{PodVolumeBackup, PodVolumeBackupSpec};
use podvault_proto::k8s::{
    self, classify_volume, find_volume, node_label_value, Series, VolumeError, VolumePolicy,
    ANNOTATION_SERIES, ANNOTATION_TICK, FINALIZER, LABEL_MANAGED_BY, LABEL_NODE, LABEL_SERIES,
    LABEL_SERIES_KIND,
};
use podvault_proto::retention::ParseRetentionError;

use crate::schedule::{Schedule, ScheduleError};

/// Field manager and `app.kubernetes.io/managed-by` value of everything the controller writes.
pub const MANAGER: &str = "podvault-controller";

/// Controller-wide decisions that annotations can override.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Schedule of pods without a schedule annotation.
    pub default_schedule: String,
    /// Repository of pods without a repository annotation (`None`: the agent's default).
    pub default_repository: Option<String>,
    /// Back up every volume of every pod (minus the excludes annotation), not only opted-in ones.
    pub all_volumes: bool,
    /// What the agents may back up (hostPath).
    pub volume_policy: VolumePolicy,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            default_schedule: "0 */6 * * *".to_string(),
            default_repository: None,
            all_volumes: false,
            volume_policy: VolumePolicy::default(),
        }
    }
}

/// An annotation the controller cannot act on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The schedule annotation (or default) does not parse.
    #[error("annotation {annotation}: {0}", annotation = k8s::SCHEDULE)]
    Schedule(#[from] ScheduleError),
    /// The retention annotation does not parse.
    #[error(transparent)]
    Retention(#[from] ParseRetentionError),
    /// The logical dump's name is unusable.
    #[error(transparent)]
    DumpName(#[from] k8s::DumpNameError),
}

/// One PodVolumeBackup to create.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBackup {
    /// The series it belongs to.
    pub series: Series,
    /// The tick it is for.
    pub tick: DateTime<Utc>,
    /// The object to create (name and namespace set).
    pub object: PodVolumeBackup,
}

/// A volume the pod lists that will not be backed up, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The volume name.
    pub volume: String,
    /// The rule that refused it.
    pub error: VolumeError,
    /// True when the user asked for this volume explicitly (so they deserve a Warning event);
    /// false for volumes merely skipped in all-volumes mode.
    pub requested: bool,
}

/// Everything decided for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPlan {
    /// The schedule in force.
    pub schedule: String,
    /// Series of every volume that will be backed up (whether or not one is due now).
    pub series: Vec<Series>,
    /// Backups due now (for the latest tick); empty between ticks or when the pod is not ready.
    pub due: Vec<PlannedBackup>,
    /// Volumes refused by the skip rules.
    pub skipped: Vec<Skipped>,
    /// When to look again.
    pub next_tick: Option<DateTime<Utc>>,
    /// The expected time between backups.
    pub interval: Option<Duration>,
}

/// True when the controller should look at this pod at all: it lists volumes to back up,
/// has a logical-dump command, or the controller backs up all volumes.
pub fn is_selected(pod: &Pod, options: &PlanOptions) -> bool {
    let ann = pod.metadata.annotations.as_ref();
    options.all_volumes
        || ann.and_then(k8s::backup_volumes).is_some()
        || ann.is_some_and(|a| a.contains_key(k8s::BACKUP_COMMAND))
}

/// True when the pod is in a state its volumes can be read in: on a node, Running, and not
/// being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
        && pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Running")
}

/// Plans one pod at `now`: `Ok(None)` when the pod does not take part.
pub fn plan_pod(
    pod: &Pod,
    options: &PlanOptions,
    now: DateTime<Utc>,
) -> Result<Option<PodPlan>, PlanError> {
    if !is_selected(pod, options) {
        return Ok(None);
    }
    let empty = Default::default();
    let ann = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let schedule_text = ann
        .get(k8s::SCHEDULE)
        .cloned()
        .unwrap_or_else(|| options.default_schedule.clone());
    let schedule = Schedule::parse(&schedule_text)?;
    let retention = k8s::retention(ann)?;
    let excludes = k8s::excludes(ann);
    let repository = ann
        .get(k8s::REPOSITORY)
        .cloned()
        .or_else(|| options.default_repository.clone());

    let volume_names: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| vs.iter().map(|v| v.name.clone()).collect())
        .unwrap_or_default();
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let dump = k8s::dump_name(ann, pod_name, &volume_names)?;
    let (candidates, requested): (Vec<String>, bool) = match k8s::backup_volumes(ann) {
        Some(list) => (list, true),
        // Selected for its dump only.
        None if !options.all_volumes => (Vec::new(), false),
        None => {
            let opt_out: BTreeSet<String> = k8s::backup_volumes_excludes(ann).into_iter().collect();
            let all = pod
                .spec
                .as_ref()
                .and_then(|s| s.volumes.as_ref())
                .map(|vs| {
                    vs.iter()
                        .map(|v| v.name.clone())
                        .filter(|n| !opt_out.contains(n))
                        .collect()
                })
                .unwrap_or_default();
            (all, false)
        }
    };

    let mut plan = PodPlan {
        schedule: schedule.as_str().to_string(),
        series: Vec::new(),
        due: Vec::new(),
        skipped: Vec::new(),
        next_tick: schedule.next_tick(now),
        interval: schedule.interval_after(now),
    };
    let mut volumes = Vec::new();
    for name in candidates {
        let checked = find_volume(pod, &name)
            .and_then(|v| classify_volume(pod, v, &options.volume_policy))
            .and_then(|_| Series::of_pod_volume(pod, &name));
        match checked {
            Ok(series) => {
                // Two volumes of one pod on the same claim are one series.
                if !plan.series.contains(&series) {
                    plan.series.push(series.clone());
                    volumes.push((name, series));
                }
            }
            Err(error) => plan.skipped.push(Skipped {
                volume: name,
                error,
                requested,
            }),
        }
    }

    let mut dumps = Vec::new();
    if let Some(name) = dump {
        let series = Series::of_pod_dump(pod, &name);
        plan.series.push(series.clone());
        dumps.push((name, series));
    }

    let created = pod.metadata.creation_timestamp.as_ref().and_then(|t| {
        DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
    });
    let tick = schedule
        .latest_tick(now)
        .filter(|tick| created.is_none_or(|c| *tick >= c));
    if let (Some(tick), true) = (tick, is_ready(pod)) {
        let volumes = volumes.into_iter().map(|(v, s)| (v, s, false));
        let dumps = dumps.into_iter().map(|(v, s)| (v, s, true));
        for (volume, series, dump) in volumes.chain(dumps) {
            let mut object = backup_object(
                pod,
                &volume,
                &series,
                tick,
                repository.clone(),
                if dump { Vec::new() } else { excludes.clone() },
                retention.as_ref().map(|r| r.to_string()),
            );
            object.spec.dump = dump;
            plan.due.push(PlannedBackup {
                series,
                tick,
                object,
            });
        }
    }
    Ok(Some(plan))
}

/// The PodVolumeBackup for `volume` of `pod` at `tick`.
fn backup_object(
    pod: &Pod,
    volume: &str,
    series: &Series,
    tick: DateTime<Utc>,
    repository: Option<String>,
    excludes: Vec<String>,
    retention: Option<String>,
) -> PodVolumeBackup {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    let labels = [
        (LABEL_SERIES, series.hash()),
        (LABEL_SERIES_KIND, series.kind().to_string()),
        (LABEL_MANAGED_BY, MANAGER.to_string()),
        (LABEL_NODE, node_label_value(node)),
    ];
    let annotations = [
        (ANNOTATION_SERIES, series.key()),
        (
            ANNOTATION_TICK,
            tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    ];
    PodVolumeBackup {
        metadata: ObjectMeta {
            name: Some(backup_name(series, tick)),
            namespace: Some(series.namespace.clone()),
            labels: Some(
                labels
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            annotations: Some(
                annotations
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: PodVolumeBackupSpec {
            pod: pod.metadata.name.clone().unwrap_or_default(),
            volume: volume.to_string(),
            repository,
            tags: vec!["scheduled".to_string()],
            excludes,
            retention,
            dump: false,
            cancel: false,
        },
        status: None,
    }
}

/// The deterministic PodVolumeBackup name for a series and tick:
/// `<readable-prefix>-<8 hex of the series hash>-<YYYYMMDDHHMM>`, at most 63 characters,
/// a valid DNS label. The hash keeps names distinct when prefixes are truncated.
pub fn backup_name(series: &Series, tick: DateTime<Utc>) -> String {
    let readable = match &series.source {
        k8s::SeriesSource::PodVolume { pod, volume } => format!("{pod}-{volume}"),
        k8s::SeriesSource::Claim { claim } => format!("pvc-{claim}"),
    };
    let mut prefix: String = readable
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    while prefix.ends_with('-') {
        prefix.pop();
    }
    let prefix = prefix.trim_start_matches('-');
    let hash = &series.hash()[..8];
    let stamp = tick.format("%Y%m%d%H%M");
    if prefix.is_empty() {
        format!("pvb-{hash}-{stamp}")
    } else {
        format!("{prefix}-{hash}-{stamp}")
    }
}

/// Keeps the first planned backup per PodVolumeBackup name: what several pods sharing a claim
/// reduce to within one pass (across passes the API server's AlreadyExists does the same).
pub fn dedup_backups(plans: impl IntoIterator<Item = PlannedBackup>) -> Vec<PlannedBackup> {
    let mut seen = BTreeSet::new();
    plans
        .into_iter()
        .filter(|p| seen.insert(p.object.metadata.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn pod(name: &str, annotations: &str, volumes: &str) -> Pod {
        serde_yaml::from_str(&format!(
            "
metadata:
  name: {name}
  namespace: shop
  uid: uid-{name}
  creationTimestamp: '2025-03-01T00:00:00Z'
  annotations: {{{annotations}}}
spec:
  nodeName: node-a
  containers: [{{name: c}}]
  volumes: {volumes}
status: {{phase: Running}}
"
        ))
        .unwrap()
    }

    const VOLS: &str = "[{name: data, persistentVolumeClaim: {claimName: db}}, {name: scratch, emptyDir: {}}, {name: token, secret: {secretName: s}}]";

    fn names(plan: &PodPlan) -> Vec<String> {
        plan.due
            .iter()
            .map(|p| p.object.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn unannotated_pods_are_ignored_unless_all_volumes() {
        let p = pod("web-0", "", VOLS);
        let now = t("2025-03-10T13:00:00Z");
        assert_eq!(plan_pod(&p, &PlanOptions::default(), now), Ok(None));
        let all = PlanOptions {
            all_volumes: true,
            ..Default::default()
        };
        let plan = plan_pod(&p, &all, now).unwrap().unwrap();
        assert_eq!(plan.series.len(), 2);
        // The secret is skipped silently: nobody asked for it.
        assert_eq!(plan.skipped.len(), 1);
        assert!(!plan.skipped[0].requested);
    }

    #[test]
    fn a_backup_command_is_scheduled_like_a_volume_of_its_own() {
        let now = t("2025-03-10T13:27:00Z");
        // Dump only: no volume is backed up, the dump is due at the tick.
        let p = pod(
            "pg-0",
            "backup.podvault.dev/backup-command: pg_dumpall, backup.podvault.dev/retention: last=7",
            VOLS,
        );
        let plan = plan_pod(&p, &PlanOptions::default(), now).unwrap().unwrap();
        assert_eq!(
            plan.series,
            vec![Series::pod_volume("shop", "pg-0", "pg-0.dump")]
        );
        assert_eq!(plan.due.len(), 1);
        let spec = &plan.due[0].object.spec;
        assert!(spec.dump);
        assert_eq!(
            (spec.pod.as_str(), spec.volume.as_str()),
            ("pg-0", "pg-0.dump")
        );
        assert_eq!(spec.retention.as_deref(), Some("last=7"));
        assert_eq!(
            names(&plan),
            vec!["pg-0-pg-0-dump-".to_string() + &plan.due[0].series.hash()[..8] + "-202503101200"]
        );
        // With volumes and a named dump: both, the volumes without the dump flag.
        let p = pod(
            "pg-0",
            "backup.podvault.dev/backup-volumes: data, backup.podvault.dev/backup-command: pg_dumpall, backup.podvault.dev/backup-command-filename: all.sql",
            VOLS,
        );
        let plan = plan_pod(&p, &PlanOptions::default(), now).unwrap().unwrap();
        let due: Vec<(bool, String)> = plan
            .due
            .iter()
            .map(|d| (d.object.spec.dump, d.object.spec.volume.clone()))
            .collect();
        assert_eq!(due, vec![(false, "data".into()), (true, "all.sql".into())]);
        // A dump named like a volume would share its series: refused, naming the annotation.
        let p = pod(
            "pg-0",
            "backup.podvault.dev/backup-command: pg_dumpall, backup.podvault.dev/backup-command-filename: scratch",
            VOLS,
        );
        let e = plan_pod(&p, &PlanOptions::default(), now).unwrap_err();
        assert!(
            e.to_string().contains("backup-command-filename") && e.to_string().contains("volumes"),
            "{e}"
        );
        let p = pod(
            "pg-0",
            "backup.podvault.dev/backup-command: pg_dumpall, backup.podvault.dev/backup-command-filename: ../x",
            VOLS,
        );
        assert!(matches!(
            plan_pod(&p, &PlanOptions::default(), now),
            Err(PlanError::DumpName(_))
        ));
    }

    #[test]
    fn all_volumes_mode_honours_the_excludes_annotation() {
        let p = pod(
            "web-0",
            "backup.podvault.dev/backup-volumes-excludes: scratch",
            VOLS,
        );
        let all = PlanOptions {
            all_volumes: true,
            ..Default::default()
        };
        let plan = plan_pod(&p, &all, t("2025-03-10T13:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(plan.series, vec![Series::claim("shop", "db")]);
    }

    #[test]
    fn due_backups_for_the_latest_tick() {
        let p = pod(
            "web-0",
            "backup.podvault.dev/backup-volumes: 'data,scratch', backup.podvault.dev/retention: 'last=3,daily=7', backup.podvault.dev/exclude: '*.tmp'",
            VOLS,
        );
        let plan = plan_pod(&p, &PlanOptions::default(), t("2025-03-10T13:27:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(plan.schedule, "0 */6 * * *");
        assert_eq!(plan.next_tick, Some(t("2025-03-10T18:00:00Z")));
        assert_eq!(plan.interval, Some(Duration::hours(6)));
        assert_eq!(
            names(&plan),
            vec![
                format!(
                    "pvc-db-{}-202503101200",
                    &Series::claim("shop", "db").hash()[..8]
                ),
                format!(
                    "web-0-scratch-{}-202503101200",
                    &Series::pod_volume("shop", "web-0", "scratch").hash()[..8]
                ),
            ]
        );
        let first = &plan.due[0].object;
        assert_eq!(first.spec.pod, "web-0");
        assert_eq!(first.spec.volume, "data");
        assert_eq!(first.spec.excludes, vec!["*.tmp"]);
        assert_eq!(first.spec.retention.as_deref(), Some("last=3,daily=7"));
        assert_eq!(
            first.metadata.annotations.as_ref().unwrap()[ANNOTATION_TICK],
            "2025-03-10T12:00:00Z"
        );
        assert_eq!(
            first.metadata.labels.as_ref().unwrap()[LABEL_SERIES],
            Series::claim("shop", "db").hash()
        );
    }

    #[test]
    fn same_tick_same_names_next_tick_new_names() {
        let p = pod("web-0", "backup.podvault.dev/backup-volumes: data", VOLS);
        let o = PlanOptions::default();
        let a = plan_pod(&p, &o, t("2025-03-10T12:00:00Z"))
            .unwrap()
            .unwrap();
        let b = plan_pod(&p, &o, t("2025-03-10T17:59:59Z"))
            .unwrap()
            .unwrap();
        let c = plan_pod(&p, &o, t("2025-03-10T18:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(names(&a), names(&b));
        assert_ne!(names(&b), names(&c));
    }

    #[test]
    fn explicitly_requested_refused_volumes_are_reported() {
        let p = pod(
            "web-0",
            "backup.velero.io/backup-volumes: 'token,missing,data'",
            VOLS,
        );
        let plan = plan_pod(&p, &PlanOptions::default(), t("2025-03-10T13:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(plan.due.len(), 1);
        let skipped: Vec<_> = plan
            .skipped
            .iter()
            .map(|s| (s.volume.as_str(), s.requested))
            .collect();
        assert_eq!(skipped, vec![("token", true), ("missing", true)]);
        assert!(matches!(
            plan.skipped[0].error,
            VolumeError::ApiSourced { .. }
        ));
        assert!(matches!(
            plan.skipped[1].error,
            VolumeError::NotInPod { .. }
        ));
    }

    #[test]
    fn nothing_due_for_ticks_before_the_pod_or_when_not_running() {
        let mut p = pod("web-0", "backup.podvault.dev/backup-volumes: data", VOLS);
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2025-03-10T12:30:00Z".parse().unwrap(),
        ));
        let o = PlanOptions::default();
        let plan = plan_pod(&p, &o, t("2025-03-10T13:00:00Z"))
            .unwrap()
            .unwrap();
        assert!(plan.due.is_empty());
        assert_eq!(plan.next_tick, Some(t("2025-03-10T18:00:00Z")));
        let plan = plan_pod(&p, &o, t("2025-03-10T18:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(plan.due.len(), 1);

        p.status.as_mut().unwrap().phase = Some("Pending".into());
        let plan = plan_pod(&p, &o, t("2025-03-10T18:00:00Z"))
            .unwrap()
            .unwrap();
        assert!(plan.due.is_empty());
    }

    #[test]
    fn bad_annotations_are_errors_naming_the_annotation() {
        let p = pod(
            "web-0",
            "backup.podvault.dev/backup-volumes: data, backup.podvault.dev/schedule: 'every day'",
            VOLS,
        );
        let err = plan_pod(&p, &PlanOptions::default(), t("2025-03-10T13:00:00Z")).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "annotation backup.podvault.dev/schedule: invalid schedule \"every day\""
            ),
            "{err}"
        );
        let p = pod(
            "web-0",
            "backup.podvault.dev/backup-volumes: data, backup.podvault.dev/retention: 'keep=all'",
            VOLS,
        );
        let err = plan_pod(&p, &PlanOptions::default(), t("2025-03-10T13:00:00Z")).unwrap_err();
        assert!(
            err.to_string().contains("backup.podvault.dev/retention"),
            "{err}"
        );
    }

    #[test]
    fn a_claim_shared_by_pods_is_backed_up_once_per_tick() {
        let now = t("2025-03-10T13:00:00Z");
        let o = PlanOptions::default();
        let a = pod("web-0", "backup.podvault.dev/backup-volumes: data", VOLS);
        // Another pod mounts the same claim under another volume name.
        let b = pod(
            "report-7f9c",
            "backup.podvault.dev/backup-volumes: shared",
            "[{name: shared, persistentVolumeClaim: {claimName: db}}]",
        );
        let pa = plan_pod(&a, &o, now).unwrap().unwrap();
        let pb = plan_pod(&b, &o, now).unwrap().unwrap();
        assert_eq!(names(&pa), names(&pb));
        let all = dedup_backups(pa.due.into_iter().chain(pb.due));
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].object.spec.pod, "web-0");
    }

    #[test]
    fn names_are_valid_dns_labels_and_distinct_when_truncated() {
        let tick = t("2025-03-10T12:00:00Z");
        let long = "a".repeat(200);
        let a = backup_name(&Series::pod_volume("ns", &long, "v1"), tick);
        let b = backup_name(&Series::pod_volume("ns", &long, "v2"), tick);
        assert_ne!(a, b);
        for n in [
            a,
            b,
            backup_name(&Series::claim("ns", "Data.Web_0"), tick),
            backup_name(&Series::claim("ns", "-"), tick),
        ] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
        }
        assert!(
            backup_name(&Series::claim("ns", "Data.Web_0"), tick).starts_with("pvc-data-web-0-")
        );
    }

    #[test]
    fn same_claim_in_two_namespaces_is_two_series() {
        let tick = t("2025-03-10T12:00:00Z");
        assert_ne!(
            backup_name(&Series::claim("a", "db"), tick),
            backup_name(&Series::claim("b", "db"), tick)
        );
    }
}
