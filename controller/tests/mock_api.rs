//! Request sequences the controller makes, against kube's tower-test mock service.
//!
//! There is no API server on these machines, so this is the seam: each test plays the API
//! server's part for one sequence (exact method, path, field manager and body checked), and
//! then drops the mock, so any request beyond the expected ones fails the test.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use podvault_controller::history::HistoryLimits;
use podvault_controller::lease::try_acquire_or_renew;
use podvault_controller::metrics::Metrics;
use podvault_controller::plan::PlanOptions;
use podvault_controller::reconciler::{error_policy, reconcile, sweep, Access, Context, Error};
use podvault_proto::crd::BackupRepository;
use serde_json::{json, Value};
use tower_test::mock::{Handle, SendResponse};

type MockHandle = Handle<Request<Body>, Response<Body>>;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn context(now: &str) -> (Arc<Context>, MockHandle) {
    context_with(now, &[], &[])
}

/// A context whose watch caches hold the BackupRepositories and Namespaces given as YAML.
fn context_with(now: &str, repos: &[&str], namespaces: &[&str]) -> (Arc<Context>, MockHandle) {
    use kube::runtime::{reflector, watcher};
    let (repositories, mut rw) = reflector::store::<BackupRepository>();
    for r in repos {
        rw.apply_watcher_event(&watcher::Event::Apply(serde_yaml::from_str(r).unwrap()));
    }
    let (ns_store, mut nw) = reflector::store::<Namespace>();
    for n in namespaces {
        nw.apply_watcher_event(&watcher::Event::Apply(serde_yaml::from_str(n).unwrap()));
    }
    let access = Access {
        repositories,
        namespaces: ns_store,
    };
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let now = t(now);
    let ctx = Context {
        client: client.clone(),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "podvault-controller".into(),
                instance: Some("test".into()),
            },
        ),
        metrics: Metrics::new().unwrap(),
        options: PlanOptions::default(),
        backup_history: HistoryLimits {
            successful: 1,
            failed: 1,
        },
        restore_history: HistoryLimits {
            successful: 1,
            failed: 1,
        },
        clock: Arc::new(move || now),
        access,
    };
    (Arc::new(ctx), handle)
}

fn pod(name: &str, annotations: &str, volumes: &str) -> Arc<Pod> {
    Arc::new(
        serde_yaml::from_str(&format!(
            "
metadata:
  name: {name}
  namespace: shop
  uid: uid-{name}
  creationTimestamp: '2025-03-01T00:00:00Z'
  annotations: {{{annotations}}}
spec:
  nodeName: node-a
  containers: [{{name: c}}]
  volumes: {volumes}
status: {{phase: Running}}
"
        ))
        .unwrap(),
    )
}

fn web0() -> Arc<Pod> {
    pod(
        "web-0",
        "backup.podvault.dev/backup-volumes: data",
        "[{name: data, persistentVolumeClaim: {claimName: db}}]",
    )
}

struct Call {
    method: Method,
    path: String,
    query: String,
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
    let query = req.uri().query().unwrap_or_default().to_string();
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
        query,
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

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("mock {reason}"), "reason": reason, "code": code})
}

const PVBS: &str = "/apis/podvault.dev/v1alpha1/namespaces/shop/podvolumebackups";

/// Answers the create of a PodVolumeBackup; returns its name.
async fn expect_create(handle: &mut MockHandle, code: u16) -> String {
    let call = next(handle).await;
    assert_eq!(call.method, Method::POST);
    assert_eq!(call.path, PVBS);
    assert!(
        call.query.contains("fieldManager=podvault-controller"),
        "{}",
        call.query
    );
    let name = call.body["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(call.body["kind"], "PodVolumeBackup");
    if code == 201 {
        let mut obj = call.body.clone();
        obj["metadata"]["resourceVersion"] = json!("1");
        respond(call.send, 201, &obj);
    } else {
        respond(call.send, code, &status(code, "AlreadyExists"));
    }
    name
}

/// Answers the server-side apply of `status.phase = New`.
async fn expect_status_new(handle: &mut MockHandle, name: &str, code: u16) {
    let call = next(handle).await;
    assert_eq!(call.method, Method::PATCH);
    assert_eq!(call.path, format!("{PVBS}/{name}/status"));
    assert_eq!(call.content_type, "application/apply-patch+yaml");
    assert!(call.query.contains("fieldManager=podvault-controller"));
    assert!(!call.query.contains("force=true"), "{}", call.query);
    assert_eq!(call.body["status"]["phase"], "New");
    assert_eq!(call.body["status"]["series"], "shop/pvc/db");
    assert_eq!(
        call.body["status"]["message"],
        "scheduled for 2025-03-10T12:00:00Z"
    );
    if code == 200 {
        let obj = json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": "2"},
            "spec": {"pod": "web-0", "volume": "data"}, "status": call.body["status"]});
        respond(call.send, 200, &obj);
    } else {
        respond(call.send, code, &status(code, "Conflict"));
    }
}

