//! One path for both operation kinds: decide, claim, run, finish.
//!
//! [`reconcile`] turns an object into a [`NextAction`] (pure, in [`super::decide`]) and acts
//! on it; [`run_operation`] runs a claimed operation to its final status: prepare (pod, PV,
//! repository), execute on a blocking thread while progress is patched, write the final
//! status, count it, publish an Event, and release the finalizer.
//!
//! Deleting a running object cancels it: the object carries [`FINALIZER`], so the API server
//! keeps it (with a deletion timestamp) until the agent has stopped the engine. A backup that
//! committed its snapshot before the cancellation reached the engine has that snapshot
//! removed again, so a deleted PodVolumeBackup never leaves a snapshot behind.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use podvault_proto::crd::{
    OperationStatus, Phase, PodVolumeBackup, PodVolumeBackupSpec, PodVolumeRestore,
    PodVolumeRestoreSpec, VolumeOperation,
};
use podvault_proto::k8s::{Series, ANNOTATION_SERIES, FINALIZER};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;

use super::agent::{Agent, Running};
use super::decide::{claimed, next_action, placement, was_resumed, NextAction, Observed};
use super::execute::{execute_backup, execute_restore, BackupJob, RestoreJob};
use super::hooks::{exec_plan, with_hooks, KubeExec, PodHooks};
use super::outcome::{Failure, OpResult, Reason, Report};
use super::prepare::{pod, prepare, Prepared};
use super::status::{claim, set_finalizer, spawn_progress, write_final, Final};
use crate::progress::Progress;

/// What the agent needs to know about PodVolumeBackup and PodVolumeRestore alike.
pub trait Operation:
    VolumeOperation
    + Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Metric `kind` label and event wording (`backup`, `restore`).
    const KIND: &'static str;
    /// Event action.
    const ACTION: &'static str;
    /// True when the operation writes to the repository (and may create it on first use).
    const WRITES_REPOSITORY: bool;
    /// The spec of a PodVolumeBackup that asks for the pod's logical dump, not a volume.
    fn dump_spec(&self) -> Option<&PodVolumeBackupSpec> {
        None
    }
    /// The spec of a PodVolumeRestore that streams a dump into a command in the pod.
    fn dump_restore_spec(&self) -> Option<&PodVolumeRestoreSpec> {
        None
    }
    /// Runs the engine for this claimed object (blocking; call on a blocking thread).
    fn execute(
        &self,
        prepared: Prepared,
        ctx: &Agent,
        base: &OperationStatus,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Report;
}

