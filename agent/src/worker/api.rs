//! The Kubernetes seam: watches, claims, status patches, events and concurrency.
//!
//! Kept thin on purpose: every decision is a pure function of [`super::decide`] and the work
//! itself is [`super::execute`]; this module only fetches objects and writes statuses.
//!
//! Requests per operation: a claim (`PUT …/status` carrying the object's `resourceVersion`, so
//! the API server rejects it with 409 Conflict when anyone changed the object since it was
//! read — exactly one claimant wins), reads of the pod, its PVC and PV, the BackupRepository
//! and its Secrets (from the agent's namespace only), merge patches of `status.progress` at
//! most every few seconds, and one final merge patch of the status. Events go to the object.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use podvault_proto::crd::{
    BackupRepository, PodVolumeBackup, PodVolumeBackupStatus, PodVolumeRestore,
    PodVolumeRestoreStatus,
};
use podvault_proto::k8s::{claim_name, find_volume, Series, VolumePolicy, ANNOTATION_SERIES};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::decide::{
    claimed, next_action, placement, status_progress, CommonStatus, NextAction, Observed,
    PodPlacement, ProgressThrottle, CONDITION_RESUMED,
};
use super::execute::{
    execute_backup, execute_restore, locate_volume, result, BackupJob, BackupReport, Failure,
    NodeSettings, RestoreJob, RestoreReport,
};
use super::metrics::{serve, AgentMetrics};
use super::repo::{settings, RepoSettings, SecretData};
use super::AgentArgs;
use crate::progress::Progress;

/// Field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "podvault-agent";

/// Shared state of the agent.
pub struct Agent {
    /// API client.
    pub client: Client,
    /// Node name, kubelet root and skip rules.
    pub node: NodeSettings,
    /// This agent's identity (`status.agent`).
    pub identity: String,
    /// Namespace whose Secrets hold repository passwords and credentials.
    pub namespace: String,
    /// BackupRepository used when an operation names none.
    pub default_repository: String,
    /// Metrics.
    pub metrics: AgentMetrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Free operation slots (PODVAULT_CONCURRENCY).
    pub slots: Arc<Semaphore>,
    /// Operations this process runs, by object uid, with their cancel flags.
    pub running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Interval of progress patches.
    pub progress_interval: Duration,
    /// How long to wait for a Pending pod's volume to be mounted.
    pub mount_wait: Duration,
}

impl Agent {
    /// Builds the agent state from its options.
    pub fn new(client: Client, args: &AgentArgs, metrics: AgentMetrics) -> Self {
        let identity = args.identity();
        Agent {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: Some(identity.clone()),
                },
            ),
            client,
            node: NodeSettings {
                node: args.node.clone(),
                kubelet_root: args.kubelet_root.clone(),
                policy: VolumePolicy {
                    allow_host_path: args.allow_host_path,
                },
            },
            identity,
            namespace: args.namespace.clone(),
            default_repository: args.default_repository.clone(),
            metrics,
            slots: Arc::new(Semaphore::new(args.concurrency.max(1))),
            running: Mutex::new(HashMap::new()),
            progress_interval: args.progress_interval(),
            mount_wait: Duration::from_secs(args.mount_wait_secs),
        }
    }

    fn running_flag(&self, uid: &str) -> Option<Arc<AtomicBool>> {
        self.running.lock().ok()?.get(uid).cloned()
    }

    fn set_running(&self, uid: &str, flag: Option<Arc<AtomicBool>>) {
        if let Ok(mut r) = self.running.lock() {
            match flag {
                Some(f) => {
                    r.insert(uid.to_string(), f);
                }
                None => {
                    r.remove(uid);
                }
            }
        }
    }

    async fn publish<K: Operation>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: K::ACTION.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(object = %obj.name_any(), error = %e, "could not publish event");
        }
    }
}

