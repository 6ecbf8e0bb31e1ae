//! The shipped alerts against a real Prometheus: the agent's real metrics server (its
//! `/metrics` router on 127.0.0.1) after a really failed backup, scraped every second by
//! `prometheus` loaded with the shipped PrometheusRule's rules and a 1 s evaluation interval.
//!
//! The backup runs the agent's whole operation path (claim, prepare, the engine, final
//! status, count) on a kubelet-shaped emptyDir and a real filesystem repository; it fails
//! because its BackupRepository's password is wrong. The only fake is the Kubernetes API server
//! (a tower-test service answering like one, the same seam as `worker_mock_api.rs`). The test
//! reads `PodvaultBackupFailed` firing from Prometheus' `/api/v1/alerts`, then runs a
//! successful backup of the same series and waits for the alert to end.
//!
//! Needs `/usr/bin/prometheus` (Debian's `prometheus` package; `.ci/run` installs it). Without
//! it the test is skipped with a message, except under CI (`CI` set), where it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::Client;
use podvault::backend::Location;
use podvault::crypto::KdfCost;
use podvault::repository::{InitOptions, Repository};
use podvault::worker::agent::Agent;
use podvault::worker::metrics::{router, AgentMetrics};
use podvault::worker::operation::reconcile;
use podvault::worker::AgentArgs;
use podvault_proto::crd::PodVolumeBackup;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "shop";
const SERIES: &str = "pod/web-0/data";
const PVBS: &str = "/apis/podvault.dev/v1alpha1/namespaces/shop/podvolumebackups/";
/// How long Prometheus may take to scrape, evaluate and report (1 s intervals).
const ALERT_WAIT: Duration = Duration::from_secs(30);

/// `prometheus`, or `None` (skip) when it is missing outside CI.
fn prometheus_bin() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed (apt-get install prometheus); CI must run the live alert test"
        );
        eprintln!(
            "SKIPPED: prometheus not found (apt-get install prometheus); live alert test not run"
        );
    }
    found
}

/// A free port on 127.0.0.1 (the listener is dropped; Prometheus binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Prometheus child process, killed and reaped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on 127.0.0.1 scraping `target` as job `podvault-agent`, with the
    /// shipped rules, and waits until it is ready.
    async fn start(bin: &Path, dir: &Path, target: std::net::SocketAddr) -> Prometheus {
        // The shipped PrometheusRule's spec is what the Prometheus Operator loads.
        let manifest: serde_yaml::Value = serde_yaml::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../deploy/monitoring/prometheusrule.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("rules.yaml"),
            serde_yaml::to_string(&manifest["spec"]).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join("prometheus.yaml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yaml]\n\
                 scrape_configs:\n\
                 \x20 - job_name: podvault-agent\n\
                 \x20   static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(bin)
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yaml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out.try_clone().unwrap()))
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            let mut p = Prometheus {
                child,
                port,
                log: log.clone(),
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if p.child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile, or a bad flag: try again / report below
                }
                if let Ok((200, _)) = http_get(port, "/-/ready").await {
                    return p;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = p.child.kill();
        }
        panic!(
            "prometheus did not become ready; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    async fn api(&self, path: &str) -> Value {
        let (code, body) = http_get(self.port, path).await.unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Firing alerts named `name`, as `/api/v1/alerts` reports them.
    async fn firing(&self, name: &str) -> Vec<Value> {
        let v = self.api("/api/v1/alerts").await;
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .cloned()
            .collect()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One HTTP/1.1 GET on 127.0.0.1:`port`: (status, body).
async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "reason": reason, "code": code, "message": reason})
}

