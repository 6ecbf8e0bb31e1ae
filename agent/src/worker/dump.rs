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
//! [`crate::archiver::backup_stream`]. Not done yet: the controller does not schedule dumps
//! (no PodVolumeBackup kind or field asks for one), so nothing calls [`dump_with`] with it in
//! a running agent.

use k8s_openapi::api::core::v1::Pod;
use kube::Client;

use super::exec::{run_streamed, ExecSpec, Exit, StreamReader};
use super::hooks::DumpCommand;
use super::outcome::{Failure, Reason};
use super::repo::RepoSettings;

/// Runs `dump` in `namespace/pod` and saves its stdout with `save`; `Ok` carries `save`'s
/// message.
pub async fn dump_with(
    client: Client,
    namespace: &str,
    pod: &str,
    dump: &DumpCommand,
    save: impl FnOnce(StreamReader) -> Result<String, Failure> + Send + 'static,
) -> Result<String, Failure> {
    let spec = ExecSpec {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: dump.container.clone(),
        command: dump.command.clone(),
        timeout: dump.timeout,
    };
    let (saved, out) = run_streamed(client, spec, save).await;
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
        let stderr = out.stderr_text();
        if !stderr.is_empty() {
            let cut = stderr.len().saturating_sub(super::hooks::MESSAGE_STDERR);
            let cut = (cut..=stderr.len())
                .find(|i| stderr.is_char_boundary(*i))
                .unwrap_or(stderr.len());
            message.push_str(&format!("; stderr: {}", &stderr[cut..]));
        }
        message.push_str("; no snapshot was written");
        return Err(Failure::new(Reason::DumpFailed, message));
    }
    saved.map_err(|e| Failure::new(Reason::DumpFailed, e))?
}

/// Saves a dump's stdout as the one file `filename` of a new snapshot tagged `tags` in the
/// repository `repo` (the engine's stream backup: chunked, deduplicated, compressed,
/// encrypted; a read error — the command failed, timed out or its exit is unknown — writes no
/// snapshot). Returns the snapshot id.
pub fn save_stream(
    reader: StreamReader,
    repo: &RepoSettings,
    filename: &str,
    tags: &[String],
    host: &str,
    progress: &crate::progress::Progress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<String, Failure> {
    let what = format!("BackupRepository {}", repo.name);
    let opened = super::repo::open_or_init(repo).map_err(|e| Failure::engine(&what, &e))?;
    let opts = crate::archiver::BackupOptions {
        stdin: true,
        stdin_filename: Some(filename.to_owned()),
        tags: tags.to_vec(),
        host: Some(host.to_owned()),
        ..Default::default()
    };
    let out = crate::archiver::backup_stream(&opened, filename, reader, &opts, progress, cancel)
        .map_err(|e| match e {
            crate::Error::Stream { .. } => Failure::new(Reason::DumpFailed, e.to_string()),
            e => Failure::engine(&format!("dump {filename:?} into {what}"), &e),
        })?;
    Ok(out.id.to_hex())
}

/// The dump command of `pod`, if it has one (malformed annotations are an error naming them).
pub fn dump_of(pod: &Pod) -> Result<Option<DumpCommand>, Failure> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let empty = Default::default();
    super::hooks::parse_dump(
        pod.metadata.annotations.as_ref().unwrap_or(&empty),
        name,
        &containers,
    )
    .map_err(|e| Failure::new(Reason::InvalidHook, e.to_string()))
}