/// What the agent needs to know about PodVolumeBackup and PodVolumeRestore alike.
pub trait Operation:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
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
    /// `spec.pod`.
    fn pod_name(&self) -> &str;
    /// `spec.volume`.
    fn volume(&self) -> &str;
    /// `spec.cancel`.
    fn cancel_requested(&self) -> bool;
    /// The status fields both kinds share.
    fn common(&self) -> CommonStatus;
    /// A copy whose status is `c` and nothing else (a claim starts a fresh status, keeping
    /// only `series` for backups).
    fn with_common(&self, c: CommonStatus) -> Self;
    /// Runs the claimed operation in the background; releases `permit` when done.
    fn spawn(
        ctx: Arc<Agent>,
        claimed: Self,
        cancel: Arc<AtomicBool>,
        permit: OwnedSemaphorePermit,
    ) -> tokio::task::JoinHandle<()>;
}

macro_rules! common_of {
    ($s:expr) => {
        match $s {
            Some(s) => CommonStatus {
                phase: s.phase,
                node: s.node.clone(),
                agent: s.agent.clone(),
                start_timestamp: s.start_timestamp.clone(),
                completion_timestamp: s.completion_timestamp.clone(),
                message: s.message.clone(),
                conditions: s.conditions.clone(),
            },
            None => CommonStatus::default(),
        }
    };
}

impl Operation for PodVolumeBackup {
    const KIND: &'static str = "backup";
    const ACTION: &'static str = "Backup";
    fn pod_name(&self) -> &str {
        &self.spec.pod
    }
    fn volume(&self) -> &str {
        &self.spec.volume
    }
    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }
    fn common(&self) -> CommonStatus {
        common_of!(&self.status)
    }
    fn with_common(&self, c: CommonStatus) -> Self {
        let mut o = self.clone();
        o.status = Some(PodVolumeBackupStatus {
            phase: c.phase,
            node: c.node,
            agent: c.agent,
            start_timestamp: c.start_timestamp,
            completion_timestamp: c.completion_timestamp,
            message: c.message,
            conditions: c.conditions,
            series: self.status.as_ref().and_then(|s| s.series.clone()),
            ..Default::default()
        });
        o
    }
    fn spawn(
        ctx: Arc<Agent>,
        claimed: Self,
        cancel: Arc<AtomicBool>,
        permit: OwnedSemaphorePermit,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_backup(ctx, claimed, cancel, permit))
    }
}

impl Operation for PodVolumeRestore {
    const KIND: &'static str = "restore";
    const ACTION: &'static str = "Restore";
    fn pod_name(&self) -> &str {
        &self.spec.pod
    }
    fn volume(&self) -> &str {
        &self.spec.volume
    }
    fn cancel_requested(&self) -> bool {
        self.spec.cancel
    }
    fn common(&self) -> CommonStatus {
        common_of!(&self.status)
    }
    fn with_common(&self, c: CommonStatus) -> Self {
        let mut o = self.clone();
        o.status = Some(PodVolumeRestoreStatus {
            phase: c.phase,
            node: c.node,
            agent: c.agent,
            start_timestamp: c.start_timestamp,
            completion_timestamp: c.completion_timestamp,
            message: c.message,
            conditions: c.conditions,
            ..Default::default()
        });
        o
    }
    fn spawn(
        ctx: Arc<Agent>,
        claimed: Self,
        cancel: Arc<AtomicBool>,
        permit: OwnedSemaphorePermit,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(run_restore(ctx, claimed, cancel, permit))
    }
}

/// Replaces the status of `updated` (which carries the `resourceVersion` it was read at).
/// `Ok(None)` when the API server answers 409 Conflict: someone else changed (claimed) it.
pub async fn claim<K: Operation>(api: &Api<K>, updated: &K) -> Result<Option<K>, kube::Error> {
    let pp = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match api.replace_status(&updated.name_any(), &pp, updated).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Merge-patches `status` of object `name` with `status` (only the fields it sets).
pub async fn patch_status<K: Operation>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<K, kube::Error> {
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &pp, &Patch::Merge(&patch)).await
}