/// Plays the API server for the agent: BackupRepositories, Secrets, PodVolumeBackups (claim,
/// merge patches of status and finalizers, each bumping the resourceVersion) and Events.
/// `objects` holds every PodVolumeBackup as the "server" has it now.
fn fake_api_server(
    mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    repo_dir: PathBuf,
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
) {
    let repository = move |name: &str, secret: &str| {
        json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "BackupRepository",
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"backend": {"fs": {"path": repo_dir.display().to_string()}},
                     "passwordSecret": {"name": secret, "key": "password"},
                     "allowedNamespaces": {"names": [NS]}},
            "status": {"initialized": true}})
    };
    let secret = |name: &str, password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "podvault"},
            "stringData": {"password": password}})
    };
    tokio::spawn(async move {
        let mut version = 100u64;
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let bytes = req.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            version += 1;
            let (code, answer) = match (&method, path.as_str()) {
                (&Method::GET, "/apis/podvault.dev/v1alpha1/backuprepositories/wrong") => {
                    (200, repository("wrong", "pw-wrong"))
                }
                (&Method::GET, "/apis/podvault.dev/v1alpha1/backuprepositories/right") => {
                    (200, repository("right", "pw-right"))
                }
                (&Method::GET, "/api/v1/namespaces/podvault/secrets/pw-wrong") => {
                    (200, secret("pw-wrong", "not-the-password"))
                }
                (&Method::GET, "/api/v1/namespaces/podvault/secrets/pw-right") => {
                    (200, secret("pw-right", "the-password"))
                }
                (&Method::POST, p) if p.contains("/events") => (201, body),
                (m, p) if p.starts_with(PVBS) => {
                    let rest = &p[PVBS.len()..];
                    let name = rest.trim_end_matches("/status").to_string();
                    let mut objects = objects.lock().unwrap();
                    match (m, objects.get_mut(&name)) {
                        (&Method::PUT, Some(obj)) => {
                            *obj = body;
                            obj["metadata"]["resourceVersion"] = json!(version.to_string());
                            (200, obj.clone())
                        }
                        (&Method::PATCH, Some(obj)) => {
                            let mut patch = body;
                            if let Some(m) = patch.get_mut("metadata") {
                                m.as_object_mut().unwrap().remove("resourceVersion");
                            }
                            merge(obj, &patch);
                            obj["metadata"]["resourceVersion"] = json!(version.to_string());
                            (200, obj.clone())
                        }
                        (&Method::GET, Some(obj)) => (200, obj.clone()),
                        _ => (404, status(404, "NotFound")),
                    }
                }
                _ => (404, status(404, "NotFound")),
            };
            send.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
}

fn pvb(name: &str, repository: &str) -> Value {
    json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                     "resourceVersion": "1"},
        "spec": {"pod": "web-0", "volume": "data", "repository": repository}})
}

