//! End to end against a real Kubernetes API server: the shipped `podvault agent` and
//! `podvault-controller` binaries, run as their ServiceAccounts over HTTPS with the shipped
//! CRDs and RBAC, drive real PodVolumeBackups and PodVolumeRestores on kubelet-shaped
//! directories.
//!
//! Runs only when `PODVAULT_E2E_APISERVER_KUBECONFIG` names an admin kubeconfig of a bare
//! API server (kube-apiserver + etcd, nothing else) it may write to (skipped otherwise, and
//! says so). On a cluster with nodes, use `tests/tests/e2e_node.rs` (`PODVAULT_E2E_KUBECONFIG`):
//! this test invents nodes and fakes what a kubelet does, which a real controller-manager
//! and kubelet undo. Needs `kubectl` on `PATH` and the binaries
//! built (`cargo build -p podvault -p podvault-controller`; `cargo test --workspace` builds
//! both).
//!
//! What the cluster must offer: an API server (and etcd). Nothing else is assumed: there is
//! no scheduler, kubelet or controller-manager, so the test sets `spec.nodeName` itself,
//! patches pod status to Running, lays out `<kubelet-root>/pods/<uid>/volumes/…` on disk,
//! creates the namespace's `default` ServiceAccount, and deletes pods with grace period 0.
//! Every name is unique per run (namespace, nodes, BackupRepository, Lease), so runs never
//! see each other's objects even where namespaces never finish deleting.
//!
//! Setup: `deploy/manifests/00-namespace.yaml`, `deploy/crds/crds.yaml` and
//! `deploy/manifests/10-rbac.yaml` are applied as shipped; the agent and the controller get
//! kubeconfigs holding the API server, its CA and a TokenRequest token of their
//! ServiceAccount. Steps (printed one per line, for pasting into notes):
//! 1. both binaries start (HTTPS, SA tokens) without panicking;
//! 2. a two-volume pod on a fresh BackupRepository at its first scheduled tick;
//! 3. a PVB created with `kubectl create -f` is routed to its node and completes;
//! 4. a PVR in place (Clean) restores the first snapshot byte-identical, with its marker;
//! 5. a PVR into a new pod held by `podvault restore-wait`;
//! 6. cancel (`spec.cancel`) of a running backup;
//! 7. delete of a running backup (the object goes, no snapshot is written);
//! 8. agent killed (SIGKILL) mid-backup and restarted: the backup completes, `Resumed`;
//! 9. two agents on two nodes each run only their own node's work;
//! 10. a PVB for a pod on a node without agent stays New and visible;
//! 11. a PVB naming a missing pod fails with `pod_not_found`;
//! 12. pre/post hooks through `pods/exec` (RBAC; on-error Fail and Continue);
//! 13. a pod with only a `backup-command` gets a scheduled dump PVB (`spec.dump`), which the
//!     agent runs through `pods/exec` (no kubelet here: it fails as `dump_failed`, no snapshot).
//! 14. a PVR with `spec.dump` is routed to the node's agent, finds its snapshot and runs the
//!     pod's declared restore command through `pods/exec` (no kubelet: `restore_command_failed`).

use std::fs;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use podvault_tests::{assert_same_tree, fill, generate_tree, podvault_bin};
use rand::SeedableRng;
use serde_json::{json, Value};

/// Environment variable naming the admin kubeconfig.
const KUBECONFIG_ENV: &str = "PODVAULT_E2E_APISERVER_KUBECONFIG";
/// Label carrying an operation's node.
const LABEL_NODE: &str = "podvault.dev/node";
/// The agent's finalizer on operations.
const FINALIZER: &str = "podvault.dev/cancel-on-delete";
/// Namespace of the shipped deployment.
const PODVAULT_NS: &str = "podvault";
/// Size of each "big" volume: incompressible data, so a backup of it runs for seconds.
const BIG_MIB: usize = 512;
/// Polling interval of every wait.
const POLL: Duration = Duration::from_millis(500);
/// Polling interval while catching a running operation (its window is a few seconds).
const POLL_FAST: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------

/// A child process that is killed (SIGKILL) and reaped when dropped. Its stdout and stderr
/// go to `log` (unless taken for parsing).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    /// Exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// SIGKILL and reap (no-op when it has exited).
    fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// True when `GET /healthz` on 127.0.0.1:`port` answers 200.
fn healthz_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200") || buf.starts_with(b"HTTP/1.0 200")
}

