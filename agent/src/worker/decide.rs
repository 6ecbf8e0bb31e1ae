//! Pure decisions of the node agent: no I/O, no clock, no API server.
//!
//! - [`next_action`]: what to do with a PodVolumeBackup/Restore given its status, this node and
//!   where its pod is. The rules:
//!   - an object being deleted is canceled if it runs here, and otherwise released (its
//!     [`FINALIZER`](podvault_proto::k8s::FINALIZER) removed) so the deletion completes;
//!   - finished objects are left alone (a finalizer left by an interrupted finish is released);
//!   - an operation this process is running is only watched for `spec.cancel`;
//!   - InProgress on another node belongs to that node's agent;
//!   - InProgress on this node but not running in this process was interrupted by an agent
//!     restart: it is claimed again and re-run once ([`NextAction::Resume`]; backups leave only
//!     unreferenced packs when killed and restores are idempotent, so a re-run is safe); if it
//!     was already resumed once it is failed ([`NextAction::Abandon`]) so a crash loop cannot
//!     keep it InProgress forever;
//!   - New: claimed when the pod is on this node; finished as Failed by whichever agent wins the
//!     claim when the pod does not exist or has terminated; finished as Canceled when canceled
//!     before it started; otherwise looked at again later.
//! - Status construction for claims, progress and final phases.
//! - [`ProgressThrottle`]: at most one progress patch per interval, none when nothing changed.
//! - Engine options built from a spec, a pod and a resolved volume.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use podvault_proto::crd::{
    OperationStatus, Phase, PodVolumeRestoreSpec, Progress as StatusProgress, RestoreMode,
};
use podvault_proto::k8s::{Series, RESTORE_MARKER_DIR};
use podvault_proto::retention::RetentionPolicy;
use podvault_proto::snapshot::Identity;

use super::outcome::Reason;
use crate::archiver::BackupOptions;
use crate::forget::ForgetOptions;
use crate::progress::ProgressSnapshot;
use crate::restorer::RestoreOptions;

/// Condition type recorded when an interrupted operation is claimed again after a restart.
pub const CONDITION_RESUMED: &str = "Resumed";

/// Where an operation's pod is, seen from this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodPlacement {
    /// Scheduled to this node and not terminated.
    ThisNode,
    /// Scheduled to another node.
    OtherNode(String),
    /// Not scheduled yet.
    Unscheduled,
    /// Succeeded or Failed: its volumes are being torn down.
    Terminated(String),
    /// No such pod.
    Missing,
}

/// Where `pod` (looked up by name, `None` when absent) is relative to `node`.
pub fn placement(pod: Option<&Pod>, node: &str) -> PodPlacement {
    let Some(pod) = pod else {
        return PodPlacement::Missing;
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => PodPlacement::Unscheduled,
        Some(n) if n != node => PodPlacement::OtherNode(n.to_string()),
        Some(_) if phase == "Succeeded" || phase == "Failed" => {
            PodPlacement::Terminated(phase.to_string())
        }
        Some(_) => PodPlacement::ThisNode,
    }
}

/// What the agent observed about one operation object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `status.phase` (New when absent).
    pub phase: Phase,
    /// `status.node`.
    pub status_node: Option<String>,
    /// `spec.cancel`.
    pub cancel: bool,
    /// True when the status carries a [`CONDITION_RESUMED`] condition.
    pub resumed_before: bool,
    /// True when this process is running the operation right now.
    pub running_here: bool,
    /// True when the object is being deleted (`metadata.deletionTimestamp` is set).
    pub deleting: bool,
    /// True when the object carries the agent's finalizer.
    pub has_finalizer: bool,
    /// `<namespace>/<pod>`, for messages.
    pub pod_ref: String,
}

/// What to do next with an operation object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextAction {
    /// Nothing to do until the object changes.
    Ignore,
    /// The pod must be looked up before deciding (call again with its placement).
    LookUpPod,
    /// Look again after this long (pod not scheduled yet).
    Requeue(Duration),
    /// Set the cancel flag of the operation this process is running.
    Cancel,
    /// Remove the agent's finalizer (nothing runs; the object is being deleted or finished).
    ReleaseFinalizer,
    /// Claim (New → InProgress) and run.
    Claim,
    /// Claim again (InProgress → InProgress, with a Resumed condition) and re-run.
    Resume,
    /// Claim straight into a final phase with a message; nothing runs.
    Finish {
        /// Final phase.
        phase: Phase,
        /// `status.reason`.
        reason: Reason,
        /// `status.message`.
        message: String,
    },
}

