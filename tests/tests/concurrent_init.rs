//! Many creators of one repository at the same second (every annotated pod ticks at once):
//! exactly one `init` wins, the others are told the repository already exists and write
//! nothing, and every process can then back up into the one repository that results.

use std::process::Output;

use podvault_tests::{init_args, Repo};

const CREATORS: usize = 6;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn key_count(repo: &Repo) -> usize {
    let out = repo.ok(&["key", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("key list JSON");
    v.as_array().expect("array of keys").len()
}

/// One round: `CREATORS` processes run `init` at once, then all back up at once.
fn race(repo: &Repo, round: usize) {
    let children: Vec<_> = (0..CREATORS)
        .map(|_| {
            repo.cmd(&init_args(&[]))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn init")
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().expect("init output"))
        .collect();
    let winners = outputs.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        winners,
        1,
        "round {round}: exactly one init must win; stderr: {:?}",
        outputs.iter().map(stderr).collect::<Vec<_>>()
    );
    for o in outputs.iter().filter(|o| !o.status.success()) {
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(o).contains("a podvault repository already exists at"),
            "round {round}: {}",
            stderr(o)
        );
    }
    assert_eq!(
        key_count(repo),
        1,
        "round {round}: losers leave no key file"
    );

    let tmp = tempfile::tempdir().unwrap();
    let backups: Vec<_> = (0..CREATORS)
        .map(|i| {
            let dir = tmp.path().join(format!("src-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("file"), format!("round {round} writer {i}")).unwrap();
            repo.cmd(&["backup", "--json", dir.to_str().unwrap()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn backup")
        })
        .collect();
    for b in backups {
        let o = b.wait_with_output().unwrap();
        assert!(o.status.success(), "round {round}: backup: {}", stderr(&o));
    }
    let snaps: serde_json::Value =
        serde_json::from_str(repo.ok(&["snapshots", "--json"]).trim()).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), CREATORS, "round {round}");
    repo.ok(&["check"]);

    // Someone else's password: told it exists, nothing written; its backups are refused.
    let mut other = repo.clone();
    other.password = "another password".into();
    let o = other.run(&init_args(&[]));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(key_count(repo), 1);
    let o = other.run(&["backup", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("wrong password"), "{}", stderr(&o));
}

#[test]
fn concurrent_init_on_a_local_directory_creates_one_repository() {
    for round in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        race(&Repo::fs(&tmp.path().join("repo")), round);
    }
}

#[test]
fn concurrent_init_on_s3_creates_one_repository() {
    for round in 0..3 {
        let Some(repo) = Repo::s3("concurrent-init") else {
            return;
        };
        race(&repo, round);
    }
}