fn scheduled(ctx: &Context, result: &str) -> u64 {
    ctx.metrics
        .backups_scheduled
        .with_label_values(&["shop", result])
        .get()
}

#[tokio::test]
async fn creates_backup_then_marks_it_new_and_requeues_for_next_tick() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let server = tokio::spawn(async move {
        let name = expect_create(&mut handle, 201).await;
        expect_status_new(&mut handle, &name, 200).await;
        name
    });
    let action = reconcile(web0(), ctx.clone()).await.unwrap();
    let name = server.await.unwrap();
    assert!(
        name.starts_with("pvc-db-") && name.ends_with("-202503101200"),
        "{name}"
    );
    // Next tick 18:00:00, plus one second.
    assert_eq!(
        action,
        Action::requeue(std::time::Duration::from_secs(4 * 3600 + 33 * 60 + 1))
    );
    assert_eq!(scheduled(&ctx, "created"), 1);
}

fn repo(name: &str, allowed: &str) -> String {
    format!(
        "apiVersion: podvault.dev/v1alpha1\nkind: BackupRepository\nmetadata: {{name: {name}}}\n\
         spec:\n  backend: {{fs: {{path: /r}}}}\n  passwordSecret: {{name: p, key: k}}\n  {allowed}\n"
    )
}

fn pod_on(repository: &str) -> Arc<Pod> {
    pod(
        "web-0",
        &format!(
            "backup.podvault.dev/backup-volumes: data, backup.podvault.dev/repository: {repository}"
        ),
        "[{name: data, persistentVolumeClaim: {claimName: db}}]",
    )
}

/// A repository that does not allow the pod's namespace gets no PodVolumeBackup: one Warning
/// event on the pod names the repository and the field, and nothing is created.
#[tokio::test]
async fn a_repository_that_does_not_allow_the_namespace_gets_no_backup() {
    let repos = [
        repo("closed", ""),
        repo("bank-only", "allowedNamespaces: {names: [bank]}"),
        repo(
            "labelled",
            "allowedNamespaces: {selector: {matchLabels: {backup: podvault}}}",
        ),
    ];
    let shop = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: shop}}\n";
    for (name, detail) in [
        ("closed", "sets no spec.allowedNamespaces"),
        ("bank-only", "not in spec.allowedNamespaces.names"),
        ("labelled", "do not match spec.allowedNamespaces.selector"),
    ] {
        let refs: Vec<&str> = repos.iter().map(String::as_str).collect();
        let (ctx, mut handle) = context_with("2025-03-10T13:27:00Z", &refs, &[shop]);
        let server = tokio::spawn(async move {
            let call = next(&mut handle).await;
            assert_eq!(call.method, Method::POST);
            assert_eq!(call.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
            assert_eq!(call.body["type"], "Warning");
            assert_eq!(call.body["reason"], "RepositoryNotAllowed");
            let note = call.body["note"].as_str().unwrap().to_string();
            respond(call.send, 201, &call.body);
            // Dropping the handle fails any further request (a create would).
            note
        });
        let action = reconcile(pod_on(name), ctx.clone()).await;
        let note = server.await.unwrap();
        assert!(action.is_ok(), "{action:?}");
        assert!(
            note.starts_with(&format!(
                "namespace shop may not use BackupRepository {name}: "
            )) && note.contains(detail)
                && note.ends_with("no PodVolumeBackup was created"),
            "{note}"
        );
        assert_eq!(scheduled(&ctx, "not_allowed"), 1);
        assert_eq!(scheduled(&ctx, "created"), 0);
    }
}

