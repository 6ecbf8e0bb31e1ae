//! Pod annotations users set, labels podvault puts on its objects, and value parsers.
//!
//! Lists are comma-separated; surrounding whitespace and empty items are ignored, so
//! `"data, logs,"` means `data` and `logs`. The Velero annotation
//! (`backup.velero.io/backup-volumes`) is accepted as an alias of the podvault one; when both
//! are present the podvault one wins.

use std::collections::BTreeMap;

use crate::retention::{ParseRetentionError, RetentionPolicy};

/// Prefix of every podvault pod annotation.
pub const ANNOTATION_PREFIX: &str = "backup.podvault.dev/";
/// Opt-in list of volumes to back up: `"data,logs"`.
pub const BACKUP_VOLUMES: &str = "backup.podvault.dev/backup-volumes";
/// Velero's opt-in annotation, accepted as an alias of [`BACKUP_VOLUMES`].
pub const VELERO_BACKUP_VOLUMES: &str = "backup.velero.io/backup-volumes";
/// Opt-out list of volumes when the controller runs in "all volumes" mode.
pub const BACKUP_VOLUMES_EXCLUDES: &str = "backup.podvault.dev/backup-volumes-excludes";
/// Cron schedule (5 fields, UTC); the controller's default when absent.
pub const SCHEDULE: &str = "backup.podvault.dev/schedule";
/// Retention policy: `"last=3,hourly=24,daily=7,weekly=4,monthly=6,yearly=1"`.
pub const RETENTION: &str = "backup.podvault.dev/retention";
/// Path globs inside the volume not to back up: `"*.tmp,cache/**"`.
pub const EXCLUDE: &str = "backup.podvault.dev/exclude";
/// BackupRepository name; the controller's default when absent.
pub const REPOSITORY: &str = "backup.podvault.dev/repository";

/// Prefix of the pre-backup hook annotations (`<prefix>command`, `container`, `timeout`,
/// `on-error`); see the agent's `worker::hooks` for their meaning.
pub const PRE_HOOK_PREFIX: &str = "pre.hook.backup.podvault.dev/";
/// Prefix of the post-backup hook annotations (same keys as [`PRE_HOOK_PREFIX`]).
pub const POST_HOOK_PREFIX: &str = "post.hook.backup.podvault.dev/";
/// Velero's pre-backup hook prefix, accepted as an alias of [`PRE_HOOK_PREFIX`].
pub const VELERO_PRE_HOOK_PREFIX: &str = "pre.hook.backup.velero.io/";
/// Velero's post-backup hook prefix, accepted as an alias of [`POST_HOOK_PREFIX`].
pub const VELERO_POST_HOOK_PREFIX: &str = "post.hook.backup.velero.io/";
/// Hook key: the command, a JSON array of strings (or one bare word).
pub const HOOK_COMMAND: &str = "command";
/// Hook key: the container to run it in (default: the pod's first container).
pub const HOOK_CONTAINER: &str = "container";
/// Hook key: how long it may run (`30s`, `2m`; default 30 s).
pub const HOOK_TIMEOUT: &str = "timeout";
/// Hook key: `Fail` (default) or `Continue`.
pub const HOOK_ON_ERROR: &str = "on-error";
/// A command whose standard output is a logical dump to back up: `"pg_dumpall -U postgres"`.
pub const BACKUP_COMMAND: &str = "backup.podvault.dev/backup-command";
/// The container [`BACKUP_COMMAND`] runs in (default: the pod's first container).
pub const BACKUP_COMMAND_CONTAINER: &str = "backup.podvault.dev/backup-command-container";
/// The file name the dump gets in its snapshot (default `<pod>.dump`).
pub const BACKUP_COMMAND_FILENAME: &str = "backup.podvault.dev/backup-command-filename";
/// How long [`BACKUP_COMMAND`] may run (default 1 h).
pub const BACKUP_COMMAND_TIMEOUT: &str = "backup.podvault.dev/backup-command-timeout";
/// Pod annotation: the restore command a PodVolumeRestore with `spec.dump` streams a dump
/// into (JSON argv, or a shell command run by `/bin/sh -c`). Declared by the pod's owner: a
/// PodVolumeRestore can select it, never define one.
pub const RESTORE_COMMAND: &str = "backup.podvault.dev/restore-command";
/// Pod annotation: container of the restore command (else the backup command's, else the
/// first).
pub const RESTORE_COMMAND_CONTAINER: &str = "backup.podvault.dev/restore-command-container";
/// Pod annotation: how long the restore command may run (default 1 h).
pub const RESTORE_COMMAND_TIMEOUT: &str = "backup.podvault.dev/restore-command-timeout";