/// One reconciliation of a PodVolumeBackup or PodVolumeRestore: decide, then claim and start,
/// finish, cancel, or wait.
pub async fn reconcile<K: Operation>(obj: Arc<K>, ctx: Arc<Agent>) -> Result<Action, kube::Error> {
    let ns = obj.namespace().unwrap_or_default();
    let uid = obj.uid().unwrap_or_default();
    let node = ctx.node.node.clone();
    let running = ctx.running_flag(&uid);
    let common = obj.common();
    let obs = Observed {
        phase: common.phase.unwrap_or_default(),
        status_node: common.node.clone(),
        cancel: obj.cancel_requested(),
        resumed_before: common
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_RESUMED && c.status == "True"),
        running_here: running.is_some(),
        pod_ref: format!("{ns}/{}", obj.pod_name()),
    };
    let mut action = next_action(&obs, &node, None);
    if action == NextAction::LookUpPod {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let pod = pods.get_opt(obj.pod_name()).await?;
        action = next_action(&obs, &node, Some(&placement(pod.as_ref(), &node)));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match action {
        NextAction::Ignore | NextAction::LookUpPod => Ok(Action::await_change()),
        NextAction::Requeue(d) => Ok(Action::requeue(d)),
        NextAction::Cancel => {
            if let Some(flag) = running {
                flag.store(true, Ordering::Relaxed);
                tracing::info!(kind = K::KIND, object = %format!("{ns}/{}", obj.name_any()), "cancel requested");
            }
            Ok(Action::await_change())
        }
        NextAction::Finish { phase, message } => {
            let status = claimed(
                &common,
                &node,
                &ctx.identity,
                &now,
                false,
                Some((phase, message.clone())),
            );
            if let Some(done) = claim(&api, &obj.with_common(status)).await? {
                let result = if phase == podvault_proto::crd::Phase::Canceled {
                    result::CANCELED
                } else {
                    ctx.metrics
                        .errors
                        .with_label_values(&[K::KIND, "not_started"])
                        .inc();
                    result::FAILED
                };
                count_result(&ctx, &done, result);
                let type_ = if result == result::CANCELED {
                    EventType::Normal
                } else {
                    EventType::Warning
                };
                ctx.publish(&done, type_, phase.as_str(), message).await;
            }
            Ok(Action::await_change())
        }
        NextAction::Claim | NextAction::Resume => {
            let Ok(permit) = ctx.slots.clone().try_acquire_owned() else {
                // All slots busy: look again soon (the object stays New meanwhile).
                return Ok(Action::requeue(Duration::from_secs(5)));
            };
            let resume = action == NextAction::Resume;
            let flag = Arc::new(AtomicBool::new(false));
            // Registered before the claim so the watch event of our own claim is not mistaken
            // for an interrupted operation.
            ctx.set_running(&uid, Some(flag.clone()));
            let status = claimed(&common, &node, &ctx.identity, &now, resume, None);
            match claim(&api, &obj.with_common(status)).await {
                Ok(Some(mine)) => {
                    tracing::info!(kind = K::KIND, object = %format!("{ns}/{}", mine.name_any()), resume, "claimed");
                    K::spawn(ctx.clone(), mine, flag, permit);
                }
                Ok(None) => {
                    tracing::info!(kind = K::KIND, object = %format!("{ns}/{}", obj.name_any()), "claimed by someone else (409)");
                    ctx.set_running(&uid, None);
                }
                Err(e) => {
                    ctx.set_running(&uid, None);
                    return Err(e);
                }
            }
            Ok(Action::await_change())
        }
    }
}