/// Allowed by name or by the namespace's labels: scheduled as usual. A repository the cache
/// does not hold is left to the agent (scheduled).
#[tokio::test]
async fn an_allowed_or_uncached_repository_is_scheduled() {
    let repos = [
        repo("by-name", "allowedNamespaces: {names: [shop]}"),
        repo(
            "by-label",
            "allowedNamespaces: {selector: {matchLabels: {backup: podvault}}}",
        ),
    ];
    let shop =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {backup: podvault}}\n";
    for name in ["by-name", "by-label", "not-cached"] {
        let refs: Vec<&str> = repos.iter().map(String::as_str).collect();
        let (ctx, mut handle) = context_with("2025-03-10T13:27:00Z", &refs, &[shop]);
        let server = tokio::spawn(async move {
            expect_create(&mut handle, 409).await;
        });
        reconcile(pod_on(name), ctx.clone()).await.unwrap();
        server.await.unwrap();
        assert_eq!(scheduled(&ctx, "exists"), 1, "{name}");
        assert_eq!(scheduled(&ctx, "not_allowed"), 0, "{name}");
    }
}

#[tokio::test]
async fn already_exists_is_success_and_nothing_else_is_sent() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let server = tokio::spawn(async move {
        expect_create(&mut handle, 409).await;
        // Dropping the handle makes any further request fail the reconcile.
    });
    let action = reconcile(web0(), ctx.clone()).await;
    server.await.unwrap();
    assert!(action.is_ok(), "{action:?}");
    assert_eq!(scheduled(&ctx, "exists"), 1);
    assert_eq!(scheduled(&ctx, "created"), 0);
}

#[tokio::test]
async fn status_conflict_means_the_agent_claimed_it_first() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let server = tokio::spawn(async move {
        let name = expect_create(&mut handle, 201).await;
        expect_status_new(&mut handle, &name, 409).await;
    });
    let action = reconcile(web0(), ctx.clone()).await;
    server.await.unwrap();
    assert!(action.is_ok(), "{action:?}");
}

#[tokio::test]
async fn a_claim_shared_by_two_pods_is_created_once_per_tick() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let other = pod(
        "report-1",
        "backup.podvault.dev/backup-volumes: shared",
        "[{name: shared, persistentVolumeClaim: {claimName: db}}]",
    );
    let server = tokio::spawn(async move {
        let first = expect_create(&mut handle, 201).await;
        expect_status_new(&mut handle, &first, 200).await;
        let second = expect_create(&mut handle, 409).await;
        (first, second)
    });
    reconcile(web0(), ctx.clone()).await.unwrap();
    reconcile(other, ctx.clone()).await.unwrap();
    let (first, second) = server.await.unwrap();
    assert_eq!(first, second);
    assert_eq!(scheduled(&ctx, "created"), 1);
    assert_eq!(scheduled(&ctx, "exists"), 1);
}

#[tokio::test]
async fn a_restarted_controller_recreates_nothing_for_the_same_tick() {
    // Two controller instances (or one before and after a restart) at different instants of
    // the same tick interval compute the same name; the second create is AlreadyExists.
    let (ctx1, mut h1) = context("2025-03-10T12:00:00Z");
    let (ctx2, mut h2) = context("2025-03-10T17:59:59Z");
    let s1 = tokio::spawn(async move {
        let n = expect_create(&mut h1, 201).await;
        expect_status_new(&mut h1, &n, 200).await;
        n
    });
    reconcile(web0(), ctx1).await.unwrap();
    let s2 = tokio::spawn(async move { expect_create(&mut h2, 409).await });
    reconcile(web0(), ctx2).await.unwrap();
    assert_eq!(s1.await.unwrap(), s2.await.unwrap());
}

#[tokio::test]
async fn api_errors_retry_with_a_fixed_reason() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        respond(call.send, 403, &status(403, "Forbidden"));
    });
    let err = reconcile(web0(), ctx.clone()).await.unwrap_err();
    server.await.unwrap();
    assert!(matches!(err, Error::CreateBackup { .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("creating PodVolumeBackup shop/pvc-db-"));
    let action = error_policy(web0(), &err, ctx.clone());
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(30)));
    assert_eq!(
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["create_backup"])
            .get(),
        1
    );
}

#[tokio::test]
async fn invalid_schedule_publishes_a_warning_and_waits_for_a_change() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let bad = pod(
        "web-0",
        "backup.podvault.dev/backup-volumes: data, backup.podvault.dev/schedule: 'every hour'",
        "[{name: data, emptyDir: {}}]",
    );
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert_eq!(call.body["type"], "Warning");
        assert_eq!(call.body["reason"], "InvalidAnnotation");
        assert_eq!(call.body["regarding"]["name"], "web-0");
        let note = call.body["note"].as_str().unwrap().to_string();
        respond(call.send, 201, &call.body);
        note
    });
    let err = reconcile(bad.clone(), ctx.clone()).await.unwrap_err();
    let note = server.await.unwrap();
    assert!(
        note.starts_with(
            "annotation backup.podvault.dev/schedule: invalid schedule \"every hour\""
        ),
        "{note}"
    );
    assert_eq!(err.reason(), "invalid_schedule");
    assert_eq!(error_policy(bad, &err, ctx.clone()), Action::await_change());
    assert_eq!(
        ctx.metrics
            .reconcile_errors
            .with_label_values(&["invalid_schedule"])
            .get(),
        1
    );
}