/// Label on controller-created PVBs: hash of the series key (see [`super::Series::hash`]).
pub const LABEL_SERIES: &str = "podvault.dev/series";
/// Label on controller-created PVBs: the kind of series, `pod` or `pvc`.
pub const LABEL_SERIES_KIND: &str = "podvault.dev/series-kind";
/// Label on every object podvault creates.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Annotation on controller-created PVBs: the full series key (label values are too short).
pub const ANNOTATION_SERIES: &str = "podvault.dev/series";
/// Annotation on controller-created PVBs: the schedule tick (RFC 3339) it was created for.
pub const ANNOTATION_TICK: &str = "podvault.dev/scheduled-for";
/// Label on every PodVolumeBackup and PodVolumeRestore: the node whose agent runs it (see
/// [`node_label_value`]). Set by the controller when it creates the object, or when it first
/// resolves the pod of one a user created; each agent watches only its own node's value.
pub const LABEL_NODE: &str = "podvault.dev/node";
/// Finalizer on PodVolumeBackups and PodVolumeRestores: deleting one that runs cancels it,
/// and the object goes only once the agent has stopped (or the controller gave up waiting).
pub const FINALIZER: &str = "podvault.dev/cancel-on-delete";
/// Directory inside a restored volume holding restore completion markers (`<pvr-uid>` files).
pub const RESTORE_MARKER_DIR: &str = ".podvault";