/// Decides what to do; `pod` is `None` until the caller has looked the pod up (only needed when
/// the answer is [`NextAction::LookUpPod`]).
pub fn next_action(obs: &Observed, node: &str, pod: Option<&PodPlacement>) -> NextAction {
    if obs.deleting {
        return if obs.running_here {
            NextAction::Cancel
        } else if obs.has_finalizer {
            NextAction::ReleaseFinalizer
        } else {
            NextAction::Ignore
        };
    }
    if obs.phase.is_finished() {
        return if obs.has_finalizer && !obs.running_here {
            NextAction::ReleaseFinalizer
        } else {
            NextAction::Ignore
        };
    }
    if obs.running_here {
        return if obs.cancel {
            NextAction::Cancel
        } else {
            NextAction::Ignore
        };
    }
    if obs.phase == Phase::InProgress {
        if obs.status_node.as_deref() != Some(node) {
            return NextAction::Ignore;
        }
        if obs.cancel {
            return NextAction::Finish {
                phase: Phase::Canceled,
                reason: Reason::Canceled,
                message: format!("canceled; the agent on node {node} had restarted while it ran"),
            };
        }
        if obs.resumed_before {
            return NextAction::Finish {
                phase: Phase::Failed,
                reason: Reason::Interrupted,
                message: format!(
                    "interrupted twice by agent restarts on node {node}; not retrying again (create a new object to retry)"
                ),
            };
        }
        return NextAction::Resume;
    }
    let Some(pod) = pod else {
        return NextAction::LookUpPod;
    };
    match pod {
        PodPlacement::OtherNode(_) => NextAction::Ignore,
        _ if obs.cancel => NextAction::Finish {
            phase: Phase::Canceled,
            reason: Reason::Canceled,
            message: "canceled before it started".into(),
        },
        PodPlacement::ThisNode => NextAction::Claim,
        PodPlacement::Unscheduled => NextAction::Requeue(Duration::from_secs(15)),
        PodPlacement::Missing => NextAction::Finish {
            phase: Phase::Failed,
            reason: Reason::PodNotFound,
            message: format!("pod {} not found", obs.pod_ref),
        },
        PodPlacement::Terminated(phase) => NextAction::Finish {
            phase: Phase::Failed,
            reason: Reason::PodTerminated,
            message: format!(
                "pod {} has terminated (phase {phase}); its volumes are no longer mounted",
                obs.pod_ref
            ),
        },
    }
}

/// True when `status` carries a [`CONDITION_RESUMED`] condition: an agent claimed the
/// operation again after the one running it stopped.
pub fn was_resumed(status: &OperationStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == CONDITION_RESUMED && c.status == "True")
}

/// The status written by a claim: InProgress (or `finish`'s final phase, reason and message)
/// on `node` by `agent` at `now`. A claim starts a fresh status, keeping only the conditions
/// and a backup's series; a resume adds [`CONDITION_RESUMED`].
pub fn claimed(
    prev: &OperationStatus,
    node: &str,
    agent: &str,
    now: &Time,
    resume: bool,
    finish: Option<(Phase, Reason, String)>,
) -> OperationStatus {
    let mut conditions = prev.conditions.clone();
    let message = if resume {
        conditions.retain(|c| c.type_ != CONDITION_RESUMED);
        conditions.push(Condition {
            type_: CONDITION_RESUMED.into(),
            status: "True".into(),
            reason: "AgentRestarted".into(),
            message: format!("resumed by agent {agent} on node {node} after a restart"),
            last_transition_time: now.clone(),
            observed_generation: None,
        });
        format!("resumed by agent {agent} on node {node} after a restart")
    } else {
        format!("claimed by agent {agent} on node {node}")
    };
    let base = OperationStatus {
        node: Some(node.into()),
        agent: Some(agent.into()),
        series: prev.series.clone(),
        conditions,
        ..Default::default()
    };
    match finish {
        Some((phase, reason, message)) => OperationStatus {
            phase: Some(phase),
            start_timestamp: prev.start_timestamp.clone().or_else(|| Some(now.clone())),
            completion_timestamp: Some(now.clone()),
            message: Some(message),
            reason: Some(reason.as_str().into()),
            ..base
        },
        None => OperationStatus {
            phase: Some(Phase::InProgress),
            start_timestamp: Some(now.clone()),
            message: Some(message),
            ..base
        },
    }
}

