//! The shipped alerts under promtool: `promtool check rules` on the rule file and on the
//! generated PrometheusRule's spec, and `promtool test rules` on
//! `deploy/prometheus/podvault-rules.test.yaml` (every alert: fires on the first failure after
//! an agent restart, on a never-succeeded series, on stuck PodVolumeBackups and on a missing
//! agent or controller; quiet after recovery and for deleted pods or retired series).
//!
//! promtool comes with Debian's `prometheus` package (`.ci/run` installs it). Without it the
//! test is skipped with a message, except under CI (`CI` set), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// `promtool`, or `None` (skip) when it is missing outside CI.
fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is not installed (apt-get install prometheus); CI must run the alert tests"
        );
        eprintln!(
            "SKIPPED: promtool not found (apt-get install prometheus); alert rules not tested"
        );
    }
    found
}

fn run(promtool: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {} {args:?}: {e}", promtool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rule_file_and_the_generated_prometheusrule() {
    let Some(promtool) = promtool() else { return };
    let dir = prometheus_dir();
    let out = run(&promtool, &["check", "rules", "podvault-rules.yaml"], &dir);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
    // The PrometheusRule's spec, as the Prometheus Operator hands it to Prometheus.
    let manifest: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("../monitoring/prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let tmp = std::env::temp_dir().join(format!("podvault-rules-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let spec = tmp.join("spec.yaml");
    std::fs::write(&spec, serde_yaml::to_string(&manifest["spec"]).unwrap()).unwrap();
    let out = run(&promtool, &["check", "rules", spec.to_str().unwrap()], &tmp);
    std::fs::remove_dir_all(&tmp).ok();
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
}

#[test]
fn promtool_unit_tests_cover_every_alert() {
    let Some(promtool) = promtool() else { return };
    let dir = prometheus_dir();
    let tests = std::fs::read_to_string(dir.join("podvault-rules.test.yaml")).unwrap();
    for alert in [
        "PodvaultBackupFailed",
        "PodvaultRestoreFailed",
        "PodvaultBackupStale",
        "PodvaultBackupStuck",
        "PodvaultAgentMissing",
        "PodvaultControllerMissing",
    ] {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "no promtool test expects {alert} to fire"
        );
    }
    let out = run(
        &promtool,
        &["test", "rules", "podvault-rules.test.yaml"],
        &dir,
    );
    assert!(out.contains("SUCCESS"), "{out}");
}
