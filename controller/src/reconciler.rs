//! The pod reconciler: turns a pod's plan into PodVolumeBackups, and the periodic sweep that
//! applies history limits and refreshes the series gauges.
//!
//! Repository access: a backup whose BackupRepository does not allow the pod's namespace
//! (`spec.allowedNamespaces`, see `podvault_proto::k8s::isolation`) is not created; the pod
//! gets a `RepositoryNotAllowed` Warning event instead, and nothing else happens until the
//! next tick (no PodVolumeBackup that could only fail). The repository and the namespace's
//! labels come from watch caches ([`Access`]): no request per tick. A repository or namespace
//! the caches do not hold (yet) is left to the agent, which checks again before it runs
//! anything.
//!
//! The only API calls live here (and in [`crate::lease`]); everything they act on is decided by
//! the pure functions of [`crate::plan`] and [`crate::history`]. Requests the controller makes
//! per due backup:
//! 1. `POST podvolumebackups` with the deterministic name (field manager
//!    [`MANAGER`]). AlreadyExists means another replica, a restart or another pod on the same
//!    claim already created it for this tick: success, nothing more to do.
//! 2. After a create, a server-side apply of `status.phase = New` on the status subresource
//!    (same field manager, not forced). A Conflict means the agent already claimed the object
//!    (it owns `status.phase` now): success. NotFound means it was deleted meanwhile: success.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use podvault_proto::crd::{BackupRepository, PodVolumeBackup, PodVolumeRestore};
use podvault_proto::k8s::{
    access_needs_labels, check_repository_access, RepositoryAccessError, VolumeError,
};
use serde_json::json;

use crate::history::{self, HistoryLimits};
use crate::metrics::Metrics;
use crate::plan::{plan_pod, PlanError, PlanOptions, PlannedBackup, MANAGER};

/// The source of "now" (a fixed clock in tests).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Everything a reconciliation needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Publishes Events on pods.
    pub recorder: Recorder,
    /// Controller metrics.
    pub metrics: Metrics,
    /// Defaults and modes.
    pub options: PlanOptions,
    /// History limits for PodVolumeBackups.
    pub backup_history: HistoryLimits,
    /// History limits for PodVolumeRestores.
    pub restore_history: HistoryLimits,
    /// The time source.
    pub clock: Clock,
    /// Watch caches of BackupRepositories and Namespaces.
    pub access: Access,
}

/// Watch caches the repository-access rule reads (kept by reflectors in `main`).
#[derive(Clone)]
pub struct Access {
    /// BackupRepositories.
    pub repositories: Store<BackupRepository>,
    /// Namespaces (for their labels).
    pub namespaces: Store<Namespace>,
}

impl Access {
    /// Why `namespace` may not use BackupRepository `repository`, when the caches can tell;
    /// `None` when it may, or when the repository or (for a selector) the namespace is not
    /// cached (the agent decides then).
    pub fn refusal(&self, repository: &str, namespace: &str) -> Option<RepositoryAccessError> {
        let repo = self.repositories.get(&ObjectRef::new(repository))?;
        let labels = if access_needs_labels(&repo.spec) {
            let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
            Some(ns.metadata.labels.clone().unwrap_or_default())
        } else {
            None
        };
        check_repository_access(repository, &repo.spec, namespace, labels.as_ref()).err()
    }
}

/// A reconciliation or sweep failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod's annotations cannot be acted on.
    #[error("pod {pod}: {source}")]
    Plan {
        /// `namespace/name`.
        pod: String,
        /// What is wrong.
        source: PlanError,
    },
    /// Creating a PodVolumeBackup failed.
    #[error("creating PodVolumeBackup {namespace}/{name}: {source}")]
    CreateBackup {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Setting the initial status of a PodVolumeBackup failed.
    #[error("setting status of PodVolumeBackup {namespace}/{name}: {source}")]
    PatchStatus {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
    /// Listing objects for the sweep failed.
    #[error("listing {what}: {source}")]
    List {
        /// What was listed.
        what: &'static str,
        /// The API error.
        source: kube::Error,
    },
    /// Deleting an object beyond the history limit failed.
    #[error("deleting {kind} {namespace}/{name}: {source}")]
    Delete {
        /// `PodVolumeBackup` or `PodVolumeRestore`.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

impl Error {
    /// The fixed metric label for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Plan {
                source: PlanError::Schedule(_),
                ..
            } => "invalid_schedule",
            Error::Plan {
                source: PlanError::Retention(_),
                ..
            } => "invalid_retention",
            Error::Plan {
                source: PlanError::DumpName(_),
                ..
            } => "invalid_dump_name",
            Error::CreateBackup { .. } => "create_backup",
            Error::PatchStatus { .. } => "patch_status",
            Error::List { .. } => "list",
            Error::Delete { .. } => "delete",
        }
    }
}

