//! Backup hooks: commands run in the pod's container around a volume backup, so the files
//! the backup reads are application-consistent (`fsfreeze`, `FLUSH TABLES WITH READ LOCK`,
//! `CHECKPOINT`, …).
//!
//! Annotations (Velero's `pre.hook.backup.velero.io/*` / `post.hook.backup.velero.io/*` are
//! accepted as aliases; for each of pre and post, when the podvault `command` is present the
//! podvault keys are read and the Velero ones ignored):
//!
//! | key | value | default |
//! |---|---|---|
//! | `pre.hook.backup.podvault.dev/command` | JSON array of strings; a value not starting with `[` is one word (Velero's rule) | none: no hook |
//! | `…/container` | container name | the pod's first container |
//! | `…/timeout` | duration (`30s`, `2m`, `1m30s`) | 30 s |
//! | `…/on-error` | `Fail` or `Continue` (any case) | `Fail` |
//!
//! Semantics ([`with_hooks`]):
//! - the pre hook runs first. Exit code 0: the backup runs. Otherwise (non-zero exit,
//!   timeout, unknown exit): with `Fail` the backup is not run and the PodVolumeBackup fails
//!   with reason `hook_failed` / `hook_timeout`, naming the hook, its exit and its stderr tail;
//!   with `Continue` the backup runs and the message notes the failure.
//! - the post hook ALWAYS runs when a pre hook ran or was attempted, whatever happened in
//!   between (pre hook failed, backup failed, backup canceled), and also alone when only a
//!   post hook is set. A failed post hook with `Fail` turns a completed backup into a failed
//!   PodVolumeBackup (`hook_failed`) — the snapshot is kept and named in the message, as it
//!   was taken while the pre hook held — because a post hook that did not run right usually
//!   means the application is still frozen, which deserves an alert. With `Continue` it is
//!   only noted.
//! - hooks run once per PodVolumeBackup, that is once per backed-up volume: a pod with two
//!   listed volumes gets pre, backup, post for each volume in turn. Simple and predictable;
//!   make hook commands idempotent.
//! - a timed-out hook has its exec connection closed; the process in the container may
//!   survive that unless the command bounds itself (e.g. `timeout 20 fsfreeze …`).
//! - a cancel abandons a pre hook still running (its connection is closed, the backup is not
//!   run, the PodVolumeBackup ends Canceled) and the post hook runs as always; a running post
//!   hook is never interrupted — it is what undoes the pre hook.
//! - hooks run only on the pod's own node's agent ([`exec_plan`] refuses a pod scheduled
//!   elsewhere), and only when the agent runs with `--allow-exec`; without it a PodVolumeBackup
//!   of a pod with hook or backup-command annotations fails with `exec_not_allowed` rather
//!   than silently backing up without the hook.
//!
//! The logical-dump annotations ([`BACKUP_COMMAND`] and friends, [`RESTORE_COMMAND`] and
//! friends) are parsed here too ([`parse_dump`], [`parse_restore_command`]); their command is
//! `/bin/sh -c <value>` unless the value is a JSON array. Every command the agent runs in a
//! pod comes from the pod's own annotations, never from a PodVolumeBackup or
//! PodVolumeRestore: only who may change the pod (and so its image) declares what runs in it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use podvault_proto::crd::OperationStatus;
use podvault_proto::k8s::{
    BACKUP_COMMAND, BACKUP_COMMAND_CONTAINER, BACKUP_COMMAND_TIMEOUT, HOOK_COMMAND, HOOK_CONTAINER,
    HOOK_ON_ERROR, HOOK_TIMEOUT, POST_HOOK_PREFIX, PRE_HOOK_PREFIX, RESTORE_COMMAND,
    RESTORE_COMMAND_CONTAINER, RESTORE_COMMAND_TIMEOUT, VELERO_POST_HOOK_PREFIX,
    VELERO_PRE_HOOK_PREFIX,
};

use super::exec::{exec, ExecOutput, ExecSpec, Exit, Stdout};
use super::outcome::{Failure, OpResult, Reason, Report};

/// Default hook timeout.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Default dump timeout.
pub const DEFAULT_DUMP_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bytes of a hook's stderr tail quoted in a status message (events cap notes at 1 KiB).
pub const MESSAGE_STDERR: usize = 512;

/// Before or after the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Before.
    Pre,
    /// After.
    Post,
}

impl When {
    /// `pre` / `post`.
    pub fn as_str(self) -> &'static str {
        match self {
            When::Pre => "pre",
            When::Post => "post",
        }
    }

    fn prefixes(self) -> [&'static str; 2] {
        match self {
            When::Pre => [PRE_HOOK_PREFIX, VELERO_PRE_HOOK_PREFIX],
            When::Post => [POST_HOOK_PREFIX, VELERO_POST_HOOK_PREFIX],
        }
    }
}

/// What a failed hook does to the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail the PodVolumeBackup (a failed pre hook also skips the backup).
    Fail,
    /// Note the failure and go on.
    Continue,
}

