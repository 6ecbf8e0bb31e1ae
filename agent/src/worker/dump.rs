//! Logical dumps: a pod's `backup.podvault.dev/backup-command` runs in its container through
//! `pods/exec` and its stdout becomes a one-file snapshot (`backup-command-filename`, default
//! `<pod>.dump`).
//!
//! [`dump_with`] is the glue: it starts the command, hands its stdout as a blocking, bounded
//! [`StreamReader`] to a `save` function on a blocking thread, and turns the command's exit
//! and `save`'s result into one outcome. The reader fails instead of ending unless the command
//! exited 0, so a `save` that writes a snapshot only after reading to EOF writes none for a
//! failed, timed-out or cut-off dump; and a failed command fails the dump even if `save`
//! returned early.
//!
//! [`save_stream`] is the `save` that stores the stream with the engine's
//! [`crate::archiver::backup_stream`]; [`execute_dump`] runs a PodVolumeBackup with
//! `spec.dump` (the controller creates one per tick for a pod with a backup command) and
//! turns the result into its final status, like a volume backup's.
//!
//! [`execute_dump_restore`] is the way back: a PodVolumeRestore with `spec.dump` streams the
//! dump file of a snapshot into the restore command the pod declares (annotation
//! `backup.podvault.dev/restore-command`, e.g. `psql`), through `pods/exec` with standard
//! input. A PodVolumeRestore selects that command; it can never define one. The command sees EOF only after the whole dump was read and
//! verified; a dump that cannot be read to its end closes the connection instead, so the
//! command never mistakes a cut-off dump for a complete one (what it applied before that is
//! the command's business: use `psql --single-transaction -v ON_ERROR_STOP=1`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use podvault_proto::crd::{OperationStatus, PodVolumeBackupSpec, PodVolumeRestoreSpec};
use podvault_proto::k8s::{
    check_user_tags, dump_identity, Series, BACKUP_COMMAND, BACKUP_COMMAND_FILENAME,
    RESTORE_COMMAND,
};
use podvault_proto::snapshot::Identity;

use super::exec::{exec_io, run_streamed, ExecSpec, Exit, Stdin, Stdout, StreamReader};
use super::hooks::{container_names, DumpCommand};
use super::outcome::{Failure, Reason, Report};
use super::prepare::Prepared;
use super::repo::RepoSettings;
use crate::progress::Progress;

/// Runs `dump` in `namespace/pod` and saves its stdout with `save`; `Ok` carries what `save`
/// returned.
pub async fn dump_with<T: Send + 'static>(
    client: Client,
    namespace: &str,
    pod: &str,
    dump: &DumpCommand,
    save: impl FnOnce(StreamReader) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let spec = ExecSpec {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: dump.container.clone(),
        command: dump.command.clone(),
        timeout: dump.timeout,
    };
    let (saved, out) = run_streamed(client, spec, save).await;
    // Canceled: the reader was dropped, which ended the command's connection.
    if let Ok(Err(f)) = &saved {
        if f.reason == Reason::Canceled {
            return Err(f.clone());
        }
    }
    if !out.exit.success() {
        let mut message = format!(
            "backup command {} in container {:?} of pod {namespace}/{pod} failed: {}",
            serde_json::to_string(&dump.command).unwrap_or_default(),
            dump.container,
            out.exit
        );
        if matches!(out.exit, Exit::TimedOut(_)) {
            message.push_str(" (connection closed; the process may still run in the container)");
        }
        message.push_str(&out.stderr_note());
        message.push_str("; no snapshot was written");
        return Err(Failure::new(Reason::DumpFailed, message));
    }
    saved.map_err(|e| Failure::new(Reason::DumpFailed, e))?
}

/// What a dump snapshot records about where it comes from.
#[derive(Debug, Clone, Copy)]
pub struct DumpTarget<'a> {
    /// This node (the snapshot's host).
    pub node: &'a str,
    /// The PodVolumeBackup's uid.
    pub uid: &'a str,
}