/// The fixed metric label for a skip rule.
pub fn skip_reason(error: &VolumeError) -> &'static str {
    match error {
        VolumeError::NotInPod { .. } => "not_in_pod",
        VolumeError::ApiSourced { .. } => "api_sourced",
        VolumeError::HostPathNotAllowed { .. } | VolumeError::HostPathOutsideRoots { .. } => {
            "host_path"
        }
        VolumeError::Unsupported { .. } => "unsupported",
        VolumeError::NoPodUid { .. } => "no_uid",
        VolumeError::ClaimNotBound { .. } => "claim_not_bound",
        VolumeError::WrongPersistentVolume { .. } => "wrong_pv",
        VolumeError::BlockVolume { .. } => "block",
        VolumeError::NoSource { .. } => "no_source",
    }
}

/// What became of one planned backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call created it.
    Created,
    /// It existed already (another replica, a restart, or another pod on the same claim).
    Exists,
}

fn pod_ref(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// How long to wait before looking at a pod again: until just after its next tick.
pub fn requeue_after(now: DateTime<Utc>, next_tick: Option<DateTime<Utc>>) -> Action {
    match next_tick {
        Some(next) => {
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            Action::requeue(wait + Duration::from_secs(1))
        }
        None => Action::await_change(),
    }
}

/// Reconciles one pod: creates the PodVolumeBackups due at the latest tick and requeues for the
/// next one.
pub async fn reconcile(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciliations.inc();
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    let now = (ctx.clock)();
    let plan = match plan_pod(&pod, &ctx.options, now) {
        Ok(Some(plan)) => plan,
        Ok(None) => return Ok(Action::await_change()),
        Err(source) => {
            publish(
                &ctx,
                &pod,
                EventType::Warning,
                "InvalidAnnotation",
                source.to_string(),
            )
            .await;
            return Err(Error::Plan {
                pod: pod_ref(&pod),
                source,
            });
        }
    };
    for skipped in plan.skipped.iter().filter(|s| s.requested) {
        ctx.metrics
            .volumes_skipped
            .with_label_values(&[skip_reason(&skipped.error)])
            .inc();
        publish(
            &ctx,
            &pod,
            EventType::Warning,
            "VolumeSkipped",
            skipped.error.to_string(),
        )
        .await;
    }
    let mut refused: Vec<String> = Vec::new();
    for planned in &plan.due {
        let repository = planned
            .object
            .spec
            .repository
            .clone()
            .or_else(|| ctx.options.default_repository.clone());
        let namespace = &planned.series.namespace;
        if let Some(e) = repository.and_then(|r| ctx.access.refusal(&r, namespace)) {
            ctx.metrics
                .backups_scheduled
                .with_label_values(&[namespace.as_str(), "not_allowed"])
                .inc();
            let note = format!("{e}; no PodVolumeBackup was created");
            if !refused.contains(&note) {
                publish(
                    &ctx,
                    &pod,
                    EventType::Warning,
                    "RepositoryNotAllowed",
                    note.clone(),
                )
                .await;
                refused.push(note);
            }
            continue;
        }
        create_backup(&ctx, planned).await?;
    }
    Ok(requeue_after(now, plan.next_tick))
}

/// The pure error policy: annotation errors wait for the pod to change (retrying cannot fix
/// them); API errors retry after a short pause.
pub fn error_policy(_pod: Arc<Pod>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[error.reason()])
        .inc();
    match error {
        Error::Plan { .. } => Action::await_change(),
        _ => Action::requeue(Duration::from_secs(30)),
    }
}

