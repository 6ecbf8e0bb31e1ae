//! Hostile namespaces on a real node: the shipped deployment (`deploy/crds/`,
//! `deploy/manifests/`, an image of this build's binaries) on a real Kubernetes node (kubelet,
//! containerd, real pods, real volumes, real `pods/exec`), with two namespaces sharing one
//! S3 repository. Each attack a namespace admin could make must fail and say why, and the
//! victim's snapshots, retention and restores stay untouched:
//!
//! 1. look-alike `spec.tags` (the victim's series, namespace, pod uid) on the attacker's
//!    PodVolumeBackups: refused (`invalid_spec`), and the victim's parent and retention
//!    (`last=2`) see only the victim's own snapshots;
//! 2. the victim's `snapshot.latest: {}` restores the victim's latest; the attacker cannot
//!    restore the victim's snapshot by id (`isolation`);
//! 3. a ServiceAccount that may create PodVolumeRestores but not `pods/exec` cannot run a
//!    command in the victim's pod through `spec.dump.command` (`invalid_spec`, no file
//!    appears); the command the pod declares (`restore-command`) is what runs;
//! 4. a namespace the BackupRepository does not list can neither use it by hand
//!    (`repository_not_allowed`) nor get backups scheduled into it (a `RepositoryNotAllowed`
//!    event, no PodVolumeBackup).
//!
//! Then the everyday flow on the same node, with real pods: 5. a two-volume pod (local PV
//! and emptyDir) backed up at its first scheduled tick; 6. an in-place Clean restore that
//! brings back exactly the snapshot's files; 7. a restore into a new pod held by
//! `podvault restore-wait` (init container of the shipped image); 8. cancel and 9. delete of
//! a running backup (no snapshot); 10. the agent pod deleted during a backup (the PVB
//! completes with exactly one snapshot); 11. pre/post hooks through real `pods/exec`;
//! 12. a real PostgreSQL database dumped and restored with the README's recipe; 13. a PVB
//! naming a missing pod (`pod_not_found`); 14. an `fs` BackupRepository, refused with a
//! clear message until a volume is mounted where it lives, then used; 15. hostPath
//! PersistentVolumes laid out as local-path-provisioner does: refused until their host
//! directory is listed and mounted, then backed up and restored in place (a root-owned file
//! stays root-owned), while a PersistentVolume whose path is a symlink is refused; 16.
//! scheduled maintenance of the shared repository (prune, check, restore drill) run as Jobs
//! of the shipped image, never two at once, recorded in its status and `kubectl get bkrepo`.
//!
//! Runs only when `PODVAULT_E2E_KUBECONFIG` names an admin kubeconfig of such a cluster
//! (`../shared/kcluster/` makes one); skipped otherwise. Needs `kubectl` on `PATH`, `strip`,
//! `ctr` (containerd), `s3s-fs` (`tests/run.sh` installs it), and the image tool
//! (`PODVAULT_E2E_IMAGE_TOOL`, default `../shared/kcluster/images/build_images.py` beside the
//! workspace). The binaries are this build's (`PODVAULT_E2E_BIN_DIR` to use others, e.g.
//! `target/release`); they are stripped into an image tagged as the manifests name it and
//! imported into containerd, and the DaemonSet and Deployment are restarted onto it. The S3
//! server listens on the node's own address (pods cannot reach the host's 127.0.0.1).
//! Steps are printed one per line, for pasting into notes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use podvault_tests::kube::{status, Kubectl};
use podvault_tests::{fill, generate_tree, podvault_bin};
use rand::SeedableRng;
use serde_json::{json, Value};

const KUBECONFIG_ENV: &str = "PODVAULT_E2E_KUBECONFIG";
/// The image the shipped manifests name.
const IMAGE: &str = "ghcr.io/podvault/podvault:0.1.0";
const PODVAULT_NS: &str = "podvault";
const OP_TIMEOUT: Duration = Duration::from_secs(180);
/// The README's PostgreSQL recipe (one database, custom format).
const PG_BACKUP: &str = "pg_dump -U postgres -Fc appdb";
/// Its way back: drop what the dump has and recreate it, in one transaction, failing on
/// the first error.
const PG_RESTORE: &str =
    "pg_restore -U postgres -d appdb --clean --if-exists --single-transaction --exit-on-error";