/// One parsed hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Pre or post.
    pub when: When,
    /// The annotation prefix it was read from (podvault's or Velero's).
    pub prefix: &'static str,
    /// Container to run it in.
    pub container: String,
    /// argv.
    pub command: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
    /// What a failure does.
    pub on_error: OnError,
}

impl Hook {
    /// The exec request for this hook in pod `namespace/pod`.
    pub fn exec_spec(&self, namespace: &str, pod: &str) -> ExecSpec {
        ExecSpec {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: self.container.clone(),
            command: self.command.clone(),
            timeout: self.timeout,
        }
    }

    /// `pre hook ["fsfreeze","--freeze","/data"] (pre.hook.backup.podvault.dev/command) in container "db"`.
    pub fn describe(&self) -> String {
        format!(
            "{} hook {} ({}{HOOK_COMMAND}) in container {:?}",
            self.when.as_str(),
            serde_json::to_string(&self.command).unwrap_or_default(),
            self.prefix,
            self.container
        )
    }
}

/// The hooks of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHooks {
    /// Runs before the backup.
    pub pre: Option<Hook>,
    /// Runs after the backup, always.
    pub post: Option<Hook>,
}

impl PodHooks {
    /// True when there is neither hook.
    pub fn is_empty(&self) -> bool {
        self.pre.is_none() && self.post.is_none()
    }
}

/// A logical dump: a command whose stdout is backed up as one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpCommand {
    /// Container to run it in.
    pub container: String,
    /// argv.
    pub command: Vec<String>,
    /// The file name in the snapshot.
    pub filename: String,
    /// How long it may run.
    pub timeout: Duration,
}

/// A malformed hook or dump annotation; each names the annotation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    /// The command is not a JSON array of strings.
    #[error("annotation {annotation}: not a JSON array of strings: {error}")]
    BadJson {
        /// The annotation.
        annotation: String,
        /// The parser's complaint.
        error: String,
    },
    /// The command is empty (or its first word is).
    #[error("annotation {annotation}: the command is empty")]
    EmptyCommand {
        /// The annotation.
        annotation: String,
    },
    /// The timeout is not a positive duration.
    #[error("annotation {annotation}: bad timeout {value:?} (want a duration such as 30s or 2m): {error}")]
    BadTimeout {
        /// The annotation.
        annotation: String,
        /// Its value.
        value: String,
        /// Why.
        error: String,
    },
    /// on-error is neither Fail nor Continue.
    #[error("annotation {annotation}: unknown on-error {value:?} (want Fail or Continue)")]
    UnknownOnError {
        /// The annotation.
        annotation: String,
        /// Its value.
        value: String,
    },
    /// The named container is not in the pod.
    #[error("annotation {annotation}: the pod has no container {container:?} (it has {have:?})")]
    UnknownContainer {
        /// The annotation.
        annotation: String,
        /// The name given.
        container: String,
        /// The pod's containers.
        have: Vec<String>,
    },
    /// The pod has no containers (so no default container).
    #[error("annotation {annotation}: the pod has no container to run it in")]
    NoContainer {
        /// The annotation.
        annotation: String,
    },
    /// The dump's name is unusable.
    #[error(transparent)]
    BadFilename(#[from] podvault_proto::k8s::DumpNameError),
}

/// A hook command: a JSON array of strings, or one bare word.
fn parse_command(annotation: &str, value: &str) -> Result<Vec<String>, HookError> {
    let v = value.trim();
    let command: Vec<String> = if v.starts_with('[') {
        serde_json::from_str(v).map_err(|e| HookError::BadJson {
            annotation: annotation.to_string(),
            error: e.to_string(),
        })?
    } else {
        vec![v.to_string()]
    };
    if command.first().is_none_or(|c| c.trim().is_empty()) {
        return Err(HookError::EmptyCommand {
            annotation: annotation.to_string(),
        });
    }
    Ok(command)
}

fn parse_timeout(
    annotation: &str,
    value: Option<&String>,
    default: Duration,
) -> Result<Duration, HookError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let bad = |error: String| HookError::BadTimeout {
        annotation: annotation.to_string(),
        value: value.clone(),
        error,
    };
    let d = humantime::parse_duration(value.trim()).map_err(|e| bad(e.to_string()))?;
    if d.is_zero() {
        return Err(bad("must be more than zero".into()));
    }
    Ok(d)
}

fn container_of(
    annotation: &str,
    value: Option<&String>,
    containers: &[String],
) -> Result<String, HookError> {
    match value.map(|v| v.trim()).filter(|v| !v.is_empty()) {
        Some(c) if containers.iter().any(|have| have == c) => Ok(c.to_string()),
        Some(c) => Err(HookError::UnknownContainer {
            annotation: annotation.to_string(),
            container: c.to_string(),
            have: containers.to_vec(),
        }),
        None => containers
            .first()
            .cloned()
            .ok_or_else(|| HookError::NoContainer {
                annotation: annotation.to_string(),
            }),
    }
}