/// Retry policy: log and look again in 15 s.
pub fn error_policy<K: Operation>(obj: Arc<K>, err: &kube::Error, _ctx: Arc<Agent>) -> Action {
    tracing::warn!(kind = K::KIND, object = %obj.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

fn count_result<K: Operation>(ctx: &Agent, obj: &K, result: &str) {
    let ns = obj.namespace().unwrap_or_default();
    if K::KIND == "backup" {
        let series = series_label(obj, None);
        ctx.metrics
            .backups
            .with_label_values(&[ns.as_str(), series.as_str(), result])
            .inc();
    } else {
        ctx.metrics
            .restores
            .with_label_values(&[ns.as_str(), result])
            .inc();
    }
}

/// The `series` metric label of a backup: the resolved series, else the one the controller
/// recorded (status or annotation), else the pod-volume series named by the spec.
fn series_label<K: Operation>(obj: &K, resolved: Option<&Series>) -> String {
    if let Some(s) = resolved {
        return s.metric_label();
    }
    let ns = obj.namespace().unwrap_or_default();
    let recorded = serde_json::to_value(obj)
        .ok()
        .and_then(|v| v["status"]["series"].as_str().map(str::to_string))
        .or_else(|| obj.annotations().get(ANNOTATION_SERIES).cloned());
    recorded
        .and_then(|k| k.parse::<Series>().ok())
        .unwrap_or_else(|| Series::pod_volume(&ns, obj.pod_name(), obj.volume()))
        .metric_label()
}

/// Objects fetched for one operation.
struct Prepared {
    pod: Pod,
    pv: Option<PersistentVolume>,
    repo: RepoSettings,
}

fn api_failure(what: String) -> impl FnOnce(kube::Error) -> Failure {
    move |e| Failure::new("api", format!("{what}: {e}"))
}

/// Fetches the pod (waiting while a Pending pod's volume is not mounted yet), the bound PV,
/// and the repository settings.
async fn prepare(
    ctx: &Agent,
    ns: &str,
    pod_name: &str,
    volume: &str,
    repository: Option<&str>,
) -> Result<Prepared, Failure> {
    let deadline = Instant::now() + ctx.mount_wait;
    let node = &ctx.node.node;
    let (pod, pv) = loop {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let pod = pods
            .get_opt(pod_name)
            .await
            .map_err(api_failure(format!("reading pod {ns}/{pod_name}")))?
            .ok_or_else(|| {
                Failure::new("pod_not_found", format!("pod {ns}/{pod_name} not found"))
            })?;
        match placement(Some(&pod), node) {
            PodPlacement::ThisNode => {}
            PodPlacement::OtherNode(other) => {
                return Err(Failure::new(
                    "pod_moved",
                    format!("pod {ns}/{pod_name} is on node {other}, not on node {node}"),
                ))
            }
            PodPlacement::Unscheduled => {
                return Err(Failure::new(
                    "pod_not_scheduled",
                    format!("pod {ns}/{pod_name} is not scheduled to a node"),
                ))
            }
            PodPlacement::Terminated(phase) => {
                return Err(Failure::new(
                    "pod_terminated",
                    format!("pod {ns}/{pod_name} has terminated (phase {phase})"),
                ))
            }
            PodPlacement::Missing => {
                return Err(Failure::new(
                    "pod_not_found",
                    format!("pod {ns}/{pod_name} not found"),
                ))
            }
        }
        let pv = bound_pv(ctx, ns, &pod, volume).await?;
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        match locate_volume(&pod, volume, pv.as_ref(), &ctx.node) {
            Err(f) if pending && f.reason == "volume_not_mounted" && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(f) => return Err(f),
            Ok(_) => break (pod, pv),
        }
    };
    let name = repository.unwrap_or(&ctx.default_repository);
    let repo = repo_settings(ctx, name).await?;
    Ok(Prepared { pod, pv, repo })
}

/// The PersistentVolume bound to the claim behind `volume`, if the volume is claim-backed and
/// the claim is bound (otherwise the volume rules report the problem).
async fn bound_pv(
    ctx: &Agent,
    ns: &str,
    pod: &Pod,
    volume: &str,
) -> Result<Option<PersistentVolume>, Failure> {
    let Ok(vol) = find_volume(pod, volume) else {
        return Ok(None);
    };
    let Some(claim) = claim_name(pod, vol) else {
        return Ok(None);
    };
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let pvc = pvcs
        .get_opt(&claim)
        .await
        .map_err(api_failure(format!(
            "reading PersistentVolumeClaim {ns}/{claim}"
        )))?
        .ok_or_else(|| {
            Failure::new(
                "pvc_not_found",
                format!("PersistentVolumeClaim {ns}/{claim} (volume {volume:?}) not found"),
            )
        })?;
    let Some(pv_name) = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(api_failure(format!("reading PersistentVolume {pv_name}")))?
        .ok_or_else(|| {
            Failure::new(
                "pv_not_found",
                format!("PersistentVolume {pv_name} bound to claim {ns}/{claim} not found"),
            )
        })?;
    Ok(Some(pv))
}

/// A Secret's data, `stringData` overlaid.
fn secret_data(s: &Secret) -> SecretData {
    let mut out: SecretData = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.as_bytes().to_vec());
    }
    out
}

