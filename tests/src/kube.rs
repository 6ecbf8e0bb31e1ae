//! `kubectl` for the real-cluster tests: run it with an admin kubeconfig (optionally as
//! another user through impersonation), read objects as JSON, and poll until a condition
//! holds. Only what the e2e tests need; nothing here talks to the API server itself.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// kubectl with one admin kubeconfig.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `--as` for every call (impersonation), if set.
    pub as_user: Option<String>,
}

/// stderr without client/server version-skew warnings.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.contains("version difference") && !l.contains("WARNING: version"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Kubectl {
    /// kubectl with `kubeconfig`, as its own user.
    pub fn new(kubeconfig: PathBuf) -> Kubectl {
        Kubectl {
            kubeconfig,
            as_user: None,
        }
    }

    /// The same kubectl acting as `user` (e.g. `system:serviceaccount:ns:name`).
    pub fn as_user(&self, user: &str) -> Kubectl {
        Kubectl {
            kubeconfig: self.kubeconfig.clone(),
            as_user: Some(user.to_string()),
        }
    }

    /// Runs kubectl with `args` (and `stdin`), whatever its exit.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(u) = &self.as_user {
            c.arg(format!("--as={u}"));
        }
        c.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("run kubectl (is it on PATH?)");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_in(args, None)
    }

    /// kubectl with `stdin` that must succeed; returns stdout.
    pub fn ok_in(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?}{} failed ({:?}):\n{}{}",
            self.as_user
                .as_deref()
                .map(|u| format!(" as {u}"))
                .unwrap_or_default(),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            stderr_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of YAML or JSON text.
    pub fn apply(&self, text: &str) -> String {
        self.ok_in(&["apply", "-f", "-"], Some(text))
    }

    /// `kubectl create -f -` of a JSON object.
    pub fn create(&self, obj: &Value) -> String {
        self.ok_in(&["create", "-f", "-"], Some(&obj.to_string()))
    }

    /// The object as JSON; `None` when it does not exist.
    pub fn get(&self, kind: &str, name: &str, ns: &str) -> Option<Value> {
        let out = self.run(&["get", kind, name, "-n", ns, "-o", "json"], None);
        if !out.status.success() {
            let err = stderr_text(&out);
            assert!(
                err.contains("NotFound"),
                "kubectl get {kind} {ns}/{name}: {err}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl JSON"))
    }

    /// `kubectl get kind -n ns -o json` items.
    pub fn list(&self, kind: &str, ns: &str) -> Vec<Value> {
        let out = self.ok(&["get", kind, "-n", ns, "-o", "json"]);
        let v: Value = serde_json::from_str(&out).expect("kubectl JSON");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// `kubectl exec` in `ns/pod` (first container): exit status and stdout.
    pub fn exec(&self, ns: &str, pod: &str, cmd: &[&str]) -> (bool, String) {
        let mut args = vec!["exec", "-n", ns, pod, "--"];
        args.extend(cmd);
        let out = self.run(&args, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Polls `probe` every `interval` until it returns `Some`; panics with `what` on timeout.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}"
            );
            std::thread::sleep(interval);
        }
    }

    /// Waits until operation `kind` `ns/name` reaches a final phase; returns the object.
    pub fn wait_finished(&self, kind: &str, ns: &str, name: &str, timeout: Duration) -> Value {
        self.wait(
            &format!("{kind} {ns}/{name} to finish"),
            timeout,
            Duration::from_millis(500),
            || {
                let v = self.get(kind, name, ns)?;
                let phase = v["status"]["phase"].as_str().unwrap_or("New").to_string();
                ["Completed", "Failed", "Canceled"]
                    .contains(&phase.as_str())
                    .then_some(v)
            },
        )
    }
}

/// `status.<field>` as a string ("" when absent).
pub fn status(v: &Value, field: &str) -> String {
    v["status"][field].as_str().unwrap_or_default().to_string()
}
