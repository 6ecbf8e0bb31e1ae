//! Request sequences the agent makes, against kube's tower-test mock service (there is no API
//! server here; this is the thin seam — the real one is exercised by `tests/tests/e2e_cluster.rs`
//! when `PODVAULT_E2E_KUBECONFIG` is set). Each test plays the API server for one sequence and
//! then drops the mock, so an unexpected extra request fails the test.

use std::sync::Arc;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Api, Client};
use podvault::worker::agent::{Agent, Running};
use podvault::worker::metrics::AgentMetrics;
use podvault::worker::operation::reconcile;
use podvault::worker::status::{claim, patch_status};
use podvault::worker::AgentArgs;
use podvault_proto::crd::{PodVolumeBackup, Progress};
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

type MockHandle = Handle<Request<Body>, Response<Body>>;

const PVBS: &str = "/apis/podvault.dev/v1alpha1/namespaces/shop/podvolumebackups";

struct Call {
    method: Method,
    path: String,
    content_type: String,
    body: Value,
    send: SendResponse<Response<Body>>,
}

async fn next(handle: &mut MockHandle) -> Call {
    let (req, send) = handle
        .next_request()
        .await
        .expect("expected another request");
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = req.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Call {
        method,
        path,
        content_type,
        body,
        send,
    }
}

fn respond(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "the object has been modified", "reason": "Conflict", "code": 409})
}

fn pvb(status: Value) -> PodVolumeBackup {
    serde_json::from_value(json!({
        "apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
        "metadata": {"name": "web-0-data-x", "namespace": "shop", "uid": "pvb-uid", "resourceVersion": "7"},
        "spec": {"pod": "web-0", "volume": "data"},
        "status": status
    }))
    .unwrap()
}

fn pod_on(node: &str) -> Pod {
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "uid": "u"},
        "spec": {"nodeName": node, "containers": [{"name": "c"}]},
        "status": {"phase": "Running"}}))
    .unwrap()
}

/// An agent on node-a whose node pod cache holds `pods`.
fn agent_with(pods: Vec<Pod>) -> (Arc<Agent>, MockHandle) {
    let (store, mut writer) = reflector::store();
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let args = AgentArgs {
        node: "node-a".into(),
        agent_name: Some("agent-a".into()),
        namespace: "podvault".into(),
        kubelet_root: "/nonexistent".into(),
        concurrency: 2,
        default_repository: "default".into(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        allow_host_path: false,
        host_path_roots: Vec::new(),
        allow_exec: false,
        progress_interval_secs: 3,
        mount_wait_secs: 0,
    };
    (
        Arc::new(Agent::new(
            client,
            &args,
            AgentMetrics::new().unwrap(),
            store,
        )),
        handle,
    )
}

/// An agent on node-a whose pod cache is empty.
fn agent() -> (Arc<Agent>, MockHandle) {
    agent_with(Vec::new())
}

/// Answers an event publication (any events.k8s.io request).
async fn expect_event(handle: &mut MockHandle, reason: &str) {
    let call = next(handle).await;
    assert!(
        call.path.contains("/events"),
        "{} {}",
        call.method,
        call.path
    );
    assert_eq!(call.body["reason"], reason, "{}", call.body);
    respond(call.send, 201, &call.body);
}

#[tokio::test]
async fn claim_sends_the_resource_version_and_wins_or_sees_a_conflict() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<PodVolumeBackup> = Api::namespaced(Client::new(service, "default"), "shop");
    let server = tokio::spawn(async move {
        for code in [200u16, 409] {
            let call = next(&mut handle).await;
            assert_eq!(call.method, Method::PUT);
            assert_eq!(call.path, format!("{PVBS}/web-0-data-x/status"));
            assert_eq!(call.body["metadata"]["resourceVersion"], "7");
            assert_eq!(call.body["status"]["phase"], "InProgress");
            if code == 200 {
                let mut obj = call.body.clone();
                obj["metadata"]["resourceVersion"] = json!("8");
                respond(call.send, 200, &obj);
            } else {
                respond(call.send, 409, &conflict());
            }
        }
    });
    let want = pvb(json!({"phase": "InProgress", "node": "node-a"}));
    let won = claim(&api, &want).await.unwrap().expect("claim should win");
    assert_eq!(won.metadata.resource_version.as_deref(), Some("8"));
    assert!(
        claim(&api, &want).await.unwrap().is_none(),
        "409 means someone else has it"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn new_backup_on_this_node_is_claimed_with_precondition_and_conflict_leaves_it() {
    // The pod is in this node's pod cache: the claim is the first and only request.
    let (ctx, mut handle) = agent_with(vec![pod_on("node-a")]);
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x/status"));
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(call.body["status"]["phase"], "InProgress");
        assert_eq!(call.body["status"]["node"], "node-a");
        assert_eq!(call.body["status"]["agent"], "agent-a");
        respond(call.send, 409, &conflict());
    });
    let action = reconcile(Arc::new(pvb(json!(null))), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
    // Lost the claim: nothing runs here and the slot is free again.
    assert!(ctx.running.lock().unwrap().is_empty());
    assert_eq!(ctx.slots.available_permits(), 2);
}

#[tokio::test]
async fn backup_of_a_pod_on_another_node_is_left_alone() {
    // Not in this node's cache: one GET tells where it is, and that is all.
    let (ctx, mut handle) = agent();
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.path, "/api/v1/namespaces/shop/pods/web-0");
        respond(
            call.send,
            200,
            &json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u"},
            "spec": {"nodeName": "node-b", "containers": [{"name": "c"}]},
            "status": {"phase": "Running"}}),
        );
    });
    let action = reconcile(Arc::new(pvb(json!({"phase": "New"}))), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    server.await.unwrap();
}