async fn read_secret(ctx: &Agent, name: &str, why: &str) -> Result<SecretData, Failure> {
    let ns = &ctx.namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = secrets
        .get_opt(name)
        .await
        .map_err(api_failure(format!("reading Secret {ns}/{name} ({why})")))?
        .ok_or_else(|| {
            Failure::new(
                "secret_not_found",
                format!("Secret {ns}/{name} ({why}) not found"),
            )
        })?;
    Ok(secret_data(&s))
}

async fn repo_settings(ctx: &Agent, name: &str) -> Result<RepoSettings, Failure> {
    let repos: Api<BackupRepository> = Api::all(ctx.client.clone());
    let repo = repos
        .get_opt(name)
        .await
        .map_err(api_failure(format!("reading BackupRepository {name}")))?
        .ok_or_else(|| {
            Failure::new(
                "repository_not_found",
                format!("BackupRepository {name} not found"),
            )
        })?;
    let why = format!("BackupRepository {name} spec.passwordSecret");
    let password = read_secret(ctx, &repo.spec.password_secret.name, &why).await?;
    let credentials = match &repo.spec.credentials_secret {
        Some(c) => Some(
            read_secret(
                ctx,
                &c.name,
                &format!("BackupRepository {name} spec.credentialsSecret"),
            )
            .await?,
        ),
        None => None,
    };
    settings(name, &repo.spec, &password, credentials.as_ref())
        .map_err(|m| Failure::new("repository_config", m))
}

/// Patches `status.progress` every `interval` while the operation runs.
fn spawn_progress<K: Operation>(
    api: Api<K>,
    name: String,
    progress: Arc<Progress>,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut throttle = ProgressThrottle::new(interval, Instant::now());
        loop {
            tokio::time::sleep(interval).await;
            let p = status_progress(&progress.snapshot());
            if throttle.due(Instant::now(), &p) {
                if let Err(e) =
                    patch_status(&api, &name, &serde_json::json!({ "progress": p })).await
                {
                    tracing::warn!(object = %name, error = %e, "progress update failed");
                }
            }
        }
    })
}

