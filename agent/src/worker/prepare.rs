//! Reads an operation needs before it runs: its pod (from this node's pod cache), the PVC and
//! PV behind the volume, the BackupRepository and its Secrets — and the first-use creation of
//! a repository, coordinated through the API server.
//!
//! Requests: none for the pod when the node's pod cache has it (it is kept by a watch on pods
//! with `spec.nodeName=<this node>`; a GET only when the cache misses it), one GET each for a
//! claim-backed volume's PVC and PV, and — at most once per [`REPO_CACHE_TTL`] per
//! BackupRepository — one GET of the BackupRepository and of each of its Secrets (from the
//! agent's own namespace only). When the BackupRepository allows namespaces by a label
//! selector, one GET of the operation's Namespace per operation.
//!
//! Access: every operation's namespace must be allowed by the BackupRepository's
//! `spec.allowedNamespaces` (see `podvault_proto::k8s::isolation`), checked before the
//! repository is created, opened or read, on settings at most [`REPO_CACHE_TTL`] old — a
//! repository that stops allowing a namespace refuses it within that time.
//!
//! First use of a repository: every annotated pod ticks at the same second, so many agents
//! reach a BackupRepository that does not exist yet at once. The engine's creation is atomic
//! on its own (see [`crate::repository::Repository::init`]); on top of it the agents take
//! turns through the BackupRepository's status: the one whose status update (carrying the
//! `resourceVersion` it read) sets the `Initializing` condition creates or opens the
//! repository and then sets `status.initialized` and `Ready`; the others wait for that.
//! A claim older than [`INIT_CLAIM_STALE`] is taken over (its agent died).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use podvault_proto::crd::{BackupRepository, BackupRepositorySpec, BackupRepositoryStatus};
use podvault_proto::k8s::{access_needs_labels, check_repository_access, claim_name, find_volume};

use super::agent::Agent;
use super::decide::{placement, PodPlacement};
use super::execute::locate_volume;
use super::outcome::{Failure, Reason};
use super::repo::{open_or_init, settings, RepoSettings, SecretData};
use super::status::FIELD_MANAGER;

/// How long BackupRepository settings (and the Secrets they name) are reused without reading
/// them again. A changed password or credential takes effect within this time.
pub const REPO_CACHE_TTL: Duration = Duration::from_secs(30);
/// A first-use claim on a BackupRepository older than this is taken over.
pub const INIT_CLAIM_STALE: Duration = Duration::from_secs(120);
/// How long an operation waits for another agent to finish creating a repository.
pub const INIT_WAIT: Duration = Duration::from_secs(600);
/// Condition type on a BackupRepository while an agent creates its repository.
pub const CONDITION_INITIALIZING: &str = "Initializing";
/// Condition type on a BackupRepository once its repository exists and opened.
pub const CONDITION_READY: &str = "Ready";

/// Objects fetched for one operation.
pub struct Prepared {
    /// The pod.
    pub pod: Pod,
    /// The PV bound to the volume's claim, if claim-backed.
    pub pv: Option<PersistentVolume>,
    /// The repository settings.
    pub repo: RepoSettings,
}

/// BackupRepository settings read recently, by name.
#[derive(Default)]
pub struct RepoCache {
    entries: Mutex<HashMap<String, (Instant, RepoSettings, bool)>>,
}

impl RepoCache {
    fn get(&self, name: &str) -> Option<(RepoSettings, bool)> {
        let entries = self.entries.lock().ok()?;
        let (at, s, initialized) = entries.get(name)?;
        (at.elapsed() < REPO_CACHE_TTL).then(|| (s.clone(), *initialized))
    }

    /// The settings last read for `name`, however old.
    pub fn cached(&self, name: &str) -> Option<RepoSettings> {
        let entries = self.entries.lock().ok()?;
        entries.get(name).map(|(_, s, _)| s.clone())
    }

    fn put(&self, name: &str, s: &RepoSettings, initialized: bool) {
        if let Ok(mut e) = self.entries.lock() {
            e.insert(name.to_string(), (Instant::now(), s.clone(), initialized));
        }
    }
}

fn api_failure(what: String) -> impl FnOnce(kube::Error) -> Failure {
    move |e| Failure::new(Reason::Api, format!("{what}: {e}"))
}