/// Creates one planned PodVolumeBackup (idempotently) and marks it New.
pub async fn create_backup(ctx: &Context, planned: &PlannedBackup) -> Result<Created, Error> {
    let namespace = planned.series.namespace.clone();
    let name = planned.object.name_any();
    let api: Api<PodVolumeBackup> = Api::namespaced(ctx.client.clone(), &namespace);
    let pp = PostParams {
        field_manager: Some(MANAGER.to_string()),
        ..Default::default()
    };
    match api.create(&pp, &planned.object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() || status.code == 409 => {
            ctx.metrics
                .backups_scheduled
                .with_label_values(&[namespace.as_str(), "exists"])
                .inc();
            return Ok(Created::Exists);
        }
        Err(source) => {
            return Err(Error::CreateBackup {
                namespace,
                name,
                source,
            })
        }
    }
    ctx.metrics
        .backups_scheduled
        .with_label_values(&[namespace.as_str(), "created"])
        .inc();
    tracing::info!(%namespace, %name, series = %planned.series, tick = %planned.tick, "created PodVolumeBackup");
    let status = json!({
        "apiVersion": PodVolumeBackup::api_version(&()),
        "kind": PodVolumeBackup::kind(&()),
        "status": {
            "phase": "New",
            "series": planned.series.key(),
            "message": format!("scheduled for {}", planned.tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }
    });
    match api
        .patch_status(&name, &PatchParams::apply(MANAGER), &Patch::Apply(status))
        .await
    {
        Ok(_) => Ok(Created::Created),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(Created::Created),
        Err(source) => Err(Error::PatchStatus {
            namespace,
            name,
            source,
        }),
    }
}

async fn publish(ctx: &Context, pod: &Pod, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: "Schedule".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &pod.object_ref(&())).await {
        tracing::warn!(pod = %pod_ref(pod), error = %e, "could not publish event");
    }
}

/// Expected interval (seconds) per (namespace, series label) of every selected pod: the
/// `podvault_backup_schedule_interval_seconds` gauge. Pods with bad annotations are left out.
pub fn series_intervals<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    options: &PlanOptions,
    now: DateTime<Utc>,
) -> std::collections::BTreeMap<(String, String), f64> {
    let mut out = std::collections::BTreeMap::new();
    for pod in pods {
        let Ok(Some(plan)) = plan_pod(pod, options, now) else {
            continue;
        };
        let Some(interval) = plan.interval else {
            continue;
        };
        for series in plan.series {
            // A claim shared by pods with different schedules: the shortest interval wins.
            let secs = interval.num_seconds() as f64;
            let slot = out
                .entry((series.namespace.clone(), series.metric_label()))
                .or_insert(secs);
            if secs < *slot {
                *slot = secs;
            }
        }
    }
    out
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// PodVolumeBackups deleted.
    pub backups_deleted: Vec<String>,
    /// PodVolumeRestores deleted.
    pub restores_deleted: Vec<String>,
}

/// One sweep: refreshes the series gauges from `pods` and the PodVolumeBackup list (see
/// [`history::series_states`]: only tracked series keep gauges, so a deleted pod or a retired
/// series stops alerting), and deletes finished PodVolumeBackups/Restores beyond the history
/// limits.
pub async fn sweep(ctx: &Context, pods: &[Arc<Pod>]) -> Result<SweepReport, Error> {
    let now = (ctx.clock)();
    let intervals = series_intervals(pods.iter().map(|p| p.as_ref()), &ctx.options, now);
    let existing: std::collections::BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| (p.namespace().unwrap_or_default(), p.name_any()))
        .collect();

    let mut report = SweepReport::default();
    let backups: Api<PodVolumeBackup> = Api::all(ctx.client.clone());
    let list = backups
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "PodVolumeBackups",
            source,
        })?;
    let items: Vec<_> = list.items.iter().map(history::backup_item).collect();
    let states = {
        // A poisoned lock only means an earlier sweep panicked; its memory is still valid.
        let mut seen = ctx
            .metrics
            .series_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        history::series_states(&items, &intervals, &existing, &mut seen, now)
    };
    ctx.metrics.set_series(&states, now);
    for item in history::select_for_deletion(&items, ctx.backup_history) {
        let api: Api<PodVolumeBackup> = Api::namespaced(ctx.client.clone(), &item.namespace);
        delete(&api, "PodVolumeBackup", item).await?;
        ctx.metrics
            .history_deleted
            .with_label_values(&["backup"])
            .inc();
        report.backups_deleted.push(item.name.clone());
    }

    let restores: Api<PodVolumeRestore> = Api::all(ctx.client.clone());
    let list = restores
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "PodVolumeRestores",
            source,
        })?;
    let items: Vec<_> = list.items.iter().map(history::restore_item).collect();
    for item in history::select_for_deletion(&items, ctx.restore_history) {
        let api: Api<PodVolumeRestore> = Api::namespaced(ctx.client.clone(), &item.namespace);
        delete(&api, "PodVolumeRestore", item).await?;
        ctx.metrics
            .history_deleted
            .with_label_values(&["restore"])
            .inc();
        report.restores_deleted.push(item.name.clone());
    }
    Ok(report)
}

async fn delete<K>(
    api: &Api<K>,
    kind: &'static str,
    item: &history::HistoryItem,
) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(&item.name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(source) => Err(Error::Delete {
            kind,
            namespace: item.namespace.clone(),
            name: item.name.clone(),
            source,
        }),
    }
}
