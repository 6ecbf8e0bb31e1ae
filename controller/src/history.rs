//! History: which finished PodVolumeBackups/PodVolumeRestores to delete, and what the
//! remaining ones say about each series. Pure functions over summaries of the objects.
//!
//! Objects are grouped per namespace and series. In each group the newest `successful`
//! Completed objects and the newest `failed` Failed or Canceled objects are kept; objects
//! that are not finished (New, InProgress) are never deleted. Order is creation time, then
//! name, so the choice is deterministic. Limits are at least 1 for successes so the latest
//! Completed backup of every series (and with it the last-success time) always survives, and
//! the newest object of a group is never deleted whatever its phase: it is the one for the
//! current schedule tick, and deleting it would let the controller create that tick again.
//!
//! [`series_states`] is what the alerts read: for every *tracked* series (one a selected pod
//! schedules, or one a PodVolumeBackup not created by the controller was made for, while that
//! pod exists) its schedule interval, last success, last failure, oldest unfinished backups
//! and when the series was first seen. Series of deleted pods and retired series are not
//! tracked, so their gauges (and alerts) go away.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podvault_proto::crd::{Phase, PodVolumeBackup, PodVolumeRestore};
use podvault_proto::k8s::{Series, ANNOTATION_SERIES, LABEL_MANAGED_BY};

use crate::plan::MANAGER;

/// How many finished objects to keep per series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Completed objects to keep (at least 1).
    pub successful: usize,
    /// Failed or Canceled objects to keep.
    pub failed: usize,
}

/// What history selection needs to know about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// Grouping key (series key for backups, `restore/<pod>/<volume>` for restores).
    pub group: String,
    /// Current phase (New when the object has no status).
    pub phase: Phase,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Completion time (finished objects).
    pub completed: Option<DateTime<Utc>>,
    /// When an agent claimed it (`status.startTimestamp`).
    pub started: Option<DateTime<Utc>>,
    /// `spec.pod`.
    pub pod: String,
    /// True unless the controller created it on a schedule.
    pub manual: bool,
}

/// Converts a `meta/v1` Time to chrono.
pub fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
}

/// The series key of a backup: what the agent recorded in `status.series`, else the
/// controller's annotation, else (hand-made objects) the pod volume's series.
pub fn backup_group(pvb: &PodVolumeBackup) -> String {
    let namespace = pvb.metadata.namespace.as_deref().unwrap_or_default();
    pvb.status
        .as_ref()
        .and_then(|s| s.series.clone())
        .or_else(|| {
            pvb.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_SERIES).cloned())
        })
        .unwrap_or_else(|| Series::pod_volume(namespace, &pvb.spec.pod, &pvb.spec.volume).key())
}

/// Summarises a backup.
pub fn backup_item(pvb: &PodVolumeBackup) -> HistoryItem {
    let status = pvb.status.as_ref();
    HistoryItem {
        namespace: pvb.metadata.namespace.clone().unwrap_or_default(),
        name: pvb.metadata.name.clone().unwrap_or_default(),
        group: backup_group(pvb),
        phase: status.and_then(|s| s.phase).unwrap_or_default(),
        created: pvb.metadata.creation_timestamp.as_ref().and_then(to_chrono),
        completed: status
            .and_then(|s| s.completion_timestamp.as_ref())
            .and_then(to_chrono),
        started: status
            .and_then(|s| s.start_timestamp.as_ref())
            .and_then(to_chrono),
        pod: pvb.spec.pod.clone(),
        manual: pvb
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_none_or(|m| m != MANAGER),
    }
}

/// Summarises a restore (grouped by target pod and volume).
pub fn restore_item(pvr: &PodVolumeRestore) -> HistoryItem {
    let status = pvr.status.as_ref();
    HistoryItem {
        namespace: pvr.metadata.namespace.clone().unwrap_or_default(),
        name: pvr.metadata.name.clone().unwrap_or_default(),
        group: format!("restore/{}/{}", pvr.spec.pod, pvr.spec.volume),
        phase: status.and_then(|s| s.phase).unwrap_or_default(),
        created: pvr.metadata.creation_timestamp.as_ref().and_then(to_chrono),
        completed: status
            .and_then(|s| s.completion_timestamp.as_ref())
            .and_then(to_chrono),
        started: status
            .and_then(|s| s.start_timestamp.as_ref())
            .and_then(to_chrono),
        pod: pvr.spec.pod.clone(),
        manual: true,
    }
}