/// `podvault-controller`, next to the `podvault` binary.
fn controller_bin() -> PathBuf {
    let bin = podvault_bin().with_file_name("podvault-controller");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p podvault-controller` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// Now as RFC 3339 (UTC, seconds).
fn rfc3339_now() -> String {
    rfc3339(unix_now().as_secs())
}

/// Seconds since the epoch as RFC 3339 (UTC, seconds).
fn rfc3339(secs: u64) -> String {
    let secs = secs as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock")
}

fn s(v: &Value, pointer: &str) -> String {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn phase_of(v: &Value) -> String {
    let p = s(v, "/status/phase");
    if p.is_empty() {
        "New".into()
    } else {
        p
    }
}

fn has_finalizer(v: &Value) -> bool {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|f| f == FINALIZER))
}

fn node_label(v: &Value) -> Option<String> {
    v.pointer("/metadata/labels")
        .and_then(|l| l.get(LABEL_NODE))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
}

/// True when `log` mentions object `name` as a whole word (object names are `[a-z0-9-]`).
fn mentions(log: &str, name: &str) -> bool {
    log.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .any(|w| w == name)
}

/// Regular files (not hidden temporaries) under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .count()
}

/// The kubelet's directory of an emptyDir volume.
fn empty_dir(root: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    root.join("pods")
        .join(pod_uid)
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(volume)
}

/// Writes `mib` MiB of seeded incompressible data as 64 MiB files.
fn big_volume(dir: &Path, seed: u64, mib: usize) {
    fs::create_dir_all(dir).expect("big volume dir");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut left = mib;
    let mut n = 0;
    while left > 0 {
        let part = left.min(64);
        fs::write(
            dir.join(format!("blob-{n:02}.bin")),
            fill(&mut rng, part << 20, false),
        )
        .expect("big file");
        left -= part;
        n += 1;
    }
}

// ---------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------

/// One run: the cluster, unique names, temporary directories and child processes. Dropping
/// it kills every child (and, on failure, prints their logs), then removes the run's pods.
struct Harness {
    admin: PathBuf,
    deploy: PathBuf,
    run: String,
    ns: String,
    repo_name: String,
    secret_name: String,
    work: tempfile::TempDir,
    repo_dir: PathBuf,
    agent_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    procs: Vec<Proc>,
    /// Label of the current step (`setup`, `1`, `2`, …).
    step: String,
    started: Instant,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        for p in &mut self.procs {
            p.kill();
        }
        if failed {
            // Keep the logs (not the gigabytes of volumes and repository).
            let kept = std::env::temp_dir().join(format!("podvault-e2e-{}-logs", self.run));
            let _ = fs::create_dir_all(&kept);
            println!("\n===== e2e_cluster FAILED: logs of the child processes =====");
            for p in &self.procs {
                let file = p.log.file_name().map(|n| kept.join(n));
                if let Some(file) = &file {
                    let _ = fs::copy(&p.log, file);
                }
                println!(
                    "----- {} (exit: {}; full log {}) -----\n{}",
                    p.name,
                    p.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "running".into()),
                    file.unwrap_or_default().display(),
                    tail(&p.log_text(), 150)
                );
            }
            println!(
                "objects are left in namespace {} (pods are deleted); logs kept in {}",
                self.ns,
                kept.display()
            );
        }
        // Pods: force-deleted always (a future controller must not schedule for them).
        let _ = self.kubectl(
            &[
                "delete",
                "pods",
                "--all",
                "-n",
                &self.ns,
                "--grace-period=0",
                "--force",
                "--wait=false",
            ],
            None,
        );
        if !failed {
            let _ = self.kubectl(&["delete", "namespace", &self.ns, "--wait=false"], None);
            let _ = self.kubectl(
                &[
                    "delete",
                    "backuprepository",
                    &self.repo_name,
                    "--wait=false",
                ],
                None,
            );
            let _ = self.kubectl(
                &[
                    "delete",
                    "secret",
                    &self.secret_name,
                    "-n",
                    PODVAULT_NS,
                    "--wait=false",
                ],
                None,
            );
        }
    }
}

impl Harness {
    fn new(admin: PathBuf) -> Harness {
        let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let work = tempfile::Builder::new()
            .prefix("podvault-e2e-")
            .tempdir()
            .expect("tempdir");
        let repo_dir = work.path().join("repo");
        Harness {
            admin,
            deploy: Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy"),
            ns: format!("e2e-{run}"),
            repo_name: format!("e2e-{run}"),
            secret_name: format!("e2e-{run}-password"),
            agent_kubeconfig: work.path().join("agent.kubeconfig"),
            controller_kubeconfig: work.path().join("controller.kubeconfig"),
            run,
            work,
            repo_dir,
            procs: Vec::new(),
            step: String::new(),
            started: Instant::now(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    fn node(&self, letter: &str) -> String {
        format!("node-{letter}-{}", self.run)
    }

    /// Prints the start of step `id` (`setup` or the scenario number).
    fn step(&mut self, id: &str, what: &str) {
        self.step = id.to_string();
        println!(
            "[{:6.1}s] step {id}: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Prints a result line of the current step.
    fn result(&self, what: &str) {
        println!(
            "[{:6.1}s] step {}: {what}",
            self.started.elapsed().as_secs_f64(),
            self.step
        );
    }

    // ----- kubectl -----

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        podvault_tests::kube::Kubectl::new(self.admin.clone()).run(args, stdin)
    }

    /// kubectl that must succeed; returns stdout.
    fn k(&self, args: &[&str]) -> String {
        self.k_in(args, None)
    }

    fn k_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({:?}):\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            stderr_without_skew(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl create -f -` of a JSON object.
    fn create(&self, obj: &Value) -> String {
        self.k_in(&["create", "-f", "-"], Some(&obj.to_string()))
    }

    /// The object as JSON; `None` when it does not exist.
    fn get(&self, kind: &str, name: &str, ns: Option<&str>) -> Option<Value> {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args, None);
        if !out.status.success() {
            let err = stderr_without_skew(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl {args:?} failed: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
    }

    /// The object as YAML, for failure messages.
    fn yaml(&self, kind: &str, name: &str, ns: Option<&str>) -> String {
        let mut args = vec!["get", kind, name, "-o", "yaml"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        let out = self.kubectl(&args, None);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_without_skew(&out.stderr)
        )
    }

    /// Polls `probe` every `interval` until it returns `Some`; on timeout fails with
    /// `what` and the YAML of `kind/name`.
    fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        obj: (&str, &str, Option<&str>),
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} {} is now:\n{}",
                    obj.0,
                    obj.1,
                    self.yaml(obj.0, obj.1, obj.2)
                );
            }
            std::thread::sleep(interval);
        }
    }

    /// Waits until the operation `kind/name` in the test namespace reaches `want`; fails at
    /// once when it reaches another final phase (or is deleted).
    fn wait_phase(&self, kind: &str, name: &str, want: &str, timeout: Duration) -> Value {
        self.wait_phase_every(kind, name, want, timeout, POLL)
    }

    fn wait_phase_every(
        &self,
        kind: &str,
        name: &str,
        want: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Value {
        let ns = self.ns.clone();
        self.wait_for(
            &format!("{kind} {name} to reach {want}"),
            timeout,
            interval,
            (kind, name, Some(&ns)),
            || {
                let v = self
                    .get(kind, name, Some(&ns))
                    .unwrap_or_else(|| panic!("{kind} {ns}/{name} is gone (waiting for {want})"));
                let phase = phase_of(&v);
                if phase == want {
                    return Some(v);
                }
                let finished = ["Completed", "Failed", "Canceled"].contains(&phase.as_str());
                assert!(
                    !finished,
                    "{kind} {ns}/{name} ended {phase}, expected {want}:\n{}",
                    self.yaml(kind, name, Some(&ns))
                );
                None
            },
        )
    }

    // ----- processes -----

    fn proc_mut(&mut self, name: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"))
    }

    /// Waits until process `name` is healthy (`/healthz` on `port` and `ready_line` in its
    /// log); fails with its log when it exits or panics.
    fn wait_started(&mut self, name: &str, port: u16, ready_line: &str) -> Duration {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let p = self.proc_mut(name);
            if let Some(st) = p.exited() {
                panic!(
                    "{name} exited ({st}) during start-up:\n{}",
                    tail(&p.log_text(), 60)
                );
            }
            let log = p.log_text();
            assert!(
                !log.contains("panicked"),
                "{name} panicked during start-up:\n{}",
                tail(&log, 60)
            );
            if healthz_ok(port) && log.contains(ready_line) {
                return t0.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become ready in 60 s (want /healthz on {port} and {ready_line:?} in its log):\n{}",
                tail(&log, 60)
            );
            std::thread::sleep(POLL);
        }
    }

    fn base_env(cmd: &mut Command, kubeconfig: &Path) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("PODVAULT_LOG", "info")
            .env("RUST_LOG", "info");
    }

    /// Starts `podvault agent` for `node` as process `name`; returns the start-up time.
    fn start_agent(&mut self, name: &str, node: &str, root: &Path, identity: &str) -> Duration {
        fs::create_dir_all(root.join("pods")).expect("kubelet root");
        let port = free_port();
        let mut cmd = Command::new(podvault_bin());
        Self::base_env(&mut cmd, &self.agent_kubeconfig);
        cmd.env("POD_NAME", identity)
            .arg("agent")
            .arg("--node")
            .arg(node)
            .arg("--kubelet-root")
            .arg(root)
            .args(["--namespace", PODVAULT_NS])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--progress-interval-secs", "1"])
            .args(["--default-repository", &self.repo_name])
            .arg("--allow-exec");
        let incarnation = self.procs.iter().filter(|p| p.name == name).count();
        let log = self.path(&format!("{name}.{incarnation}.log"));
        self.procs.push(Proc::spawn(name, cmd, log));
        self.wait_started(name, port, "podvault agent starting")
    }

    fn start_controller(&mut self) -> Duration {
        let port = free_port();
        let mut cmd = Command::new(controller_bin());
        Self::base_env(&mut cmd, &self.controller_kubeconfig);
        cmd.arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--lease-namespace", PODVAULT_NS])
            .args([
                "--lease-name",
                &format!("podvault-controller-e2e-{}", self.run),
            ])
            .args(["--identity", &format!("e2e-controller-{}", self.run)])
            .args(["--default-repository", &self.repo_name])
            .args(["--sweep-interval-secs", "5"]);
        let log = self.path("controller.log");
        self.procs.push(Proc::spawn("controller", cmd, log));
        self.wait_started("controller", port, "leading")
    }

    /// Starts `kubectl get <kind> -w` in the test namespace, recording every version seen.
    fn watch(&mut self, kind: &str) -> Arc<Mutex<Vec<Value>>> {
        let name = format!("watch-{kind}");
        let log = self.path(&format!("{name}.log"));
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(["get", kind, "-n", &self.ns, "--watch", "-o", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(&log).expect("log")))
            .spawn()
            .expect("kubectl watch");
        let stdout = child.stdout.take().expect("stdout");
        self.procs.push(Proc {
            name,
            child,
            log,
            status: None,
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let de = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for v in de.into_iter::<Value>() {
                match v {
                    Ok(v) => sink.lock().expect("watch lock").push(v),
                    Err(_) => break,
                }
            }
        });
        seen
    }

    // ----- pods -----

    /// Creates a pod on `node` with emptyDir `volumes`; returns its uid.
    fn create_pod(&self, name: &str, node: &str, volumes: &[&str], annotations: Value) -> String {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns, "annotations": annotations},
            "spec": {
                "nodeName": node,
                "automountServiceAccountToken": false,
                "terminationGracePeriodSeconds": 0,
                "containers": [{
                    "name": "app",
                    "image": "registry.k8s.io/pause:3.10",
                    "volumeMounts": volumes.iter()
                        .map(|v| json!({"name": v, "mountPath": format!("/{v}")}))
                        .collect::<Vec<_>>(),
                }],
                "volumes": volumes.iter()
                    .map(|v| json!({"name": v, "emptyDir": {}}))
                    .collect::<Vec<_>>(),
            }
        });
        self.create(&pod);
        let v = self
            .get("pod", name, Some(&self.ns))
            .expect("pod just created");
        s(&v, "/metadata/uid")
    }

    /// Marks a pod Running and Ready, as its kubelet would.
    fn pod_running(&self, name: &str) {
        let patch = json!({"status": {
            "phase": "Running",
            "startTime": rfc3339_now(),
            "conditions": [{"type": "Ready", "status": "True"}],
        }});
        self.k(&[
            "patch",
            "pod",
            name,
            "-n",
            &self.ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }

    fn pvb(&self, name: &str, pod: &str, volume: &str) -> Value {
        json!({
            "apiVersion": "podvault.dev/v1alpha1",
            "kind": "PodVolumeBackup",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"pod": pod, "volume": volume, "repository": self.repo_name},
        })
    }

    fn snapshots(&self) -> usize {
        count_files(&self.repo_dir.join("snapshots"))
    }

    /// Versions of `name` a watch recorded.
    fn history(seen: &Arc<Mutex<Vec<Value>>>, name: &str) -> Vec<Value> {
        seen.lock()
            .expect("watch lock")
            .iter()
            .filter(|v| s(v, "/metadata/name") == name)
            .cloned()
            .collect()
    }

    /// Every process still running and no log with a panic.
    fn assert_no_panics(&mut self) {
        for p in &self.procs {
            let log = p.log_text();
            assert!(
                !log.contains("panicked"),
                "{} panicked:\n{}",
                p.name,
                tail(&log, 80)
            );
        }
    }
}