#[tokio::test]
async fn missing_pod_fails_the_backup_through_a_claim() {
    let (ctx, mut handle) = agent();
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.path, "/api/v1/namespaces/shop/pods/web-0");
        respond(
            call.send,
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(call.body["status"]["phase"], "Failed");
        assert_eq!(call.body["status"]["message"], "pod shop/web-0 not found");
        assert_eq!(call.body["status"]["reason"], "pod_not_found");
        respond(call.send, 200, &call.body);
        expect_event(&mut handle, "Failed").await;
    });
    reconcile(Arc::new(pvb(json!(null))), ctx.clone())
        .await
        .unwrap();
    server.await.unwrap();
    let m = ctx.metrics.render();
    assert!(
        m.contains(
            r#"podvault_backups_total{namespace="shop",result="failed",series="pod/web-0/data"} 1"#
        ),
        "{m}"
    );
}

#[tokio::test]
async fn restart_rule_resumes_interrupted_work_once_then_fails_it() {
    // First restart: InProgress on this node, not running here → claimed again with a Resumed
    // condition (here another agent wins the race: 409, nothing runs).
    let (ctx, mut handle) = agent();
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(call.body["status"]["phase"], "InProgress");
        assert_eq!(call.body["status"]["conditions"][0]["type"], "Resumed");
        respond(call.send, 409, &conflict());
    });
    let interrupted = pvb(json!({"phase": "InProgress", "node": "node-a", "agent": "agent-old"}));
    reconcile(Arc::new(interrupted), ctx).await.unwrap();
    server.await.unwrap();

    // Second restart: already resumed once → Failed, never left hanging.
    let (ctx, mut handle) = agent();
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.body["status"]["phase"], "Failed");
        let msg = call.body["status"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("interrupted twice"), "{msg}");
        assert!(call.body["status"]["completionTimestamp"].is_string());
        respond(call.send, 200, &call.body);
        expect_event(&mut handle, "Failed").await;
    });
    let again = pvb(
        json!({"phase": "InProgress", "node": "node-a", "conditions": [{
        "type": "Resumed", "status": "True", "reason": "AgentRestarted", "message": "m",
        "lastTransitionTime": "2025-03-10T12:00:00Z"}]}),
    );
    reconcile(Arc::new(again), ctx).await.unwrap();
    server.await.unwrap();

    // InProgress on another node: no request at all.
    let (ctx, handle) = agent();
    let other = pvb(json!({"phase": "InProgress", "node": "node-b"}));
    assert_eq!(
        reconcile(Arc::new(other), ctx).await.unwrap(),
        Action::await_change()
    );
    drop(handle);
}

#[tokio::test]
async fn progress_is_a_merge_patch_of_the_status_subresource() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<PodVolumeBackup> = Api::namespaced(Client::new(service, "default"), "shop");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x/status"));
        assert_eq!(call.content_type, "application/merge-patch+json");
        assert_eq!(
            call.body,
            json!({"status": {"progress": {
            "bytesDone": 50, "bytesTotal": 200, "filesDone": 1, "filesTotal": 4, "percent": 25}}})
        );
        respond(
            call.send,
            200,
            &serde_json::to_value(pvb(json!({"phase": "InProgress"}))).unwrap(),
        );
    });
    patch_status(
        &api,
        "web-0-data-x",
        &json!({"progress": Progress::new(50, 200, 1, 4)}),
    )
    .await
    .unwrap();
    server.await.unwrap();
}