/// The objects to delete so that each group keeps only its newest finished objects.
pub fn select_for_deletion(items: &[HistoryItem], limits: HistoryLimits) -> Vec<&HistoryItem> {
    let successful = limits.successful.max(1);
    let mut groups: BTreeMap<(&str, &str), Vec<&HistoryItem>> = BTreeMap::new();
    for item in items {
        groups
            .entry((item.namespace.as_str(), item.group.as_str()))
            .or_default()
            .push(item);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        // Newest first.
        group.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));
        let mut ok = 0;
        let mut bad = 0;
        for (i, item) in group.into_iter().enumerate() {
            let excess = match item.phase {
                Phase::Completed => {
                    ok += 1;
                    ok > successful
                }
                Phase::Failed | Phase::Canceled => {
                    bad += 1;
                    bad > limits.failed
                }
                Phase::New | Phase::InProgress => false,
            };
            if excess && i > 0 {
                out.push(item);
            }
        }
    }
    out
}

/// The `series` metric label of a history group (a series key): `pvc/<claim>` or
/// `pod/<pod>/<volume>`; an unparsable key (hand-written annotation) is used as it is.
pub fn series_label(group: &str) -> String {
    group
        .parse::<Series>()
        .map(|s| s.metric_label())
        .unwrap_or_else(|_| group.to_string())
}

/// What the alerts need to know about one tracked series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesState {
    /// Expected seconds between backups (scheduled series only).
    pub interval: Option<f64>,
    /// When the series was first seen: its oldest PodVolumeBackup or, if earlier, when this
    /// controller process first tracked it. The staleness clock of a series that never
    /// succeeded starts here.
    pub first_seen: DateTime<Utc>,
    /// Completion of the newest Completed backup.
    pub last_success: Option<DateTime<Utc>>,
    /// Completion of the newest Failed backup.
    pub last_failure: Option<DateTime<Utc>>,
    /// Creation of the oldest backup still New.
    pub oldest_new: Option<DateTime<Utc>>,
    /// Start (else creation) of the oldest backup still InProgress.
    pub oldest_in_progress: Option<DateTime<Utc>>,
}

fn earliest(slot: &mut Option<DateTime<Utc>>, t: Option<DateTime<Utc>>) {
    if let Some(t) = t {
        *slot = Some(slot.map_or(t, |s| s.min(t)));
    }
}

fn latest(slot: &mut Option<DateTime<Utc>>, t: Option<DateTime<Utc>>) {
    if let Some(t) = t {
        *slot = Some(slot.map_or(t, |s| s.max(t)));
    }
}

