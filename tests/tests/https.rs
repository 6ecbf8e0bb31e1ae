//! TLS everywhere the binaries speak it, with one rustls provider for the whole process:
//! - `podvault agent` and `podvault-controller` pointed (by kubeconfig) at an HTTPS endpoint on
//!   127.0.0.1 start, do not panic, and exit with a clear error naming the API server;
//! - S3 over HTTPS through a TLS-terminating proxy with a private CA: refused without
//!   `--cacert`, a full init/backup/restore/check with it.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use podvault_tests::tls::{kubeconfig, Behind, TestCa, TlsFront};
use podvault_tests::{assert_same_tree, generate_tree, init_args, podvault_bin, Repo};

fn controller_bin() -> PathBuf {
    let bin = podvault_bin().with_file_name("podvault-controller");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p podvault-controller` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// `podvault agent` for node-a with only `KUBECONFIG=config` in its environment.
fn agent_cmd(config: &std::path::Path) -> Command {
    let mut agent = Command::new(podvault_bin());
    agent.env_clear().env("KUBECONFIG", config).args([
        "agent",
        "--node",
        "node-a",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    agent
}

/// Runs `cmd` for at most 60 s (a hang is a failure too).
fn run_bounded(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after 60 s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn agent_and_controller_report_an_api_error_over_https_instead_of_panicking() {
    let ca = TestCa::new();
    let unauthorized = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
    let front = TlsFront::start(&ca, Behind::Respond(401, unauthorized.into()));
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kubeconfig");
    std::fs::write(&config, kubeconfig(&front.url, &ca.ca_pem, "not-a-token")).unwrap();

    let agent = agent_cmd(&config);
    let mut controller = Command::new(controller_bin());
    controller
        .env_clear()
        .env("KUBECONFIG", &config)
        .args(["--metrics-addr", "127.0.0.1:0"]);
    for (name, cmd) in [("agent", agent), ("controller", controller)] {
        let out = run_bounded(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name} panicked: {err}");
        assert!(
            err.contains(&format!("Kubernetes API at {}", front.url))
                && err.contains("Unauthorized"),
            "{name}: the error names the API server and what it said: {err}"
        );
        // Plain text: no colour codes when stderr is not a terminal.
        assert!(!err.contains('\u{1b}'), "{name}: ANSI codes in {err:?}");
    }
}

#[test]
fn an_api_server_with_an_untrusted_certificate_is_refused_clearly() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let front = TlsFront::start(&ca, Behind::Respond(200, "{}".into()));
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kubeconfig");
    // Trusts another CA than the one that signed the server's certificate.
    std::fs::write(&config, kubeconfig(&front.url, &other.ca_pem, "t")).unwrap();
    let agent = agent_cmd(&config);
    let out = run_bounded(agent);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&front.url) && err.to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[test]
fn s3_over_https_with_a_private_ca() {
    let Some(mut repo) = Repo::s3("https") else {
        return;
    };
    let endpoint = repo
        .env
        .iter()
        .find(|(k, _)| k == "PODVAULT_S3_ENDPOINT")
        .map(|(_, v)| v.clone())
        .unwrap();
    let plain: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the test S3 endpoint is http://127.0.0.1:<port>");
    let ca = TestCa::new();
    let front = TlsFront::start(&ca, Behind::Forward(plain));
    for (k, v) in repo.env.iter_mut() {
        if k == "PODVAULT_S3_ENDPOINT" {
            *v = front.url.clone();
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("ca.pem");
    ca.write_ca(&bundle);

    // Without the CA: refused, naming the endpoint and the certificate problem.
    let out = repo.run(&init_args(&[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&front.url), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A file that is not a CA bundle: a clear error before any request.
    let junk = tmp.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let mut args = vec!["--cacert", junk.to_str().unwrap()];
    args.extend(init_args(&[]));
    let out = repo.run(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("junk.pem") && err.contains("certificate"),
        "{err}"
    );

    // With it: the whole round trip over HTTPS.
    repo.env
        .push(("PODVAULT_CACERT".into(), bundle.display().to_string()));
    repo.init();
    let src = tmp.path().join("src");
    generate_tree(&src, 7, 3 << 20);
    repo.ok(&["backup", src.to_str().unwrap()]);
    let dst = tmp.path().join("dst");
    repo.ok(&["restore", "latest", "--target", dst.to_str().unwrap()]);
    assert_same_tree(&src, &dst);
    repo.ok(&["check", "--read-data"]);
}
