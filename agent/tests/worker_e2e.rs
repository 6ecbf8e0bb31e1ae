//! End-to-end: the agent's executor bodies against a kubelet-shaped tree and a real
//! repository (a local directory always; the S3 server too when PODVAULT_TEST_S3_ENDPOINT is
//! set). PodVolumeBackup/Restore objects come from deploy/examples; only the API server is
//! missing (objects are built here instead of fetched).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use podvault::progress::Progress;
use podvault::repository::Repository;
use podvault::worker::decide::claimed;
use podvault::worker::execute::{
    execute_backup, execute_restore, BackupJob, NodeSettings, RestoreJob,
};
use podvault::worker::outcome::{OpResult, Reason};
use podvault::worker::repo::{settings, RepoSettings};
use podvault_proto::crd::{OperationStatus, Phase, PodVolumeBackup, PodVolumeRestore};
use podvault_proto::k8s::VolumePolicy;
use rand::{RngCore, SeedableRng};

const NODE: &str = "node-a";

fn examples(file: &str) -> Vec<serde_yaml::Value> {
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(file),
    )
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn pod(name: &str, uid: &str, claim: &str) -> Pod {
    serde_yaml::from_str(&format!(
        "
metadata: {{name: {name}, namespace: shop, uid: {uid}}}
spec:
  nodeName: {NODE}
  containers: [{{name: c}}]
  volumes:
  - {{name: data, persistentVolumeClaim: {{claimName: {claim}}}}}
status: {{phase: Running}}
"
    ))
    .unwrap()
}

fn pv(name: &str, claim: &str) -> PersistentVolume {
    serde_yaml::from_str(&format!(
        "
metadata: {{name: {name}}}
spec:
  claimRef: {{namespace: shop, name: {claim}}}
  csi: {{driver: ebs.csi.aws.com, volumeHandle: {name}}}
"
    ))
    .unwrap()
}

/// `<root>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`, created.
fn volume_dir(root: &Path, uid: &str, pv: &str) -> PathBuf {
    let d = root
        .join("pods")
        .join(uid)
        .join("volumes/kubernetes.io~csi")
        .join(pv)
        .join("mount");
    fs::create_dir_all(&d).unwrap();
    d
}