fn finalized(mut v: Value) -> Value {
    v["metadata"]["finalizers"] = json!(["podvault.dev/cancel-on-delete"]);
    v
}

#[tokio::test]
async fn one_path_claim_finalizer_run_final_status_release() {
    // A user-created PVB without the finalizer: claim, add the finalizer (resourceVersion
    // precondition), Started event, the pod from the node's cache (no request; it has no such
    // volume here), final status with the reason, Failed event, finalizer released.
    let (ctx, mut handle) = agent_with(vec![pod_on("node-a")]);
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PUT);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x/status"));
        let mut claimed = call.body.clone();
        claimed["metadata"]["resourceVersion"] = json!("8");
        respond(call.send, 200, &claimed);

        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x"));
        assert_eq!(call.content_type, "application/merge-patch+json");
        assert_eq!(call.body["metadata"]["resourceVersion"], "8");
        assert_eq!(
            call.body["metadata"]["finalizers"],
            json!(["podvault.dev/cancel-on-delete"])
        );
        let mut with_finalizer = finalized(claimed.clone());
        with_finalizer["metadata"]["resourceVersion"] = json!("9");
        respond(call.send, 200, &with_finalizer);

        expect_event(&mut handle, "Started").await;
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x/status"));
        assert_eq!(call.body["status"]["phase"], "Failed");
        assert_eq!(call.body["status"]["reason"], "volume");
        assert_eq!(
            call.body["status"]["message"],
            "pod shop/web-0 has no volume \"data\" (its volumes: none)"
        );
        let mut done = with_finalizer.clone();
        done["status"] = call.body["status"].clone();
        done["metadata"]["resourceVersion"] = json!("10");
        respond(call.send, 200, &done);

        expect_event(&mut handle, "Failed").await;
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x"));
        assert_eq!(call.body["metadata"]["resourceVersion"], "10");
        assert_eq!(call.body["metadata"]["finalizers"], json!([]));
        respond(call.send, 200, &done);
    });
    reconcile(Arc::new(pvb(json!(null))), ctx.clone())
        .await
        .unwrap();
    server.await.unwrap();
    // The run has ended and freed its slot.
    for _ in 0..100 {
        if ctx.slots.available_permits() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(ctx.slots.available_permits(), 2);
    let m = ctx.metrics.render();
    assert!(
        m.contains(r#"podvault_agent_operation_errors_total{kind="backup",reason="volume"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn deleting_a_running_operation_cancels_it_without_a_request() {
    let (ctx, handle) = agent();
    let run = Running {
        cancel: Default::default(),
        deleted: Default::default(),
    };
    ctx.set_running("pvb-uid", Some(run.clone()));
    let mut obj = finalized(
        serde_json::to_value(pvb(json!({"phase": "InProgress", "node": "node-a"}))).unwrap(),
    );
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let obj: PodVolumeBackup = serde_json::from_value(obj).unwrap();
    assert_eq!(
        reconcile(Arc::new(obj), ctx).await.unwrap(),
        Action::await_change()
    );
    drop(handle);
    assert!(run.cancel.load(std::sync::atomic::Ordering::Relaxed));
    assert!(run.deleted.load(std::sync::atomic::Ordering::Relaxed));
}

#[tokio::test]
async fn a_deleted_operation_nobody_runs_is_released() {
    let (ctx, mut handle) = agent();
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.path, format!("{PVBS}/web-0-data-x"));
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        assert_eq!(call.body["metadata"]["finalizers"], json!([]));
        respond(call.send, 409, &conflict());
        // Conflict: read again and retry with the new version.
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::GET);
        let mut fresh = finalized(
            serde_json::to_value(pvb(json!({"phase": "InProgress", "node": "node-a"}))).unwrap(),
        );
        fresh["metadata"]["resourceVersion"] = json!("12");
        respond(call.send, 200, &fresh);
        let call = next(&mut handle).await;
        assert_eq!(call.body["metadata"]["resourceVersion"], "12");
        assert_eq!(call.body["metadata"]["finalizers"], json!([]));
        respond(call.send, 200, &fresh);
    });
    let mut obj = finalized(
        serde_json::to_value(pvb(json!({"phase": "InProgress", "node": "node-a"}))).unwrap(),
    );
    obj["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let obj: PodVolumeBackup = serde_json::from_value(obj).unwrap();
    reconcile(Arc::new(obj), ctx).await.unwrap();
    server.await.unwrap();
}