fn stderr_without_skew(err: &[u8]) -> String {
    String::from_utf8_lossy(err)
        .lines()
        .filter(|l| !l.contains("version difference between client"))
        .map(|l| format!("{l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

#[test]
fn podvault_against_a_real_api_server() {
    let Some(admin) = std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) else {
        println!("e2e_cluster: skipped (set PODVAULT_E2E_APISERVER_KUBECONFIG to an admin kubeconfig of a bare API server)");
        return;
    };
    let admin = PathBuf::from(admin);
    assert!(
        admin.is_file(),
        "{KUBECONFIG_ENV}={} is not a file",
        admin.display()
    );
    // Both binaries must exist before anything is created in the cluster.
    let _ = (podvault_bin(), controller_bin());
    let mut h = Harness::new(admin);
    println!(
        "e2e_cluster: run {} (namespace {}, BackupRepository {}, work dir {})",
        h.run,
        h.ns,
        h.repo_name,
        h.work.path().display()
    );

    setup(&mut h);
    let node_a = h.node("a");
    let root_a = h.path("kubelet-a");

    // ----- 1 -----
    h.step(
        "1",
        "agent and controller start over HTTPS as their ServiceAccounts",
    );
    let t_agent = h.start_agent("agent-a", &node_a, &root_a, "agent-a");
    let t_ctrl = h.start_controller();
    h.result(&format!(
        "agent ready in {:.1}s, controller leading in {:.1}s, /healthz 200, no panic",
        t_agent.as_secs_f64(),
        t_ctrl.as_secs_f64()
    ));

    let pvbs = h.watch("podvolumebackups");
    let pvrs = h.watch("podvolumerestores");

    // ----- 2 -----
    h.step(
        "2",
        "two-volume pod on a fresh BackupRepository at its first scheduled tick",
    );
    assert!(
        !h.repo_dir.join("config").exists(),
        "the repository must not exist yet"
    );
    // Leave at least 8 s before the tick for creating the pod and its directories.
    let into_minute = unix_now().as_secs() % 60;
    if into_minute > 52 {
        std::thread::sleep(Duration::from_secs(61 - into_minute));
    }
    let uid = h.create_pod(
        "app",
        &node_a,
        &["data", "logs"],
        json!({
            "backup.podvault.dev/backup-volumes": "data,logs",
            "backup.podvault.dev/schedule": "* * * * *",
        }),
    );
    let data_dir = empty_dir(&root_a, &uid, "data");
    let logs_dir = empty_dir(&root_a, &uid, "logs");
    let reference = h.path("reference-data");
    generate_tree(&data_dir, 0xe2e1, 2 << 20);
    generate_tree(&reference, 0xe2e1, 2 << 20);
    generate_tree(&logs_dir, 0xe2e2, 256 << 10);
    h.pod_running("app");
    let now = unix_now().as_secs();
    let tick = now - now % 60 + 60;
    h.result(&format!(
        "pod app (uid {uid}) Running on {node_a}; waiting {}s for the tick at :00",
        tick - now
    ));
    let tick_at = Instant::now() + Duration::from_secs(tick - now);
    let ns = h.ns.clone();
    let scheduled: Vec<String> = h.wait_for(
        "two scheduled PodVolumeBackups",
        Duration::from_secs(tick - now + 60),
        POLL,
        ("pod", "app", Some(&ns)),
        || {
            let list: Value =
                serde_json::from_str(&h.k(&["get", "pvb", "-n", &ns, "-o", "json"])).ok()?;
            let names: Vec<String> = list["items"]
                .as_array()?
                .iter()
                .filter(|v| s(v, "/spec/pod") == "app")
                .map(|v| s(v, "/metadata/name"))
                .collect();
            (names.len() >= 2).then_some(names)
        },
    );
    assert_eq!(
        scheduled.len(),
        2,
        "one PVB per volume at the first tick: {scheduled:?}"
    );
    let mut done = Vec::new();
    for name in &scheduled {
        done.push(h.wait_phase("pvb", name, "Completed", Duration::from_secs(180)));
    }
    let took = Instant::now().saturating_duration_since(tick_at);
    let mut volumes: Vec<String> = done.iter().map(|v| s(v, "/spec/volume")).collect();
    volumes.sort();
    assert_eq!(volumes, ["data", "logs"], "one PVB per listed volume");
    for (name, v) in scheduled.iter().zip(&done) {
        assert_eq!(
            node_label(v).as_deref(),
            Some(node_a.as_str()),
            "PVB {name} must carry {LABEL_NODE}={node_a}:\n{}",
            h.yaml("pvb", name, Some(&ns))
        );
        let versions = Harness::history(&pvbs, name);
        let first = versions
            .first()
            .unwrap_or_else(|| panic!("the watch saw no version of PVB {name}"));
        assert!(
            has_finalizer(first),
            "PVB {name} must be created with finalizer {FINALIZER}; first version seen:\n{first:#}"
        );
        assert_eq!(s(v, "/status/node"), node_a, "status.node of {name}");
        assert_eq!(
            s(v, "/metadata/annotations/podvault.dev~1scheduled-for"),
            rfc3339(tick),
            "PVB {name} must be for the first tick after the pod started"
        );
    }
    let data_pvb = done
        .iter()
        .find(|v| s(v, "/spec/volume") == "data")
        .expect("data PVB");
    let first_snapshot = s(data_pvb, "/status/snapshotId");
    assert!(
        !first_snapshot.is_empty(),
        "Completed PVB has no snapshotId"
    );
    let repo = h
        .get("backuprepository", &h.repo_name, None)
        .expect("BackupRepository");
    assert_eq!(
        repo.pointer("/status/initialized"),
        Some(&Value::Bool(true)),
        "BackupRepository status.initialized:\n{}",
        h.yaml("backuprepository", &h.repo_name, None)
    );
    let ready = condition(&repo, "Ready").map(|c| s(c, "/status"));
    assert_eq!(
        ready.as_deref(),
        Some("True"),
        "BackupRepository condition Ready:\n{}",
        h.yaml("backuprepository", &h.repo_name, None)
    );
    let keys = count_files(&h.repo_dir.join("keys"));
    assert_eq!(keys, 1, "exactly one key in the fresh repository");
    let snapshots = h.snapshots();
    assert_eq!(snapshots, 2, "one snapshot per completed PVB");
    h.result(&format!(
        "both PVBs Completed {:.1}s after the tick ({}), labelled {LABEL_NODE}={node_a}, created with the finalizer; BackupRepository initialized=true Ready=True; keys/ has {keys} file; {snapshots} snapshots",
        took.as_secs_f64(),
        scheduled.join(", "),
    ));
    // No more scheduled backups: later steps count snapshots.
    h.k(&[
        "annotate",
        "pod",
        "app",
        "-n",
        &ns,
        "backup.podvault.dev/backup-volumes-",
        "backup.podvault.dev/schedule-",
    ]);

    // ----- 3 -----
    h.step("3", "kubectl create -f a PVB without node label");
    let manual = h.path("manual-pvb.yaml");
    fs::write(
        &manual,
        format!(
            "apiVersion: podvault.dev/v1alpha1\nkind: PodVolumeBackup\nmetadata:\n  name: manual-data\n  namespace: {ns}\nspec:\n  pod: app\n  volume: data\n  repository: {}\n  tags: [manual]\n",
            h.repo_name
        ),
    )
    .expect("manifest");
    h.k(&["create", "-f", manual.to_str().expect("utf-8 path")]);
    let t0 = Instant::now();
    let v = h.wait_phase("pvb", "manual-data", "Completed", Duration::from_secs(120));
    assert_eq!(
        node_label(&v).as_deref(),
        Some(node_a.as_str()),
        "the controller must label a hand-made PVB with its pod's node:\n{}",
        h.yaml("pvb", "manual-data", Some(&ns))
    );
    let versions = Harness::history(&pvbs, "manual-data");
    assert!(
        versions.first().is_some_and(|v| node_label(v).is_none()),
        "the watch must see manual-data first as created, without {LABEL_NODE}: {:#}",
        Value::Array(versions.clone())
    );
    assert!(
        versions
            .iter()
            .any(|v| has_finalizer(v) && node_label(v).is_some()),
        "no version of manual-data carried both {LABEL_NODE} and {FINALIZER}: {:#}",
        Value::Array(versions.clone())
    );
    let short = s(&v, "/status/snapshot");
    let full = s(&v, "/status/snapshotId");
    assert!(
        short.len() == 8
            && short.bytes().all(|b| b.is_ascii_hexdigit())
            && full.starts_with(&short),
        "status.snapshot must be the 8-hex short id of snapshotId {full:?}, got {short:?}"
    );
    h.result(&format!(
        "labelled {LABEL_NODE}={node_a} with the finalizer by the controller, Completed in {:.1}s, snapshot {short}",
        t0.elapsed().as_secs_f64()
    ));

    // ----- 4 -----
    h.step("4", "PVR in place (Clean) of the first snapshot");
    fs::write(
        data_dir.join("large-text.log"),
        b"overwritten by the application\n",
    )
    .expect("write");
    fs::remove_file(data_dir.join("a/shared.dat")).expect("delete");
    fs::remove_dir_all(data_dir.join("docs")).expect("delete dir");
    fs::write(data_dir.join("a/b/new-file.txt"), b"not in the snapshot").expect("write");
    h.create(&json!({
        "apiVersion": "podvault.dev/v1alpha1",
        "kind": "PodVolumeRestore",
        "metadata": {"name": "inplace", "namespace": ns},
        "spec": {"pod": "app", "volume": "data", "snapshot": {"id": first_snapshot},
                 "mode": "Clean", "repository": h.repo_name},
    }));
    let t0 = Instant::now();
    let v = h.wait_phase("pvr", "inplace", "Completed", Duration::from_secs(120));
    let pvr_uid = s(&v, "/metadata/uid");
    assert_eq!(
        node_label(&v).as_deref(),
        Some(node_a.as_str()),
        "the controller must label a PVR with its pod's node:\n{}",
        h.yaml("pvr", "inplace", Some(&ns))
    );
    let pvr_finalizer = Harness::history(&pvrs, "inplace").iter().any(has_finalizer);
    let marker = data_dir.join(".podvault").join(&pvr_uid);
    let marker_text = fs::read_to_string(&marker)
        .unwrap_or_else(|e| panic!("marker {} not written: {e}", marker.display()));
    fs::remove_dir_all(data_dir.join(".podvault")).expect("remove marker dir");
    assert_same_tree(&reference, &data_dir);
    h.result(&format!(
        "Completed in {:.1}s, labelled {LABEL_NODE}={node_a} (finalizer seen: {pvr_finalizer}), volume byte-identical to the tree backed up, marker .podvault/{pvr_uid} ({})",
        t0.elapsed().as_secs_f64(),
        marker_text.trim()
    ));

    // ----- 5 -----
    h.step("5", "PVR into a new pod held by `podvault restore-wait`");
    let new_uid = h.create_pod("restored", &node_a, &["data"], json!({}));
    let new_dir = empty_dir(&root_a, &new_uid, "data");
    fs::create_dir_all(&new_dir).expect("new volume dir");
    let mut wait_cmd = Command::new(podvault_bin());
    wait_cmd
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg("restore-wait")
        .arg("--dir")
        .arg(&new_dir)
        .args(["--timeout-secs", "120"]);
    let log = h.path("restore-wait.log");
    h.procs.push(Proc::spawn("restore-wait", wait_cmd, log));
    h.create(&json!({
        "apiVersion": "podvault.dev/v1alpha1",
        "kind": "PodVolumeRestore",
        "metadata": {"name": "into-new-pod", "namespace": ns},
        "spec": {"pod": "restored", "volume": "data", "snapshot": {"id": first_snapshot},
                 "repository": h.repo_name},
    }));
    let t0 = Instant::now();
    h.wait_phase("pvr", "into-new-pod", "Completed", Duration::from_secs(120));
    let t_pvr = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = h.proc_mut("restore-wait").exited() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "restore-wait did not exit within 30 s of the PVR completing:\n{}",
            h.proc_mut("restore-wait").log_text()
        );
        std::thread::sleep(POLL);
    };
    assert!(
        status.success(),
        "restore-wait exited {status}:\n{}",
        h.proc_mut("restore-wait").log_text()
    );
    assert!(
        !new_dir.join(".podvault").exists(),
        "restore-wait must remove the marker directory"
    );
    assert_same_tree(&reference, &new_dir);
    h.result(&format!(
        "PVR Completed in {:.1}s, restore-wait exited 0 after {:.1}s, volume byte-identical",
        t_pvr.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    ));

    // ----- 6, 7, 8: big volumes -----
    let big_uid = h.create_pod("big", &node_a, &["big1", "big2", "big3"], json!({}));
    for (n, vol) in ["big1", "big2", "big3"].into_iter().enumerate() {
        big_volume(
            &empty_dir(&root_a, &big_uid, vol),
            0xb16 + n as u64,
            BIG_MIB,
        );
    }
    h.pod_running("big");

    h.step(
        "6",
        &format!("cancel a running backup of a {BIG_MIB} MiB volume"),
    );
    let before = h.snapshots();
    h.create(&h.pvb("cancel-me", "big", "big1"));
    h.wait_phase_every(
        "pvb",
        "cancel-me",
        "InProgress",
        Duration::from_secs(60),
        POLL_FAST,
    );
    let t0 = Instant::now();
    h.k(&[
        "patch",
        "pvb",
        "cancel-me",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"cancel":true}}"#,
    ]);
    let v = h.wait_phase("pvb", "cancel-me", "Canceled", Duration::from_secs(60));
    let t_cancel = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = h.snapshots();
    assert_eq!(after, before, "a canceled backup must not write a snapshot");
    h.result(&format!(
        "Canceled {:.1}s after spec.cancel (reason {:?}, message {:?}); snapshots {before} -> {after}",
        t_cancel.as_secs_f64(),
        s(&v, "/status/reason"),
        s(&v, "/status/message")
    ));

    h.step("7", "delete a running backup");
    let before = h.snapshots();
    h.create(&h.pvb("delete-me", "big", "big2"));
    h.wait_phase_every(
        "pvb",
        "delete-me",
        "InProgress",
        Duration::from_secs(60),
        POLL_FAST,
    );
    let t0 = Instant::now();
    h.k(&["delete", "pvb", "delete-me", "-n", &ns, "--wait=false"]);
    h.wait_for(
        "PVB delete-me to disappear after deletion",
        Duration::from_secs(60),
        POLL,
        ("pvb", "delete-me", Some(&ns)),
        || h.get("pvb", "delete-me", Some(&ns)).is_none().then_some(()),
    );
    let t_gone = t0.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let after = h.snapshots();
    assert_eq!(
        after, before,
        "a backup deleted while running must not write a snapshot"
    );
    let last = Harness::history(&pvbs, "delete-me");
    let last_phase = last.last().map(phase_of).unwrap_or_default();
    h.result(&format!(
        "object gone {:.1}s after `kubectl delete` (last phase seen {last_phase}); snapshots {before} -> {after}",
        t_gone.as_secs_f64()
    ));

    h.step("8", "agent killed (SIGKILL) during a backup and restarted");
    let before = h.snapshots();
    h.create(&h.pvb("resume-me", "big", "big3"));
    h.wait_phase_every(
        "pvb",
        "resume-me",
        "InProgress",
        Duration::from_secs(60),
        POLL_FAST,
    );
    h.proc_mut("agent-a").kill();
    h.result("agent-a killed while resume-me was InProgress");
    let t0 = Instant::now();
    h.start_agent("agent-a", &node_a, &root_a, "agent-a");
    let v = h.wait_phase("pvb", "resume-me", "Completed", Duration::from_secs(180));
    let resumed = condition(&v, "Resumed").cloned();
    assert!(
        resumed.is_some(),
        "a backup resumed after an agent restart must carry a Resumed condition:\n{}",
        h.yaml("pvb", "resume-me", Some(&ns))
    );
    let after = h.snapshots();
    assert_eq!(after, before + 1, "the resumed backup writes one snapshot");
    h.result(&format!(
        "Completed {:.1}s after the restart with condition Resumed ({:?}); snapshots {before} -> {after}",
        t0.elapsed().as_secs_f64(),
        resumed.map(|c| s(&c, "/message")).unwrap_or_default()
    ));

    // ----- 9 -----
    h.step("9", "two agents on two nodes");
    let node_b = h.node("b");
    let root_b = h.path("kubelet-b");
    h.start_agent("agent-b", &node_b, &root_b, "agent-b");
    let uid_pa = h.create_pod("pa", &node_a, &["data"], json!({}));
    let uid_pb = h.create_pod("pb", &node_b, &["data"], json!({}));
    generate_tree(&empty_dir(&root_a, &uid_pa, "data"), 0x9a, 256 << 10);
    generate_tree(&empty_dir(&root_b, &uid_pb, "data"), 0x9b, 256 << 10);
    h.pod_running("pa");
    h.pod_running("pb");
    h.create(&h.pvb("on-a", "pa", "data"));
    h.create(&h.pvb("on-b", "pb", "data"));
    let va = h.wait_phase("pvb", "on-a", "Completed", Duration::from_secs(120));
    let vb = h.wait_phase("pvb", "on-b", "Completed", Duration::from_secs(120));
    for (v, node, agent) in [(&va, &node_a, "agent-a"), (&vb, &node_b, "agent-b")] {
        let name = s(v, "/metadata/name");
        assert_eq!(
            (s(v, "/status/node"), s(v, "/status/agent")),
            (node.to_string(), agent.to_string()),
            "PVB {name} must be run by {agent} on {node}:\n{}",
            h.yaml("pvb", &name, Some(&ns))
        );
        assert_eq!(node_label(v).as_deref(), Some(node.as_str()));
    }
    // Node-scoped watches: an agent never even sees another node's objects.
    let log_a = h.proc_mut("agent-a").log_text();
    let log_b = h.proc_mut("agent-b").log_text();
    assert!(
        mentions(&log_b, "on-b"),
        "agent-b's log does not mention on-b:\n{}",
        tail(&log_b, 40)
    );
    let mut node_a_objects = scheduled.clone();
    node_a_objects.extend(
        [
            "manual-data",
            "inplace",
            "into-new-pod",
            "cancel-me",
            "delete-me",
            "resume-me",
            "on-a",
        ]
        .map(String::from),
    );
    for name in &node_a_objects {
        assert!(
            !mentions(&log_b, name),
            "agent-b (node {node_b}) mentions {name}, an object of node {node_a}:\n{}",
            tail(&log_b, 40)
        );
    }
    assert!(
        !mentions(&log_a, "on-b"),
        "agent-a (node {node_a}) mentions on-b, an object of node {node_b}:\n{}",
        tail(&log_a, 40)
    );
    h.result(&format!(
        "on-a Completed by agent-a on {node_a}, on-b Completed by agent-b on {node_b}; neither agent's log names the other node's objects"
    ));

    // ----- 10 -----
    h.step("10", "a PVB for a pod on a node without agent");
    let node_c = h.node("c");
    h.create_pod("pc", &node_c, &["data"], json!({}));
    h.pod_running("pc");
    h.create(&h.pvb("on-c", "pc", "data"));
    h.wait_for(
        "the controller to label on-c with its node",
        Duration::from_secs(60),
        POLL,
        ("pvb", "on-c", Some(&ns)),
        || {
            h.get("pvb", "on-c", Some(&ns))
                .and_then(|v| node_label(&v))
                .filter(|l| *l == node_c)
        },
    );
    let watch_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_until {
        let v = h.get("pvb", "on-c", Some(&ns)).expect("on-c exists");
        assert_eq!(
            phase_of(&v),
            "New",
            "a PVB for a node without agent must stay New:\n{}",
            h.yaml("pvb", "on-c", Some(&ns))
        );
        std::thread::sleep(POLL);
    }
    for p in h.procs.iter().filter(|p| p.name.starts_with("agent")) {
        assert!(
            !mentions(&p.log_text(), "on-c"),
            "{} mentions on-c, an object of node {node_c}:\n{}",
            p.name,
            tail(&p.log_text(), 40)
        );
    }
    let listing = h.k(&["get", "pvb", "-n", &ns]);
    let line = listing
        .lines()
        .find(|l| l.starts_with("on-c "))
        .unwrap_or_else(|| panic!("`kubectl get pvb` does not list on-c:\n{listing}"))
        .to_string();
    let header = listing.lines().next().unwrap_or_default();
    h.result(&format!(
        "labelled {LABEL_NODE}={node_c}, still New after 10 s, no agent saw it; kubectl get pvb:"
    ));
    println!("    {header}\n    {line}");

    // ----- 11 -----
    h.step("11", "a PVB naming a pod that does not exist");
    h.create(&h.pvb("ghost", "no-such-pod", "data"));
    let v = h.wait_phase("pvb", "ghost", "Failed", Duration::from_secs(60));
    let (reason, message) = (s(&v, "/status/reason"), s(&v, "/status/message"));
    assert_eq!(reason, "pod_not_found", "status.reason of ghost");
    assert!(
        message.contains("no-such-pod"),
        "the message must name the pod: {message:?}"
    );
    h.result(&format!("Failed, reason {reason}, message {message:?}"));

    // ----- 12 -----
    // pods/exec through the real API server, as the agent's ServiceAccount. There is no
    // kubelet behind this API server, so the exec itself cannot reach a container: what is
    // proved is that RBAC lets the agent ask (no Forbidden), that a failed pre hook with
    // on-error Fail fails the backup naming the hook and writes no snapshot, and that with
    // Continue the backup runs and the hook failures are reported.
    h.step(
        "12",
        "pre/post hooks through pods/exec (no kubelet behind this API server)",
    );
    let before = h.snapshots();
    let hooked_uid = h.create_pod(
        "hooked",
        &node_a,
        &["data"],
        json!({
            "pre.hook.backup.podvault.dev/command": r#"["/bin/sh","-c","sync"]"#,
            "pre.hook.backup.podvault.dev/timeout": "20s",
            "post.hook.backup.podvault.dev/command": r#"["/bin/true"]"#,
        }),
    );
    let dir = empty_dir(&root_a, &hooked_uid, "data");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("db"), b"rows").unwrap();
    h.pod_running("hooked");
    h.create(&h.pvb("hook-fail", "hooked", "data"));
    let v = h.wait_phase("pvb", "hook-fail", "Failed", Duration::from_secs(90));
    let (reason, message) = (s(&v, "/status/reason"), s(&v, "/status/message"));
    assert!(
        reason == "hook_failed" || reason == "hook_timeout",
        "status.reason of hook-fail: {reason} ({message})"
    );
    assert!(
        message.contains("pre") && !message.contains("Forbidden") && !message.contains("forbidden"),
        "the message names the pre hook and is not an RBAC refusal: {message:?}"
    );
    assert_eq!(
        h.snapshots(),
        before,
        "a failed pre hook writes no snapshot"
    );
    h.result(&format!(
        "Failed, reason {reason}, message {message:?}; snapshots {before} -> {before}"
    ));
    let continue_uid = h.create_pod(
        "hooked-continue",
        &node_a,
        &["data"],
        json!({
            "pre.hook.backup.podvault.dev/command": r#"["/bin/sh","-c","sync"]"#,
            "pre.hook.backup.podvault.dev/on-error": "Continue",
            "pre.hook.backup.podvault.dev/timeout": "20s",
            "post.hook.backup.podvault.dev/command": r#"["/bin/true"]"#,
            "post.hook.backup.podvault.dev/on-error": "Continue",
        }),
    );
    let dir = empty_dir(&root_a, &continue_uid, "data");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("db"), b"rows").unwrap();
    h.pod_running("hooked-continue");
    h.create(&h.pvb("hook-continue", "hooked-continue", "data"));
    let v = h.wait_phase("pvb", "hook-continue", "Completed", Duration::from_secs(90));
    let message = s(&v, "/status/message");
    assert_eq!(h.snapshots(), before + 1, "on-error Continue backs up");
    h.result(&format!(
        "on-error Continue: Completed, snapshot {}, message {message:?}",
        s(&v, "/status/snapshot")
    ));

    // ----- 13 -----
    // A logical dump scheduled by the controller: a pod with only a backup-command gets one
    // PodVolumeBackup per tick with spec.dump, and no volume of it is backed up. The agent
    // runs the command through pods/exec; with no kubelet behind this API server the exec
    // cannot complete, so what is proved is the scheduling, the dispatch to the dump path
    // (not a volume backup), RBAC, and that an incomplete dump fails and writes no snapshot.
    h.step(
        "13",
        "a scheduled logical dump (backup-command) through pods/exec",
    );
    let before = h.snapshots();
    h.create_pod(
        "pg",
        &node_a,
        &["data"],
        json!({
            "backup.podvault.dev/backup-command": "pg_dumpall -U postgres",
            "backup.podvault.dev/backup-command-filename": "all.sql",
            "backup.podvault.dev/backup-command-timeout": "20s",
            "backup.podvault.dev/restore-command": "[\"psql\",\"-U\",\"postgres\"]",
            "backup.podvault.dev/schedule": "* * * * *",
        }),
    );
    h.pod_running("pg");
    let dumps: Vec<Value> = h.wait_for(
        "the controller to create the dump's PodVolumeBackup",
        Duration::from_secs(90),
        POLL,
        ("pod", "pg", Some(&ns)),
        || {
            let list: Value =
                serde_json::from_str(&h.k(&["get", "pvb", "-n", &ns, "-o", "json"])).ok()?;
            let mine: Vec<Value> = list["items"]
                .as_array()?
                .iter()
                .filter(|v| s(v, "/spec/pod") == "pg")
                .cloned()
                .collect();
            (!mine.is_empty()).then_some(mine)
        },
    );
    assert!(
        dumps
            .iter()
            .all(|v| v["spec"]["dump"] == json!(true) && s(v, "/spec/volume") == "all.sql"),
        "only the dump is scheduled, with spec.dump: {dumps:?}"
    );
    let name = s(&dumps[0], "/metadata/name");
    let v = h.wait_phase("pvb", &name, "Failed", Duration::from_secs(90));
    let (reason, message) = (s(&v, "/status/reason"), s(&v, "/status/message"));
    assert_eq!(reason, "dump_failed", "status.reason of {name}: {message}");
    assert!(
        message.contains("pg_dumpall")
            && message.contains("no snapshot")
            && !message.to_lowercase().contains("forbidden"),
        "the message names the command, says no snapshot was written, and is not an RBAC \
         refusal: {message:?}"
    );
    assert_eq!(s(&v, "/status/series"), format!("{ns}/pod/pg/all.sql"));
    assert_eq!(
        h.snapshots(),
        before,
        "an incomplete dump writes no snapshot"
    );
    h.result(&format!(
        "{name}: spec.dump true, volume all.sql; Failed, reason {reason}, message {message:?}; snapshots {before} -> {before}"
    ));
    h.k(&[
        "annotate",
        "pod",
        "pg",
        "-n",
        &ns,
        "backup.podvault.dev/backup-command-",
    ]);

    // ----- 14 -----
    // The way back: a PodVolumeRestore with spec.dump streams a file of a snapshot into a
    // restore command in the pod. Again no kubelet: what is proved is the routing to the
    // node's agent, the snapshot lookup, RBAC, and that a command that could not take the
    // whole input fails the restore with reason restore_command_failed.
    h.step(
        "14",
        "a PodVolumeRestore with spec.dump through pods/exec (no kubelet behind this API server)",
    );
    h.create(&json!({
        "apiVersion": "podvault.dev/v1alpha1",
        "kind": "PodVolumeRestore",
        "metadata": {"name": "dump-back", "namespace": ns},
        "spec": {"pod": "pg", "volume": "large-text.log", "snapshot": {"id": first_snapshot},
                 "repository": h.repo_name,
                 "dump": {"timeout": "20s"}},
    }));
    let v = h.wait_phase("pvr", "dump-back", "Failed", Duration::from_secs(90));
    let (reason, message) = (s(&v, "/status/reason"), s(&v, "/status/message"));
    assert_eq!(reason, "restore_command_failed", "status.reason: {message}");
    assert!(
        message.contains("psql") && !message.to_lowercase().contains("forbidden"),
        "the message names the command and is not an RBAC refusal: {message:?}"
    );
    assert_eq!(s(&v, "/status/snapshotId"), first_snapshot);
    assert_eq!(node_label(&v).as_deref(), Some(node_a.as_str()));
    h.result(&format!(
        "routed to {node_a}, snapshot {}, Failed, reason {reason}, message {message:?}",
        &first_snapshot[..8]
    ));

    h.assert_no_panics();
    let alive: Vec<String> = h
        .procs
        .iter_mut()
        .filter(|p| p.name.starts_with("agent") || p.name == "controller")
        .filter_map(|p| p.exited().is_none().then(|| p.name.clone()))
        .collect();
    println!(
        "e2e_cluster: all steps passed in {:.1}s (running at the end: {})",
        h.started.elapsed().as_secs_f64(),
        alive.join(", ")
    );
}