/// The `when` hook of a pod with these annotations and containers (first is the default);
/// `Ok(None)` when there is none.
pub fn parse_hook(
    annotations: &BTreeMap<String, String>,
    when: When,
    containers: &[String],
) -> Result<Option<Hook>, HookError> {
    let Some(prefix) = when
        .prefixes()
        .into_iter()
        .find(|p| annotations.contains_key(&format!("{p}{HOOK_COMMAND}")))
    else {
        return Ok(None);
    };
    let key = |k: &str| format!("{prefix}{k}");
    let get = |k: &str| annotations.get(&key(k));
    let command_key = key(HOOK_COMMAND);
    let command = parse_command(&command_key, &annotations[&command_key])?;
    let container = container_of(&key(HOOK_CONTAINER), get(HOOK_CONTAINER), containers)?;
    let timeout = parse_timeout(&key(HOOK_TIMEOUT), get(HOOK_TIMEOUT), DEFAULT_HOOK_TIMEOUT)?;
    let on_error = match get(HOOK_ON_ERROR).map(|v| v.trim().to_ascii_lowercase()) {
        None => OnError::Fail,
        Some(v) if v == "fail" => OnError::Fail,
        Some(v) if v == "continue" => OnError::Continue,
        Some(_) => {
            return Err(HookError::UnknownOnError {
                annotation: key(HOOK_ON_ERROR),
                value: get(HOOK_ON_ERROR).cloned().unwrap_or_default(),
            })
        }
    };
    Ok(Some(Hook {
        when,
        prefix,
        container,
        command,
        timeout,
        on_error,
    }))
}

/// Both hooks of a pod.
pub fn parse_hooks(
    annotations: &BTreeMap<String, String>,
    containers: &[String],
) -> Result<PodHooks, HookError> {
    Ok(PodHooks {
        pre: parse_hook(annotations, When::Pre, containers)?,
        post: parse_hook(annotations, When::Post, containers)?,
    })
}

/// The dump command of a pod named `pod`; `Ok(None)` without [`BACKUP_COMMAND`]. A value
/// that is a JSON array is the argv; anything else runs as `/bin/sh -c <value>`.
pub fn parse_dump(
    annotations: &BTreeMap<String, String>,
    pod: &str,
    containers: &[String],
    volumes: &[String],
) -> Result<Option<DumpCommand>, HookError> {
    let Some(value) = annotations.get(BACKUP_COMMAND) else {
        return Ok(None);
    };
    let filename = podvault_proto::k8s::dump_name(annotations, pod, volumes)?.unwrap_or_default();
    let command = if value.trim().starts_with('[') {
        parse_command(BACKUP_COMMAND, value)?
    } else if value.trim().is_empty() {
        return Err(HookError::EmptyCommand {
            annotation: BACKUP_COMMAND.into(),
        });
    } else {
        vec!["/bin/sh".into(), "-c".into(), value.trim().to_string()]
    };
    let container = container_of(
        BACKUP_COMMAND_CONTAINER,
        annotations.get(BACKUP_COMMAND_CONTAINER),
        containers,
    )?;
    let timeout = parse_timeout(
        BACKUP_COMMAND_TIMEOUT,
        annotations.get(BACKUP_COMMAND_TIMEOUT),
        DEFAULT_DUMP_TIMEOUT,
    )?;
    Ok(Some(DumpCommand {
        container,
        command,
        filename,
        timeout,
    }))
}

/// The restore command declared by the annotations of a pod with `containers`:
/// [`RESTORE_COMMAND`] (JSON argv or a shell command), in [`RESTORE_COMMAND_CONTAINER`] (else
/// the backup command's container, else the first), for at most [`RESTORE_COMMAND_TIMEOUT`]
/// (default 1 h). `None` when the pod declares none. The returned `filename` is empty.
pub fn parse_restore_command(
    annotations: &BTreeMap<String, String>,
    containers: &[String],
) -> Result<Option<DumpCommand>, HookError> {
    let Some(value) = annotations.get(RESTORE_COMMAND) else {
        return Ok(None);
    };
    let command = if value.trim().starts_with('[') {
        parse_command(RESTORE_COMMAND, value)?
    } else if value.trim().is_empty() {
        return Err(HookError::EmptyCommand {
            annotation: RESTORE_COMMAND.into(),
        });
    } else {
        vec!["/bin/sh".into(), "-c".into(), value.trim().to_string()]
    };
    let (key, named) = match annotations.get(RESTORE_COMMAND_CONTAINER) {
        Some(c) => (RESTORE_COMMAND_CONTAINER, Some(c)),
        None => (
            BACKUP_COMMAND_CONTAINER,
            annotations.get(BACKUP_COMMAND_CONTAINER),
        ),
    };
    let container = container_of(key, named, containers)?;
    let timeout = parse_timeout(
        RESTORE_COMMAND_TIMEOUT,
        annotations.get(RESTORE_COMMAND_TIMEOUT),
        DEFAULT_DUMP_TIMEOUT,
    )?;
    Ok(Some(DumpCommand {
        container,
        command,
        filename: String::new(),
        timeout,
    }))
}