#[tokio::test]
async fn refused_volume_is_reported_and_the_others_are_still_backed_up() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let p = pod(
        "web-0",
        "backup.podvault.dev/backup-volumes: 'token,data'",
        "[{name: token, secret: {secretName: s}}, {name: data, persistentVolumeClaim: {claimName: db}}]",
    );
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.path, "/apis/events.k8s.io/v1/namespaces/shop/events");
        assert_eq!(call.body["reason"], "VolumeSkipped");
        assert!(call.body["note"]
            .as_str()
            .unwrap()
            .contains("volume \"token\" of pod shop/web-0 is a secret volume"));
        respond(call.send, 201, &call.body);
        let name = expect_create(&mut handle, 201).await;
        expect_status_new(&mut handle, &name, 200).await;
    });
    reconcile(p, ctx.clone()).await.unwrap();
    server.await.unwrap();
    assert_eq!(
        ctx.metrics
            .volumes_skipped
            .with_label_values(&["api_sourced"])
            .get(),
        1
    );
}

#[tokio::test]
async fn pods_without_the_annotation_cause_no_requests() {
    let (ctx, handle) = context("2025-03-10T13:27:00Z");
    drop(handle);
    let p = pod("web-0", "", "[{name: data, emptyDir: {}}]");
    assert_eq!(reconcile(p, ctx).await.unwrap(), Action::await_change());
}

fn pvb(name: &str, series: &str, phase: &str, created: &str) -> Value {
    json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
        "metadata": {"name": name, "namespace": "shop", "creationTimestamp": created,
                     "annotations": {"podvault.dev/series": series}},
        "spec": {"pod": "web-0", "volume": "data"},
        "status": {"phase": phase, "completionTimestamp": created}})
}

#[tokio::test]
async fn sweep_deletes_beyond_history_and_exports_series_gauges() {
    let (ctx, mut handle) = context("2025-03-10T13:27:00Z");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(call.path, "/apis/podvault.dev/v1alpha1/podvolumebackups");
        let items = vec![
            pvb("c1", "shop/pvc/db", "Completed", "2025-03-10T00:00:00Z"),
            pvb("c2", "shop/pvc/db", "Completed", "2025-03-10T06:00:00Z"),
            pvb("f3", "shop/pvc/db", "Failed", "2025-03-10T07:00:00Z"),
            pvb("f4", "shop/pvc/db", "Failed", "2025-03-10T08:00:00Z"),
            pvb("i5", "shop/pvc/db", "InProgress", "2025-03-10T12:00:00Z"),
        ];
        respond(
            call.send,
            200,
            &json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackupList",
                    "metadata": {"resourceVersion": "9"}, "items": items}),
        );
        let mut deleted = Vec::new();
        for _ in 0..2 {
            let call = next(&mut handle).await;
            assert_eq!(call.method, Method::DELETE);
            let name = call
                .path
                .strip_prefix(&format!("{PVBS}/"))
                .unwrap()
                .to_string();
            // The second delete races with someone else: NotFound is fine.
            let code = if deleted.is_empty() { 200 } else { 404 };
            if code == 200 {
                respond(
                    call.send,
                    200,
                    &pvb(&name, "shop/pvc/db", "Completed", "2025-03-10T00:00:00Z"),
                );
            } else {
                respond(call.send, 404, &status(404, "NotFound"));
            }
            deleted.push(name);
        }
        let call = next(&mut handle).await;
        assert_eq!(call.path, "/apis/podvault.dev/v1alpha1/podvolumerestores");
        respond(
            call.send,
            200,
            &json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeRestoreList",
                    "metadata": {}, "items": []}),
        );
        deleted.sort();
        deleted
    });
    let report = sweep(&ctx, &[web0()]).await.unwrap();
    let deleted = server.await.unwrap();
    assert_eq!(deleted, vec!["c1", "f3"]);
    assert_eq!(report.backups_deleted.len(), 2);
    let text = ctx.metrics.render();
    assert!(
        text.contains(
            "podvault_backup_schedule_interval_seconds{namespace=\"shop\",series=\"pvc/db\"} 21600"
        ),
        "{text}"
    );
    let c2 = t("2025-03-10T06:00:00Z").timestamp();
    assert!(
        text.contains(&format!(
            "podvault_backup_last_success_timestamp_seconds{{namespace=\"shop\",series=\"pvc/db\"}} {c2}"
        )),
        "{text}"
    );
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/podvault/leases";

