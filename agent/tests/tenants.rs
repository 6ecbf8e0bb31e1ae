//! Hostile namespaces sharing one repository, below the API server: the agent's executor
//! bodies (the same code the DaemonSet runs) against a real repository, with the objects a
//! namespace admin can write. Whatever the attacker namespace puts into its PodVolumeBackup
//! specs — or into snapshots made to look like the victim's, as an older agent or a CLI user
//! could have written them — never becomes the victim's parent, never takes a slot of the
//! victim's retention, and is never what the victim's `latest` restores.
//!
//! The same attacks against a real cluster (RBAC, real pods, real exec) are in
//! `tests/tests/e2e_node.rs`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::core::v1::Pod;
use podvault::progress::Progress;
use podvault::repository::Repository;
use podvault::worker::decide::claimed;
use podvault::worker::execute::{
    execute_backup, execute_restore, BackupJob, NodeSettings, RestoreJob,
};
use podvault::worker::outcome::Report;
use podvault::worker::repo::{settings, RepoSettings};
use podvault_proto::crd::{OperationStatus, Phase};
use podvault_proto::k8s::VolumePolicy;
use podvault_proto::snapshot::{Identity, Snapshot};

const NODE: &str = "node-a";

fn pod(namespace: &str, uid: &str) -> Pod {
    serde_yaml::from_str(&format!(
        "
metadata: {{name: app, namespace: {namespace}, uid: {uid}}}
spec:
  nodeName: {NODE}
  containers: [{{name: c}}]
  volumes:
  - {{name: data, emptyDir: {{}}}}
status: {{phase: Running}}
"
    ))
    .unwrap()
}

/// `<root>/pods/<uid>/volumes/kubernetes.io~empty-dir/data`, created.
fn empty_dir(root: &Path, uid: &str) -> PathBuf {
    let d = root
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/data");
    fs::create_dir_all(&d).unwrap();
    d
}

fn claimed_now() -> OperationStatus {
    claim(false)
}

/// The status of a claim, or of a resume after an agent restart.
fn claim(resume: bool) -> OperationStatus {
    let now =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    claimed(
        &OperationStatus::default(),
        NODE,
        "agent-test",
        &now,
        resume,
        None,
    )
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: RepoSettings,
    node: NodeSettings,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("kubelet");
        let spec = serde_yaml::from_str(&format!(
            "backend: {{fs: {{path: {}}}}}\npasswordSecret: {{name: pw, key: password}}\n\
             allowedNamespaces: {{names: [victim, attacker]}}\n",
            tmp.path().join("repo").display()
        ))
        .unwrap();
        let pw: BTreeMap<String, Vec<u8>> = [("password".to_string(), b"shared".to_vec())].into();
        World {
            repo: settings("shared", &spec, &pw, None).unwrap(),
            node: NodeSettings {
                node: NODE.into(),
                kubelet_root: root.clone(),
                policy: VolumePolicy::default(),
            },
            root,
            _tmp: tmp,
        }
    }

    fn backup(&self, namespace: &str, uid: &str, spec: &str, op: &str) -> Report {
        self.backup_as(namespace, uid, spec, op, &claimed_now())
    }

    fn backup_as(
        &self,
        namespace: &str,
        uid: &str,
        spec: &str,
        op: &str,
        base: &OperationStatus,
    ) -> Report {
        let job = BackupJob {
            namespace: namespace.into(),
            uid: op.into(),
            spec: serde_yaml::from_str(spec).unwrap(),
            pod: pod(namespace, uid),
            pv: None,
            repo: self.repo.clone(),
            node: self.node.clone(),
        };
        execute_backup(&job, base, &Progress::default(), &AtomicBool::new(false))
    }

    fn restore(&self, namespace: &str, uid: &str, spec: &str) -> Report {
        let job = RestoreJob {
            namespace: namespace.into(),
            uid: format!("pvr-{uid}"),
            spec: serde_yaml::from_str(spec).unwrap(),
            pod: pod(namespace, uid),
            pv: None,
            repo: self.repo.clone(),
            node: self.node.clone(),
        };
        execute_restore(
            &job,
            &claimed_now(),
            &Progress::default(),
            &AtomicBool::new(false),
        )
    }

    fn open(&self) -> Repository {
        Repository::open(&self.repo.location, &self.repo.password).unwrap()
    }
}