/// The status progress record for engine counters.
pub fn status_progress(p: &ProgressSnapshot) -> StatusProgress {
    StatusProgress::new(p.bytes_done, p.bytes_total, p.files_done, p.files_total)
}

/// Rate limit for progress patches: at most one per interval, and only when progress changed.
#[derive(Debug, Clone)]
pub struct ProgressThrottle {
    interval: Duration,
    last_at: Option<Instant>,
    last: Option<StatusProgress>,
}

impl ProgressThrottle {
    /// A throttle allowing one update per `interval`; the first update is due after one
    /// interval from `start` (the claim already wrote the initial status).
    pub fn new(interval: Duration, start: Instant) -> Self {
        ProgressThrottle {
            interval,
            last_at: Some(start),
            last: None,
        }
    }

    /// True when `p` should be written now; records it as written.
    pub fn due(&mut self, now: Instant, p: &StatusProgress) -> bool {
        if self.last.as_ref() == Some(p) {
            return false;
        }
        if let Some(at) = self.last_at {
            if now.saturating_duration_since(at) < self.interval {
                return false;
            }
        }
        self.last_at = Some(now);
        self.last = Some(p.clone());
        true
    }
}

/// Engine backup options for a volume at `path`: the snapshot's `identity` (recorded by the
/// agent; the engine takes the latest snapshot of the same series as the parent), the spec's
/// `tags` (already checked for reserved keys), the spec's excludes plus the restore marker
/// directory, and the node as host.
pub fn backup_options(
    path: &std::path::Path,
    identity: Identity,
    tags: &[String],
    excludes: &[String],
    node: &str,
) -> BackupOptions {
    let mut excludes = excludes.to_vec();
    // Restore markers are transient hand-over files, never data.
    excludes.push(RESTORE_MARKER_DIR.to_string());
    BackupOptions {
        paths: vec![path.to_path_buf()],
        stdin: false,
        stdin_from_command: false,
        stdin_filename: None,
        tags: tags.to_vec(),
        excludes,
        parent: None,
        identity: Some(identity),
        force: false,
        host: Some(node.to_string()),
        threads: None,
        one_file_system: true,
        pinned_root: None,
    }
}

/// Forget options applying `policy` to exactly the snapshots whose recorded identity is
/// `series` (one group; tags never select).
pub fn forget_options(policy: &RetentionPolicy, series: &Series) -> ForgetOptions {
    ForgetOptions {
        keep_last: policy.last,
        keep_hourly: policy.hourly,
        keep_daily: policy.daily,
        keep_weekly: policy.weekly,
        keep_monthly: policy.monthly,
        keep_yearly: policy.yearly,
        keep_tags: policy.tags.clone(),
        tags: Vec::new(),
        series: Some(series.key()),
        group_by: String::new(),
        dry_run: false,
    }
}

/// The series a restore's `latest` refers to: `claim` wins; else `pod`/`volume` name a pod
/// series (each defaulting to the restore's own); with neither, the target volume's own
/// series (a claim series for PVC-backed volumes). `namespace` defaults to the restore's.
pub fn restore_series(
    spec: &PodVolumeRestoreSpec,
    restore_namespace: &str,
    pod: &Pod,
) -> Result<Series, String> {
    let Some(sel) = &spec.snapshot.latest else {
        return Err("spec.snapshot.latest is not set".into());
    };
    let ns = sel.namespace.as_deref().unwrap_or(restore_namespace);
    if let Some(claim) = &sel.claim {
        return Ok(Series::claim(ns, claim));
    }
    // A dump's series is named by the dump, which is not a volume of the pod.
    if sel.pod.is_some() || sel.volume.is_some() || spec.dump.is_some() {
        return Ok(Series::pod_volume(
            ns,
            sel.pod.as_deref().unwrap_or(&spec.pod),
            sel.volume.as_deref().unwrap_or(&spec.volume),
        ));
    }
    let own = Series::of_pod_volume(pod, &spec.volume).map_err(|e| e.to_string())?;
    Ok(Series {
        namespace: ns.to_string(),
        source: own.source,
    })
}

