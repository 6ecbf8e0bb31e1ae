//! Smoke tests of the `podvault` binary's argument handling (the full black-box suite lives
//! in the workspace's `tests/` crate). Having an integration test here also makes
//! `cargo test --workspace` build the binary that suite runs.

use std::process::Command;

#[test]
fn help_and_usage_errors() {
    let bin = env!("CARGO_BIN_EXE_podvault");
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for verb in [
        "init",
        "backup",
        "snapshots",
        "ls",
        "diff",
        "restore",
        "forget",
    ] {
        assert!(text.contains(verb), "help lacks {verb}");
    }
    let out = Command::new(bin).args(["backup"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing paths is a usage error");
    let out = Command::new(bin)
        .args(["snapshots"])
        .env_remove("PODVAULT_REPOSITORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no repository given"));
}