/// Saves a dump's stdout as the one file `filename` of a new snapshot with `identity` and the
/// user's `tags` in the repository `repo` (the engine's stream backup: chunked, deduplicated,
/// compressed, encrypted; the parent is the latest snapshot of the identity's series; a read
/// error — the command failed, timed out or its exit is unknown — writes no snapshot).
/// Returns the snapshot written.
pub fn save_stream(
    reader: StreamReader,
    repo: &RepoSettings,
    identity: Identity,
    tags: &[String],
    progress: &Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<crate::archiver::BackupOutcome, Failure> {
    let what = format!("BackupRepository {}", repo.name);
    let opened = super::repo::open_or_init(repo).map_err(|e| Failure::engine(&what, &e))?;
    let filename = identity.dump.clone().unwrap_or_default();
    let opts = crate::archiver::BackupOptions {
        stdin: true,
        stdin_filename: Some(filename.clone()),
        tags: tags.to_vec(),
        host: Some(identity.node.clone()),
        identity: Some(identity),
        ..Default::default()
    };
    crate::archiver::backup_stream(&opened, &filename, reader, &opts, progress, cancel).map_err(
        |e| match e {
            crate::Error::Canceled => Failure::new(Reason::Canceled, "canceled"),
            crate::Error::Stream { .. } => Failure::new(Reason::DumpFailed, e.to_string()),
            e => Failure::engine(&format!("dump {filename:?} into {what}"), &e),
        },
    )
}

/// Runs the logical dump a PodVolumeBackup with `spec.dump` asks for: the pod's backup
/// command in its container, its stdout stored as the one file `spec.volume` of a snapshot
/// in the dump's series, then the spec's retention. Returns the final status.
pub async fn execute_dump(
    client: Client,
    target: DumpTarget<'_>,
    spec: &PodVolumeBackupSpec,
    p: Prepared,
    base: &OperationStatus,
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
) -> Report {
    let mut report = Report::pending(base);
    let outcome = run_dump(
        client,
        target,
        spec,
        p,
        &mut report,
        progress.clone(),
        cancel,
    )
    .await;
    report.finish(
        outcome,
        &progress,
        "canceled; no snapshot was written",
        super::execute::now(),
    );
    report
}

async fn run_dump(
    client: Client,
    target: DumpTarget<'_>,
    spec: &PodVolumeBackupSpec,
    p: Prepared,
    report: &mut Report,
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
) -> Result<String, Failure> {
    let ns = p.pod.metadata.namespace.clone().unwrap_or_default();
    let pod = p.pod.metadata.name.clone().unwrap_or_default();
    let retention = super::execute::retention_of(spec)?;
    check_user_tags(&spec.tags).map_err(|e| Failure::new(Reason::InvalidSpec, e.to_string()))?;
    let dump = dump_of(&p.pod)?.ok_or_else(|| {
        Failure::new(
            Reason::InvalidSpec,
            format!("spec.dump is set, but pod {ns}/{pod} has no annotation {BACKUP_COMMAND}"),
        )
    })?;
    if dump.filename != spec.volume {
        return Err(Failure::new(
            Reason::InvalidSpec,
            format!(
                "spec.volume {:?} is not the name of pod {ns}/{pod}'s dump, {:?} \
                 (annotation {BACKUP_COMMAND_FILENAME}, default <pod>.dump)",
                spec.volume, dump.filename
            ),
        ));
    }
    let series = Series::of_pod_dump(&p.pod, &dump.filename);
    report.status.series = Some(series.key());
    let identity = dump_identity(&p.pod, &dump.filename, target.node, Some(target.uid));
    // An agent stopped after saving this PVB's dump and before recording it: adopt it
    // rather than run the command again.
    // Only a resumed operation can have one (no extra snapshot listing otherwise).
    let (settings, uid) = (p.repo.clone(), target.uid.to_string());
    let earlier = match super::decide::was_resumed(&report.status) {
        false => None,
        true => tokio::task::spawn_blocking(move || {
            let repo = super::repo::open_or_init(&settings)
                .map_err(|e| Failure::engine(&format!("BackupRepository {}", settings.name), &e))?;
            super::execute::saved_for(&repo, &uid)
        })
        .await
        .map_err(|e| Failure::new(Reason::Panic, format!("the dump task failed: {e}")))??,
    };
    let adopted = earlier.is_some();
    let saved = match earlier {
        Some(saved) => saved,
        None => {
            let (repo, tags) = (p.repo.clone(), spec.tags.clone());
            dump_with(client, &ns, &pod, &dump, move |reader| {
                save_stream(reader, &repo, identity, &tags, &progress, &cancel)
            })
            .await?
        }
    };
    let summary = &saved.snapshot.summary;
    let id = saved.id.to_hex();
    report.status.set_snapshot(&id);
    report.status.bytes_added = Some(summary.bytes_added);
    report.series = Some(series.clone());
    report.bytes_read = summary.bytes_read;
    report.bytes_added = summary.bytes_added;
    let mut message = format!(
        "snapshot {} {}: dump {:?} of {} bytes from {}; {} bytes added",
        &id[..8],
        if adopted {
            super::execute::ADOPTED
        } else {
            "saved"
        },
        dump.filename,
        summary.bytes_read,
        serde_json::to_string(&dump.command).unwrap_or_default(),
        summary.bytes_added
    );
    if let Some(policy) = retention {
        let settings = p.repo.clone();
        let note = tokio::task::spawn_blocking(move || {
            match super::repo::open_repository(&settings, false) {
                Ok(repo) => super::execute::apply_retention(&repo, &policy, &series),
                Err(e) => format!("; retention failed: {e}"),
            }
        })
        .await
        .unwrap_or_else(|e| format!("; retention failed: {e}"));
        message.push_str(&note);
    }
    Ok(message)
}

/// The dump command of `pod`, if it has one (malformed annotations are an error naming them).
pub fn dump_of(pod: &Pod) -> Result<Option<DumpCommand>, Failure> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let empty = Default::default();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let (containers, volumes) = (container_names(pod), super::hooks::volume_names(pod));
    super::hooks::parse_dump(annotations, name, &containers, &volumes)
        .map_err(|e| Failure::new(Reason::InvalidHook, e.to_string()))
}

