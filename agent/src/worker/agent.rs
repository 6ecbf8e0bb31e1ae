//! The agent process: its shared state, its watches, and start-up.
//!
//! Each agent sees only its own node's work: PodVolumeBackups and PodVolumeRestores are
//! watched with the label selector `podvault.dev/node=<node>` (the controller sets the label),
//! and pods with the field selector `spec.nodeName=<node>`. A watch of this node's pods feeds
//! a cache the operations read their pod from, so a backup of a running pod costs no pod GET.
//! Nothing is read for other nodes: with N nodes, a tick of P pods costs each agent about P/N
//! operations' requests, not P.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use podvault_proto::crd::{PodVolumeBackup, PodVolumeRestore};
use podvault_proto::k8s::VolumePolicy;
use podvault_proto::k8s::{node_label_value, LABEL_NODE};
use tokio::sync::Semaphore;

use super::execute::NodeSettings;
use super::metrics::{serve, AgentMetrics};
use super::operation::{error_policy, reconcile, Operation};
use super::prepare::RepoCache;
use super::status::FIELD_MANAGER;
use super::AgentArgs;

/// An operation this process runs.
#[derive(Debug, Clone)]
pub struct Running {
    /// Set to stop the engine (spec.cancel or deletion).
    pub cancel: Arc<AtomicBool>,
    /// Set when the stop was asked for by deleting the object.
    pub deleted: Arc<AtomicBool>,
}

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
    /// Operations this process runs, by object uid.
    pub running: Mutex<HashMap<String, Running>>,
    /// Interval of progress patches.
    pub progress_interval: Duration,
    /// How long to wait for a Pending pod's volume to be mounted.
    pub mount_wait: Duration,
    /// This node's pods (kept by a watch).
    pub pods: Store<Pod>,
    /// BackupRepository settings read recently.
    pub repos: RepoCache,
    /// Whether backup hooks and backup commands may run (`--allow-exec`).
    pub allow_exec: bool,
}

impl Agent {
    /// Builds the agent state from its options and this node's pod cache.
    pub fn new(client: Client, args: &AgentArgs, metrics: AgentMetrics, pods: Store<Pod>) -> Self {
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
                    host_path_roots: args.host_path_roots.clone(),
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
            pods,
            repos: RepoCache::default(),
            allow_exec: args.allow_exec,
        }
    }

    /// The operation with object uid `uid`, if this process runs it.
    pub fn running(&self, uid: &str) -> Option<Running> {
        self.running.lock().ok()?.get(uid).cloned()
    }

    /// Records (`Some`) or forgets (`None`) the operation with object uid `uid`.
    pub fn set_running(&self, uid: &str, run: Option<Running>) {
        if let Ok(mut r) = self.running.lock() {
            match run {
                Some(f) => {
                    r.insert(uid.to_string(), f);
                }
                None => {
                    r.remove(uid);
                }
            }
        }
    }

    /// Publishes an Event on `obj` (failures are logged, never fatal).
    pub async fn publish<K: Operation>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
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

/// The label selector of this node's operations.
pub fn node_selector(node: &str) -> String {
    format!("{LABEL_NODE}={}", node_label_value(node))
}

/// The operations (of kind `K`, in `store`) that name `pod`.
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

/// Runs one controller for kind `K`: this node's objects, woken by changes of this node's pods.
async fn run_controller<K: Operation>(ctx: Arc<Agent>) {
    let client = ctx.client.clone();
    let pods = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node.node));
    let mine = watcher::Config::default().labels(&node_selector(&ctx.node.node));
    let controller = Controller::new(Api::<K>::all(client.clone()), mine);
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

/// Fails fast, with a clear message, when the API server cannot be reached or refuses this
/// agent: one LIST (limit 1) of this node's PodVolumeBackups.
pub async fn probe_api(client: &Client, node: &str) -> anyhow::Result<()> {
    let api: Api<PodVolumeBackup> = Api::all(client.clone());
    api.list_metadata(&ListParams::default().labels(&node_selector(node)).limit(1))
        .await
        .map(|_| ())
        .context("listing this node's PodVolumeBackups (is the API server reachable, are the CRDs installed, and does the agent's ServiceAccount have the shipped RBAC?)")
}

/// `podvault agent`: metrics server plus the PodVolumeBackup and PodVolumeRestore controllers.
/// On start the controllers list this node's objects, so interrupted work is resumed or failed
/// right away (see [`super::decide::next_action`]).
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let metrics = AgentMetrics::new()?;
    metrics
        .in_flight
        .with_label_values(&[args.node.as_str()])
        .set(0);
    let mut server = tokio::spawn(serve(args.metrics_addr, metrics.clone()));
    let config = kube::Config::infer()
        .await
        .context("loading the Kubernetes client configuration (in-cluster or KUBECONFIG)")?;
    let url = config.cluster_url.clone();
    let client = Client::try_from(config)
        .with_context(|| format!("creating the Kubernetes client for {url}"))?;
    probe_api(&client, &args.node)
        .await
        .with_context(|| format!("Kubernetes API at {url}"))?;

    // This node's pods, cached for the operations (and their triggers).
    let (pods, writer) = reflector::store();
    let pod_watch = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={}", args.node)),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    let pod_task = tokio::spawn(pod_watch);
    tokio::select! {
        r = pods.wait_until_ready() => r.context("the pod cache's watch stopped")?,
        r = &mut server => anyhow::bail!("metrics server on {} stopped: {r:?}", args.metrics_addr),
    }

    let ctx = Arc::new(Agent::new(client, &args, metrics, pods));
    tracing::info!(node = %args.node, identity = %ctx.identity, concurrency = args.concurrency, "podvault agent starting");
    let result = tokio::select! {
        _ = async {
            tokio::join!(
                run_controller::<PodVolumeBackup>(ctx.clone()),
                run_controller::<PodVolumeRestore>(ctx.clone())
            )
        } => Ok(()),
        r = &mut server => Err(anyhow::anyhow!("metrics server on {} stopped: {r:?}", args.metrics_addr)),
    };
    pod_task.abort();
    result
}
