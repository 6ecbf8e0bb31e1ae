//! Routing of PodVolumeBackups and PodVolumeRestores to their node, and the finalizer's
//! safety net.
//!
//! Agents watch only objects labelled with their node ([`LABEL_NODE`]). The controller labels
//! the PVBs it creates itself; objects users create (`kubectl create -f`) get the label here,
//! from their pod's `spec.nodeName`, together with the agent's [`FINALIZER`] — one patch with
//! the `resourceVersion` read as precondition. An object whose pod does not exist is failed
//! here (no agent would ever see it); one whose pod is not scheduled yet is looked at again.
//!
//! Deleting an object that runs makes its agent cancel it and then release the finalizer. If
//! no agent does (it is gone, its node is down), the controller releases the finalizer:
//! at once for objects nobody claimed (New) or that are finished, and after
//! `--finalizer-timeout` for objects still InProgress. So a deletion never hangs forever.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use podvault_proto::crd::{Phase, PodVolumeBackup, PodVolumeRestore, VolumeOperation};
use podvault_proto::k8s::{node_label_value, FINALIZER, LABEL_NODE};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::plan::MANAGER;
use crate::reconciler::Clock;

/// What the routing controller acts on: PodVolumeBackups and PodVolumeRestores.
pub trait Routed:
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
}

impl Routed for PodVolumeBackup {}
impl Routed for PodVolumeRestore {}

/// What to do with one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Nothing (labelled already, finished, or not ours to touch).
    Nothing,
    /// Label it with this node (and add the finalizer).
    Label(String),
    /// Its pod does not exist: fail it with this message.
    FailNoPod(String),
    /// Its pod is not scheduled yet: look again after this long.
    Wait(Duration),
    /// Remove the finalizer now.
    Release,
}

/// What the routing looks at in an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// `status.phase`.
    pub phase: Phase,
    /// True when it carries the node label.
    pub labelled: bool,
    /// `metadata.deletionTimestamp`.
    pub deleting_since: Option<DateTime<Utc>>,
    /// True when it carries the agent's finalizer.
    pub has_finalizer: bool,
}

/// Decides what to do with an object, given its pod (`None`: not looked up yet;
/// `Some(None)`: not found) and the time.
pub fn route(
    seen: Seen,
    pod: Option<Option<&Pod>>,
    pod_ref: &str,
    now: DateTime<Utc>,
    finalizer_timeout: Duration,
) -> Route {
    let Seen {
        phase,
        labelled,
        deleting_since,
        has_finalizer,
    } = seen;
    if let Some(since) = deleting_since {
        if !has_finalizer {
            return Route::Nothing;
        }
        if phase != Phase::InProgress {
            return Route::Release;
        }
        let waited = (now - since).to_std().unwrap_or_default();
        return if waited >= finalizer_timeout {
            Route::Release
        } else {
            Route::Wait(finalizer_timeout - waited)
        };
    }
    if labelled || phase.is_finished() {
        return Route::Nothing;
    }
    let Some(pod) = pod else {
        // The caller looks the pod up only when asked to.
        return Route::Wait(Duration::ZERO);
    };
    match pod {
        None => Route::FailNoPod(format!("pod {pod_ref} not found")),
        Some(p) => match p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(n) if !n.is_empty() => Route::Label(n.to_string()),
            _ => Route::Wait(Duration::from_secs(10)),
        },
    }
}

/// What the routing controller needs.
pub struct RouteContext {
    /// API client.
    pub client: Client,
    /// All pods (the pod controller's cache).
    pub pods: Store<Pod>,
    /// Time source.
    pub clock: Clock,
    /// See `--finalizer-timeout`.
    pub finalizer_timeout: Duration,
}

fn to_chrono(t: &Time) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond() as u32)
}