/// The restore command `pod` declares (annotation [`RESTORE_COMMAND`]), if any; malformed
/// annotations are an error naming them.
pub fn restore_command_of(pod: &Pod) -> Result<Option<DumpCommand>, Failure> {
    let empty = Default::default();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    super::hooks::parse_restore_command(annotations, &container_names(pod))
        .map_err(|e| Failure::new(Reason::InvalidHook, e.to_string()))
}

/// Default time a restore command may run.
pub const DEFAULT_RESTORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Largest stdin message sent to the API server.
const STDIN_PIECE: usize = 64 * 1024;

/// A blocking [`std::io::Write`] that hands its bytes to an exec's standard input. A failed
/// send means the command's connection is gone; `gone` records that, so a write error can be
/// told apart from a failure to read the dump.
struct StdinWriter {
    tx: tokio::sync::mpsc::Sender<Stdin>,
    gone: Arc<AtomicBool>,
}

impl std::io::Write for StdinWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(STDIN_PIECE);
        if self
            .tx
            .blocking_send(Stdin::Data(bytes::Bytes::copy_from_slice(&buf[..n])))
            .is_err()
        {
            self.gone.store(true, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the restore command's connection is closed",
            ));
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a PodVolumeRestore with `spec.dump`: the snapshot's file `spec.volume` is streamed
/// into the restore command in the pod's container through `pods/exec`. Completed only when
/// the whole dump was sent and the command exited 0. Returns the final status.
pub async fn execute_dump_restore(
    client: Client,
    namespace: &str,
    spec: &PodVolumeRestoreSpec,
    p: Prepared,
    base: &OperationStatus,
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
) -> Report {
    let mut report = Report::pending(base);
    let outcome = run_dump_restore(
        client,
        namespace,
        spec,
        p,
        &mut report,
        progress.clone(),
        cancel,
    )
    .await;
    report.finish(
        outcome,
        &progress,
        "canceled; the restore command's connection was closed before the end of the dump \
         (it may have applied part of it)",
        super::execute::now(),
    );
    report
}