/// The pod `ns/name`: from this node's pod cache, else one GET.
pub async fn pod(ctx: &Agent, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
    if let Some(p) = ctx.pods.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some((*p).clone()));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    pods.get_opt(name).await
}

/// Fetches the pod (waiting while a Pending pod's volume is not mounted yet), the bound PV,
/// and the repository settings; for backups (`create`), makes sure the repository exists.
/// `volume` is `None` for a logical dump, which reads no volume (the pod must still be
/// on this node).
pub async fn prepare(
    ctx: &Agent,
    ns: &str,
    pod_name: &str,
    volume: Option<&str>,
    repository: Option<&str>,
    create: bool,
) -> Result<Prepared, Failure> {
    let deadline = Instant::now() + ctx.mount_wait;
    let node = &ctx.node.node;
    let (pod, pv) = loop {
        let pod = pod(ctx, ns, pod_name)
            .await
            .map_err(api_failure(format!("reading pod {ns}/{pod_name}")))?;
        match placement(pod.as_ref(), node) {
            PodPlacement::ThisNode => {}
            PodPlacement::OtherNode(other) => {
                return Err(Failure::new(
                    Reason::PodMoved,
                    format!("pod {ns}/{pod_name} is on node {other}, not on node {node}"),
                ))
            }
            PodPlacement::Unscheduled => {
                return Err(Failure::new(
                    Reason::PodNotScheduled,
                    format!("pod {ns}/{pod_name} is not scheduled to a node"),
                ))
            }
            PodPlacement::Terminated(phase) => {
                return Err(Failure::new(
                    Reason::PodTerminated,
                    format!("pod {ns}/{pod_name} has terminated (phase {phase})"),
                ))
            }
            PodPlacement::Missing => {
                return Err(Failure::new(
                    Reason::PodNotFound,
                    format!("pod {ns}/{pod_name} not found"),
                ))
            }
        }
        let Some(pod) = pod else {
            return Err(Failure::new(
                Reason::PodNotFound,
                format!("pod {ns}/{pod_name} not found"),
            ));
        };
        let Some(volume) = volume else {
            break (pod, None);
        };
        let pv = bound_pv(ctx, ns, &pod, volume).await?;
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
        match locate_volume(&pod, volume, pv.as_ref(), &ctx.node) {
            Err(f)
                if pending && f.reason == Reason::VolumeNotMounted && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(f) => return Err(f),
            Ok(_) => break (pod, pv),
        }
    };
    let name = repository.unwrap_or(&ctx.default_repository);
    let repo = repository_settings(ctx, name, ns, create).await?;
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
                Reason::PvcNotFound,
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
                Reason::PvNotFound,
                format!("PersistentVolume {pv_name} bound to claim {ns}/{claim} not found"),
            )
        })?;
    Ok(Some(pv))
}

/// A Secret's data, `stringData` overlaid.
pub(crate) fn secret_data(s: &Secret) -> SecretData {
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
                Reason::SecretNotFound,
                format!("Secret {ns}/{name} ({why}) not found"),
            )
        })?;
    Ok(secret_data(&s))
}

async fn read_repository(ctx: &Agent, name: &str) -> Result<BackupRepository, Failure> {
    let repos: Api<BackupRepository> = Api::all(ctx.client.clone());
    repos
        .get_opt(name)
        .await
        .map_err(api_failure(format!("reading BackupRepository {name}")))?
        .ok_or_else(|| {
            Failure::new(
                Reason::RepositoryNotFound,
                format!("BackupRepository {name} not found"),
            )
        })
}

/// Refuses an operation in `namespace` on BackupRepository `name` unless its
/// `spec.allowedNamespaces` allows the namespace (its labels read from the API server when
/// the repository has a selector).
async fn check_access(
    ctx: &Agent,
    name: &str,
    spec: &BackupRepositorySpec,
    namespace: &str,
) -> Result<(), Failure> {
    let labels = if access_needs_labels(spec) {
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let ns = namespaces
            .get_opt(namespace)
            .await
            .map_err(api_failure(format!("reading Namespace {namespace}")))?;
        Some(ns.and_then(|n| n.metadata.labels).unwrap_or_default())
    } else {
        None
    };
    check_repository_access(name, spec, namespace, labels.as_ref())
        .map_err(|e| Failure::new(Reason::RepositoryNotAllowed, e.to_string()))
}