/// True when the pod asks for anything that needs `pods/exec` (hooks or a dump), even if
/// the annotation is malformed.
pub fn wants_exec(annotations: &BTreeMap<String, String>) -> Option<String> {
    let mut keys = vec![BACKUP_COMMAND.to_string()];
    for when in [When::Pre, When::Post] {
        for p in when.prefixes() {
            keys.push(format!("{p}{HOOK_COMMAND}"));
        }
    }
    keys.into_iter().find(|k| annotations.contains_key(k))
}

/// The hooks to run for a backup of a volume of `pod` by the agent of `node`, refusing what
/// must not run: a pod scheduled to another node (an agent only ever execs into its own
/// node's pods), exec annotations when exec is not allowed, malformed annotations.
pub fn exec_plan(pod: &Pod, node: &str, allow_exec: bool) -> Result<PodHooks, Failure> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let Some(key) = wants_exec(annotations) else {
        return Ok(PodHooks::default());
    };
    let pod_node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default();
    if pod_node != node {
        return Err(Failure::new(
            Reason::PodMoved,
            format!("pod {ns}/{name} is on node {pod_node:?}, not {node:?}: its hooks run only on its own node"),
        ));
    }
    if !allow_exec {
        return Err(Failure::new(
            Reason::ExecNotAllowed,
            format!(
                "pod {ns}/{name} has annotation {key}, but the agent on node {node} runs without \
                 --allow-exec (chart: agent.hooks.enabled); not backing up without its hook"
            ),
        ));
    }
    let containers = container_names(pod);
    let invalid = |e: HookError| Failure::new(Reason::InvalidHook, format!("pod {ns}/{name}: {e}"));
    // A bad dump annotation is reported too, even though this backup is a volume's.
    parse_dump(annotations, name, &containers, &volume_names(pod)).map_err(invalid)?;
    parse_hooks(annotations, &containers).map_err(invalid)
}

/// The names of the pod's containers, in order.
pub fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// The names in the pod's `spec.volumes`.
pub fn volume_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .map(|vs| vs.iter().map(|v| v.name.clone()).collect())
        .unwrap_or_default()
}

/// The failure a hook's run amounts to, `None` when it exited 0.
pub fn hook_failure(hook: &Hook, pod_ref: &str, out: &ExecOutput) -> Option<Failure> {
    if out.exit.success() {
        return None;
    }
    let reason = match out.exit {
        Exit::TimedOut(_) => Reason::HookTimeout,
        _ => Reason::HookFailed,
    };
    let mut message = format!("{} of pod {pod_ref} failed: {}", hook.describe(), out.exit);
    if matches!(out.exit, Exit::TimedOut(_)) {
        message.push_str(" (connection closed; the process may still run in the container)");
    }
    message.push_str(&out.stderr_note());
    Some(Failure::new(reason, message))
}

/// Runs hook commands (the seam tests replace).
pub trait HookRunner: Sync {
    /// Runs `spec` and reports how it ended.
    fn run(&self, spec: ExecSpec) -> impl Future<Output = ExecOutput> + Send;
}

/// Runs hooks through the API server's `pods/exec`.
pub struct KubeExec(pub Client);