/// Runs one backup through the agent and waits for its final phase in the fake API server.
async fn run_backup(
    ctx: &Arc<Agent>,
    objects: &Arc<Mutex<BTreeMap<String, Value>>>,
    name: &str,
    repository: &str,
) -> Value {
    let obj = pvb(name, repository);
    objects
        .lock()
        .unwrap()
        .insert(name.to_string(), obj.clone());
    let typed: PodVolumeBackup = serde_json::from_value(obj).unwrap();
    reconcile(Arc::new(typed), ctx.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = objects.lock().unwrap()[name]["status"].clone();
        if status["phase"] == "Failed" || status["phase"] == "Completed" {
            // The count happens right after the final status: wait for the free slot.
            while ctx.slots.available_permits() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            return status;
        }
        assert!(Instant::now() < deadline, "{name} did not finish: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for(what: &str, prom: &Prometheus, mut done: impl FnMut(&[Value]) -> bool) {
    let deadline = Instant::now() + ALERT_WAIT;
    loop {
        let firing = prom.firing("PodvaultBackupFailed").await;
        if done(&firing) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {ALERT_WAIT:?}; alerts: {}\nrules: {}\nprometheus log:\n{}",
            prom.api("/api/v1/alerts").await,
            prom.api("/api/v1/rules").await,
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_failed_backup_fires_podvault_backup_failed_in_prometheus_and_a_success_ends_it() {
    let Some(bin) = prometheus_bin() else { return };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();

    // A kubelet-shaped emptyDir of pod shop/web-0 on node-a, and a repository (cheap KDF).
    let kubelet = tmp.path().join("kubelet");
    let volume = kubelet.join("pods/uid-web-0/volumes/kubernetes.io~empty-dir/data");
    std::fs::create_dir_all(volume.join("db")).unwrap();
    std::fs::write(volume.join("db/base.bin"), vec![7u8; 300_000]).unwrap();
    std::fs::write(volume.join("notes.txt"), b"hello").unwrap();
    let repo_dir = tmp.path().join("repo");
    let opts = InitOptions {
        kdf: KdfCost {
            memory_kib: 1024,
            iterations: 1,
            parallelism: 1,
        },
        ..Default::default()
    };
    // The engine is blocking (it drives its own runtime): off the test's async threads.
    let location = Location::Fs(repo_dir.clone());
    tokio::task::spawn_blocking(move || {
        Repository::init(&location, b"the-password", &opts).map(drop)
    })
    .await
    .unwrap()
    .unwrap();

    // The agent, its pod cache holding the pod, and the fake API server behind its client.
    let pod: Pod = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": NS, "uid": "uid-web-0"},
        "spec": {"nodeName": "node-a", "containers": [{"name": "c"}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
        "status": {"phase": "Running"}}))
    .unwrap();
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(pod));
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let objects = Arc::new(Mutex::new(BTreeMap::new()));
    fake_api_server(handle, repo_dir, objects.clone());
    let args = AgentArgs {
        node: "node-a".into(),
        agent_name: Some("agent-a".into()),
        namespace: "podvault".into(),
        kubelet_root: kubelet.clone(),
        concurrency: 2,
        default_repository: "right".into(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        allow_host_path: false,
        host_path_roots: Vec::new(),
        allow_exec: false,
        progress_interval_secs: 3,
        mount_wait_secs: 0,
    };
    let ctx = Arc::new(Agent::new(
        Client::new(service, "default"),
        &args,
        AgentMetrics::new().unwrap(),
        store,
    ));

    // The agent's metrics server, scraped by Prometheus with the shipped rules.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let metrics = ctx.metrics.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router(metrics)).await });
    let prom = Prometheus::start(&bin, tmp.path(), target).await;
    // Scraped at least once before the failure, with no podvault series yet (a fresh agent).
    let deadline = Instant::now() + ALERT_WAIT;
    loop {
        let up = prom
            .api("/api/v1/query?query=up%7Bjob%3D%22podvault-agent%22%7D")
            .await;
        if up["data"]["result"][0]["value"][1] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "target never scraped: {up}\n{}",
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(prom.firing("PodvaultBackupFailed").await.is_empty());

    // A real backup fails: the engine refuses the BackupRepository's wrong password.
    let started = Instant::now();
    let failed = run_backup(&ctx, &objects, "web-0-data-1", "wrong").await;
    assert_eq!(failed["phase"], "Failed", "{failed}");
    assert_eq!(failed["reason"], "wrong_password", "{failed}");
    let text = ctx.metrics.render();
    assert!(
        text.contains(&format!(
            "podvault_backup_last_failure_timestamp_seconds{{namespace=\"{NS}\",series=\"{SERIES}\"}}"
        )),
        "{text}"
    );
    wait_for("PodvaultBackupFailed firing", &prom, |firing| {
        firing.iter().any(|a| {
            a["labels"]["namespace"] == NS
                && a["labels"]["series"] == SERIES
                && a["labels"]["severity"] == "warning"
        })
    })
    .await;
    eprintln!(
        "PodvaultBackupFailed fired {:.1}s after the failed backup started",
        started.elapsed().as_secs_f64()
    );

    // The next backup of the series succeeds: the alert ends.
    let done = run_backup(&ctx, &objects, "web-0-data-2", "right").await;
    assert_eq!(done["phase"], "Completed", "{done}");
    wait_for("PodvaultBackupFailed resolved", &prom, |firing| {
        firing.is_empty()
    })
    .await;
    server.abort();
}