/// Applies the shipped namespace, CRDs and RBAC; writes the ServiceAccount kubeconfigs;
/// creates the test namespace, the password Secret and a fresh BackupRepository.
fn setup(h: &mut Harness) {
    h.step("setup", "apply deploy/ namespace, CRDs and RBAC");
    let mut warnings = Vec::new();
    for file in [
        "manifests/00-namespace.yaml",
        "crds/crds.yaml",
        "manifests/10-rbac.yaml",
    ] {
        let path = h.deploy.join(file);
        let out = h.kubectl(&["apply", "-f", path.to_str().expect("utf-8 path")], None);
        let err = stderr_without_skew(&out.stderr);
        assert!(
            out.status.success(),
            "kubectl apply -f {}: {err}",
            path.display()
        );
        warnings.extend(
            err.lines()
                .filter(|l| l.contains("Warning"))
                .map(|l| format!("{file}: {l}")),
        );
    }
    h.k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/podvolumebackups.podvault.dev",
        "crd/podvolumerestores.podvault.dev",
        "crd/backuprepositories.podvault.dev",
    ]);
    h.result(&format!(
        "applied; {}",
        if warnings.is_empty() {
            "no warnings".to_string()
        } else {
            format!("warnings: {}", warnings.join(" | "))
        }
    ));

    h.step("setup", "ServiceAccount tokens and kubeconfigs");
    let cfg: Value = serde_json::from_str(&h.k(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "--flatten",
        "-o",
        "json",
    ]))
    .expect("kubeconfig JSON");
    let cluster = &cfg["clusters"][0]["cluster"];
    let server = s(cluster, "/server");
    assert!(
        server.starts_with("https://"),
        "the admin kubeconfig's server must be HTTPS: {server:?}"
    );
    let ca = s(cluster, "/certificate-authority-data");
    for (sa, path) in [
        ("podvault-agent", h.agent_kubeconfig.clone()),
        ("podvault-controller", h.controller_kubeconfig.clone()),
    ] {
        let token = h
            .k(&["create", "token", sa, "-n", PODVAULT_NS, "--duration=2h"])
            .trim()
            .to_string();
        assert!(!token.is_empty(), "empty token for {sa}");
        let ca_line = if ca.is_empty() {
            "    insecure-skip-tls-verify: false\n".to_string()
        } else {
            format!("    certificate-authority-data: {ca}\n")
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n{ca_line}users:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {sa}\ncurrent-context: e2e\n"
        );
        fs::write(&path, text).expect("write kubeconfig");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    h.result(&format!(
        "tokens for podvault-agent and podvault-controller; server {server}, CA from the admin kubeconfig"
    ));

    h.step("setup", "namespace, password Secret, BackupRepository");
    let ns = h.ns.clone();
    h.k(&["create", "namespace", &ns]);
    // No controller-manager: the namespace's default ServiceAccount must be made by hand.
    h.k(&["create", "serviceaccount", "default", "-n", &ns]);
    h.k(&[
        "create",
        "secret",
        "generic",
        &h.secret_name,
        "-n",
        PODVAULT_NS,
        &format!("--from-literal=password=e2e-{}-password", h.run),
    ]);
    h.create(&json!({
        "apiVersion": "podvault.dev/v1alpha1",
        "kind": "BackupRepository",
        "metadata": {"name": h.repo_name},
        "spec": {
            "backend": {"fs": {"path": h.repo_dir.to_str().expect("utf-8 path")}},
            "passwordSecret": {"name": h.secret_name, "key": "password"},
            "allowedNamespaces": {"names": [ns]},
        },
    }));
    h.result(&format!(
        "namespace {ns}, Secret {PODVAULT_NS}/{}, BackupRepository {} at {}",
        h.secret_name,
        h.repo_name,
        h.repo_dir.display()
    ));
}