/// Settings of BackupRepository `name` (cached for [`REPO_CACHE_TTL`]), for an operation in
/// `namespace`, which the repository must allow (checked before anything is read from or
/// written to it); with `create`, the repository is made to exist first (see the module
/// docs).
async fn repository_settings(
    ctx: &Agent,
    name: &str,
    namespace: &str,
    create: bool,
) -> Result<RepoSettings, Failure> {
    if let Some((s, initialized)) = ctx.repos.get(name) {
        if initialized || !create {
            check_access(ctx, name, &s.spec, namespace).await?;
            return Ok(s);
        }
    }
    let repo = read_repository(ctx, name).await?;
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
    let s = settings(name, &repo.spec, &password, credentials.as_ref())
        .map_err(|m| Failure::new(Reason::RepositoryConfig, m))?;
    check_access(ctx, name, &repo.spec, namespace).await?;
    if let crate::backend::Location::Fs(path) = &s.location {
        if let Some(problem) = super::repo::fs_location_problem(path) {
            return Err(Failure::new(
                Reason::RepositoryConfig,
                format!("BackupRepository {name}: {problem}"),
            ));
        }
    }
    let initialized = repo.status.as_ref().is_some_and(|st| st.initialized);
    if create && !initialized {
        ensure_created(ctx, repo, &s).await?;
    }
    ctx.repos.put(name, &s, initialized || create);
    Ok(s)
}

/// What to do about a BackupRepository whose repository may not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstUse {
    /// `status.initialized` is set: nothing to do.
    Ready,
    /// Another agent's claim is fresh: wait and look again.
    Wait,
    /// Claim it (no claim, our own, or a stale one).
    Claim,
}

/// Decides [`FirstUse`] from a BackupRepository's status at time `now` for agent `me`.
pub fn first_use(status: Option<&BackupRepositoryStatus>, me: &str, now: Time) -> FirstUse {
    let Some(status) = status else {
        return FirstUse::Claim;
    };
    if status.initialized {
        return FirstUse::Ready;
    }
    let claim = status
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_INITIALIZING && c.status == "True");
    match claim {
        Some(c) if c.reason != claim_reason(me) => {
            let age = now.0.duration_since(c.last_transition_time.0);
            if age.as_secs_f64() < INIT_CLAIM_STALE.as_secs_f64() {
                FirstUse::Wait
            } else {
                FirstUse::Claim
            }
        }
        _ => FirstUse::Claim,
    }
}

/// The condition reason recording which agent claimed first use (a condition reason must be
/// CamelCase-ish: letters, digits, `_`, `,`, `:`).
fn claim_reason(agent: &str) -> String {
    let cleaned: String = agent
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("ClaimedBy_{cleaned}")
}