/// Splits a comma-separated annotation value into trimmed, non-empty items (order kept,
/// duplicates removed).
pub fn parse_list(value: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

/// The opt-in volume list of a pod, from [`BACKUP_VOLUMES`] or else its Velero alias;
/// `None` when the pod has neither annotation.
pub fn backup_volumes(annotations: &BTreeMap<String, String>) -> Option<Vec<String>> {
    annotations
        .get(BACKUP_VOLUMES)
        .or_else(|| annotations.get(VELERO_BACKUP_VOLUMES))
        .map(|v| parse_list(v))
}

/// The opt-out volume list of a pod (empty when absent).
pub fn backup_volumes_excludes(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .get(BACKUP_VOLUMES_EXCLUDES)
        .map(|v| parse_list(v))
        .unwrap_or_default()
}

/// The exclude globs of a pod (empty when absent).
pub fn excludes(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .get(EXCLUDE)
        .map(|v| parse_list(v))
        .unwrap_or_default()
}

/// The retention policy of a pod: `Ok(None)` when absent, an error naming the annotation when
/// malformed or empty (the parser refuses a policy that would forget everything).
pub fn retention(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<RetentionPolicy>, ParseRetentionError> {
    let Some(value) = annotations.get(RETENTION) else {
        return Ok(None);
    };
    let policy: RetentionPolicy =
        value
            .parse()
            .map_err(|e: ParseRetentionError| ParseRetentionError {
                spec: e.spec,
                reason: format!("annotation {RETENTION}: {}", e.reason),
            })?;
    Ok(Some(policy))
}

/// A [`BACKUP_COMMAND_FILENAME`] the agent cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} {why}", annotation = BACKUP_COMMAND_FILENAME)]
pub struct DumpNameError {
    /// The name given (or defaulted).
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The name a pod's logical dump gets in its snapshots, which also names its series
/// (`<namespace>/pod/<pod>/<name>`): the [`BACKUP_COMMAND_FILENAME`] annotation, else
/// `<pod>.dump`. `Ok(None)` when the pod has no [`BACKUP_COMMAND`]. The name must be one path
/// component, at most 255 bytes, and not the name of one of the pod's volumes (their series
/// would mix).
pub fn dump_name(
    annotations: &BTreeMap<String, String>,
    pod: &str,
    volumes: &[String],
) -> Result<Option<String>, DumpNameError> {
    if !annotations.contains_key(BACKUP_COMMAND) {
        return Ok(None);
    }
    let value = match annotations.get(BACKUP_COMMAND_FILENAME) {
        Some(f) => f.trim().to_string(),
        None => format!("{pod}.dump"),
    };
    let bad = |why| {
        Err(DumpNameError {
            value: value.clone(),
            why,
        })
    };
    if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\0']) {
        return bad("is not one plain file name");
    }
    if value.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    if volumes.contains(&value) {
        return bad("is also the name of one of the pod's volumes");
    }
    Ok(Some(value))
}

/// The [`LABEL_NODE`] value for node `node`: the name itself when it is a valid label value
/// (at most 63 characters), else `h-` and 16 hex digits of a stable FNV-1a hash of it.
pub fn node_label_value(node: &str) -> String {
    let valid = !node.is_empty()
        && node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && node.as_bytes()[0].is_ascii_alphanumeric()
        && node.as_bytes()[node.len() - 1].is_ascii_alphanumeric();
    if valid {
        return node.to_string();
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("h-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_label_values_are_the_name_or_a_stable_hash() {
        assert_eq!(node_label_value("worker-1"), "worker-1");
        assert_eq!(
            node_label_value("ip-10-0-0-1.eu-west-1.compute.internal"),
            "ip-10-0-0-1.eu-west-1.compute.internal"
        );
        let long = "n".repeat(70);
        let v = node_label_value(&long);
        assert!(v.starts_with("h-") && v.len() == 18, "{v}");
        assert_eq!(v, node_label_value(&long));
        assert_ne!(v, node_label_value(&"m".repeat(70)));
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_parsing_trims_and_dedups() {
        assert_eq!(parse_list(" data, logs,,data ,"), vec!["data", "logs"]);
        assert!(parse_list("").is_empty());
    }

    #[test]
    fn velero_alias_and_precedence() {
        assert_eq!(backup_volumes(&ann(&[])), None);
        assert_eq!(
            backup_volumes(&ann(&[(VELERO_BACKUP_VOLUMES, "a,b")])),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            backup_volumes(&ann(&[(VELERO_BACKUP_VOLUMES, "a"), (BACKUP_VOLUMES, "c")])),
            Some(vec!["c".into()])
        );
    }

    #[test]
    fn retention_annotation() {
        assert_eq!(retention(&ann(&[])), Ok(None));
        let p = retention(&ann(&[(RETENTION, "last=3,daily=7")]))
            .unwrap()
            .unwrap();
        assert_eq!((p.last, p.daily), (3, 7));
        assert!(retention(&ann(&[(RETENTION, "bogus=1")])).is_err());
        let err = retention(&ann(&[(RETENTION, "")])).unwrap_err();
        assert!(err.to_string().contains("no rule given"), "{err}");
        assert!(err.to_string().contains(RETENTION), "{err}");
    }

    #[test]
    fn excludes_lists() {
        let a = ann(&[
            (EXCLUDE, "*.tmp, cache/**"),
            (BACKUP_VOLUMES_EXCLUDES, "tmp"),
        ]);
        assert_eq!(excludes(&a), vec!["*.tmp", "cache/**"]);
        assert_eq!(backup_volumes_excludes(&a), vec!["tmp"]);
    }
}