#[tokio::test]
async fn lease_created_when_missing() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "podvault");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::GET);
        assert_eq!(call.path, format!("{LEASE}/podvault-controller"));
        respond(call.send, 404, &status(404, "NotFound"));
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, LEASE);
        assert_eq!(call.body["spec"]["holderIdentity"], "a");
        assert_eq!(call.body["spec"]["leaseDurationSeconds"], 15);
        respond(call.send, 201, &call.body);
    });
    let now = t("2025-03-10T13:27:00Z");
    let held = try_acquire_or_renew(
        &api,
        "podvault-controller",
        "a",
        now,
        chrono::Duration::seconds(15),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert!(held);
}

fn lease(holder: &str, renewed: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "podvault-controller", "namespace": "podvault", "resourceVersion": "41"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                 "renewTime": renewed, "acquireTime": renewed, "leaseTransitions": 2}})
}

#[tokio::test]
async fn live_lease_of_another_replica_is_left_alone() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "podvault");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        respond(call.send, 200, &lease("b", "2025-03-10T13:26:55.000000Z"));
    });
    let now = t("2025-03-10T13:27:00Z");
    let held = try_acquire_or_renew(
        &api,
        "podvault-controller",
        "a",
        now,
        chrono::Duration::seconds(15),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert!(!held);
}

#[tokio::test]
async fn expired_lease_is_taken_with_a_resource_version_precondition() {
    for (code, expect_held) in [(200, true), (409, false)] {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<Lease> = Api::namespaced(Client::new(service, "default"), "podvault");
        let server = tokio::spawn(async move {
            let call = next(&mut handle).await;
            respond(call.send, 200, &lease("b", "2025-03-10T13:20:00.000000Z"));
            let call = next(&mut handle).await;
            assert_eq!(call.method, Method::PUT);
            assert_eq!(call.path, format!("{LEASE}/podvault-controller"));
            assert_eq!(call.body["metadata"]["resourceVersion"], "41");
            assert_eq!(call.body["spec"]["holderIdentity"], "a");
            assert_eq!(call.body["spec"]["leaseTransitions"], 3);
            if code == 200 {
                respond(call.send, 200, &call.body);
            } else {
                // Another replica won the race.
                respond(call.send, 409, &status(409, "Conflict"));
            }
        });
        let now = t("2025-03-10T13:27:00Z");
        let held = try_acquire_or_renew(
            &api,
            "podvault-controller",
            "a",
            now,
            chrono::Duration::seconds(15),
        )
        .await
        .unwrap();
        server.await.unwrap();
        assert_eq!(held, expect_held);
    }
}

// ----- scheduled maintenance (podvault_controller::maintenance::tick) -----

const JOBS: &str = "/apis/batch/v1/namespaces/podvault/jobs";
const MAINT_LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/podvault/leases/podvault-maintenance-shared";

fn maintenance_opts() -> podvault_controller::maintenance::MaintenanceOptions {
    podvault_controller::maintenance::MaintenanceOptions {
        namespace: "podvault".into(),
        image: "ghcr.io/podvault/podvault:0.1.0".into(),
        service_account: "podvault-maintenance".into(),
        memory: "4Gi".into(),
        deadline: chrono::Duration::hours(12),
    }
}

fn shared_repo(status: Value) -> BackupRepository {
    serde_json::from_value(json!({
        "apiVersion": "podvault.dev/v1alpha1", "kind": "BackupRepository",
        "metadata": {"name": "shared", "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "7"},
        "spec": {"backend": {"s3": {"bucket": "b"}}, "passwordSecret": {"name": "p", "key": "k"}},
        "status": status,
    }))
    .unwrap()
}

fn maintenance_lease(holder: &str) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "podvault-maintenance-shared", "namespace": "podvault", "resourceVersion": "5"},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 43500,
                 "renewTime": "2026-01-05T03:00:05.000000Z", "acquireTime": "2026-01-05T03:00:05.000000Z"}})
}