/// One routing reconciliation (see the module docs).
pub async fn reconcile_route<K: Routed>(
    obj: Arc<K>,
    ctx: Arc<RouteContext>,
) -> Result<Action, kube::Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let pod_ref = format!("{ns}/{}", obj.pod_name());
    let seen = Seen {
        phase: obj.phase(),
        labelled: obj.labels().contains_key(LABEL_NODE),
        deleting_since: obj.meta().deletion_timestamp.as_ref().and_then(to_chrono),
        has_finalizer: obj.finalizers().iter().any(|f| f == FINALIZER),
    };
    let now = (ctx.clock)();
    let decide = |pod: Option<Option<&Pod>>| route(seen, pod, &pod_ref, now, ctx.finalizer_timeout);
    let mut r = decide(None);
    if r == Route::Wait(Duration::ZERO) {
        let cached = ctx.pods.get(&ObjectRef::new(obj.pod_name()).within(&ns));
        let pod = match cached {
            Some(p) => Some((*p).clone()),
            None => {
                Api::<Pod>::namespaced(ctx.client.clone(), &ns)
                    .get_opt(obj.pod_name())
                    .await?
            }
        };
        r = decide(Some(pod.as_ref()));
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match r {
        Route::Nothing => Ok(Action::await_change()),
        Route::Wait(d) => Ok(Action::requeue(d.max(Duration::from_secs(1)))),
        Route::Label(node) => {
            let mut finalizers = obj.finalizers().to_vec();
            if !finalizers.iter().any(|f| f == FINALIZER) {
                finalizers.push(FINALIZER.into());
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": obj.resource_version(),
                    "labels": { LABEL_NODE: node_label_value(&node) },
                    "finalizers": finalizers,
                }
            });
            match api.patch(&name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    tracing::info!(kind = K::KIND_NAME, object = %format!("{ns}/{name}"), %node, "routed to node");
                    Ok(Action::await_change())
                }
                // Changed meanwhile (the watch brings the new version) or gone.
                Err(kube::Error::Api(s)) if s.is_conflict() || s.code == 404 => {
                    Ok(Action::await_change())
                }
                Err(e) => Err(e),
            }
        }
        Route::FailNoPod(message) => {
            let patch = serde_json::json!({
                "status": {
                    "phase": "Failed",
                    "reason": "pod_not_found",
                    "message": message,
                    "completionTimestamp": Time(k8s_openapi::jiff::Timestamp::now()),
                }
            });
            match api.patch_status(&name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) | Err(kube::Error::Api(_)) => Ok(Action::await_change()),
                Err(e) => Err(e),
            }
        }
        Route::Release => {
            let rest: Vec<String> = obj
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": obj.resource_version(),
                    "finalizers": rest,
                }
            });
            match api.patch(&name, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    tracing::info!(kind = K::KIND_NAME, object = %format!("{ns}/{name}"), phase = %obj.phase(), "released the finalizer of a deleted object no agent released");
                    Ok(Action::await_change())
                }
                Err(kube::Error::Api(s)) if s.is_conflict() || s.code == 404 => {
                    Ok(Action::await_change())
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Retry policy of the routing controller.
pub fn route_error_policy<K: Routed>(
    obj: Arc<K>,
    err: &kube::Error,
    _ctx: Arc<RouteContext>,
) -> Action {
    tracing::warn!(kind = K::KIND_NAME, object = %obj.name_any(), error = %err, "routing failed");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn pod(node: Option<&str>) -> Pod {
        Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: node.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const T: Duration = Duration::from_secs(300);

    fn seen(phase: Phase, labelled: bool, deleting: Option<&str>, fin: bool) -> Seen {
        Seen {
            phase,
            labelled,
            deleting_since: deleting.map(t),
            has_finalizer: fin,
        }
    }

    #[test]
    fn unlabelled_objects_are_routed_to_their_pods_node() {
        let now = t("2026-01-01T00:00:00Z");
        let new = seen(Phase::New, false, None, false);
        let (on_a, unscheduled) = (pod(Some("node-a")), pod(None));
        assert_eq!(
            route(new, None, "ns/p", now, T),
            Route::Wait(Duration::ZERO),
            "asks for the pod"
        );
        assert_eq!(
            route(new, Some(Some(&on_a)), "ns/p", now, T),
            Route::Label("node-a".into())
        );
        assert_eq!(
            route(new, Some(Some(&unscheduled)), "ns/p", now, T),
            Route::Wait(Duration::from_secs(10))
        );
        assert_eq!(
            route(new, Some(None), "ns/p", now, T),
            Route::FailNoPod("pod ns/p not found".into())
        );
        // Labelled or finished: nothing.
        let labelled = seen(Phase::New, true, None, true);
        assert_eq!(route(labelled, None, "ns/p", now, T), Route::Nothing);
        let failed = seen(Phase::Failed, false, None, false);
        assert_eq!(route(failed, None, "ns/p", now, T), Route::Nothing);
    }

    #[test]
    fn deleted_objects_are_released_unless_an_agent_may_still_stop_them() {
        let since = Some("2026-01-01T00:00:00Z");
        for phase in [Phase::New, Phase::Completed, Phase::Failed, Phase::Canceled] {
            let s = seen(phase, true, since, true);
            assert_eq!(
                route(s, None, "ns/p", t("2026-01-01T00:00:01Z"), T),
                Route::Release
            );
        }
        let running = seen(Phase::InProgress, true, since, true);
        assert_eq!(
            route(running, None, "ns/p", t("2026-01-01T00:01:00Z"), T),
            Route::Wait(Duration::from_secs(240))
        );
        assert_eq!(
            route(running, None, "ns/p", t("2026-01-01T00:05:00Z"), T),
            Route::Release
        );
        let released = seen(Phase::InProgress, true, since, false);
        assert_eq!(
            route(released, None, "ns/p", t("2026-01-01T00:05:00Z"), T),
            Route::Nothing
        );
    }
}