fn condition(type_: &str, status: bool, reason: &str, message: String, now: &Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now.clone(),
        observed_generation: None,
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Creates (or opens) the repository of BackupRepository `repo` once across the cluster.
async fn ensure_created(
    ctx: &Agent,
    mut repo: BackupRepository,
    s: &RepoSettings,
) -> Result<(), Failure> {
    let name = repo.name_any();
    let api: Api<BackupRepository> = Api::all(ctx.client.clone());
    let deadline = Instant::now() + INIT_WAIT;
    loop {
        match first_use(repo.status.as_ref(), &ctx.identity, now()) {
            FirstUse::Ready => return Ok(()),
            FirstUse::Wait => {
                if Instant::now() > deadline {
                    return Err(Failure::new(
                        Reason::RepositoryBusy,
                        format!(
                            "BackupRepository {name}: another agent has been creating the \
                             repository for more than {}s",
                            INIT_WAIT.as_secs()
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            FirstUse::Claim => {
                let t = now();
                let mut claimed = repo.clone();
                let mut status = repo.status.clone().unwrap_or_default();
                status
                    .conditions
                    .retain(|c| c.type_ != CONDITION_INITIALIZING);
                status.conditions.push(condition(
                    CONDITION_INITIALIZING,
                    true,
                    &claim_reason(&ctx.identity),
                    format!(
                        "agent {} on node {} is creating or opening the repository",
                        ctx.identity, ctx.node.node
                    ),
                    &t,
                ));
                claimed.status = Some(status.clone());
                let pp = PostParams {
                    dry_run: false,
                    field_manager: Some(FIELD_MANAGER.into()),
                };
                match api.replace_status(&name, &pp, &claimed).await {
                    Ok(mine) => return create_as_claimant(ctx, &api, mine, s).await,
                    Err(kube::Error::Api(e)) if e.is_conflict() => {}
                    Err(e) => {
                        return Err(api_failure(format!(
                            "claiming first use of BackupRepository {name}"
                        ))(e))
                    }
                }
            }
        }
        repo = read_repository(ctx, &name).await?;
    }
}

/// The agent holding the first-use claim: open or create, then record the outcome.
async fn create_as_claimant(
    ctx: &Agent,
    api: &Api<BackupRepository>,
    mine: BackupRepository,
    s: &RepoSettings,
) -> Result<(), Failure> {
    let name = mine.name_any();
    tracing::info!(repository = %name, agent = %ctx.identity, "first use: creating or opening the repository");
    let settings = s.clone();
    let opened = tokio::task::spawn_blocking(move || open_or_init(&settings).map(|_| ()))
        .await
        .map_err(|e| Failure::new(Reason::Panic, format!("creating the repository: {e}")))?;
    let t = now();
    let mut status = mine.status.clone().unwrap_or_default();
    status
        .conditions
        .retain(|c| c.type_ != CONDITION_INITIALIZING && c.type_ != CONDITION_READY);
    let result = match &opened {
        Ok(()) => {
            status.initialized = true;
            status.message = None;
            status.location = Some(s.location.to_string());
            status.conditions.push(condition(
                CONDITION_READY,
                true,
                "Opened",
                format!("the repository at {} exists and opens", s.location),
                &t,
            ));
            Ok(())
        }
        Err(e) => {
            status.message = Some(format!("{e}"));
            status.conditions.push(condition(
                CONDITION_READY,
                false,
                "OpenFailed",
                format!("{e}"),
                &t,
            ));
            Err(Failure::engine(&format!("BackupRepository {name}"), e))
        }
    };
    let patch = serde_json::json!({ "status": status });
    let pp = kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if let Err(e) = api
        .patch_status(&name, &pp, &kube::api::Patch::Merge(&patch))
        .await
    {
        tracing::warn!(repository = %name, error = %e, "could not record the repository's state");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn claimed_by(agent: &str, at: &str) -> BackupRepositoryStatus {
        BackupRepositoryStatus {
            conditions: vec![condition(
                CONDITION_INITIALIZING,
                true,
                &claim_reason(agent),
                String::new(),
                &t(at),
            )],
            ..Default::default()
        }
    }

    #[test]
    fn first_use_is_claimed_once_waited_for_and_taken_over_when_stale() {
        let now = t("2026-01-01T00:01:00Z");
        assert_eq!(first_use(None, "a", now.clone()), FirstUse::Claim);
        let ready = BackupRepositoryStatus {
            initialized: true,
            ..Default::default()
        };
        assert_eq!(first_use(Some(&ready), "a", now.clone()), FirstUse::Ready);
        let fresh = claimed_by("agent-b", "2026-01-01T00:00:30Z");
        assert_eq!(
            first_use(Some(&fresh), "agent-a", now.clone()),
            FirstUse::Wait
        );
        // Our own claim (an earlier attempt of ours): go on.
        assert_eq!(
            first_use(Some(&fresh), "agent-b", now.clone()),
            FirstUse::Claim
        );
        let stale = claimed_by("agent-b", "2025-12-31T23:50:00Z");
        assert_eq!(first_use(Some(&stale), "agent-a", now), FirstUse::Claim);
    }

    #[test]
    fn claim_reasons_are_valid_condition_reasons() {
        assert_eq!(
            claim_reason("podvault-agent-x7k2.node-1"),
            "ClaimedBy_podvault_agent_x7k2_node_1"
        );
    }
}