/// The state of every tracked series, keyed by (namespace, series label).
///
/// Tracked: every key of `scheduled` (series label → interval seconds, from the pods that
/// schedule them), and the series of every PodVolumeBackup not created by the controller
/// whose pod is in `pods` (namespace, name). `seen` is this process' memory of when it first
/// tracked each series: new series are added at `now`, untracked ones are forgotten.
pub fn series_states(
    items: &[HistoryItem],
    scheduled: &BTreeMap<(String, String), f64>,
    pods: &BTreeSet<(String, String)>,
    seen: &mut BTreeMap<(String, String), DateTime<Utc>>,
    now: DateTime<Utc>,
) -> BTreeMap<(String, String), SeriesState> {
    let mut tracked: BTreeSet<(String, String)> = scheduled.keys().cloned().collect();
    for item in items {
        if item.manual && pods.contains(&(item.namespace.clone(), item.pod.clone())) {
            tracked.insert((item.namespace.clone(), series_label(&item.group)));
        }
    }
    seen.retain(|k, _| tracked.contains(k));
    let mut out: BTreeMap<(String, String), SeriesState> = tracked
        .into_iter()
        .map(|k| {
            let first = *seen.entry(k.clone()).or_insert(now);
            let state = SeriesState {
                interval: scheduled.get(&k).copied(),
                first_seen: first,
                last_success: None,
                last_failure: None,
                oldest_new: None,
                oldest_in_progress: None,
            };
            (k, state)
        })
        .collect();
    for item in items {
        let key = (item.namespace.clone(), series_label(&item.group));
        let Some(state) = out.get_mut(&key) else {
            continue;
        };
        if let Some(created) = item.created {
            state.first_seen = state.first_seen.min(created);
        }
        let done = item.completed.or(item.created);
        match item.phase {
            Phase::Completed => latest(&mut state.last_success, done),
            Phase::Failed => latest(&mut state.last_failure, done),
            Phase::Canceled => {}
            Phase::New => earliest(&mut state.oldest_new, item.created),
            Phase::InProgress => {
                earliest(&mut state.oldest_in_progress, item.started.or(item.created))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(ns: &str, group: &str, name: &str, phase: Phase, minute: i64) -> HistoryItem {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap();
        HistoryItem {
            namespace: ns.into(),
            name: name.into(),
            group: group.into(),
            phase,
            created: Some(t),
            completed: Some(t + chrono::Duration::seconds(30)),
            started: Some(t),
            pod: "web-0".into(),
            manual: false,
        }
    }

    fn names(v: Vec<&HistoryItem>) -> Vec<String> {
        let mut n: Vec<_> = v.into_iter().map(|i| i.name.clone()).collect();
        n.sort();
        n
    }

    #[test]
    fn keeps_newest_per_phase_class_and_never_unfinished() {
        use Phase::*;
        let items = vec![
            item("a", "s", "c1", Completed, 1),
            item("a", "s", "c2", Completed, 2),
            item("a", "s", "f3", Failed, 3),
            item("a", "s", "c4", Completed, 4),
            item("a", "s", "x5", Canceled, 5),
            item("a", "s", "f6", Failed, 6),
            item("a", "s", "n0", New, 0),
            item("a", "s", "p0", InProgress, 0),
        ];
        let limits = HistoryLimits {
            successful: 2,
            failed: 1,
        };
        assert_eq!(
            names(select_for_deletion(&items, limits)),
            vec!["c1", "f3", "x5"]
        );
    }

    #[test]
    fn groups_are_per_namespace_and_series() {
        use Phase::*;
        let items = vec![
            item("a", "s", "a1", Completed, 1),
            item("a", "s", "a2", Completed, 2),
            item("b", "s", "b1", Completed, 1),
            item("a", "t", "t1", Completed, 1),
        ];
        let limits = HistoryLimits {
            successful: 1,
            failed: 0,
        };
        assert_eq!(names(select_for_deletion(&items, limits)), vec!["a1"]);
    }

    #[test]
    fn at_least_one_success_and_the_newest_object_survive() {
        use Phase::*;
        let limits = HistoryLimits {
            successful: 0,
            failed: 0,
        };
        let items = vec![
            item("a", "s", "c1", Completed, 1),
            item("a", "s", "f2", Failed, 2),
            item("a", "s", "c3", Completed, 3),
        ];
        assert_eq!(names(select_for_deletion(&items, limits)), vec!["c1", "f2"]);
        // The newest object is the current tick's: deleting it would re-run the tick.
        let items = vec![
            item("a", "s", "c1", Completed, 1),
            item("a", "s", "f2", Failed, 2),
        ];
        assert!(select_for_deletion(&items, limits).is_empty());
    }

    #[test]
    fn ties_break_by_name() {
        use Phase::*;
        let items = vec![
            item("a", "s", "b", Completed, 1),
            item("a", "s", "a", Completed, 1),
        ];
        let limits = HistoryLimits {
            successful: 1,
            failed: 0,
        };
        assert_eq!(names(select_for_deletion(&items, limits)), vec!["a"]);
    }

    fn key(ns: &str, series: &str) -> (String, String) {
        (ns.to_string(), series.to_string())
    }

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap()
    }

    #[test]
    fn series_states_of_scheduled_series() {
        use Phase::*;
        let items = vec![
            item("a", "a/pvc/db", "c1", Completed, 1),
            item("a", "a/pvc/db", "c2", Completed, 5),
            item("a", "a/pvc/db", "f9", Failed, 9),
            item("a", "a/pvc/db", "p10", InProgress, 10),
            item("a", "a/pvc/db", "n11", New, 11),
            item("a", "a/pvc/db", "n12", New, 12),
            item("a", "a/pvc/db", "x13", Canceled, 13),
            // Never succeeded: its oldest backup starts the staleness clock.
            item("a", "a/pod/web-0/tmp", "f3", Failed, 3),
        ];
        let scheduled: BTreeMap<_, _> = [
            (key("a", "pvc/db"), 3600.0),
            (key("a", "pod/web-0/tmp"), 3600.0),
            (key("a", "pvc/new"), 60.0),
        ]
        .into();
        let mut seen = BTreeMap::new();
        let now = at(20);
        let states = series_states(&items, &scheduled, &BTreeSet::new(), &mut seen, now);
        assert_eq!(states.len(), 3);
        let db = &states[&key("a", "pvc/db")];
        assert_eq!(db.interval, Some(3600.0));
        assert_eq!(db.first_seen, at(1));
        assert_eq!(db.last_success, items[1].completed);
        assert_eq!(db.last_failure, items[2].completed);
        assert_eq!(db.oldest_in_progress, Some(at(10)));
        assert_eq!(db.oldest_new, Some(at(11)));
        let tmp = &states[&key("a", "pod/web-0/tmp")];
        assert_eq!((tmp.first_seen, tmp.last_success), (at(3), None));
        // No backup yet: first seen now, and remembered.
        let new = &states[&key("a", "pvc/new")];
        assert_eq!(
            (new.first_seen, new.last_success, new.oldest_new),
            (now, None, None)
        );
        let later = series_states(&[], &scheduled, &BTreeSet::new(), &mut seen, at(30));
        assert_eq!(later[&key("a", "pvc/new")].first_seen, now);
    }

    #[test]
    fn deleted_pods_and_retired_series_are_not_tracked() {
        use Phase::*;
        let mut manual = item("a", "a/pod/job-1/data", "m1", Failed, 1);
        manual.pod = "job-1".into();
        manual.manual = true;
        let items = vec![
            // Scheduled backups of a series nothing schedules any more (retired).
            item("a", "a/pvc/old", "f1", Failed, 1),
            manual,
        ];
        let mut seen = BTreeMap::from([(key("a", "pvc/old"), at(0))]);
        // The manually backed-up pod exists: tracked, without an interval.
        let pods = BTreeSet::from([key("a", "job-1"), key("a", "web-0")]);
        let states = series_states(&items, &BTreeMap::new(), &pods, &mut seen, at(5));
        assert_eq!(
            states.keys().collect::<Vec<_>>(),
            [&key("a", "pod/job-1/data")]
        );
        let m = &states[&key("a", "pod/job-1/data")];
        assert_eq!((m.interval, m.last_failure), (None, items[1].completed));
        assert!(!seen.contains_key(&key("a", "pvc/old")), "forgotten");
        // The pod is deleted: nothing is tracked.
        let states = series_states(&items, &BTreeMap::new(), &BTreeSet::new(), &mut seen, at(6));
        assert!(states.is_empty());
        assert!(seen.is_empty());
    }

    #[test]
    fn backup_group_prefers_status_then_annotation_then_pod_volume() {
        let mut pvb: PodVolumeBackup = serde_yaml::from_str(
            "metadata: {name: x, namespace: shop}\nspec: {pod: web-0, volume: data}",
        )
        .unwrap();
        assert_eq!(backup_group(&pvb), "shop/pod/web-0/data");
        pvb.metadata.annotations =
            Some([(ANNOTATION_SERIES.to_string(), "shop/pvc/db".to_string())].into());
        assert_eq!(backup_group(&pvb), "shop/pvc/db");
        pvb.status = Some(podvault_proto::crd::PodVolumeBackupStatus {
            series: Some("shop/pvc/other".into()),
            ..Default::default()
        });
        assert_eq!(backup_group(&pvb), "shop/pvc/other");
    }
}
