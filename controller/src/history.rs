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

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use podvault_proto::crd::{Phase, PodVolumeBackup, PodVolumeRestore};
use podvault_proto::k8s::{Series, ANNOTATION_SERIES};

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

/// The newest completion time of a Completed object per (namespace, group).
pub fn last_successes(items: &[HistoryItem]) -> BTreeMap<(String, String), DateTime<Utc>> {
    let mut out: BTreeMap<(String, String), DateTime<Utc>> = BTreeMap::new();
    for item in items {
        if item.phase != Phase::Completed {
            continue;
        }
        let Some(done) = item.completed.or(item.created) else {
            continue;
        };
        let slot = out
            .entry((item.namespace.clone(), item.group.clone()))
            .or_insert(done);
        if done > *slot {
            *slot = done;
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

    #[test]
    fn last_success_per_series() {
        use Phase::*;
        let items = vec![
            item("a", "s", "c1", Completed, 1),
            item("a", "s", "c2", Completed, 5),
            item("a", "s", "f9", Failed, 9),
            item("b", "s", "f1", Failed, 1),
        ];
        let last = last_successes(&items);
        assert_eq!(last.len(), 1);
        assert_eq!(
            last[&("a".to_string(), "s".to_string())],
            items[1].completed.unwrap()
        );
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