fn completed(r: &Report) -> String {
    assert_eq!(
        r.status.phase,
        Some(Phase::Completed),
        "{:?}",
        r.status.message
    );
    r.status.snapshot_id.clone().unwrap()
}

/// A copy of `base` (a real snapshot, so its tree exists) made newer than everything and
/// given `tags` and `identity`.
fn look_alike(
    repo: &Repository,
    base: &Snapshot,
    tags: &[&str],
    identity: Option<Identity>,
) -> String {
    let mut s = base.clone();
    s.time_ns += 3_600_000_000_000;
    s.tags = tags.iter().map(|t| t.to_string()).collect();
    s.tags.sort();
    s.identity = identity;
    repo.save(&s).unwrap().to_hex()
}

#[test]
fn look_alikes_never_select_the_victims_snapshots() {
    let w = World::new();
    let victim_dir = empty_dir(&w.root, "uid-victim");
    let attacker_dir = empty_dir(&w.root, "uid-attacker");
    fs::write(victim_dir.join("ledger"), "victim v1").unwrap();
    fs::write(attacker_dir.join("ledger"), "attacker data").unwrap();
    let victim_spec = "{pod: app, volume: data, retention: 'last=2'}";

    let v1 = completed(&w.backup("victim", "uid-victim", victim_spec, "op-v1"));
    fs::write(victim_dir.join("ledger"), "victim v2").unwrap();
    let v2 = completed(&w.backup("victim", "uid-victim", victim_spec, "op-v2"));

    // 1. The attack as reported: spec.tags naming the victim's series. Refused, nothing saved.
    let before = w.open().snapshots().unwrap().len();
    for forged in [
        "series=victim/pod/app/data",
        "namespace=victim",
        "pod-uid=uid-victim",
        "podvault.dev/series=victim/pod/app/data",
    ] {
        let r = w.backup(
            "attacker",
            "uid-attacker",
            &format!("{{pod: app, volume: data, tags: ['{forged}']}}"),
            "op-forged",
        );
        assert_eq!(r.status.phase, Some(Phase::Failed));
        assert_eq!(r.status.reason.as_deref(), Some("invalid_spec"));
        let m = r.status.message.unwrap();
        assert!(m.contains(forged) && m.contains("reserved"), "{m}");
    }
    assert_eq!(
        w.open().snapshots().unwrap().len(),
        before,
        "no snapshot for a refused spec"
    );

    // 2. Look-alikes already in the repository, newer than the victim's snapshots: what an
    //    older agent wrote for such a spec (own identity tags plus the forged ones: ambiguous),
    //    a snapshot with only the victim's tags (a CLI backup: no identity), and a recorded
    //    identity whose series is another namespace's (inconsistent).
    let a = completed(&w.backup(
        "attacker",
        "uid-attacker",
        "{pod: app, volume: data}",
        "op-a",
    ));
    let repo = w.open();
    let (_, attacker_snap) = repo.find_snapshot(&a).unwrap();
    let victim_tags = [
        "series=victim/pod/app/data",
        "namespace=victim",
        "pod=app",
        "pod-uid=uid-victim",
        "volume=data",
    ];
    let mut legacy = vec![
        "series=attacker/pod/app/data",
        "namespace=attacker",
        "pod=app",
        "pod-uid=uid-attacker",
        "volume=data",
        "node=node-a",
    ];
    legacy.extend(victim_tags);
    assert_eq!(
        Identity::from_legacy_tags(&legacy.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        None
    );
    let mut inconsistent = attacker_snap.identity.clone().unwrap();
    inconsistent.series = "victim/pod/app/data".into();
    let forged = [
        look_alike(&repo, &attacker_snap, &legacy, None),
        look_alike(&repo, &attacker_snap, &victim_tags, None),
        look_alike(&repo, &attacker_snap, &[], Some(inconsistent)),
    ];
    for f in &forged {
        let (_, s) = repo.find_snapshot(f).unwrap();
        assert_eq!(s.series(), None, "{f} must have no identity");
    }

    // 3. The victim's next backup: parent is its own latest, retention keeps its own two.
    fs::write(victim_dir.join("ledger"), "victim v3").unwrap();
    let r3 = w.backup("victim", "uid-victim", victim_spec, "op-v3");
    let v3 = completed(&r3);
    assert!(
        r3.status
            .message
            .as_deref()
            .unwrap()
            .contains("retention removed 1 snapshot(s)"),
        "{:?}",
        r3.status.message
    );
    let repo = w.open();
    let (_, s3) = repo.find_snapshot(&v3).unwrap();
    assert_eq!(
        s3.parent.map(|p| p.to_hex()),
        Some(v2.clone()),
        "parent is the victim's own"
    );
    let victims: Vec<String> = repo
        .snapshots()
        .unwrap()
        .into_iter()
        .filter(|(_, s)| s.series() == Some("victim/pod/app/data"))
        .map(|(id, _)| id.to_hex())
        .collect();
    assert_eq!(
        victims,
        vec![v2.clone(), v3.clone()],
        "retention kept the victim's own two"
    );
    assert!(repo.find_snapshot(&v1).is_err(), "and removed the oldest");
    for f in &forged {
        assert!(
            repo.find_snapshot(f).is_ok(),
            "look-alikes are not the victim's to forget"
        );
    }

    // 4. The victim's `latest` restore restores its own latest.
    fs::write(victim_dir.join("ledger"), "overwritten").unwrap();
    let r = w.restore(
        "victim",
        "uid-victim",
        "{pod: app, volume: data, snapshot: {latest: {}}}",
    );
    assert_eq!(
        r.status.phase,
        Some(Phase::Completed),
        "{:?}",
        r.status.message
    );
    assert_eq!(r.status.snapshot_id.as_deref(), Some(v3.as_str()));
    assert_eq!(
        fs::read_to_string(victim_dir.join("ledger")).unwrap(),
        "victim v3"
    );

    // 5. The attacker cannot restore the victim's snapshots, by id or by naming the series,
    //    nor pass its look-alikes off to the victim by id.
    let r = w.restore(
        "attacker",
        "uid-attacker",
        &format!("{{pod: app, volume: data, snapshot: {{id: '{v3}'}}}}"),
    );
    assert_eq!(
        r.status.reason.as_deref(),
        Some("isolation"),
        "{:?}",
        r.status.message
    );
    let r = w.restore(
        "attacker",
        "uid-attacker",
        "{pod: app, volume: data, snapshot: {latest: {namespace: victim}}}",
    );
    assert_eq!(
        r.status.reason.as_deref(),
        Some("isolation"),
        "{:?}",
        r.status.message
    );
    for f in &forged {
        let r = w.restore(
            "victim",
            "uid-victim",
            &format!("{{pod: app, volume: data, snapshot: {{id: '{f}'}}}}"),
        );
        assert_eq!(
            r.status.reason.as_deref(),
            Some("isolation"),
            "{:?}",
            r.status.message
        );
    }
    assert_eq!(
        fs::read_to_string(victim_dir.join("ledger")).unwrap(),
        "victim v3"
    );
}

/// An agent that stopped after saving a PodVolumeBackup's snapshot and before recording it
/// leaves the PVB InProgress; the agent that resumes it adopts that snapshot (found by the
/// PVB's uid in the identity) instead of taking a second one.
#[test]
fn a_resumed_backup_adopts_the_snapshot_its_operation_already_saved() {
    let w = World::new();
    let dir = empty_dir(&w.root, "uid-victim");
    fs::write(dir.join("ledger"), "one").unwrap();
    let spec = "{pod: app, volume: data}";
    let first = completed(&w.backup("victim", "uid-victim", spec, "op-1"));
    fs::write(dir.join("ledger"), "two").unwrap();
    // Only a resume can follow a stopped run, so only a resumed claim looks for one.
    let resumed = w.backup_as("victim", "uid-victim", spec, "op-1", &claim(true));
    assert_eq!(
        completed(&resumed),
        first,
        "the same PVB's snapshot, adopted"
    );
    let m = resumed.status.message.unwrap();
    assert!(m.contains("adopted, not taken again"), "{m}");
    assert_eq!(w.open().snapshots().unwrap().len(), 1, "no second snapshot");
    // Another PVB of the same volume takes its own.
    let next = completed(&w.backup("victim", "uid-victim", spec, "op-2"));
    assert_ne!(next, first);
    assert_eq!(w.open().snapshots().unwrap().len(), 2);
}