/// Engine restore options: snapshot `id` into `target`, the spec's include paths, and
/// `delete` in Clean mode.
///
/// Restores run under the restricted policy (owners as recorded; no device nodes, no
/// setuid-root or setgid-root files) unless `allow_privileged` (the BackupRepository's
/// `spec.allowPrivilegedRestore`, which only a cluster admin can set): a snapshot's content
/// is chosen by whoever owned the volume it was taken of.
pub fn restore_options(
    spec: &PodVolumeRestoreSpec,
    id: &str,
    target: &std::path::Path,
    allow_privileged: bool,
) -> RestoreOptions {
    RestoreOptions {
        snapshot: id.to_string(),
        target: target.to_path_buf(),
        includes: spec.include_paths.clone(),
        delete: spec.mode == RestoreMode::Clean,
        threads: 4,
        restricted: !allow_privileged,
        pinned_root: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_proto::crd::{SeriesSelector, SnapshotSelector};

    const NODE: &str = "node-a";

    fn obs(phase: Phase) -> Observed {
        Observed {
            phase,
            status_node: None,
            cancel: false,
            resumed_before: false,
            running_here: false,
            deleting: false,
            has_finalizer: false,
            pod_ref: "shop/web-0".into(),
        }
    }

    fn pod(node: Option<&str>, phase: &str) -> Pod {
        let node = node.map(|n| format!("nodeName: {n}")).unwrap_or_default();
        serde_yaml::from_str(&format!(
            "
metadata: {{name: web-0, namespace: shop, uid: u1}}
spec:
  {node}
  containers: [{{name: c}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: data-web-0}}}}
  - {{name: scratch, emptyDir: {{}}}}
status: {{phase: {phase}}}
"
        ))
        .unwrap()
    }

    #[test]
    fn placement_of_pods() {
        assert_eq!(placement(None, NODE), PodPlacement::Missing);
        assert_eq!(
            placement(Some(&pod(None, "Pending")), NODE),
            PodPlacement::Unscheduled
        );
        assert_eq!(
            placement(Some(&pod(Some("node-b"), "Running")), NODE),
            PodPlacement::OtherNode("node-b".into())
        );
        assert_eq!(
            placement(Some(&pod(Some(NODE), "Pending")), NODE),
            PodPlacement::ThisNode
        );
        assert_eq!(
            placement(Some(&pod(Some(NODE), "Succeeded")), NODE),
            PodPlacement::Terminated("Succeeded".into())
        );
    }

    #[test]
    fn deletion_cancels_what_runs_here_and_releases_the_rest() {
        for phase in [Phase::New, Phase::InProgress, Phase::Completed] {
            let mut o = obs(phase);
            o.deleting = true;
            o.has_finalizer = true;
            o.running_here = true;
            assert_eq!(next_action(&o, NODE, None), NextAction::Cancel);
            o.running_here = false;
            assert_eq!(next_action(&o, NODE, None), NextAction::ReleaseFinalizer);
            o.has_finalizer = false;
            assert_eq!(next_action(&o, NODE, None), NextAction::Ignore);
        }
        // A finished object whose finalizer an interrupted finish left behind is released.
        let mut o = obs(Phase::Completed);
        o.has_finalizer = true;
        assert_eq!(next_action(&o, NODE, None), NextAction::ReleaseFinalizer);
        o.running_here = true;
        assert_eq!(next_action(&o, NODE, None), NextAction::Ignore);
    }

    #[test]
    fn finished_objects_are_left_alone() {
        for phase in [Phase::Completed, Phase::Failed, Phase::Canceled] {
            let mut o = obs(phase);
            o.cancel = true;
            o.status_node = Some(NODE.into());
            assert_eq!(
                next_action(&o, NODE, Some(&PodPlacement::ThisNode)),
                NextAction::Ignore
            );
        }
    }

    #[test]
    fn new_objects_need_the_pod_then_are_claimed_only_on_its_node() {
        let o = obs(Phase::New);
        assert_eq!(next_action(&o, NODE, None), NextAction::LookUpPod);
        assert_eq!(
            next_action(&o, NODE, Some(&PodPlacement::ThisNode)),
            NextAction::Claim
        );
        assert_eq!(
            next_action(&o, NODE, Some(&PodPlacement::OtherNode("b".into()))),
            NextAction::Ignore
        );
        assert_eq!(
            next_action(&o, NODE, Some(&PodPlacement::Unscheduled)),
            NextAction::Requeue(Duration::from_secs(15))
        );
        assert_eq!(
            next_action(&o, NODE, Some(&PodPlacement::Missing)),
            NextAction::Finish {
                phase: Phase::Failed,
                reason: Reason::PodNotFound,
                message: "pod shop/web-0 not found".into()
            }
        );
        match next_action(&o, NODE, Some(&PodPlacement::Terminated("Failed".into()))) {
            NextAction::Finish { phase, message, .. } => {
                assert_eq!(phase, Phase::Failed);
                assert!(
                    message.contains("has terminated (phase Failed)"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_before_start_finishes_as_canceled_unless_other_node() {
        let mut o = obs(Phase::New);
        o.cancel = true;
        for p in [PodPlacement::ThisNode, PodPlacement::Missing] {
            assert_eq!(
                next_action(&o, NODE, Some(&p)),
                NextAction::Finish {
                    phase: Phase::Canceled,
                    reason: Reason::Canceled,
                    message: "canceled before it started".into()
                }
            );
        }
        assert_eq!(
            next_action(&o, NODE, Some(&PodPlacement::OtherNode("b".into()))),
            NextAction::Ignore
        );
    }

    #[test]
    fn running_here_only_reacts_to_cancel() {
        let mut o = obs(Phase::InProgress);
        o.status_node = Some(NODE.into());
        o.running_here = true;
        assert_eq!(next_action(&o, NODE, None), NextAction::Ignore);
        o.cancel = true;
        assert_eq!(next_action(&o, NODE, None), NextAction::Cancel);
    }

    #[test]
    fn restart_rule_resumes_once_then_fails() {
        let mut o = obs(Phase::InProgress);
        o.status_node = Some("node-b".into());
        assert_eq!(next_action(&o, NODE, None), NextAction::Ignore);
        o.status_node = Some(NODE.into());
        assert_eq!(next_action(&o, NODE, None), NextAction::Resume);
        o.resumed_before = true;
        match next_action(&o, NODE, None) {
            NextAction::Finish { phase, message, .. } => {
                assert_eq!(phase, Phase::Failed);
                assert!(message.contains("interrupted twice"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        o.cancel = true;
        assert!(matches!(
            next_action(&o, NODE, None),
            NextAction::Finish {
                phase: Phase::Canceled,
                ..
            }
        ));
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn claim_statuses() {
        let now = t("2025-03-10T12:00:00Z");
        let c = claimed(
            &OperationStatus::default(),
            NODE,
            "agent-x",
            &now,
            false,
            None,
        );
        assert_eq!(c.phase, Some(Phase::InProgress));
        assert_eq!(c.node.as_deref(), Some(NODE));
        assert_eq!(c.agent.as_deref(), Some("agent-x"));
        assert_eq!(c.start_timestamp, Some(now.clone()));
        assert!(c.conditions.is_empty());
        let later = t("2025-03-10T12:05:00Z");
        let r = claimed(&c, NODE, "agent-y", &later, true, None);
        assert_eq!(r.conditions.len(), 1);
        assert_eq!(r.conditions[0].type_, CONDITION_RESUMED);
        assert_eq!(r.start_timestamp, Some(later.clone()));
        // Resuming twice keeps one condition.
        let r2 = claimed(&r, NODE, "agent-y", &later, true, None);
        assert_eq!(r2.conditions.len(), 1);
        let f = claimed(
            &c,
            NODE,
            "agent-x",
            &later,
            false,
            Some((Phase::Failed, Reason::PodNotFound, "boom".into())),
        );
        assert_eq!(f.phase, Some(Phase::Failed));
        assert_eq!(f.start_timestamp, Some(now));
        assert_eq!(f.completion_timestamp, Some(later));
        assert_eq!(f.message.as_deref(), Some("boom"));
        assert_eq!(f.reason.as_deref(), Some("pod_not_found"));
    }

    #[test]
    fn throttle_waits_an_interval_and_skips_unchanged() {
        let start = Instant::now();
        let mut th = ProgressThrottle::new(Duration::from_secs(3), start);
        let p1 = StatusProgress::new(10, 100, 1, 10);
        assert!(!th.due(start + Duration::from_secs(1), &p1));
        assert!(th.due(start + Duration::from_secs(3), &p1));
        // Same progress later: nothing to write.
        assert!(!th.due(start + Duration::from_secs(10), &p1));
        let p2 = StatusProgress::new(20, 100, 2, 10);
        assert!(!th.due(start + Duration::from_secs(4), &p2));
        assert!(th.due(start + Duration::from_secs(6), &p2));
        assert_eq!(
            status_progress(&ProgressSnapshot {
                bytes_done: 50,
                bytes_total: 200,
                files_done: 1,
                files_total: 2,
                ..Default::default()
            })
            .percent,
            25
        );
    }

    #[test]
    fn engine_options_from_spec() {
        let p = pod(Some(NODE), "Running");
        let identity = podvault_proto::k8s::volume_identity(&p, "data", NODE, Some("op")).unwrap();
        let o = backup_options(
            std::path::Path::new("/k/pods/u/volumes/x/data"),
            identity.clone(),
            &["app=shop".into()],
            &["*.tmp".into()],
            NODE,
        );
        assert_eq!(o.host.as_deref(), Some(NODE));
        // The engine picks the parent by the identity's series.
        assert_eq!(o.parent, None);
        assert_eq!(o.identity, Some(identity));
        assert_eq!(o.tags, vec!["app=shop".to_string()]);
        assert_eq!(o.excludes, vec!["*.tmp".to_string(), ".podvault".into()]);
        assert!(!o.force);

        let policy: RetentionPolicy = "last=3,daily=7".parse().unwrap();
        let f = forget_options(&policy, &Series::claim("shop", "data-web-0"));
        assert_eq!((f.keep_last, f.keep_daily, f.keep_hourly), (3, 7, 0));
        assert!(f.tags.is_empty());
        assert_eq!(f.series.as_deref(), Some("shop/pvc/data-web-0"));
        assert_eq!(f.group_by, "");
        assert!(!f.dry_run);

        let mut spec = PodVolumeRestoreSpec {
            pod: "web-0".into(),
            volume: "data".into(),
            include_paths: vec!["db/".into()],
            mode: RestoreMode::Clean,
            ..Default::default()
        };
        let r = restore_options(&spec, "ff00", std::path::Path::new("/t"), false);
        assert!(r.restricted, "agent restores are restricted by default");
        assert!(!restore_options(&spec, "ff00", std::path::Path::new("/t"), true).restricted);
        assert!(r.delete);
        assert_eq!(r.includes, vec!["db/".to_string()]);
        spec.mode = RestoreMode::Merge;
        assert!(!restore_options(&spec, "ff00", std::path::Path::new("/t"), false).delete);
    }

    #[test]
    fn restore_series_defaults_to_the_target() {
        let p = pod(Some(NODE), "Running");
        let mut spec = PodVolumeRestoreSpec {
            pod: "web-0".into(),
            volume: "data".into(),
            snapshot: SnapshotSelector {
                id: None,
                latest: Some(SeriesSelector::default()),
            },
            ..Default::default()
        };
        assert_eq!(
            restore_series(&spec, "shop", &p).unwrap().key(),
            "shop/pvc/data-web-0"
        );
        spec.volume = "scratch".into();
        assert_eq!(
            restore_series(&spec, "shop", &p).unwrap().key(),
            "shop/pod/web-0/scratch"
        );
        // A dump is not a volume of the pod: its series is named by the dump.
        let mut dump = spec.clone();
        dump.volume = "all.sql".into();
        dump.dump = Some(Default::default());
        assert_eq!(
            restore_series(&dump, "shop", &p).unwrap().key(),
            "shop/pod/web-0/all.sql"
        );
        spec.snapshot.latest = Some(SeriesSelector {
            namespace: Some("other".into()),
            pod: Some("web-1".into()),
            ..Default::default()
        });
        assert_eq!(
            restore_series(&spec, "shop", &p).unwrap().key(),
            "other/pod/web-1/scratch"
        );
        spec.snapshot.latest = Some(SeriesSelector {
            claim: Some("db".into()),
            pod: Some("ignored".into()),
            ..Default::default()
        });
        assert_eq!(
            restore_series(&spec, "shop", &p).unwrap().key(),
            "shop/pvc/db"
        );
        spec.snapshot.latest = None;
        assert!(restore_series(&spec, "shop", &p).is_err());
    }
}