/// Writes the final status, retrying transient API errors a few times.
async fn write_final<K: Operation>(api: &Api<K>, name: &str, status: &impl Serialize) {
    for attempt in 1..=5u32 {
        match patch_status(api, name, status).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(object = %name, attempt, error = %e, "final status update failed");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
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

/// Runs a claimed backup to its final status.
pub async fn run_backup(
    ctx: Arc<Agent>,
    pvb: PodVolumeBackup,
    cancel: Arc<AtomicBool>,
    permit: OwnedSemaphorePermit,
) {
    let ns = pvb.namespace().unwrap_or_default();
    let name = pvb.name_any();
    let _guard = InFlight::new(ctx.clone(), pvb.uid().unwrap_or_default(), permit);
    let api: Api<PodVolumeBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let started = Instant::now();
    let base = pvb.status.clone().unwrap_or_default();
    ctx.publish(
        &pvb,
        EventType::Normal,
        "Started",
        format!(
            "backing up volume {:?} of pod {} on node {}",
            pvb.spec.volume, pvb.spec.pod, ctx.node.node
        ),
    )
    .await;
    let prepared = prepare(
        &ctx,
        &ns,
        &pvb.spec.pod,
        &pvb.spec.volume,
        pvb.spec.repository.as_deref(),
    )
    .await;
    let report = match prepared {
        Err(f) => failed_backup(&base, f),
        Ok(p) => {
            let job = BackupJob {
                namespace: ns.clone(),
                spec: pvb.spec.clone(),
                pod: p.pod,
                pv: p.pv,
                repo: p.repo,
                node: ctx.node.clone(),
            };
            let progress = Arc::new(Progress::default());
            let ticker = spawn_progress(
                api.clone(),
                name.clone(),
                progress.clone(),
                ctx.progress_interval,
            );
            let run = {
                let (base, progress, cancel) = (base.clone(), progress.clone(), cancel.clone());
                tokio::task::spawn_blocking(move || execute_backup(&job, &base, &progress, &cancel))
            };
            let r = run.await;
            ticker.abort();
            r.unwrap_or_else(|e| {
                failed_backup(
                    &base,
                    Failure::new("panic", format!("the backup task failed: {e}")),
                )
            })
        }
    };
    write_final(&api, &name, &report.status).await;
    let series = series_label(&pvb, report.series.as_ref());
    let m = &ctx.metrics;
    m.backups
        .with_label_values(&[ns.as_str(), series.as_str(), report.result])
        .inc();
    m.backup_duration
        .with_label_values(&[ns.as_str()])
        .observe(started.elapsed().as_secs_f64());
    m.bytes_read
        .with_label_values(&[ns.as_str(), series.as_str()])
        .inc_by(report.bytes_read);
    m.bytes_added
        .with_label_values(&[ns.as_str(), series.as_str()])
        .inc_by(report.bytes_added);
    if report.result == result::COMPLETED || report.result == result::PARTIAL {
        m.last_success
            .with_label_values(&[ns.as_str(), series.as_str()])
            .set(chrono::Utc::now().timestamp() as f64);
    }
    if !report.reason.is_empty() && report.result == result::FAILED {
        m.errors.with_label_values(&["backup", report.reason]).inc();
    }
    let phase = report.status.phase.unwrap_or_default();
    let message = report.status.message.clone().unwrap_or_default();
    let type_ = if report.result == result::COMPLETED || report.result == result::CANCELED {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.publish(&pvb, type_, phase.as_str(), message).await;
}

fn failed_backup(base: &PodVolumeBackupStatus, f: Failure) -> BackupReport {
    let mut status = base.clone();
    status.phase = Some(podvault_proto::crd::Phase::Failed);
    status.message = Some(f.message);
    status.completion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    BackupReport {
        status,
        series: None,
        result: result::FAILED,
        reason: f.reason,
        bytes_read: 0,
        bytes_added: 0,
    }
}

/// Runs a claimed restore to its final status.
pub async fn run_restore(
    ctx: Arc<Agent>,
    pvr: PodVolumeRestore,
    cancel: Arc<AtomicBool>,
    permit: OwnedSemaphorePermit,
) {
    let ns = pvr.namespace().unwrap_or_default();
    let name = pvr.name_any();
    let uid = pvr.uid().unwrap_or_default();
    let _guard = InFlight::new(ctx.clone(), uid.clone(), permit);
    let api: Api<PodVolumeRestore> = Api::namespaced(ctx.client.clone(), &ns);
    let base = pvr.status.clone().unwrap_or_default();
    ctx.publish(
        &pvr,
        EventType::Normal,
        "Started",
        format!(
            "restoring into volume {:?} of pod {} on node {}",
            pvr.spec.volume, pvr.spec.pod, ctx.node.node
        ),
    )
    .await;
    let prepared = prepare(
        &ctx,
        &ns,
        &pvr.spec.pod,
        &pvr.spec.volume,
        pvr.spec.repository.as_deref(),
    )
    .await;
    let report = match prepared {
        Err(f) => failed_restore(&base, f),
        Ok(p) => {
            let job = RestoreJob {
                namespace: ns.clone(),
                uid,
                spec: pvr.spec.clone(),
                pod: p.pod,
                pv: p.pv,
                repo: p.repo,
                node: ctx.node.clone(),
            };
            let progress = Arc::new(Progress::default());
            let ticker = spawn_progress(
                api.clone(),
                name.clone(),
                progress.clone(),
                ctx.progress_interval,
            );
            let run = {
                let (base, progress, cancel) = (base.clone(), progress.clone(), cancel.clone());
                tokio::task::spawn_blocking(move || {
                    execute_restore(&job, &base, &progress, &cancel)
                })
            };
            let r = run.await;
            ticker.abort();
            r.unwrap_or_else(|e| {
                failed_restore(
                    &base,
                    Failure::new("panic", format!("the restore task failed: {e}")),
                )
            })
        }
    };
    write_final(&api, &name, &report.status).await;
    ctx.metrics
        .restores
        .with_label_values(&[ns.as_str(), report.result])
        .inc();
    if report.result == result::FAILED {
        ctx.metrics
            .errors
            .with_label_values(&["restore", report.reason])
            .inc();
    }
    let phase = report.status.phase.unwrap_or_default();
    let message = report.status.message.clone().unwrap_or_default();
    let type_ = if report.result == result::FAILED {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.publish(&pvr, type_, phase.as_str(), message).await;
}

fn failed_restore(base: &PodVolumeRestoreStatus, f: Failure) -> RestoreReport {
    let mut status = base.clone();
    status.phase = Some(podvault_proto::crd::Phase::Failed);
    status.message = Some(f.message);
    status.completion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    RestoreReport {
        status,
        result: result::FAILED,
        reason: f.reason,
        marker: None,
    }
}

/// Maps a pod on this node to the operations (in `store`) that name it.
fn for_pod<K: Operation>(store: &Store<K>, pod: &Pod) -> Vec<ObjectRef<K>> {
    let ns = pod.namespace();
    let name = pod.name_any();
    store
        .state()
        .iter()
        .filter(|o| o.namespace() == ns && o.pod_name() == name)
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// Runs one controller for kind `K`, woken by changes of its objects and of pods on this node.
async fn run_controller<K: Operation>(ctx: Arc<Agent>) {
    let client = ctx.client.clone();
    let pods = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.node));
    let controller = Controller::new(Api::<K>::all(client.clone()), watcher::Config::default());
    let store = controller.store();
    controller
        .watches(Api::<Pod>::all(client), pods, move |pod| {
            for_pod(&store, &pod)
        })
        .shutdown_on_signal()
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|r| {
            if let Err(e) = r {
                tracing::debug!(kind = K::KIND, error = %e, "controller");
            }
            futures::future::ready(())
        })
        .await;
}

/// `podvault agent`: metrics server plus the PodVolumeBackup and PodVolumeRestore controllers.
/// On start the controllers list every object, so interrupted work of this node is resumed
/// or failed right away (see [`super::decide::next_action`]).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let metrics = AgentMetrics::new()?;
    metrics
        .in_flight
        .with_label_values(&[args.node.as_str()])
        .set(0);
    let mut server = tokio::spawn(serve(args.metrics_addr, metrics.clone()));
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let ctx = Arc::new(Agent::new(client, &args, metrics));
    tracing::info!(node = %args.node, identity = %ctx.identity, concurrency = args.concurrency, "podvault agent starting");
    tokio::select! {
        _ = async {
            tokio::join!(
                run_controller::<PodVolumeBackup>(ctx.clone()),
                run_controller::<PodVolumeRestore>(ctx.clone())
            )
        } => Ok(()),
        r = &mut server => anyhow::bail!("metrics server on {} stopped: {r:?}", args.metrics_addr),
    }
}