#[tokio::test]
async fn maintenance_waits_while_the_lease_holder_job_runs() {
    use podvault_controller::maintenance::{tick, TickAction};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        assert_eq!(
            (call.method, call.path),
            (Method::GET, MAINT_LEASE.to_string())
        );
        respond(
            call.send,
            200,
            &maintenance_lease("podvault-prune-shared-1"),
        );
        let call = next(&mut handle).await;
        assert_eq!(call.path, format!("{JOBS}/podvault-prune-shared-1"));
        respond(
            call.send,
            200,
            &json!({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": "podvault-prune-shared-1"}, "status": {"active": 1}}),
        );
    });
    // Every kind is overdue, but one Job already holds the repository.
    let action = tick(
        &client,
        &shared_repo(json!({})),
        &maintenance_opts(),
        t("2026-01-09T06:00:00Z"),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert_eq!(
        action,
        TickAction::Running("podvault-prune-shared-1".into())
    );
}

#[tokio::test]
async fn maintenance_lease_lost_to_another_replica_starts_no_job() {
    use podvault_controller::maintenance::{tick, TickAction};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(async move {
        // No Lease yet; prune is due; the create of the Lease conflicts.
        let call = next(&mut handle).await;
        respond(call.send, 404, &status(404, "NotFound"));
        let call = next(&mut handle).await;
        assert_eq!(
            (call.method, call.path),
            (Method::GET, MAINT_LEASE.to_string())
        );
        respond(call.send, 404, &status(404, "NotFound"));
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::POST);
        let holder = call.body["spec"]["holderIdentity"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(holder.starts_with("podvault-prune-shared-"), "{holder}");
        respond(call.send, 409, &status(409, "AlreadyExists"));
    });
    let action = tick(
        &client,
        &shared_repo(json!({})),
        &maintenance_opts(),
        t("2026-01-09T03:00:30Z"),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert_eq!(action, TickAction::Lost);
}

#[tokio::test]
async fn maintenance_records_a_job_that_died_and_releases_the_lease() {
    use podvault_controller::maintenance::{tick, TickAction};
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let running = json!({"maintenance": {"runs": [{"kind": "check", "job": "podvault-check-shared-1",
        "started": "2026-01-05T05:00:05Z", "result": "Running", "message": ""}],
        "lastStart": {"check": "2026-01-05T05:00:05Z"}}});
    let repo = shared_repo(running.clone());
    let server = tokio::spawn(async move {
        let call = next(&mut handle).await;
        respond(
            call.send,
            200,
            &maintenance_lease("podvault-check-shared-1"),
        );
        let call = next(&mut handle).await;
        assert_eq!(call.path, format!("{JOBS}/podvault-check-shared-1"));
        respond(
            call.send,
            200,
            &json!({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": "podvault-check-shared-1",
                                 "labels": {"podvault.dev/maintenance-kind": "check"}},
                    "status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True",
                               "reason": "PodFailurePolicy", "message": "OOMKilled"}]}}),
        );
        // The run is recorded as Failed, on the version read.
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::GET);
        assert!(
            call.path.ends_with("/backuprepositories/shared/status"),
            "{}",
            call.path
        );
        respond(
            call.send,
            200,
            &serde_json::to_value(shared_repo(running)).unwrap(),
        );
        let call = next(&mut handle).await;
        assert_eq!(call.method, Method::PATCH);
        assert_eq!(call.body["metadata"]["resourceVersion"], "7");
        let run = &call.body["status"]["maintenance"]["runs"][0];
        assert_eq!(run["result"], "Failed");
        assert!(
            run["message"].as_str().unwrap().contains("OOMKilled"),
            "{run}"
        );
        assert!(call.body["status"]["maintenance"]["lastFailure"]["check"].is_string());
        respond(
            call.send,
            200,
            &serde_json::to_value(shared_repo(json!({}))).unwrap(),
        );
        // Then the Lease is released (empty holder), conditional on its version.
        let call = next(&mut handle).await;
        assert_eq!(
            (call.method, call.path),
            (Method::PUT, MAINT_LEASE.to_string())
        );
        assert_eq!(call.body["metadata"]["resourceVersion"], "5");
        assert!(
            call.body["spec"]["holderIdentity"].is_null(),
            "{}",
            call.body
        );
        respond(call.send, 200, &call.body);
    });
    let action = tick(
        &client,
        &repo,
        &maintenance_opts(),
        t("2026-01-05T05:30:00Z"),
    )
    .await
    .unwrap();
    server.await.unwrap();
    assert_eq!(
        action,
        TickAction::Released("podvault-check-shared-1".into())
    );
}