async fn run_dump_restore(
    client: Client,
    namespace: &str,
    spec: &PodVolumeRestoreSpec,
    p: Prepared,
    report: &mut Report,
    progress: Arc<Progress>,
    cancel: Arc<AtomicBool>,
) -> Result<String, Failure> {
    let Some(d) = spec.dump.clone() else {
        return Err(Failure::new(Reason::InvalidSpec, "spec.dump is not set"));
    };
    let pod_name = p.pod.metadata.name.clone().unwrap_or_default();
    let invalid = |m: String| Failure::new(Reason::InvalidSpec, m);
    // The command is the pod owner's to declare: whoever may create a PodVolumeRestore need
    // not be allowed to run commands in the pod (pods/exec), and the agent's exec right must
    // not stand in for theirs.
    if !d.command.is_empty() {
        return Err(invalid(format!(
            "spec.dump.command is not accepted: a PodVolumeRestore cannot choose the command \
             run in pod {namespace}/{pod_name}; its owner declares it with the annotation \
             {RESTORE_COMMAND} (remove spec.dump.command)"
        )));
    }
    if let Some(c) = &d.container {
        return Err(invalid(format!(
            "spec.dump.container {c:?} is not accepted: the pod's annotation \
             {RESTORE_COMMAND}-container names the container (remove spec.dump.container)"
        )));
    }
    let declared = restore_command_of(&p.pod)?.ok_or_else(|| {
        invalid(format!(
            "pod {namespace}/{pod_name} declares no restore command (annotation \
             {RESTORE_COMMAND}); a PodVolumeRestore with spec.dump streams the dump only into \
             the command the pod declares"
        ))
    })?;
    let container = declared.container.clone();
    let timeout = match &d.timeout {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| invalid(format!("spec.dump.timeout {t:?}: {e}")))?,
        None => declared.timeout,
    };
    let command = declared.command;
    spec.snapshot
        .validate()
        .map_err(|e| Failure::new(Reason::InvalidSpec, e))?;

    // Pick the snapshot and check the dump is there before starting the command.
    let (settings, job_spec, ns, pod) = (
        p.repo.clone(),
        spec.clone(),
        namespace.to_string(),
        p.pod.clone(),
    );
    let (repo, id, snapshot, size) = tokio::task::spawn_blocking(move || {
        let repo = super::repo::open_repository(&settings, false)
            .map_err(|e| Failure::engine(&format!("BackupRepository {}", settings.name), &e))?;
        let (id, snapshot) =
            super::execute::restore_snapshot(&repo, &job_spec, &ns, &pod, &settings)?;
        let size = crate::dump::dump_size(&repo, &snapshot, &job_spec.volume).map_err(|e| {
            Failure::engine(
                &format!(
                    "dump {:?} of snapshot {}",
                    job_spec.volume,
                    &id.to_hex()[..8]
                ),
                &e,
            )
        })?;
        Ok::<_, Failure>((repo, id, snapshot, size))
    })
    .await
    .map_err(|e| Failure::new(Reason::Panic, format!("the restore task failed: {e}")))??;
    let hex = id.to_hex();
    report.status.set_snapshot(&hex);
    // One file of `size` bytes to send: the progress the status shows.
    Progress::add(&progress.files_total, 1);
    Progress::add(&progress.bytes_total, size);

    let (tx, rx) = tokio::sync::mpsc::channel(super::exec::STREAM_CHUNKS);
    let gone = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (gone, cancel, progress, name) = (
            gone.clone(),
            cancel.clone(),
            progress.clone(),
            spec.volume.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut w = Counting {
                inner: StdinWriter {
                    tx: tx.clone(),
                    gone,
                },
                progress,
            };
            let n = crate::dump::dump(&repo, &snapshot, &name, &mut w, &cancel)?;
            // Complete: only now may the command see EOF.
            let _ = tx.blocking_send(Stdin::End);
            Ok::<u64, crate::Error>(n)
        })
    };
    let exec_spec = ExecSpec {
        namespace: namespace.to_string(),
        pod: pod_name.clone(),
        container: container.clone(),
        command: command.clone(),
        timeout,
    };
    let out = exec_io(&client, &exec_spec, Stdout::Tail, Some(rx)).await;
    let fed = feeder
        .await
        .map_err(|e| Failure::new(Reason::Panic, format!("the dump reader failed: {e}")))?;
    let what = format!(
        "restore command {} in container {container:?} of pod {namespace}/{pod_name}",
        serde_json::to_string(&command).unwrap_or_default()
    );
    let stderr = out.stderr_note();
    // The API server never started the command: it saw no input at all.
    if !out.started && !matches!(fed, Err(crate::Error::Canceled)) {
        let mut message = format!(
            "{what} could not be started ({}); nothing was sent to it",
            out.exit
        );
        if let Err(e) = &fed {
            if !gone.load(Ordering::Relaxed) {
                message.push_str(&format!("; reading the dump also failed: {e}"));
            }
        }
        return Err(Failure::new(Reason::RestoreCommandFailed, message));
    }
    match fed {
        Err(crate::Error::Canceled) => Err(Failure::new(Reason::Canceled, "canceled")),
        // The command went away before taking the whole dump: its exit tells why.
        Err(_) if gone.load(Ordering::Relaxed) => Err(Failure::new(
            Reason::RestoreCommandFailed,
            format!(
                "{what} stopped before reading the whole dump ({}){stderr}; it may have \
                 applied part of it",
                out.exit
            ),
        )),
        Err(e) => Err(Failure::new(
            Reason::of_engine(&e),
            format!(
                "reading dump {:?} of snapshot {} failed: {e}; the restore command's connection \
                 was closed before the end of its input (it may have applied part of it)",
                spec.volume,
                &hex[..8]
            ),
        )),
        Ok(n) if out.exit.success() => {
            Progress::add(&progress.files_done, 1);
            Ok(format!(
                "dump {:?} of snapshot {} ({n} bytes) streamed into {what}: exit code 0",
                spec.volume,
                &hex[..8]
            ))
        }
        Ok(n) => Err(Failure::new(
            Reason::RestoreCommandFailed,
            format!(
                "{what} failed: {}{stderr} (the dump, {n} bytes, was read to its end)",
                out.exit
            ),
        )),
    }
}

/// Counts the bytes written into `progress`.
struct Counting<W> {
    inner: W,
    progress: Arc<Progress>,
}

impl<W: std::io::Write> std::io::Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        Progress::add(&self.progress.bytes_done, n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
