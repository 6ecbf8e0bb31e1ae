//! Writes to the API server for one operation object: the claim, status patches, the final
//! status, and the finalizer.
//!
//! - The claim replaces the status with the object's `resourceVersion` as precondition, so the
//!   API server answers 409 Conflict when anyone changed the object since it was read:
//!   exactly one claimant wins.
//! - Progress and the final status are merge patches of the status subresource.
//! - The finalizer ([`FINALIZER`]) is added and removed with merge patches of
//!   `metadata.finalizers` carrying the `resourceVersion` read, retried on conflict, so a
//!   concurrent change to the list (another controller's finalizer) is never lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use podvault_proto::k8s::FINALIZER;
use serde::Serialize;

use super::decide::{status_progress, ProgressThrottle};
use super::operation::Operation;
use crate::progress::Progress;

/// Field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "podvault-agent";

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

/// What became of the final status write.
#[derive(Debug)]
pub enum Final<K> {
    /// Written; the object as the API server has it now.
    Written(K),
    /// The object no longer exists.
    Gone,
    /// Every attempt failed (the API server is unreachable); the object's state is unknown.
    Unknown,
}

/// Writes the final status, retrying transient API errors a few times.
pub async fn write_final<K: Operation>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Final<K> {
    for attempt in 1..=5u32 {
        match patch_status(api, name, status).await {
            Ok(o) => return Final::Written(o),
            Err(kube::Error::Api(s)) if s.code == 404 => return Final::Gone,
            Err(e) => {
                tracing::warn!(object = %name, attempt, error = %e, "final status update failed");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
            }
        }
    }
    Final::Unknown
}

/// Sets whether `obj` carries the agent's finalizer. Reads the object again after a 409
/// Conflict and tries again (at most 5 times). `Ok(None)` when the object is gone.
pub async fn set_finalizer<K: Operation>(
    api: &Api<K>,
    obj: &K,
    present: bool,
) -> Result<Option<K>, kube::Error> {
    let name = obj.name_any();
    let mut current = obj.clone();
    for _ in 0..5 {
        let mut list = current.finalizers().to_vec();
        let has = list.iter().any(|f| f == FINALIZER);
        if has == present {
            return Ok(Some(current));
        }
        if present {
            list.push(FINALIZER.to_string());
        } else {
            list.retain(|f| f != FINALIZER);
        }
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": current.resource_version(),
                "finalizers": list,
            }
        });
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match api.patch(&name, &pp, &Patch::Merge(&patch)).await {
            Ok(o) => return Ok(Some(o)),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(kube::Error::Api(s)) if s.is_conflict() => match api.get_opt(&name).await? {
                Some(o) => current = o,
                None => return Ok(None),
            },
            Err(e) => return Err(e),
        }
    }
    Err(kube::Error::Api(
        kube::core::Status::failure(
            &format!("{name}: the finalizer list kept changing (5 conflicts)"),
            "Conflict",
        )
        .with_code(409)
        .boxed(),
    ))
}

/// Patches `status.progress` every `interval` while the operation runs.
pub fn spawn_progress<K: Operation>(
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