struct Run {
    kube: Kubectl,
    run: String,
    started: Instant,
    step: String,
    work: tempfile::TempDir,
    s3: Option<Child>,
    s3_endpoint: String,
    bucket: String,
    repo: String,
    victim: String,
    attacker: String,
    outsider: String,
    pv_dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            println!("\n===== e2e_node FAILED: agent and controller logs =====");
            for what in ["ds/podvault-agent", "deploy/podvault-controller"] {
                let out = self.kube.run(
                    &[
                        "logs",
                        "-n",
                        PODVAULT_NS,
                        what,
                        "--tail=60",
                        "--all-containers",
                    ],
                    None,
                );
                println!(
                    "----- {what} -----\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
        for ns in [&self.victim, &self.attacker, &self.outsider] {
            let _ = self
                .kube
                .run(&["delete", "namespace", ns, "--wait=false"], None);
        }
        let _ = self.kube.run(
            &[
                "delete",
                "backuprepository",
                &self.repo,
                &format!("{}-fs", self.repo),
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
        let _ = self.kube.run(
            &[
                "delete",
                "pv",
                "-l",
                &format!("e2e-run={}", self.run),
                "--wait=false",
            ],
            None,
        );
        let _ = self.kube.run(
            &[
                "delete",
                "secret",
                "-n",
                PODVAULT_NS,
                &format!("{}-password", self.repo),
                &format!("{}-s3", self.repo),
                "--wait=false",
            ],
            None,
        );
        if let Some(mut s3) = self.s3.take() {
            let _ = s3.kill();
            let _ = s3.wait();
        }
        let _ = fs::remove_dir_all(&self.pv_dir);
    }
}

impl Run {
    fn step(&mut self, id: &str, what: &str) {
        self.step = id.to_string();
        println!(
            "[{:6.1}s] step {id}: {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    fn result(&self, what: &str) {
        println!(
            "[{:6.1}s] step {}: {what}",
            self.started.elapsed().as_secs_f64(),
            self.step
        );
    }

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Stripped copies of this build's binaries, as an image the manifests name, imported
    /// into containerd.
    fn build_image(&self) {
        if std::env::var_os("PODVAULT_E2E_BIN_DIR").is_none() {
            // `cargo test` of this package does not rebuild the other packages' binaries:
            // build them, so the image is of this source and not of an older build.
            let exe = std::env::current_exe().unwrap();
            let release = exe.ancestors().any(|p| p.ends_with("release"));
            let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            c.current_dir(Self::workspace()).args([
                "build",
                "-q",
                "--bins",
                "-p",
                "podvault",
                "-p",
                "podvault-controller",
            ]);
            if release {
                c.arg("--release");
            }
            assert!(
                c.status().expect("cargo build").success(),
                "building the binaries for the image"
            );
        }
        let bins = std::env::var_os("PODVAULT_E2E_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| podvault_bin().parent().unwrap().to_path_buf());
        let dir = self.work.path().join("bin");
        fs::create_dir_all(&dir).unwrap();
        for b in ["podvault", "podvault-controller"] {
            let src = bins.join(b);
            assert!(
                src.exists(),
                "{} is missing: cargo build -p podvault -p podvault-controller",
                src.display()
            );
            let st = Command::new("strip")
                .arg("--strip-debug")
                .arg(&src)
                .arg("-o")
                .arg(dir.join(b))
                .status()
                .expect("strip");
            assert!(st.success(), "strip {}", src.display());
        }
        let tool = std::env::var_os("PODVAULT_E2E_IMAGE_TOOL")
            .map(PathBuf::from)
            .unwrap_or_else(|| Self::workspace().join("../shared/kcluster/images/build_images.py"));
        let out = Command::new("python3")
            .arg(&tool)
            .args(["podvault"])
            .arg(&dir)
            .args(["--out"])
            .arg(self.work.path())
            .args(["--tag", IMAGE, "--import"])
            .output()
            .expect("run the image tool");
        assert!(
            out.status.success(),
            "{} failed:\n{}{}",
            tool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl apply -f deploy/crds/ && kubectl apply -f deploy/manifests/`, verbatim, then
    /// the workloads restarted onto the image just imported.
    fn install(&self) {
        let deploy = Self::workspace().join("deploy");
        for dir in ["crds", "manifests"] {
            self.kube
                .ok(&["apply", "-f", deploy.join(dir).to_str().unwrap()]);
        }
        self.kube.ok(&[
            "rollout",
            "restart",
            "-n",
            PODVAULT_NS,
            "daemonset/podvault-agent",
            "deployment/podvault-controller",
        ]);
        for what in ["daemonset/podvault-agent", "deployment/podvault-controller"] {
            self.kube.ok(&[
                "rollout",
                "status",
                "-n",
                PODVAULT_NS,
                what,
                "--timeout=180s",
            ]);
        }
    }

    fn node_ip(&self) -> String {
        let nodes: Value =
            serde_json::from_str(&self.kube.ok(&["get", "nodes", "-o", "json"])).unwrap();
        nodes["items"][0]["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .expect("node InternalIP")
            .to_string()
    }

    /// s3s-fs on the node's address, a bucket, the Secrets and the shared BackupRepository
    /// (allowed: victim and attacker).
    fn repository(&mut self) {
        let ip = self.node_ip();
        let port = {
            let l = std::net::TcpListener::bind((ip.as_str(), 0)).expect("bind on the node IP");
            l.local_addr().unwrap().port()
        };
        let root = self.work.path().join("s3");
        fs::create_dir_all(root.join(&self.bucket)).unwrap();
        let s3s = std::env::var_os("PODVAULT_E2E_S3S")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo/bin/s3s-fs")
            });
        let log = fs::File::create(self.work.path().join("s3s.log")).unwrap();
        self.s3 = Some(
            Command::new(&s3s)
                .args(["--host", &ip, "--port", &port.to_string()])
                .args([
                    "--access-key",
                    "e2e-access",
                    "--secret-key",
                    "e2e-secret-key",
                ])
                .arg(&root)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("start {} (tests/run.sh installs it): {e}", s3s.display())
                }),
        );
        self.s3_endpoint = format!("http://{ip}:{port}");
        self.kube.wait(
            "s3s-fs to listen",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || std::net::TcpStream::connect((ip.as_str(), port)).ok(),
        );
        let repo = &self.repo;
        self.kube.apply(&format!(
            "apiVersion: v1
kind: Secret
metadata: {{name: {repo}-password, namespace: {PODVAULT_NS}}}
stringData: {{password: e2e-shared-password}}
---
apiVersion: v1
kind: Secret
metadata: {{name: {repo}-s3, namespace: {PODVAULT_NS}}}
stringData: {{AWS_ACCESS_KEY_ID: e2e-access, AWS_SECRET_ACCESS_KEY: e2e-secret-key}}
---
apiVersion: podvault.dev/v1alpha1
kind: BackupRepository
metadata: {{name: {repo}}}
spec:
  backend:
    s3: {{endpoint: '{}', bucket: {}, region: us-east-1, pathStyle: true}}
  passwordSecret: {{name: {repo}-password, key: password}}
  credentialsSecret: {{name: {repo}-s3}}
  allowedNamespaces: {{names: [{}, {}]}}
",
            self.s3_endpoint, self.bucket, self.victim, self.attacker
        ));
    }

    /// The repository's snapshots of `series`, read on the host with the CLI (`--json`).
    fn snapshots(&self, series: &str) -> Vec<Value> {
        let out = self.cli(&["--json", "snapshots", "--series", series]);
        serde_json::from_slice::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// A busybox pod `app` in `ns` with volume `data` (`source` is its YAML source) and
    /// extra annotations; waits until it runs.
    fn pod(&self, ns: &str, source: &str, annotations: &str) {
        self.pod_named(ns, "app", &[("data", source)], annotations);
    }

    /// A busybox pod `name` in `ns` with `volumes` (name, YAML source), each mounted at
    /// `/<name>`, and extra annotations; waits until it runs.
    fn pod_named(&self, ns: &str, name: &str, volumes: &[(&str, &str)], annotations: &str) {
        let mounts: Vec<String> = volumes
            .iter()
            .map(|(v, _)| format!("{{name: {v}, mountPath: /{v}}}"))
            .collect();
        let sources: Vec<String> = volumes
            .iter()
            .map(|(v, source)| format!("{{name: {v}, {source}}}"))
            .collect();
        self.kube.apply(&format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  annotations: {{{annotations}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: local/busybox:1
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do sleep 3600; done']
    volumeMounts: [{}]
  volumes: [{}]
",
            mounts.join(", "),
            sources.join(", ")
        ));
        let pod = format!("pod/{name}");
        self.kube.ok(&[
            "wait",
            "--for=condition=Ready",
            "-n",
            ns,
            &pod,
            "--timeout=120s",
        ]);
    }

    fn write(&self, ns: &str, text: &str) {
        let (ok, _) = self.kube.exec(
            ns,
            "app",
            &["sh", "-c", &format!("echo {text} > /data/ledger")],
        );
        assert!(ok, "writing /data/ledger in {ns}/app");
    }

    fn read(&self, ns: &str) -> String {
        let (ok, out) = self.kube.exec(ns, "app", &["cat", "/data/ledger"]);
        assert!(ok, "reading /data/ledger in {ns}/app");
        out.trim().to_string()
    }

    /// Creates a PodVolumeBackup or PodVolumeRestore (as `who`) and waits for its end.
    fn operation(&self, who: &Kubectl, kind: &str, ns: &str, name: &str, spec: Value) -> Value {
        let k = if kind == "pvb" {
            "PodVolumeBackup"
        } else {
            "PodVolumeRestore"
        };
        who.create(&json!({
            "apiVersion": "podvault.dev/v1alpha1", "kind": k,
            "metadata": {"name": name, "namespace": ns}, "spec": spec,
        }));
        self.kube.wait_finished(kind, ns, name, OP_TIMEOUT)
    }
}

impl Run {
    /// A local PersistentVolume `e2e-<run>-<name>` at `<pv dir>/<name>` (created) bound to
    /// claim `ns/claim`; returns its host directory.
    fn local_pv(&self, name: &str, ns: &str, claim: &str) -> PathBuf {
        let dir = self.pv_dir.join(name);
        fs::create_dir_all(&dir).unwrap();
        let pv = format!("e2e-{}-{name}", self.run);
        self.kube.apply(&format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}, labels: {{e2e-run: '{}'}}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  local: {{path: {}}}
  claimRef: {{namespace: {ns}, name: {claim}}}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions: [{{key: kubernetes.io/hostname, operator: Exists}}]
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: {pv}
",
            self.run,
            dir.display()
        ));
        dir
    }

    /// Waits until `kind ns/name` is InProgress with some bytes done.
    fn wait_running(&self, kind: &str, ns: &str, name: &str) {
        let what = format!("{kind} {ns}/{name} to run");
        self.kube
            .wait(&what, OP_TIMEOUT, Duration::from_millis(100), || {
                let v = self.kube.get(kind, name, ns)?;
                let phase = status(&v, "phase");
                assert!(
                    !["Completed", "Failed", "Canceled"].contains(&phase.as_str()),
                    "{kind} {name} finished before it could be interrupted: {}",
                    v["status"]
                );
                let done = v["status"]["progress"]["bytesDone"].as_u64().unwrap_or(0);
                (phase == "InProgress" && done > 0).then_some(())
            });
    }

    /// How many snapshots of `series` name the PodVolumeBackup with uid `uid`.
    fn snapshots_of(&self, series: &str, uid: &str) -> usize {
        self.snapshots(series)
            .iter()
            .filter(|s| s["identity"]["operation_uid"].as_str() == Some(uid))
            .count()
    }

    /// `podvault dump <snapshot> <file>` on the host: the file's bytes.
    fn dump(&self, snapshot: &str, file: &str) -> String {
        let out = self.cli(&["dump", snapshot, file]);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The CLI on the host against the shared repository; must succeed; returns stdout.
    fn cli(&self, args: &[&str]) -> Vec<u8> {
        let out = Command::new(podvault_bin())
            .args(args)
            .env("PODVAULT_REPOSITORY", format!("s3://{}", self.bucket))
            .env("PODVAULT_S3_ENDPOINT", &self.s3_endpoint)
            .env("PODVAULT_PASSWORD", "e2e-shared-password")
            .env("AWS_ACCESS_KEY_ID", "e2e-access")
            .env("AWS_SECRET_ACCESS_KEY", "e2e-secret-key")
            .env("PODVAULT_NO_CACHE", "true")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podvault {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// Regular files (content), symlinks (target) and directories below `root`, by relative
/// path, without `.podvault`: what a restore must bring back byte for byte.
fn contents(root: &Path) -> Vec<(String, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e
            .path()
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == ".podvault" || rel.starts_with(".podvault/") {
            continue;
        }
        let t = e.file_type();
        out.push(if t.is_symlink() {
            let target = fs::read_link(e.path()).unwrap();
            (rel, "link", target.into_os_string().into_encoded_bytes())
        } else if t.is_dir() {
            (rel, "dir", Vec::new())
        } else {
            let data = fs::read(e.path()).unwrap();
            (rel, "file", data)
        });
    }
    out
}

/// `got` holds exactly `want`'s entries and bytes (see [`contents`]).
fn assert_same_contents(got: &Path, want: &Path) {
    let (g, w) = (contents(got), contents(want));
    let names = |v: &[(String, &str, Vec<u8>)]| v.iter().map(|e| e.0.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&g),
        names(&w),
        "{} differs from {}",
        got.display(),
        want.display()
    );
    for (a, b) in g.iter().zip(&w) {
        assert!(a == b, "{} differs in {}", got.display(), a.0);
    }
}

fn expect(v: &Value, phase: &str, reason: Option<&str>) -> String {
    let message = status(v, "message");
    assert_eq!(
        status(v, "phase"),
        phase,
        "{}",
        serde_json::to_string_pretty(&v["status"]).unwrap()
    );
    if let Some(r) = reason {
        assert_eq!(status(v, "reason"), r, "{message}");
    }
    message
}

#[test]
fn hostile_namespaces_on_a_real_node() {
    let Some(admin) = std::env::var_os(KUBECONFIG_ENV).filter(|v| !v.is_empty()) else {
        println!("e2e_node: skipped (set PODVAULT_E2E_KUBECONFIG to an admin kubeconfig)");
        return;
    };
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let kc_pv = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kcluster/pv");
    let mut r = Run {
        kube: Kubectl::new(PathBuf::from(admin)),
        started: Instant::now(),
        step: String::new(),
        work: tempfile::Builder::new()
            .prefix("podvault-e2e-node-")
            .tempdir()
            .unwrap(),
        s3: None,
        s3_endpoint: String::new(),
        bucket: format!("e2e-{run_id}"),
        repo: format!("e2e-{run_id}"),
        victim: format!("victim-{run_id}"),
        attacker: format!("attacker-{run_id}"),
        outsider: format!("outsider-{run_id}"),
        pv_dir: std::env::var_os("PODVAULT_E2E_PV_DIR")
            .map(PathBuf::from)
            .unwrap_or(kc_pv)
            .join(format!("e2e-{run_id}")),
        run: run_id,
    };
    let (victim, attacker, outsider, repo) = (
        r.victim.clone(),
        r.attacker.clone(),
        r.outsider.clone(),
        r.repo.clone(),
    );

    r.step(
        "setup",
        "image of this build's binaries, imported into containerd",
    );
    r.build_image();
    r.step(
        "setup",
        "kubectl apply -f deploy/crds/ && kubectl apply -f deploy/manifests/",
    );
    r.install();
    r.result("agent DaemonSet and controller Deployment rolled out");
    r.step(
        "setup",
        "S3 (s3s-fs on the node IP), BackupRepository allowing victim and attacker",
    );
    for ns in [&victim, &attacker, &outsider] {
        r.kube.ok(&["create", "namespace", ns]);
    }
    r.repository();
    r.result(&format!("repository {repo} at {}", r.s3_endpoint));

    r.step(
        "setup",
        "victim pod (emptyDir), attacker pod (local PV), tenant identities",
    );
    r.pod(
        &victim,
        "emptyDir: {}",
        "backup.podvault.dev/backup-command: 'cat /data/ledger', \
         backup.podvault.dev/backup-command-filename: ledger.dump, \
         backup.podvault.dev/restore-command: 'tee /data/from-dump'",
    );
    r.local_pv("attacker", &attacker, "data");
    r.pod(&attacker, "persistentVolumeClaim: {claimName: data}", "");
    // The attacker: admin of its namespace (the built-in `admin` role) plus podvault's kinds.
    // The restorer: may create PodVolumeRestores in the victim's namespace, nothing else.
    for (ns, sa, extra) in [
        (&attacker, "tenant-admin", true),
        (&victim, "restorer", false),
    ] {
        r.kube.apply(&format!(
            "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {sa}-podvault, namespace: {ns}}}
rules:
- apiGroups: [podvault.dev]
  resources: [{}]
  verbs: [create, get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {sa}-podvault, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {sa}-podvault}}
subjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]
",
            if extra {
                "podvolumebackups, podvolumerestores"
            } else {
                "podvolumerestores"
            }
        ));
        if extra {
            r.kube.ok(&[
                "create",
                "rolebinding",
                &format!("{sa}-admin"),
                "-n",
                ns,
                "--clusterrole=admin",
                &format!("--serviceaccount={ns}:{sa}"),
            ]);
        }
    }
    let tenant = r
        .kube
        .as_user(&format!("system:serviceaccount:{attacker}:tenant-admin"));
    let restorer = r
        .kube
        .as_user(&format!("system:serviceaccount:{victim}:restorer"));
    let series = format!("{victim}/pod/app/data");

    // ----- 1 -----
    r.step(
        "1",
        "look-alike spec.tags cannot take the victim's parent or retention slots",
    );
    let backup = |r: &Run, name: &str| {
        r.operation(
            &r.kube,
            "pvb",
            &victim,
            name,
            json!({"pod": "app", "volume": "data", "repository": repo, "retention": "last=2"}),
        )
    };
    r.write(&victim, "v1");
    let v1 = status(&backup(&r, "v1"), "snapshotId");
    r.write(&victim, "v2");
    let v2 = status(&backup(&r, "v2"), "snapshotId");
    r.result(&format!(
        "victim snapshots {} and {} (retention last=2)",
        &v1[..8],
        &v2[..8]
    ));
    let victim_uid = r.kube.get("pod", "app", &victim).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..3 {
        let v = r.operation(
            &tenant,
            "pvb",
            &attacker,
            &format!("forged-{i}"),
            json!({"pod": "app", "volume": "data", "repository": repo, "tags": [
                format!("series={series}"), format!("namespace={victim}"), "pod=app",
                format!("pod-uid={victim_uid}")]}),
        );
        let m = expect(&v, "Failed", Some("invalid_spec"));
        assert!(
            m.contains(&format!("series={series}")) && m.contains("reserved"),
            "{m}"
        );
        if i == 0 {
            r.result(&format!(
                "attacker PVB with the victim's tags: Failed invalid_spec: {m}"
            ));
        }
    }
    r.write(&victim, "v3");
    let b3 = backup(&r, "v3");
    let m3 = expect(&b3, "Completed", None);
    let v3 = status(&b3, "snapshotId");
    assert!(m3.contains("retention removed 1 snapshot(s)"), "{m3}");
    let snaps = r.snapshots(&series);
    let ids: Vec<&str> = snaps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![v2.as_str(), v3.as_str()],
        "the victim keeps its own two"
    );
    assert_eq!(
        snaps[1]["parent"].as_str(),
        Some(v2.as_str()),
        "parent is the victim's own"
    );
    r.result(&format!(
        "victim backup 3: {m3}; series holds {} and {} (parent {})",
        &v2[..8],
        &v3[..8],
        &v2[..8]
    ));

    // ----- 2 -----
    r.step(
        "2",
        "the victim's latest restore restores its own; the attacker cannot read it",
    );
    r.write(&victim, "overwritten");
    let v = r.operation(
        &r.kube,
        "pvr",
        &victim,
        "latest",
        json!({"pod": "app", "volume": "data", "repository": repo, "snapshot": {"latest": {}}}),
    );
    expect(&v, "Completed", None);
    assert_eq!(status(&v, "snapshotId"), v3);
    assert_eq!(r.read(&victim), "v3");
    r.result(&format!(
        "victim PVR latest: Completed from {}, /data/ledger = v3",
        &v3[..8]
    ));
    let v = r.operation(
        &tenant,
        "pvr",
        &attacker,
        "steal",
        json!({"pod": "app", "volume": "data", "repository": repo, "snapshot": {"id": v3}}),
    );
    let m = expect(&v, "Failed", Some("isolation"));
    r.result(&format!(
        "attacker PVR of the victim's snapshot: Failed isolation: {m}"
    ));

    // ----- 3 -----
    r.step(
        "3",
        "no command through the agent without the pod's declaration",
    );
    let can = restorer.run(
        &["auth", "can-i", "create", "pods/exec", "-n", &victim],
        None,
    );
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    let d = r.operation(
        &r.kube,
        "pvb",
        &victim,
        "dump",
        json!({"pod": "app", "volume": "ledger.dump", "dump": true, "repository": repo}),
    );
    expect(&d, "Completed", None);
    let v = r.operation(
        &restorer,
        "pvr",
        &victim,
        "pwn",
        json!({"pod": "app", "volume": "ledger.dump", "repository": repo, "snapshot": {"latest": {}},
               "dump": {"command": ["sh", "-c", "echo pwned > /data/pwned"]}}),
    );
    let m = expect(&v, "Failed", Some("invalid_spec"));
    let (exists, _) = r.kube.exec(&victim, "app", &["test", "-e", "/data/pwned"]);
    assert!(!exists, "/data/pwned must not exist");
    r.result(&format!("restorer (can-i create pods/exec: no) PVR with spec.dump.command: Failed invalid_spec, no /data/pwned: {m}"));
    let v = r.operation(&restorer, "pvr", &victim, "declared", json!({"pod": "app", "volume": "ledger.dump", "repository": repo, "snapshot": {"latest": {}}, "dump": {}}));
    let m = expect(&v, "Completed", None);
    let (_, restored) = r.kube.exec(&victim, "app", &["cat", "/data/from-dump"]);
    assert_eq!(restored.trim(), "v3", "{m}");
    r.result("restorer PVR selecting the pod's declared restore-command: Completed, /data/from-dump = v3");

    // ----- 4 -----
    r.step(
        "4",
        "a namespace the repository does not list cannot use it",
    );
    r.pod(&outsider, "emptyDir: {}", "");
    let v = r.operation(
        &r.kube,
        "pvb",
        &outsider,
        "into-shared",
        json!({"pod": "app", "volume": "data", "repository": repo}),
    );
    let m = expect(&v, "Failed", Some("repository_not_allowed"));
    r.result(&format!("outsider PVB: Failed repository_not_allowed: {m}"));
    r.kube.ok(&[
        "annotate",
        "pod",
        "app",
        "-n",
        &outsider,
        "backup.podvault.dev/backup-volumes=data",
        "backup.podvault.dev/schedule=* * * * *",
        &format!("backup.podvault.dev/repository={repo}"),
    ]);
    let note = r.kube.wait(
        "a RepositoryNotAllowed event on the outsider's pod",
        Duration::from_secs(150),
        Duration::from_secs(2),
        || {
            r.kube
                .list("events.v1.events.k8s.io", &outsider)
                .into_iter()
                .find_map(|e| {
                    (e["reason"] == "RepositoryNotAllowed")
                        .then(|| e["note"].as_str().unwrap_or_default().to_string())
                })
        },
    );
    let scheduled: Vec<Value> = r
        .kube
        .list("pvb", &outsider)
        .into_iter()
        .filter(|p| p["metadata"]["name"] != "into-shared")
        .collect();
    assert!(
        scheduled.is_empty(),
        "no PodVolumeBackup may be scheduled: {scheduled:?}"
    );
    r.result(&format!(
        "outsider annotated pod: event RepositoryNotAllowed, no PVB created: {note}"
    ));

    // ----- 5 -----
    r.step(
        "5",
        "a two-volume pod (local PV + emptyDir) at its first scheduled tick",
    );
    let web_dir = r.local_pv("web", &victim, "web-data");
    generate_tree(&web_dir, 7, 2 << 20);
    let reference = r.work.path().join("web-reference");
    generate_tree(&reference, 7, 2 << 20);
    r.pod_named(
        &victim,
        "web",
        &[
            ("data", "persistentVolumeClaim: {claimName: web-data}"),
            ("scratch", "emptyDir: {}"),
        ],
        &format!(
            "backup.podvault.dev/backup-volumes: 'data,scratch', \
             backup.podvault.dev/schedule: '* * * * *', backup.podvault.dev/repository: {repo}"
        ),
    );
    r.kube.exec(
        &victim,
        "web",
        &["sh", "-c", "echo scratch > /scratch/note"],
    );
    let ticked: Vec<Value> = r.kube.wait(
        "the controller's first-tick PVBs of pod web to complete",
        Duration::from_secs(200),
        Duration::from_secs(1),
        || {
            let mine: Vec<Value> = r
                .kube
                .list("pvb", &victim)
                .into_iter()
                .filter(|p| p["spec"]["pod"] == "web")
                .collect();
            for p in &mine {
                let phase = status(p, "phase");
                assert!(phase != "Failed" && phase != "Canceled", "{}", p["status"]);
            }
            let done: Vec<Value> = mine
                .into_iter()
                .filter(|p| status(p, "phase") == "Completed")
                .collect();
            (done.len() >= 2).then_some(done)
        },
    );
    r.kube.ok(&[
        "annotate",
        "pod",
        "web",
        "-n",
        &victim,
        "backup.podvault.dev/schedule-",
        "backup.podvault.dev/backup-volumes-",
    ]);
    let data_pvb = ticked
        .iter()
        .find(|p| p["spec"]["volume"] == "data")
        .expect("a PVB of volume data");
    let first = status(data_pvb, "snapshotId");
    assert_eq!(status(data_pvb, "series"), format!("{victim}/pvc/web-data"));
    let made: Vec<String> = ticked
        .iter()
        .map(|p| {
            format!(
                "{} ({})",
                p["spec"]["volume"].as_str().unwrap_or_default(),
                status(p, "snapshot")
            )
        })
        .collect();
    r.result(&format!(
        "PVBs created by the controller, Completed: {}",
        made.join(", ")
    ));

    // ----- 6 -----
    r.step("6", "PVR in place (Clean) of the first snapshot");
    fs::write(web_dir.join("stray.txt"), "not in the snapshot").unwrap();
    fs::write(web_dir.join("large-text.log"), "changed").unwrap();
    fs::remove_file(web_dir.join("empty")).unwrap();
    let spec = json!({"pod": "web", "volume": "data", "repository": repo, "mode": "Clean",
                      "snapshot": {"id": first}});
    let v = r.operation(&r.kube, "pvr", &victim, "in-place", spec);
    let m = expect(&v, "Completed", None);
    let p = &v["status"]["progress"];
    assert!(
        p["filesTotal"].as_u64() > Some(0) && p["filesDone"] == p["filesTotal"],
        "{p}"
    );
    assert_same_contents(&web_dir, &reference);
    r.result(&format!(
        "{m}; the volume holds exactly the snapshot's files and bytes"
    ));

    // ----- 7 -----
    r.step("7", "PVR into a new pod held by `podvault restore-wait`");
    r.kube.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web-restored, namespace: {victim}}}
spec:
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: restore-wait
    image: {IMAGE}
    imagePullPolicy: IfNotPresent
    args: [restore-wait, --dir, /data]
    volumeMounts: [{{name: data, mountPath: /data}}]
  containers:
  - name: main
    image: local/busybox:1
    imagePullPolicy: Never
    command: [sh, -c, 'while true; do sleep 3600; done']
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
"
    ));
    let spec = json!({"pod": "web-restored", "volume": "data", "repository": repo,
                      "snapshot": {"id": first}});
    let v = r.operation(&r.kube, "pvr", &victim, "new-pod", spec);
    expect(&v, "Completed", None);
    r.kube.ok(&[
        "wait",
        "--for=condition=Ready",
        "-n",
        &victim,
        "pod/web-restored",
        "--timeout=120s",
    ]);
    let pod = r.kube.get("pod", "web-restored", &victim).unwrap();
    let restored = PathBuf::from(format!(
        "/var/lib/kubelet/pods/{}/volumes/kubernetes.io~empty-dir/data",
        pod["metadata"]["uid"].as_str().unwrap()
    ));
    assert_same_contents(&restored, &reference);
    let marker = restored
        .join(".podvault")
        .join(v["metadata"]["uid"].as_str().unwrap());
    assert!(!marker.exists(), "restore-wait removes the marker");
    r.result("Completed; restore-wait released the pod, which runs on the snapshot's files");

    // ----- 8, 9, 10 -----
    let big_dir = r.local_pv("big", &victim, "big-data");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // 1 GiB of data the repository has not seen: each interrupted backup leaves packs a
    // later one reuses, which would make it too quick to interrupt.
    let fresh = |rng: &mut rand::rngs::StdRng| {
        for i in 0..16 {
            let data = fill(rng, 64 << 20, false);
            fs::write(big_dir.join(format!("blob-{i:02}.bin")), data).unwrap();
        }
    };
    r.pod_named(
        &victim,
        "big",
        &[("data", "persistentVolumeClaim: {claimName: big-data}")],
        "",
    );
    let big_series = format!("{victim}/pvc/big-data");
    let big = |name: &str| {
        json!({"apiVersion": "podvault.dev/v1alpha1", "kind": "PodVolumeBackup",
               "metadata": {"name": name, "namespace": victim},
               "spec": {"pod": "big", "volume": "data", "repository": repo}})
    };
    r.step("8", "cancel (spec.cancel) of a running backup");
    fresh(&mut rng);
    r.kube.create(&big("cancel-me"));
    r.wait_running("pvb", &victim, "cancel-me");
    let cancel = r#"{"spec":{"cancel":true}}"#;
    r.kube.ok(&[
        "patch",
        "pvb",
        "cancel-me",
        "-n",
        &victim,
        "--type=merge",
        "-p",
        cancel,
    ]);
    let v = r
        .kube
        .wait_finished("pvb", &victim, "cancel-me", OP_TIMEOUT);
    let m = expect(&v, "Canceled", None);
    assert!(
        r.snapshots(&big_series).is_empty(),
        "a canceled backup leaves no snapshot"
    );
    r.result(&format!("Canceled: {m}; no snapshot"));

    r.step("9", "delete of a running backup");
    fresh(&mut rng);
    r.kube.create(&big("delete-me"));
    r.wait_running("pvb", &victim, "delete-me");
    r.kube.ok(&[
        "delete",
        "pvb",
        "delete-me",
        "-n",
        &victim,
        "--timeout=120s",
    ]);
    assert!(
        r.snapshots(&big_series).is_empty(),
        "a deleted backup leaves no snapshot"
    );
    r.result("the object went (the agent released its finalizer); no snapshot");

    r.step("10", "the agent pod deleted during a backup");
    fresh(&mut rng);
    r.kube.create(&big("survive"));
    r.wait_running("pvb", &victim, "survive");
    let agent = "app.kubernetes.io/name=podvault-agent";
    r.kube.ok(&[
        "delete",
        "pod",
        "-n",
        PODVAULT_NS,
        "-l",
        agent,
        "--wait=false",
    ]);
    let v = r
        .kube
        .wait_finished("pvb", &victim, "survive", Duration::from_secs(400));
    let m = expect(&v, "Completed", None);
    let uid = v["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        r.snapshots_of(&big_series, &uid),
        1,
        "exactly one snapshot for the PVB"
    );
    r.kube.ok(&[
        "rollout",
        "status",
        "-n",
        PODVAULT_NS,
        "daemonset/podvault-agent",
        "--timeout=180s",
    ]);
    r.result(&format!("Completed with exactly one snapshot: {m}"));

    // ----- 11 -----
    r.step("11", "pre/post hooks through pods/exec");
    r.pod_named(
        &victim,
        "hooked",
        &[("data", "emptyDir: {}")],
        "pre.hook.backup.podvault.dev/command: '[\"sh\",\"-c\",\"echo frozen > /data/pre-hook\"]', \
         post.hook.backup.podvault.dev/command: '[\"sh\",\"-c\",\"echo thawed > /data/post-hook\"]'",
    );
    let spec = json!({"pod": "hooked", "volume": "data", "repository": repo});
    let v = r.operation(&r.kube, "pvb", &victim, "hooked", spec);
    expect(&v, "Completed", None);
    assert_eq!(
        r.dump(&status(&v, "snapshotId"), "pre-hook").trim(),
        "frozen"
    );
    let (_, post) = r.kube.exec(&victim, "hooked", &["cat", "/data/post-hook"]);
    assert_eq!(post.trim(), "thawed");
    r.result("Completed; the pre hook's file is in the snapshot, the post hook ran after it");

    // ----- 12 -----
    r.step(
        "12",
        "PostgreSQL: the README's dump recipe, dumped and restored through pods/exec",
    );
    r.kube.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: pg
  namespace: {victim}
  annotations:
    backup.podvault.dev/backup-command: '{PG_BACKUP}'
    backup.podvault.dev/backup-command-filename: appdb.dump
    backup.podvault.dev/restore-command: '{PG_RESTORE}'
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: postgres
    image: local/postgres:15
    imagePullPolicy: Never
    env: [{{name: POSTGRES_PASSWORD, value: secret}}, {{name: POSTGRES_DB, value: appdb}}]
    readinessProbe:
      exec: {{command: [pg_isready, -U, postgres, -h, 127.0.0.1]}}
      periodSeconds: 2
    volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
  volumes: [{{name: data, emptyDir: {{}}}}]
"
    ));
    r.kube.ok(&[
        "wait",
        "--for=condition=Ready",
        "-n",
        &victim,
        "pod/pg",
        "--timeout=180s",
    ]);
    let sql = |q: &str| {
        let (ok, out) = r.kube.exec(
            &victim,
            "pg",
            &["psql", "-U", "postgres", "-d", "appdb", "-XAtc", q],
        );
        assert!(ok, "psql {q}");
        out.trim().to_string()
    };
    sql(
        "create table orders (id int primary key, item text, qty int); \
         insert into orders select g, 'item-' || g, g % 7 from generate_series(1, 20000) g; \
         create index on orders (item)",
    );
    let digest =
        "select count(*) || ':' || md5(string_agg(id || item || qty, ',' order by id)) from orders";
    let before = sql(digest);
    let spec = json!({"pod": "pg", "volume": "appdb.dump", "dump": true, "repository": repo});
    let v = r.operation(&r.kube, "pvb", &victim, "pg-dump", spec);
    let m = expect(&v, "Completed", None);
    r.result(&format!("dump: {m}"));
    sql(
        "delete from orders where id % 3 = 0; update orders set qty = -1 where id < 100; \
         insert into orders values (999999, 'stray', 1); create table stray (x int)",
    );
    assert_ne!(sql(digest), before);
    let spec = json!({"pod": "pg", "volume": "appdb.dump", "repository": repo,
                      "snapshot": {"latest": {}}, "dump": {}});
    let v = r.operation(&r.kube, "pvr", &victim, "pg-restore", spec);
    let m = expect(&v, "Completed", None);
    let p = &v["status"]["progress"];
    assert!(
        p["bytesTotal"].as_u64() > Some(0) && p["percent"] == 100,
        "{p}"
    );
    assert!(p["filesDone"] == 1 && p["filesTotal"] == 1, "{p}");
    assert_eq!(sql(digest), before, "the table as it was at the dump");
    r.result(&format!(
        "restore: {m}; orders identical to the dump ({before})"
    ));

    // ----- 13 -----
    r.step("13", "a PVB naming a pod that does not exist");
    let spec = json!({"pod": "ghost", "volume": "data", "repository": repo});
    let v = r.operation(&r.kube, "pvb", &victim, "ghost", spec);
    let m = expect(&v, "Failed", Some("pod_not_found"));
    r.result(&format!("Failed pod_not_found: {m}"));

    // ----- 14 -----
    r.step(
        "14",
        "an fs BackupRepository: a clear error without a volume, works with one",
    );
    let fs_repo = format!("{repo}-fs");
    r.kube.apply(&format!(
        "apiVersion: podvault.dev/v1alpha1
kind: BackupRepository
metadata: {{name: {fs_repo}}}
spec:
  backend: {{fs: {{path: /repo}}}}
  passwordSecret: {{name: {repo}-password, key: password}}
  allowedNamespaces: {{names: [{victim}]}}
"
    ));
    let spec = json!({"pod": "app", "volume": "data", "repository": fs_repo});
    let v = r.operation(&r.kube, "pvb", &victim, "fs-without-volume", spec.clone());
    let m = expect(&v, "Failed", Some("repository_config"));
    assert!(
        m.contains("read-only") && m.contains("agent.repositoryVolumes"),
        "{m}"
    );
    r.result(&format!("without a volume: Failed repository_config: {m}"));
    // What the manifests' comment says: a volume mounted at /repo in the agent.
    let host_repo = r.pv_dir.join("fs-repo");
    fs::create_dir_all(&host_repo).unwrap();
    let patch = json!([
        {"op": "add", "path": "/spec/template/spec/volumes/-",
         "value": {"name": "repo", "hostPath": {"path": host_repo, "type": "Directory"}}},
        {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
         "value": {"name": "repo", "mountPath": "/repo"}},
    ]);
    let ds = "daemonset/podvault-agent";
    r.kube.ok(&[
        "patch",
        "-n",
        PODVAULT_NS,
        ds,
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    r.kube
        .ok(&["rollout", "status", "-n", PODVAULT_NS, ds, "--timeout=180s"]);
    let v = r.operation(&r.kube, "pvb", &victim, "fs-with-volume", spec);
    let m = expect(&v, "Completed", None);
    assert!(
        host_repo.join("config").is_file(),
        "the repository is in the mounted directory"
    );
    r.write(&victim, "overwritten");
    let spec = json!({"pod": "app", "volume": "data", "repository": fs_repo,
                      "snapshot": {"id": status(&v, "snapshotId")}});
    let v = r.operation(&r.kube, "pvr", &victim, "fs-restore", spec);
    expect(&v, "Completed", None);
    assert_eq!(r.read(&victim), "v3");
    // Back to the shipped DaemonSet.
    let shipped = Run::workspace().join("deploy/manifests/20-agent.yaml");
    r.kube.ok(&["replace", "-f", shipped.to_str().unwrap()]);
    r.kube
        .ok(&["rollout", "status", "-n", PODVAULT_NS, ds, "--timeout=180s"]);
    r.result(&format!(
        "with /repo mounted: {m}; restored from it, /data/ledger = v3"
    ));

    // ----- 15 -----
    r.step(
        "15",
        "hostPath PersistentVolumes (local-path-provisioner's layout) below an allowed host directory",
    );
    let hp_root = r.pv_dir.join("local-path");
    let hp_dir = hp_root.join(format!("pvc-{}_{victim}_hp-data", r.run));
    fs::create_dir_all(&hp_dir).unwrap();
    // Another tenant's directory, and a PersistentVolume whose path is a symlink to it.
    let elsewhere = r.pv_dir.join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("secret"), "not yours").unwrap();
    let link = hp_root.join(format!("pvc-{}_{victim}_hp-link", r.run));
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    for (claim, path) in [("hp-data", &hp_dir), ("hp-link", &link)] {
        r.kube.apply(&format!(
            "apiVersion: v1
kind: PersistentVolume
metadata: {{name: e2e-{run}-{claim}, labels: {{e2e-run: '{run}'}}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: manual
  hostPath: {{path: {path}}}
  claimRef: {{namespace: {victim}, name: {claim}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}, namespace: {victim}}}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  resources: {{requests: {{storage: 1Gi}}}}
  volumeName: e2e-{run}-{claim}
",
            run = r.run,
            path = path.display()
        ));
    }
    r.pod_named(
        &victim,
        "hp",
        &[
            ("data", "persistentVolumeClaim: {claimName: hp-data}"),
            ("link", "persistentVolumeClaim: {claimName: hp-link}"),
        ],
        "",
    );
    let (ok, _) = r.kube.exec(
        &victim,
        "hp",
        &[
            "sh",
            "-c",
            "echo hp-v1 > /data/ledger && chown 0:0 /data/ledger",
        ],
    );
    assert!(ok, "writing into the hostPath PV");
    let spec = json!({"pod": "hp", "volume": "data", "repository": repo});
    let v = r.operation(&r.kube, "pvb", &victim, "hp-not-allowed", spec.clone());
    let m = expect(&v, "Failed", Some("volume"));
    assert!(m.contains("--host-path-root"), "{m}");
    r.result(&format!(
        "as shipped (no host directory listed): Failed volume: {m}"
    ));
    // What the manifests' comment says: the variable, and the directory mounted at the same path.
    let patch = json!([
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
         "value": {"name": "PODVAULT_HOST_PATH_ROOTS", "value": hp_root}},
        {"op": "add", "path": "/spec/template/spec/volumes/-",
         "value": {"name": "local-path", "hostPath": {"path": hp_root, "type": "Directory"}}},
        {"op": "add", "path": "/spec/template/spec/containers/0/volumeMounts/-",
         "value": {"name": "local-path", "mountPath": hp_root}},
    ]);
    r.kube.ok(&[
        "patch",
        "-n",
        PODVAULT_NS,
        ds,
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    r.kube
        .ok(&["rollout", "status", "-n", PODVAULT_NS, ds, "--timeout=180s"]);
    let v = r.operation(&r.kube, "pvb", &victim, "hp-backup", spec);
    let m = expect(&v, "Completed", None);
    assert_eq!(status(&v, "hostPath"), hp_dir.display().to_string());
    let hp_snapshot = status(&v, "snapshotId");
    assert_eq!(r.dump(&hp_snapshot, "ledger").trim(), "hp-v1");
    r.result(&format!(
        "with {} listed and mounted: {m}",
        hp_root.display()
    ));
    let spec = json!({"pod": "hp", "volume": "link", "repository": repo});
    let v = r.operation(&r.kube, "pvb", &victim, "hp-symlink", spec);
    let m = expect(&v, "Failed", Some("volume_not_mounted"));
    assert!(m.contains("without following a symlink"), "{m}");
    r.result(&format!("a PV whose path is a symlink: Failed: {m}"));
    fs::write(hp_dir.join("ledger"), "overwritten").unwrap();
    let spec = json!({"pod": "hp", "volume": "data", "repository": repo, "mode": "Clean",
                      "snapshot": {"id": hp_snapshot}});
    let v = r.operation(&r.kube, "pvr", &victim, "hp-restore", spec);
    let m = expect(&v, "Completed", None);
    assert_eq!(
        fs::read_to_string(hp_dir.join("ledger")).unwrap().trim(),
        "hp-v1"
    );
    let meta = fs::metadata(hp_dir.join("ledger")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (0, 0),
        "a root-owned file is restored root-owned"
    );
    assert_eq!(
        fs::read_to_string(elsewhere.join("secret")).unwrap(),
        "not yours"
    );
    r.kube.ok(&["replace", "-f", shipped.to_str().unwrap()]);
    r.kube
        .ok(&["rollout", "status", "-n", PODVAULT_NS, ds, "--timeout=180s"]);
    r.result(&format!(
        "in-place restore: {m}; ledger back to hp-v1, still owned by root:root"
    ));

    // ----- 16 -----
    r.step(
        "16",
        "scheduled maintenance: prune, check and a restore drill as Jobs, one at a time per repository",
    );
    // Ticks every 5 s instead of 60 s, and every kind due every minute.
    let ctl = "deployment/podvault-controller";
    let patch = json!([{"op": "add", "path": "/spec/template/spec/containers/0/env/-",
                        "value": {"name": "PODVAULT_MAINTENANCE_INTERVAL", "value": "5"}}]);
    r.kube.ok(&[
        "patch",
        "-n",
        PODVAULT_NS,
        ctl,
        "--type=json",
        "-p",
        &patch.to_string(),
    ]);
    r.kube.ok(&[
        "rollout",
        "status",
        "-n",
        PODVAULT_NS,
        ctl,
        "--timeout=180s",
    ]);
    let every_minute = json!({"spec": {"maintenance": {
        "prune": {"schedule": "* * * * *", "grace": "1h"},
        "check": {"schedule": "* * * * *", "readDataParts": 2},
        "drill": {"schedule": "* * * * *"}}}});
    r.kube.ok(&[
        "patch",
        "backuprepository",
        &repo,
        "--type=merge",
        "-p",
        &every_minute.to_string(),
    ]);
    let mut most_active = 0;
    let maintained: Value = r.kube.wait(
        "a successful prune, check and drill of the shared repository",
        Duration::from_secs(480),
        Duration::from_secs(2),
        || {
            let jobs: Value = serde_json::from_str(&r.kube.ok(&[
                "get",
                "jobs",
                "-n",
                PODVAULT_NS,
                "-l",
                &format!("podvault.dev/maintenance-repository={repo}"),
                "-o",
                "json",
            ]))
            .unwrap();
            let active = jobs["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|j| j["status"]["active"].as_u64().unwrap_or(0) > 0)
                .count();
            assert!(
                active <= 1,
                "two maintenance Jobs of one repository at once: {jobs}"
            );
            most_active = most_active.max(active);
            let v = r.kube.get("backuprepository", &repo, "default")?;
            let m = &v["status"]["maintenance"];
            for run in m["runs"].as_array().into_iter().flatten() {
                assert_ne!(run["result"], "Failed", "a maintenance run failed: {run}");
            }
            let done = ["prune", "check", "drill"]
                .iter()
                .all(|k| m["lastSuccess"][k].is_string());
            done.then(|| v.clone())
        },
    );
    let m = &maintained["status"]["maintenance"];
    let drilled = m["drills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["series"] == series.as_str())
        .unwrap_or_else(|| panic!("no drill of {series}: {m}"));
    assert!(drilled["lastSuccess"].is_string(), "{drilled}");
    assert!(
        maintained["status"]["location"]
            .as_str()
            .is_some_and(|l| l.starts_with("s3://")),
        "{}",
        maintained["status"]
    );
    let table = r.kube.ok(&["get", "backuprepository", &repo]);
    assert!(
        table.contains("LAST PRUNE") && table.contains("s3://"),
        "{table}"
    );
    r.kube.ok(&[
        "patch",
        "backuprepository",
        &repo,
        "--type=merge",
        "-p",
        r#"{"spec":{"maintenance":{"enabled":false}}}"#,
    ]);
    let shipped_ctl = Run::workspace().join("deploy/manifests/30-controller.yaml");
    r.kube.ok(&["replace", "-f", shipped_ctl.to_str().unwrap()]);
    r.kube.ok(&[
        "rollout",
        "status",
        "-n",
        PODVAULT_NS,
        ctl,
        "--timeout=180s",
    ]);
    let runs: Vec<String> = m["runs"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|run| {
            format!(
                "{} {}: {}",
                run["kind"].as_str().unwrap_or_default(),
                run["result"].as_str().unwrap_or_default(),
                run["message"].as_str().unwrap_or_default()
            )
        })
        .collect();
    r.result(&format!(
        "at most {most_active} Job active at a time; runs: {}; drill of {series}: {}; kubectl get bkrepo:\n{}",
        runs.join(" | "),
        drilled["message"].as_str().unwrap_or_default(),
        table.trim_end()
    ));

    r.step("end", "the victim's series is as it left it");
    let ids: Vec<String> = r
        .snapshots(&series)
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, vec![v2.clone(), v3.clone()]);
    r.result(&format!("series {series}: {}, {}", &v2[..8], &v3[..8]));
}