impl HookRunner for KubeExec {
    fn run(&self, spec: ExecSpec) -> impl Future<Output = ExecOutput> + Send {
        let client = self.0.clone();
        async move { exec(&client, &spec, Stdout::Tail).await }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn append(report: &mut Report, note: &str) {
    let m = report.status.message.get_or_insert_with(String::new);
    if !m.is_empty() {
        m.push_str("; ");
    }
    m.push_str(note);
}

/// Runs a backup between its pod's hooks (see the module doc for the rules): pre hook, then
/// `backup()` unless the pre hook failed with `Fail` or `cancel` was set meanwhile, then the
/// post hook in every case. `pod_ref` is `namespace/name`; `base` the claimed status.
pub async fn with_hooks<R, F>(
    hooks: &PodHooks,
    pod_ref: &str,
    runner: &R,
    cancel: &AtomicBool,
    base: &OperationStatus,
    backup: impl FnOnce() -> F,
) -> Report
where
    R: HookRunner,
    F: Future<Output = Report>,
{
    let (ns, name) = pod_ref.split_once('/').unwrap_or(("", pod_ref));
    let mut notes = Vec::new();
    let mut stop: Option<Failure> = None;
    if let Some(pre) = &hooks.pre {
        // A cancel abandons a pre hook still running (dropping it closes its connection);
        // the post hook below runs all the same, so whatever the pre hook did is undone.
        let out = tokio::select! {
            biased;
            out = runner.run(pre.exec_spec(ns, name)) => Some(out),
            () = canceled(cancel) => None,
        };
        let Some(out) = out else {
            let f = Failure::new(
                Reason::Canceled,
                format!(
                    "canceled while the {} ran (its connection was closed); no snapshot was written",
                    pre.describe()
                ),
            );
            let mut report = Report::failed(base, f, now());
            run_post(hooks, pod_ref, runner, &mut report).await;
            return report;
        };
        if let Some(f) = hook_failure(pre, pod_ref, &out) {
            match pre.on_error {
                OnError::Fail => {
                    stop = Some(Failure::new(
                        f.reason,
                        format!("{}; the backup was not run", f.message),
                    ))
                }
                OnError::Continue => notes.push(format!("{} (on-error Continue)", f.message)),
            }
        }
    }
    if stop.is_none() && cancel.load(Ordering::Relaxed) {
        stop = Some(Failure::new(
            Reason::Canceled,
            "canceled; no snapshot was written",
        ));
    }
    let mut report = match stop {
        Some(f) => Report::failed(base, f, now()),
        None => backup().await,
    };
    for n in &notes {
        append(&mut report, n);
    }
    run_post(hooks, pod_ref, runner, &mut report).await;
    debug_assert!(report.result != OpResult::Completed || report.reason.is_none());
    report
}

/// Resolves once `flag` is set (checked every 100 ms).
async fn canceled(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the post hook, if any, and folds its failure into `report` (see the module doc).
async fn run_post<R: HookRunner>(hooks: &PodHooks, pod_ref: &str, runner: &R, report: &mut Report) {
    let (ns, name) = pod_ref.split_once('/').unwrap_or(("", pod_ref));
    if let Some(post) = &hooks.post {
        let out = runner.run(post.exec_spec(ns, name)).await;
        if let Some(f) = hook_failure(post, pod_ref, &out) {
            match (post.on_error, report.result.succeeded()) {
                (OnError::Fail, true) => {
                    let saved = report.status.message.clone().unwrap_or_default();
                    let mut failed = Report::failed(
                        &report.status,
                        Failure::new(
                            f.reason,
                            format!("{}; the backup itself succeeded ({saved})", f.message),
                        ),
                        now(),
                    );
                    failed.series = report.series.take();
                    failed.bytes_read = report.bytes_read;
                    failed.bytes_added = report.bytes_added;
                    *report = failed;
                }
                (OnError::Fail, false) => append(report, &f.message),
                (OnError::Continue, _) => {
                    append(report, &format!("{} (on-error Continue)", f.message))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podvault_proto::k8s::BACKUP_COMMAND_FILENAME;
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use podvault_proto::crd::Phase;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn containers() -> Vec<String> {
        vec!["db".into(), "sidecar".into()]
    }

    const PRE: &str = "pre.hook.backup.podvault.dev/command";
    const POST: &str = "post.hook.backup.podvault.dev/command";

    #[test]
    fn defaults_and_all_keys() {
        let a = ann(&[(PRE, r#"["/bin/sh","-c","fsfreeze --freeze /data"]"#)]);
        let h = parse_hook(&a, When::Pre, &containers()).unwrap().unwrap();
        assert_eq!(h.command, vec!["/bin/sh", "-c", "fsfreeze --freeze /data"]);
        assert_eq!(h.container, "db");
        assert_eq!(h.timeout, DEFAULT_HOOK_TIMEOUT);
        assert_eq!(h.on_error, OnError::Fail);
        assert_eq!(parse_hook(&a, When::Post, &containers()).unwrap(), None);

        let a = ann(&[
            (POST, "/usr/bin/unfreeze"),
            ("post.hook.backup.podvault.dev/container", "sidecar"),
            ("post.hook.backup.podvault.dev/timeout", "1m30s"),
            ("post.hook.backup.podvault.dev/on-error", "continue"),
        ]);
        let h = parse_hook(&a, When::Post, &containers()).unwrap().unwrap();
        assert_eq!(h.command, vec!["/usr/bin/unfreeze"]);
        assert_eq!(h.container, "sidecar");
        assert_eq!(h.timeout, Duration::from_secs(90));
        assert_eq!(h.on_error, OnError::Continue);
    }

    #[test]
    fn velero_aliases_and_podvault_precedence() {
        let a = ann(&[
            ("pre.hook.backup.velero.io/command", r#"["velero-freeze"]"#),
            ("pre.hook.backup.velero.io/timeout", "5s"),
        ]);
        let h = parse_hook(&a, When::Pre, &containers()).unwrap().unwrap();
        assert_eq!(h.command, vec!["velero-freeze"]);
        assert_eq!(h.prefix, VELERO_PRE_HOOK_PREFIX);
        assert_eq!(h.timeout, Duration::from_secs(5));

        let mut both = a.clone();
        both.insert(PRE.into(), r#"["podvault-freeze"]"#.into());
        let h = parse_hook(&both, When::Pre, &containers())
            .unwrap()
            .unwrap();
        assert_eq!(h.command, vec!["podvault-freeze"]);
        // Keys come from the winning prefix only.
        assert_eq!(h.timeout, DEFAULT_HOOK_TIMEOUT);
    }

    #[test]
    fn errors_name_the_annotation() {
        let bad = |pairs: &[(&str, &str)]| {
            parse_hooks(&ann(pairs), &containers())
                .unwrap_err()
                .to_string()
        };
        let e = bad(&[(PRE, r#"["a", 1]"#)]);
        assert!(e.contains(PRE) && e.contains("JSON"), "{e}");
        let e = bad(&[(PRE, "[]")]);
        assert!(e.contains(PRE) && e.contains("empty"), "{e}");
        let e = bad(&[(POST, "  ")]);
        assert!(e.contains(POST) && e.contains("empty"), "{e}");
        let e = bad(&[(PRE, "x"), ("pre.hook.backup.podvault.dev/timeout", "soon")]);
        assert!(
            e.contains("pre.hook.backup.podvault.dev/timeout") && e.contains("soon"),
            "{e}"
        );
        let e = bad(&[(PRE, "x"), ("pre.hook.backup.podvault.dev/timeout", "0s")]);
        assert!(e.contains("more than zero"), "{e}");
        let e = bad(&[
            (PRE, "x"),
            ("pre.hook.backup.podvault.dev/on-error", "Ignore"),
        ]);
        assert!(e.contains("on-error") && e.contains("Ignore"), "{e}");
        let e = bad(&[
            (PRE, "x"),
            ("pre.hook.backup.podvault.dev/container", "web"),
        ]);
        assert!(e.contains("no container \"web\""), "{e}");
        let e = parse_hooks(&ann(&[(PRE, "x")]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no container"), "{e}");
    }

    #[test]
    fn dump_annotations() {
        let a = ann(&[(BACKUP_COMMAND, "pg_dumpall -U postgres")]);
        let d = parse_dump(&a, "pg-0", &containers(), &[]).unwrap().unwrap();
        assert_eq!(d.command, vec!["/bin/sh", "-c", "pg_dumpall -U postgres"]);
        assert_eq!(
            (d.container.as_str(), d.filename.as_str()),
            ("db", "pg-0.dump")
        );
        assert_eq!(d.timeout, DEFAULT_DUMP_TIMEOUT);
        let a = ann(&[
            (BACKUP_COMMAND, r#"["pg_dump","app"]"#),
            (BACKUP_COMMAND_FILENAME, "app.sql"),
            (BACKUP_COMMAND_TIMEOUT, "3h"),
        ]);
        let d = parse_dump(&a, "pg-0", &containers(), &[]).unwrap().unwrap();
        assert_eq!(d.command, vec!["pg_dump", "app"]);
        assert_eq!(d.filename, "app.sql");
        assert_eq!(d.timeout, Duration::from_secs(3 * 3600));
        let e = parse_dump(
            &ann(&[(BACKUP_COMMAND, "x"), (BACKUP_COMMAND_FILENAME, "../etc")]),
            "p",
            &containers(),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains(BACKUP_COMMAND_FILENAME), "{e}");
        let e = parse_dump(
            &ann(&[(BACKUP_COMMAND, "x"), (BACKUP_COMMAND_FILENAME, "data")]),
            "p",
            &containers(),
            &["data".to_string()],
        )
        .unwrap_err();
        assert!(e.to_string().contains("volumes"), "{e}");
        assert!(e.to_string().contains(BACKUP_COMMAND_FILENAME), "{e}");
        assert_eq!(parse_dump(&ann(&[]), "p", &containers(), &[]), Ok(None));
    }

    fn pod(node: &str, pairs: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = Some("ns".into());
        p.metadata.name = Some("pg-0".into());
        p.metadata.annotations = Some(ann(pairs));
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "db".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        p
    }

    #[test]
    fn exec_plan_refuses_other_nodes_disallowed_exec_and_bad_annotations() {
        assert_eq!(
            exec_plan(&pod("n1", &[]), "n1", false).unwrap(),
            PodHooks::default()
        );
        // No exec wanted: nothing to refuse, whatever the node (placement is decided elsewhere).
        assert!(exec_plan(&pod("n2", &[]), "n1", true).is_ok());
        let hooked = pod("n1", &[(PRE, "freeze")]);
        assert!(exec_plan(&hooked, "n1", true).unwrap().pre.is_some());
        let f = exec_plan(&pod("n2", &[(PRE, "freeze")]), "n1", true).unwrap_err();
        assert_eq!(f.reason, Reason::PodMoved);
        let f = exec_plan(&hooked, "n1", false).unwrap_err();
        assert_eq!(f.reason, Reason::ExecNotAllowed);
        assert!(
            f.message.contains("--allow-exec") && f.message.contains(PRE),
            "{}",
            f.message
        );
        let f = exec_plan(&pod("n1", &[(BACKUP_COMMAND, "pg_dumpall")]), "n1", false).unwrap_err();
        assert_eq!(f.reason, Reason::ExecNotAllowed);
        let f = exec_plan(&pod("n1", &[(POST, "[1]")]), "n1", true).unwrap_err();
        assert_eq!(f.reason, Reason::InvalidHook);
        assert!(
            f.message.contains("ns/pg-0") && f.message.contains(POST),
            "{}",
            f.message
        );
    }

    /// Records what ran, in order; answers each command by its first word.
    #[derive(Default)]
    struct Script {
        log: Mutex<Vec<String>>,
    }

    impl HookRunner for Script {
        fn run(&self, spec: ExecSpec) -> impl Future<Output = ExecOutput> + Send {
            self.log.lock().unwrap().push(spec.command[0].clone());
            let block = spec.command[0] == "block";
            let exit = match spec.command[0].as_str() {
                "ok" | "block" => Exit::Code(0),
                "fail" => Exit::Code(3),
                "hang" => Exit::TimedOut(spec.timeout),
                _ => Exit::Unknown("connection refused".into()),
            };
            async move {
                if block {
                    std::future::pending::<()>().await;
                }
                ExecOutput {
                    exit,
                    stdout_tail: Vec::new(),
                    stderr_tail: b"fsfreeze: /data: Operation not permitted\n".to_vec(),
                    stdout_bytes: 0,
                    started: true,
                }
            }
        }
    }

    fn hook(when: When, word: &str, on_error: OnError) -> Option<Hook> {
        Some(Hook {
            when,
            prefix: if when == When::Pre {
                PRE_HOOK_PREFIX
            } else {
                POST_HOOK_PREFIX
            },
            container: "db".into(),
            command: vec![word.into()],
            timeout: Duration::from_secs(30),
            on_error,
        })
    }

    fn completed(base: &OperationStatus) -> Report {
        let mut r = Report::pending(base);
        r.status.phase = Some(Phase::Completed);
        r.status.message = Some("snapshot 1234abcd saved".into());
        r.status.snapshot_id = Some("1234abcd".into());
        r
    }

    fn failed(base: &OperationStatus, reason: Reason) -> Report {
        Report::failed(base, Failure::new(reason, "backup failed"), now())
    }

    /// Runs `with_hooks` with the script; returns the report and the log (the backup is `B`).
    fn run(
        pre: Option<Hook>,
        post: Option<Hook>,
        backup: impl FnOnce(&OperationStatus) -> Report,
        cancel: bool,
    ) -> (Report, Vec<String>) {
        let script = Script::default();
        let hooks = PodHooks { pre, post };
        let base = OperationStatus::default();
        let cancel = AtomicBool::new(cancel);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let report = rt.block_on(with_hooks(
            &hooks,
            "ns/pg-0",
            &script,
            &cancel,
            &base,
            || {
                script.log.lock().unwrap().push("BACKUP".into());
                let r = backup(&base);
                async move { r }
            },
        ));
        let log = script.log.into_inner().unwrap();
        (report, log)
    }

    #[test]
    fn pre_backup_post_in_order() {
        let (r, log) = run(
            hook(When::Pre, "ok", OnError::Fail),
            hook(When::Post, "ok", OnError::Fail),
            completed,
            false,
        );
        assert_eq!(log, ["ok", "BACKUP", "ok"]);
        assert_eq!(r.result, OpResult::Completed);
        assert_eq!(r.status.message.as_deref(), Some("snapshot 1234abcd saved"));
    }

    #[test]
    fn failed_pre_hook_skips_the_backup_but_runs_the_post_hook() {
        let (r, log) = run(
            hook(When::Pre, "fail", OnError::Fail),
            hook(When::Post, "ok", OnError::Fail),
            completed,
            false,
        );
        assert_eq!(log, ["fail", "ok"]);
        assert_eq!(r.result, OpResult::Failed);
        assert_eq!(r.reason, Some(Reason::HookFailed));
        assert_eq!(r.status.reason.as_deref(), Some("hook_failed"));
        let m = r.status.message.unwrap();
        for part in [
            "pre hook",
            "[\"fail\"]",
            "exit code 3",
            "Operation not permitted",
            "not run",
        ] {
            assert!(m.contains(part), "{m}");
        }
        assert_eq!(r.status.snapshot_id, None);
    }

    #[test]
    fn pre_hook_timeout_is_its_own_reason() {
        let (r, log) = run(
            hook(When::Pre, "hang", OnError::Fail),
            None,
            completed,
            false,
        );
        assert_eq!(log, ["hang"]);
        assert_eq!(r.reason, Some(Reason::HookTimeout));
        let m = r.status.message.unwrap();
        assert!(
            m.contains("timed out after 30s") && m.contains("may still run"),
            "{m}"
        );
    }

    #[test]
    fn continue_runs_the_backup_and_notes_the_failure() {
        let (r, log) = run(
            hook(When::Pre, "fail", OnError::Continue),
            hook(When::Post, "lost", OnError::Continue),
            completed,
            false,
        );
        assert_eq!(log, ["fail", "BACKUP", "lost"]);
        assert_eq!(r.result, OpResult::Completed);
        let m = r.status.message.unwrap();
        assert!(m.starts_with("snapshot 1234abcd saved; pre hook"), "{m}");
        assert!(
            m.contains("exit status unknown (connection refused)"),
            "{m}"
        );
        assert_eq!(m.matches("on-error Continue").count(), 2, "{m}");
    }

    #[test]
    fn post_hook_runs_after_a_failed_or_canceled_backup() {
        let (r, log) = run(
            hook(When::Pre, "ok", OnError::Fail),
            hook(When::Post, "ok", OnError::Fail),
            |b| failed(b, Reason::Backend),
            false,
        );
        assert_eq!(log, ["ok", "BACKUP", "ok"]);
        assert_eq!(r.reason, Some(Reason::Backend));
        let (r, log) = run(
            hook(When::Pre, "ok", OnError::Fail),
            hook(When::Post, "fail", OnError::Fail),
            |b| failed(b, Reason::Canceled),
            false,
        );
        assert_eq!(log, ["ok", "BACKUP", "fail"]);
        // The first cause stays the reason; the post hook failure is appended.
        assert_eq!(r.result, OpResult::Canceled);
        assert!(r.status.message.unwrap().contains("post hook"));
        // Canceled between pre hook and backup: no backup, post hook still runs.
        let (r, log) = run(
            hook(When::Pre, "ok", OnError::Fail),
            hook(When::Post, "ok", OnError::Fail),
            completed,
            true,
        );
        assert_eq!(log, ["ok", "ok"]);
        assert_eq!(r.result, OpResult::Canceled);
        // Canceled while the pre hook runs (it never ends here): the hook is abandoned, no
        // backup, the post hook still runs.
        let (r, log) = run(
            hook(When::Pre, "block", OnError::Fail),
            hook(When::Post, "ok", OnError::Fail),
            completed,
            true,
        );
        assert_eq!(log, ["block", "ok"]);
        assert_eq!(r.result, OpResult::Canceled);
        let m = r.status.message.unwrap();
        assert!(
            m.contains("while the pre hook") && m.contains("no snapshot"),
            "{m}"
        );
    }

    #[test]
    fn failed_post_hook_fails_a_completed_backup_but_names_its_snapshot() {
        let (r, log) = run(
            None,
            hook(When::Post, "hang", OnError::Fail),
            completed,
            false,
        );
        assert_eq!(log, ["BACKUP", "hang"]);
        assert_eq!(r.result, OpResult::Failed);
        assert_eq!(r.reason, Some(Reason::HookTimeout));
        assert_eq!(r.status.phase, Some(Phase::Failed));
        assert_eq!(r.status.snapshot_id.as_deref(), Some("1234abcd"));
        let m = r.status.message.unwrap();
        assert!(
            m.contains("post hook") && m.contains("snapshot 1234abcd saved"),
            "{m}"
        );
    }

    #[test]
    fn no_hooks_is_just_the_backup() {
        let (r, log) = run(None, None, completed, false);
        assert_eq!(log, ["BACKUP"]);
        assert_eq!(r.result, OpResult::Completed);
    }

    #[test]
    fn restore_command_comes_from_the_pod() {
        let containers = vec!["app".to_string(), "sidecar".to_string()];
        let none = BTreeMap::new();
        assert_eq!(parse_restore_command(&none, &containers).unwrap(), None);
        let shell: BTreeMap<String, String> = [(
            RESTORE_COMMAND.to_string(),
            "psql -U postgres -d postgres".to_string(),
        )]
        .into();
        let d = parse_restore_command(&shell, &containers).unwrap().unwrap();
        assert_eq!(d.command, ["/bin/sh", "-c", "psql -U postgres -d postgres"]);
        assert_eq!(d.container, "app");
        assert_eq!(d.timeout, DEFAULT_DUMP_TIMEOUT);
        // The backup command's container, unless the restore command names its own.
        let mut a = shell.clone();
        a.insert(BACKUP_COMMAND_CONTAINER.into(), "sidecar".into());
        a.insert(RESTORE_COMMAND_TIMEOUT.into(), "10m".into());
        let d = parse_restore_command(&a, &containers).unwrap().unwrap();
        assert_eq!(d.container, "sidecar");
        assert_eq!(d.timeout, Duration::from_secs(600));
        a.insert(RESTORE_COMMAND_CONTAINER.into(), "app".into());
        assert_eq!(
            parse_restore_command(&a, &containers)
                .unwrap()
                .unwrap()
                .container,
            "app"
        );
        a.insert(RESTORE_COMMAND_CONTAINER.into(), "nope".into());
        let err = parse_restore_command(&a, &containers).unwrap_err();
        assert!(err.to_string().contains(RESTORE_COMMAND_CONTAINER), "{err}");
        let argv: BTreeMap<String, String> =
            [(RESTORE_COMMAND.to_string(), r#"["psql","-X"]"#.to_string())].into();
        assert_eq!(
            parse_restore_command(&argv, &containers)
                .unwrap()
                .unwrap()
                .command,
            ["psql", "-X"]
        );
        let empty: BTreeMap<String, String> = [(RESTORE_COMMAND.to_string(), " ".into())].into();
        assert!(parse_restore_command(&empty, &containers).is_err());
    }
}