fn seed(dir: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for (path, size) in [
        ("db/base.bin", 3 << 20),
        ("db/wal/000001", 70_000),
        ("uploads/a.txt", 12),
        ("uploads/deep/b.bin", 600_000),
        ("empty", 0),
        ("skip.tmp", 100),
    ] {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut data = vec![0u8; size];
        rng.fill_bytes(&mut data);
        fs::write(p, data).unwrap();
    }
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            if rel == ".podvault" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &e.path(), out);
            } else {
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn repo_settings(backend_yaml: &str, creds: Option<(&str, &str)>) -> RepoSettings {
    let spec = serde_yaml::from_str(&format!(
        "backend: {backend_yaml}\npasswordSecret: {{name: pw, key: password}}\n{}",
        if creds.is_some() {
            "credentialsSecret: {name: creds}\n"
        } else {
            ""
        }
    ))
    .unwrap();
    let pw: BTreeMap<String, Vec<u8>> = [("password".to_string(), b"e2e-pass".to_vec())].into();
    let creds = creds.map(|(id, secret)| -> BTreeMap<String, Vec<u8>> {
        [
            ("AWS_ACCESS_KEY_ID".to_string(), id.as_bytes().to_vec()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                secret.as_bytes().to_vec(),
            ),
        ]
        .into()
    });
    settings("default", &spec, &pw, creds.as_ref()).unwrap()
}

fn claimed_backup() -> OperationStatus {
    claimed(
        &OperationStatus::default(),
        NODE,
        "agent-test",
        &now(),
        false,
        None,
    )
}

fn claimed_restore() -> OperationStatus {
    claimed_backup()
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
}

fn round_trip(repo: RepoSettings) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let node = NodeSettings {
        node: NODE.into(),
        kubelet_root: root.clone(),
        policy: VolumePolicy::default(),
    };
    let src_pod = pod("web-0", "uid-src", "data-web-0");
    let src_pv = pv("pvc-src", "data-web-0");
    let src = volume_dir(&root, "uid-src", "pvc-src");
    seed(&src);

    // The PodVolumeBackup example, as a user would create it (plus retention).
    let mut pvb: PodVolumeBackup =
        serde_yaml::from_value(examples("podvolumebackup.yaml")[0].clone()).unwrap();
    assert_eq!(
        (pvb.spec.pod.as_str(), pvb.spec.volume.as_str()),
        ("web-0", "data")
    );
    pvb.spec.retention = Some("last=1".into());
    let job = BackupJob {
        namespace: "shop".into(),
        uid: "pvb-uid-1".into(),
        spec: pvb.spec.clone(),
        pod: src_pod.clone(),
        pv: Some(src_pv.clone()),
        repo: repo.clone(),
        node: node.clone(),
    };
    let progress = Progress::default();
    let first = execute_backup(&job, &claimed_backup(), &progress, &AtomicBool::new(false));
    let st = &first.status;
    assert_eq!(st.phase, Some(Phase::Completed), "{:?}", st.message);
    assert_eq!(first.result, OpResult::Completed);
    assert_eq!(st.series.as_deref(), Some("shop/pvc/data-web-0"));
    assert_eq!(
        st.host_path.as_deref(),
        Some(src.display().to_string().as_str())
    );
    assert!(st.completion_timestamp.is_some() && st.start_timestamp.is_some());
    assert!(first.bytes_read >= 3 << 20, "{}", first.bytes_read);
    let p = st.progress.as_ref().unwrap();
    assert_eq!(p.files_done, p.files_total);
    let first_id = st.snapshot_id.clone().unwrap();

    let r = Repository::open(&repo.location, &repo.password).unwrap();
    let (_, snap) = r.find_snapshot(&first_id).unwrap();
    let id = snap
        .identity()
        .expect("the agent records the snapshot's identity");
    assert_eq!(
        (
            id.series.as_str(),
            id.namespace.as_str(),
            id.pod.as_str(),
            id.pod_uid.as_str(),
            id.pvc.as_deref(),
            id.volume.as_deref(),
            id.node.as_str(),
            id.operation_uid.as_deref()
        ),
        (
            "shop/pvc/data-web-0",
            "shop",
            "web-0",
            "uid-src",
            Some("data-web-0"),
            Some("data"),
            "node-a",
            Some("pvb-uid-1")
        )
    );
    // The spec's own tags, and nothing else.
    assert_eq!(snap.tags, vec!["manual".to_string()]);
    assert_eq!(snap.hostname, NODE);

    // A second backup uses the first as parent (nothing re-read), and retention last=1 leaves
    // only it in the series.
    // Another PodVolumeBackup (its own uid: the same uid would adopt the first snapshot).
    let job = BackupJob {
        uid: "pvb-uid-1b".into(),
        ..job
    };
    let second = execute_backup(
        &job,
        &claimed_backup(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(
        second.status.phase,
        Some(Phase::Completed),
        "{:?}",
        second.status.message
    );
    assert!(second
        .status
        .message
        .as_deref()
        .unwrap()
        .contains("retention removed 1 snapshot(s)"));
    let second_id = second.status.snapshot_id.clone().unwrap();
    let (_, snap2) = r.find_snapshot(&second_id).unwrap();
    assert_eq!(snap2.parent.map(|p| p.to_hex()), Some(first_id.clone()));
    assert_eq!(
        snap2.summary.bytes_read, 0,
        "unchanged files must not be re-read"
    );
    assert!(
        r.find_snapshot(&first_id).is_err(),
        "retention should have removed the first snapshot"
    );

    // Restore into a second pod's volume (new pod + PVC), in Clean mode: a stray file goes.
    let docs = examples("podvolumerestore.yaml");
    let mut pvr: PodVolumeRestore = serde_yaml::from_value(docs[1].clone()).unwrap();
    assert_eq!(pvr.spec.pod, "web-restored");
    pvr.spec.snapshot.id = Some(second_id[..12].to_string());
    pvr.spec.include_paths.clear();
    let dst_pod = pod("web-restored", "uid-dst", "data-web-restored");
    let dst = volume_dir(&root, "uid-dst", "pvc-dst");
    fs::write(dst.join("stray"), "not in the snapshot").unwrap();
    let rjob = RestoreJob {
        namespace: "shop".into(),
        uid: "pvr-uid-1".into(),
        spec: pvr.spec.clone(),
        pod: dst_pod.clone(),
        pv: Some(pv("pvc-dst", "data-web-restored")),
        repo: repo.clone(),
        node: node.clone(),
    };
    let rep = execute_restore(
        &rjob,
        &claimed_restore(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(
        rep.status.phase,
        Some(Phase::Completed),
        "{:?}",
        rep.status.message
    );
    assert_eq!(rep.status.snapshot_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(rep.status.files_restored, Some(5));
    let mut expected = tree(&src);
    expected.remove("skip.tmp"); // excluded by the PVB's `*.tmp`
    assert_eq!(tree(&dst), expected);
    let marker = dst.join(".podvault/pvr-uid-1");
    assert_eq!(rep.marker.as_deref(), Some(marker.as_path()));
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), second_id);

    // The init container's view: restore-wait (the real binary) finds and removes the marker.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podvault"))
        .args(["restore-wait", "--dir"])
        .arg(&dst)
        .args(["--timeout-secs", "10", "--interval-ms", "20"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!marker.exists());

    // In-place Merge restore of "latest of the series" (first example) into the running
    // source pod, after damage: the damaged file comes back, a new file stays.
    let mut inplace: PodVolumeRestore = serde_yaml::from_value(docs[0].clone()).unwrap();
    inplace.spec.pod = "web-0".into();
    fs::write(src.join("uploads/a.txt"), "damaged").unwrap();
    fs::write(src.join("new-file"), "kept").unwrap();
    let job3 = RestoreJob {
        namespace: "shop".into(),
        uid: "pvr-uid-2".into(),
        spec: inplace.spec.clone(),
        pod: src_pod.clone(),
        pv: Some(src_pv.clone()),
        repo: repo.clone(),
        node: node.clone(),
    };
    let rep3 = execute_restore(
        &job3,
        &claimed_restore(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(
        rep3.status.phase,
        Some(Phase::Completed),
        "{:?}",
        rep3.status.message
    );
    assert_eq!(rep3.status.snapshot_id.as_deref(), Some(second_id.as_str()));
    assert_eq!(&tree(&src)["uploads/a.txt"], &expected["uploads/a.txt"]);
    assert_eq!(fs::read_to_string(src.join("new-file")).unwrap(), "kept");
    assert!(src.join(".podvault/pvr-uid-2").exists());

    // Namespace isolation: the same snapshot from another namespace is refused, and nothing
    // is written (no marker).
    let mut other_pod = pod("web-restored", "uid-other", "data-web-restored");
    other_pod.metadata.namespace = Some("other".into());
    let other_dir = volume_dir(&root, "uid-other", "pvc-other");
    let mut other_pv = pv("pvc-other", "data-web-restored");
    other_pv
        .spec
        .as_mut()
        .unwrap()
        .claim_ref
        .as_mut()
        .unwrap()
        .namespace = Some("other".into());
    let job4 = RestoreJob {
        namespace: "other".into(),
        uid: "pvr-uid-3".into(),
        pod: other_pod,
        pv: Some(other_pv),
        ..rjob.clone()
    };
    let rep4 = execute_restore(
        &job4,
        &claimed_restore(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(rep4.status.phase, Some(Phase::Failed));
    assert_eq!(rep4.reason, Some(Reason::Isolation));
    let msg = rep4.status.message.unwrap();
    assert!(
        msg.contains("was taken in namespace shop, but the restore is in namespace other"),
        "{msg}"
    );
    assert!(fs::read_dir(&other_dir).unwrap().next().is_none());

    // A canceled backup ends Canceled and writes no snapshot.
    let before = r.snapshots().unwrap().len();
    let job = BackupJob {
        uid: "pvb-uid-canceled".into(),
        ..job
    };
    let canceled = execute_backup(
        &job,
        &claimed_backup(),
        &Progress::default(),
        &AtomicBool::new(true),
    );
    assert_eq!(
        canceled.status.phase,
        Some(Phase::Canceled),
        "{:?}",
        canceled.status.message
    );
    assert_eq!(r.snapshots().unwrap().len(), before);
}

#[test]
fn backup_then_restore_through_the_executor_on_a_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_settings(
        &format!("{{fs: {{path: {}}}}}", tmp.path().join("repo").display()),
        None,
    );
    round_trip(repo);
}

#[test]
fn backup_then_restore_through_the_executor_on_s3() {
    let Ok(endpoint) = std::env::var("PODVAULT_TEST_S3_ENDPOINT") else {
        eprintln!("PODVAULT_TEST_S3_ENDPOINT not set; skipping the S3 run (tests/run.sh sets it)");
        return;
    };
    let bucket =
        std::env::var("PODVAULT_TEST_S3_BUCKET").unwrap_or_else(|_| "podvault-test".into());
    let id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into());
    let prefix = format!(
        "worker-e2e-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let repo = repo_settings(
        &format!("{{s3: {{endpoint: '{endpoint}', bucket: {bucket}, prefix: {prefix}, region: us-east-1, pathStyle: true}}}}"),
        Some((&id, &secret)),
    );
    round_trip(repo);
}

#[test]
fn refused_volumes_and_missing_directories_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = repo_settings(
        &format!("{{fs: {{path: {}}}}}", tmp.path().join("repo").display()),
        None,
    );
    let node = NodeSettings {
        node: NODE.into(),
        kubelet_root: tmp.path().join("kubelet"),
        policy: VolumePolicy::default(),
    };
    let p: Pod = serde_yaml::from_str(&format!(
        "
metadata: {{name: web-0, namespace: shop, uid: u1}}
spec:
  nodeName: {NODE}
  containers: [{{name: c}}]
  volumes:
  - {{name: token, secret: {{secretName: s}}}}
  - {{name: scratch, emptyDir: {{}}}}
"
    ))
    .unwrap();
    let mut pvb: PodVolumeBackup =
        serde_yaml::from_value(examples("podvolumebackup.yaml")[0].clone()).unwrap();
    pvb.spec.volume = "token".into();
    let mut job = BackupJob {
        namespace: "shop".into(),
        uid: "pvb-uid-2".into(),
        spec: pvb.spec.clone(),
        pod: p,
        pv: None,
        repo,
        node,
    };
    let r = execute_backup(
        &job,
        &claimed_backup(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(r.status.phase, Some(Phase::Failed));
    assert_eq!(r.reason, Some(Reason::Volume));
    assert!(r.status.message.unwrap().contains("is a secret volume"));
    job.spec.volume = "scratch".into();
    let r = execute_backup(
        &job,
        &claimed_backup(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(r.status.phase, Some(Phase::Failed));
    let msg = r.status.message.unwrap();
    assert!(
        msg.contains("is not mounted on node node-a")
            && msg.contains("kubernetes.io~empty-dir/scratch"),
        "{msg}"
    );
    job.spec.retention = Some("bogus".into());
    let r = execute_backup(
        &job,
        &claimed_backup(),
        &Progress::default(),
        &AtomicBool::new(false),
    );
    assert_eq!(r.reason, Some(Reason::InvalidSpec));
    assert!(r.status.message.unwrap().starts_with("spec.retention: "));
    let _ = Duration::ZERO;
}

/// The first scheduled tick of a two-volume pod: both backups reach a repository that does not
/// exist yet at the same moment. Both must complete, into one repository with one key.
fn two_backups_of_a_fresh_repository_at_once(repo: RepoSettings, rounds: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("kubelet");
    let node = NodeSettings {
        node: NODE.into(),
        kubelet_root: root.clone(),
        policy: VolumePolicy::default(),
    };
    let pods = ["a", "b"].map(|n| {
        let uid = format!("uid-{n}");
        let pvname = format!("pvc-{n}");
        seed(&volume_dir(&root, &uid, &pvname));
        (
            pod(&format!("web-{n}"), &uid, &format!("data-web-{n}")),
            pv(&pvname, &format!("data-web-{n}")),
        )
    });
    for round in 0..rounds {
        let mut repo = repo.clone();
        match &mut repo.location {
            podvault::backend::Location::Fs(p) => *p = tmp.path().join(format!("repo-{round}")),
            podvault::backend::Location::S3(s) => s.prefix = format!("{}/{round}", s.prefix),
        }
        let reports: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .map(|(p, v)| {
                    let job = BackupJob {
                        namespace: "shop".into(),
                        uid: format!(
                            "pvb-{}-{round}",
                            p.metadata.name.as_deref().unwrap_or_default()
                        ),
                        spec: serde_yaml::from_str("{pod: web, volume: data}").unwrap(),
                        pod: p.clone(),
                        pv: Some(v.clone()),
                        repo: repo.clone(),
                        node: node.clone(),
                    };
                    scope.spawn(move || {
                        execute_backup(
                            &job,
                            &claimed_backup(),
                            &Progress::default(),
                            &AtomicBool::new(false),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &reports {
            assert_eq!(
                r.status.phase,
                Some(Phase::Completed),
                "round {round}: {:?}",
                r.status.message
            );
        }
        let opened = Repository::open(&repo.location, &repo.password).unwrap();
        assert_eq!(
            opened.keys().unwrap().len(),
            1,
            "round {round}: one key file"
        );
        assert_eq!(opened.snapshots().unwrap().len(), 2, "round {round}");
    }
}

#[test]
fn first_tick_of_a_two_volume_pod_on_a_fresh_fs_repository() {
    let repo = repo_settings("{fs: {path: /placeholder}}", None);
    two_backups_of_a_fresh_repository_at_once(repo, 5);
}

#[test]
fn first_tick_of_a_two_volume_pod_on_a_fresh_s3_repository() {
    let Ok(endpoint) = std::env::var("PODVAULT_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").is_err(),
            "PODVAULT_TEST_S3_ENDPOINT must be set in CI (tests/run.sh starts the S3 server)"
        );
        eprintln!("skipped: PODVAULT_TEST_S3_ENDPOINT not set (run tests/run.sh)");
        return;
    };
    let bucket = std::env::var("PODVAULT_TEST_S3_BUCKET").unwrap();
    let prefix = format!("worker-first-tick-{}", std::process::id());
    let repo = repo_settings(
        &format!("{{s3: {{endpoint: '{endpoint}', bucket: {bucket}, prefix: {prefix}, pathStyle: true}}}}"),
        Some(("podvault-test", "podvault-test")),
    );
    two_backups_of_a_fresh_repository_at_once(repo, 3);
}