impl Operation for PodVolumeBackup {
    const KIND: &'static str = "backup";
    const ACTION: &'static str = "Backup";
    const WRITES_REPOSITORY: bool = true;
    fn dump_spec(&self) -> Option<&PodVolumeBackupSpec> {
        self.spec.dump.then_some(&self.spec)
    }
    fn execute(
        &self,
        p: Prepared,
        ctx: &Agent,
        base: &OperationStatus,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Report {
        let job = BackupJob {
            namespace: self.namespace().unwrap_or_default(),
            uid: self.uid().unwrap_or_default(),
            spec: self.spec.clone(),
            pod: p.pod,
            pv: p.pv,
            repo: p.repo,
            node: ctx.node.clone(),
        };
        execute_backup(&job, base, progress, cancel)
    }
}

impl Operation for PodVolumeRestore {
    const KIND: &'static str = "restore";
    const ACTION: &'static str = "Restore";
    const WRITES_REPOSITORY: bool = false;
    fn dump_restore_spec(&self) -> Option<&PodVolumeRestoreSpec> {
        self.spec.dump.is_some().then_some(&self.spec)
    }
    fn execute(
        &self,
        p: Prepared,
        ctx: &Agent,
        base: &OperationStatus,
        progress: &Progress,
        cancel: &AtomicBool,
    ) -> Report {
        let job = RestoreJob {
            namespace: self.namespace().unwrap_or_default(),
            uid: self.uid().unwrap_or_default(),
            spec: self.spec.clone(),
            pod: p.pod,
            pv: p.pv,
            repo: p.repo,
            node: ctx.node.clone(),
        };
        execute_restore(&job, base, progress, cancel)
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// What the agent observes about `obj` (`running_here` from this process' table).
pub fn observe<K: Operation>(obj: &K, running_here: bool) -> Observed {
    let status = obj.operation_status();
    Observed {
        phase: status.phase.unwrap_or_default(),
        status_node: status.node.clone(),
        cancel: obj.cancel_requested(),
        resumed_before: was_resumed(&status),
        running_here,
        deleting: obj.meta().deletion_timestamp.is_some(),
        has_finalizer: obj.finalizers().iter().any(|f| f == FINALIZER),
        pod_ref: format!("{}/{}", obj.namespace().unwrap_or_default(), obj.pod_name()),
    }
}

/// One reconciliation of a PodVolumeBackup or PodVolumeRestore: decide, then claim and start,
/// finish, cancel, release, or wait.
pub async fn reconcile<K: Operation>(obj: Arc<K>, ctx: Arc<Agent>) -> Result<Action, kube::Error> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let node = ctx.node.node.clone();
    let running = ctx.running(&uid);
    let obs = observe(&*obj, running.is_some());
    let mut action = next_action(&obs, &node, None);
    if action == NextAction::LookUpPod {
        let pod = pod(&ctx, &ns, obj.pod_name()).await?;
        action = next_action(&obs, &node, Some(&placement(pod.as_ref(), &node)));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{ns}/{}", obj.name_any());
    match action {
        NextAction::Ignore | NextAction::LookUpPod => Ok(Action::await_change()),
        NextAction::Requeue(d) => Ok(Action::requeue(d)),
        NextAction::Cancel => {
            if let Some(run) = running {
                if obs.deleting {
                    run.deleted.store(true, Ordering::Relaxed);
                }
                run.cancel.store(true, Ordering::Relaxed);
                tracing::info!(kind = K::KIND, object = %name, deleted = obs.deleting, "cancel requested");
            }
            Ok(Action::await_change())
        }
        NextAction::ReleaseFinalizer => {
            set_finalizer(&api, &*obj, false).await?;
            tracing::info!(kind = K::KIND, object = %name, "finalizer released");
            Ok(Action::await_change())
        }
        NextAction::Finish {
            phase,
            reason,
            message,
        } => {
            let status = claimed(
                &obj.operation_status(),
                &node,
                &ctx.identity,
                &now(),
                false,
                Some((phase, reason, message.clone())),
            );
            if let Some(done) = claim(&api, &obj.with_status(status)).await? {
                let report = Report::failed(
                    &done.operation_status(),
                    Failure::new(reason, &message),
                    now(),
                );
                count(&ctx, &done, &report, None);
                let type_ = if phase == Phase::Canceled {
                    EventType::Normal
                } else {
                    EventType::Warning
                };
                ctx.publish(&done, type_, phase.as_str(), message).await;
                set_finalizer(&api, &done, false).await?;
            }
            Ok(Action::await_change())
        }
        NextAction::Claim | NextAction::Resume => {
            let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
                // All slots busy: look again soon (the object stays New meanwhile).
                return Ok(Action::requeue(Duration::from_secs(5)));
            };
            let resume = action == NextAction::Resume;
            let run = Running {
                cancel: Arc::new(AtomicBool::new(false)),
                deleted: Arc::new(AtomicBool::new(false)),
            };
            // Registered before the claim so the watch event of our own claim is not mistaken
            // for an interrupted operation.
            ctx.set_running(&uid, Some(run.clone()));
            let status = claimed(
                &obj.operation_status(),
                &node,
                &ctx.identity,
                &now(),
                resume,
                None,
            );
            let claimed_obj = match claim(&api, &obj.with_status(status)).await {
                Ok(Some(mine)) => mine,
                Ok(None) => {
                    // 409: the object changed since it was read (most often the controller
                    // routing it, or another agent's claim). The new version's watch event
                    // brings it back here, where it is claimed or seen as taken.
                    tracing::debug!(kind = K::KIND, object = %name, "changed since read (409); waiting for the new version");
                    ctx.set_running(&uid, None);
                    return Ok(Action::await_change());
                }
                Err(e) => {
                    ctx.set_running(&uid, None);
                    return Err(e);
                }
            };
            tracing::info!(kind = K::KIND, object = %name, resume, "claimed");
            // The finalizer makes a deletion wait for the cancellation (normally the
            // controller set it already and this is no request at all).
            let mine = match set_finalizer(&api, &claimed_obj, true).await {
                Ok(Some(o)) => o,
                Ok(None) => {
                    // Deleted right after the claim: nothing ran.
                    ctx.set_running(&uid, None);
                    return Ok(Action::await_change());
                }
                Err(e) => {
                    tracing::warn!(kind = K::KIND, object = %name, error = %e, "could not add the finalizer; running without it");
                    claimed_obj
                }
            };
            tokio::spawn(run_operation(ctx.clone(), mine, run, permit));
            Ok(Action::await_change())
        }
    }
}

/// Retry policy: log and look again in 15 s.
pub fn error_policy<K: Operation>(obj: Arc<K>, err: &kube::Error, _ctx: Arc<Agent>) -> Action {
    tracing::warn!(kind = K::KIND, object = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

/// The `series` metric label of a backup: the resolved series, else the one recorded in the
/// status or the controller's annotation, else the pod-volume series named by the spec.
pub fn series_label<K: Operation>(obj: &K, report: Option<&Report>) -> String {
    if let Some(s) = report.and_then(|r| r.series.as_ref()) {
        return s.metric_label();
    }
    let ns = obj.namespace().unwrap_or_default();
    report
        .and_then(|r| r.status.series.clone())
        .or_else(|| obj.operation_status().series)
        .or_else(|| obj.annotations().get(ANNOTATION_SERIES).cloned())
        .and_then(|k| k.parse::<Series>().ok())
        .unwrap_or_else(|| Series::pod_volume(&ns, obj.pod_name(), obj.volume()))
        .metric_label()
}

/// Every result, so that a series' counters all exist (at 0) once it has been counted.
const RESULTS: [OpResult; 4] = [
    OpResult::Completed,
    OpResult::Partial,
    OpResult::Failed,
    OpResult::Canceled,
];

/// Counts a finished operation in the metrics (one place for both kinds): the result
/// counters, and the last-success / last-failure gauges the alerts read (they exist from the
/// first result on, so the first failure of a series, or the first after a restart, alerts;
/// a counter born at 1 shows no `increase()`).
fn count<K: Operation>(ctx: &Agent, obj: &K, report: &Report, elapsed: Option<Duration>) {
    let ns = obj.namespace().unwrap_or_default();
    let m = &ctx.metrics;
    let result = report.result.as_str();
    let now = chrono::Utc::now().timestamp() as f64;
    if K::KIND == "backup" {
        let series = series_label(obj, Some(report));
        for r in RESULTS {
            m.backups
                .with_label_values(&[ns.as_str(), series.as_str(), r.as_str()]);
        }
        m.backups
            .with_label_values(&[ns.as_str(), series.as_str(), result])
            .inc();
        if let Some(d) = elapsed {
            m.backup_duration
                .with_label_values(&[ns.as_str()])
                .observe(d.as_secs_f64());
        }
        m.bytes_read
            .with_label_values(&[ns.as_str(), series.as_str()])
            .inc_by(report.bytes_read);
        m.bytes_added
            .with_label_values(&[ns.as_str(), series.as_str()])
            .inc_by(report.bytes_added);
        let last = if report.result.succeeded() {
            Some(&m.last_success)
        } else if report.result == OpResult::Failed {
            Some(&m.last_failure)
        } else {
            None
        };
        if let Some(gauge) = last {
            gauge
                .with_label_values(&[ns.as_str(), series.as_str()])
                .set(now);
        }
    } else {
        for r in RESULTS {
            m.restores.with_label_values(&[ns.as_str(), r.as_str()]);
        }
        m.restores.with_label_values(&[ns.as_str(), result]).inc();
        let last = if report.result.succeeded() {
            Some(&m.restore_last_success)
        } else if report.result == OpResult::Failed {
            Some(&m.restore_last_failure)
        } else {
            None
        };
        if let Some(gauge) = last {
            gauge.with_label_values(&[ns.as_str()]).set(now);
        }
    }
    if report.result == OpResult::Failed {
        let reason = report.reason.unwrap_or(Reason::Api);
        m.errors
            .with_label_values(&[K::KIND, reason.as_str()])
            .inc();
    }
}

/// Counts a running operation in `podvault_operations_in_flight` and frees its slot and
/// running entry when dropped (also on panic).
struct InFlight {
    ctx: Arc<Agent>,
    uid: String,
    _permit: OwnedSemaphorePermit,
}

impl InFlight {
    fn new(ctx: Arc<Agent>, uid: String, permit: OwnedSemaphorePermit) -> Self {
        ctx.metrics
            .in_flight
            .with_label_values(&[ctx.node.node.as_str()])
            .inc();
        InFlight {
            ctx,
            uid,
            _permit: permit,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ctx
            .metrics
            .in_flight
            .with_label_values(&[self.ctx.node.node.as_str()])
            .dec();
        self.ctx.set_running(&self.uid, None);
    }
}

/// Runs a claimed operation to its final status, then releases the finalizer.
pub async fn run_operation<K: Operation>(
    ctx: Arc<Agent>,
    obj: K,
    run: Running,
    permit: OwnedSemaphorePermit,
) {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let _guard = InFlight::new(ctx.clone(), obj.uid().unwrap_or_default(), permit);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let started = Instant::now();
    let base = obj.operation_status();
    let dump = obj.dump_spec().is_some() || obj.dump_restore_spec().is_some();
    let verb = match (K::WRITES_REPOSITORY, dump) {
        (true, false) => "backing up volume",
        (false, false) => "restoring into volume",
        (true, true) => "storing the backup command's output as dump",
        (false, true) => "streaming into the restore command the dump",
    };
    ctx.publish(
        &obj,
        EventType::Normal,
        "Started",
        format!(
            "{verb} {:?} of pod {} on node {}",
            obj.volume(),
            obj.pod_name(),
            ctx.node.node
        ),
    )
    .await;
    let prepared = prepare(
        &ctx,
        &ns,
        obj.pod_name(),
        // A dump reads (and a dump restore writes) no volume.
        (obj.dump_spec().is_none() && obj.dump_restore_spec().is_none()).then(|| obj.volume()),
        obj.repository(),
        K::WRITES_REPOSITORY,
    )
    .await;
    // Hooks wrap backups only; a pod whose hooks cannot run fails here, before any work.
    let prepared = prepared.and_then(|p| {
        let hooks = if K::WRITES_REPOSITORY {
            exec_plan(&p.pod, &ctx.node.node, ctx.allow_exec)?
        } else {
            if obj.dump_restore_spec().is_some() && !ctx.allow_exec {
                return Err(Failure::new(
                    Reason::ExecNotAllowed,
                    format!(
                        "spec.dump needs pods/exec, but the agent on node {} runs without \
                         --allow-exec (chart: agent.hooks.enabled)",
                        ctx.node.node
                    ),
                ));
            }
            PodHooks::default()
        };
        Ok((p, hooks))
    });
    let mut report = match prepared {
        Err(f) => Report::failed(&base, f, now()),
        Ok((p, hooks)) => {
            let pod_ref = format!("{ns}/{}", obj.pod_name());
            let runner = KubeExec(ctx.client.clone());
            let backup = || async {
                let progress = Arc::new(Progress::default());
                let ticker = spawn_progress(
                    api.clone(),
                    name.clone(),
                    progress.clone(),
                    ctx.progress_interval,
                );
                // Dumps run the command through pods/exec; volumes run the engine.
                let cancel = run.cancel.clone();
                let report = if let Some(spec) = obj.dump_spec() {
                    let (node, uid) = (&ctx.node.node, obj.uid().unwrap_or_default());
                    let client = ctx.client.clone();
                    let target = super::dump::DumpTarget { node, uid: &uid };
                    super::dump::execute_dump(client, target, spec, p, &base, progress, cancel)
                        .await
                } else if let Some(spec) = obj.dump_restore_spec() {
                    let client = ctx.client.clone();
                    super::dump::execute_dump_restore(client, &ns, spec, p, &base, progress, cancel)
                        .await
                } else {
                    let (ctx, obj, claimed) = (ctx.clone(), obj.clone(), base.clone());
                    let task = tokio::task::spawn_blocking(move || {
                        obj.execute(p, &ctx, &claimed, &progress, &cancel)
                    });
                    task.await.unwrap_or_else(|e| {
                        Report::failed(
                            &base,
                            Failure::new(
                                Reason::Panic,
                                format!("the {} task failed: {e}", K::KIND),
                            ),
                            now(),
                        )
                    })
                };
                ticker.abort();
                report
            };
            with_hooks(&hooks, &pod_ref, &runner, &run.cancel, &base, backup).await
        }
    };
    if run.deleted.load(Ordering::Relaxed) && report.result == OpResult::Canceled {
        report.reason = Some(Reason::Deleted);
        report.status.reason = Some(Reason::Deleted.as_str().into());
        report.status.message = Some(format!(
            "canceled: the {} was deleted while it ran{}",
            K::ACTION,
            if K::WRITES_REPOSITORY {
                "; no snapshot was written"
            } else {
                "; the volume may hold a partial restore and no marker was written"
            }
        ));
    }
    let after = write_final(&api, &name, &report.status).await;
    // Deleted while it ran, but the engine had already committed: take the snapshot back.
    // (Not when the API server could not be reached: then nothing says it was deleted.)
    let deleting = match &after {
        Final::Written(o) => o.meta().deletion_timestamp.is_some(),
        Final::Gone => true,
        Final::Unknown => false,
    };
    if deleting && K::WRITES_REPOSITORY && report.result.succeeded() {
        if let Some(id) = report.status.snapshot_id.clone() {
            match forget_snapshot(&ctx, &obj, &id).await {
                Ok(()) => {
                    tracing::info!(object = %format!("{ns}/{name}"), snapshot = %id, "deleted while running: its snapshot was removed")
                }
                Err(e) => {
                    tracing::warn!(object = %format!("{ns}/{name}"), snapshot = %id, error = %e, "deleted while running: could not remove its snapshot")
                }
            }
            report.result = OpResult::Canceled;
            report.reason = Some(Reason::Deleted);
        }
    }
    count(&ctx, &obj, &report, Some(started.elapsed()));
    let phase = report.status.phase.unwrap_or_default();
    let message = report.status.message.clone().unwrap_or_default();
    let type_ = if report.result == OpResult::Failed {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.publish(&obj, type_, phase.as_str(), message).await;
    if let Final::Written(o) = after {
        if let Err(e) = set_finalizer(&api, &o, false).await {
            tracing::warn!(object = %format!("{ns}/{name}"), error = %e, "could not release the finalizer (the next reconcile retries)");
        }
    }
}

/// Removes snapshot `id` (written by `obj`, which was deleted while it ran).
async fn forget_snapshot<K: Operation>(ctx: &Agent, obj: &K, id: &str) -> Result<(), String> {
    let name = obj
        .repository()
        .unwrap_or(&ctx.default_repository)
        .to_string();
    let settings = ctx
        .repos
        .cached(&name)
        .ok_or_else(|| format!("BackupRepository {name} settings are no longer cached"))?;
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let repo = super::repo::open_repository(&settings, false).map_err(|e| e.to_string())?;
        let (sid, _) = repo.find_snapshot(&id).map_err(|e| e.to_string())?;
        repo.backend()
            .delete(&crate::repository::object_path::<
                podvault_proto::snapshot::Snapshot,
            >(&sid))
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
