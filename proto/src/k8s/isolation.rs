//! Namespace isolation of restores.
//!
//! A PodVolumeRestore lives in the namespace of the pod it writes into. It may restore a
//! snapshot only when that snapshot was taken in the same namespace, unless the
//! BackupRepository it reads from sets `allowCrossNamespaceRestore`. The snapshot's namespace
//! is the one in its series (or its `namespace=` tag); a snapshot with no namespace at all (e.g.
//! made by the CLI outside a cluster) counts as another namespace.

use crate::crd::BackupRepositorySpec;

/// A restore that would cross a namespace boundary it may not cross.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot {snapshot} was taken in namespace {source_namespace}, but the restore is in namespace {restore_namespace}; BackupRepository {repository} does not allow cross-namespace restores (spec.allowCrossNamespaceRestore)")]
pub struct IsolationError {
    /// The snapshot asked for.
    pub snapshot: String,
    /// Its namespace (`<none>` when it has none).
    pub source_namespace: String,
    /// The PodVolumeRestore's namespace.
    pub restore_namespace: String,
    /// The repository's name.
    pub repository: String,
}

/// Decides whether a restore in `restore_namespace` may read `snapshot`, taken in
/// `snapshot_namespace`, from repository `repository_name` (whose spec is `repository`).
pub fn check_restore_namespace(
    restore_namespace: &str,
    snapshot: &str,
    snapshot_namespace: Option<&str>,
    repository_name: &str,
    repository: &BackupRepositorySpec,
) -> Result<(), IsolationError> {
    if snapshot_namespace == Some(restore_namespace) || repository.allow_cross_namespace_restore {
        return Ok(());
    }
    Err(IsolationError {
        snapshot: snapshot.to_string(),
        source_namespace: snapshot_namespace.unwrap_or("<none>").to_string(),
        restore_namespace: restore_namespace.to_string(),
        repository: repository_name.to_string(),
    })
}

/// The namespace recorded in a snapshot's tags (`namespace=<ns>`), if any.
pub fn snapshot_namespace(tags: &[String]) -> Option<&str> {
    tags.iter().find_map(|t| t.strip_prefix("namespace="))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_namespace_always_allowed() {
        let repo = BackupRepositorySpec::default();
        assert!(check_restore_namespace("shop", "abcd1234", Some("shop"), "main", &repo).is_ok());
    }

    #[test]
    fn other_or_missing_namespace_needs_the_repository_flag() {
        let mut repo = BackupRepositorySpec::default();
        let err =
            check_restore_namespace("shop", "abcd1234", Some("bank"), "main", &repo).unwrap_err();
        assert_eq!(err.to_string(), "snapshot abcd1234 was taken in namespace bank, but the restore is in namespace shop; BackupRepository main does not allow cross-namespace restores (spec.allowCrossNamespaceRestore)");
        let err = check_restore_namespace("shop", "abcd1234", None, "main", &repo).unwrap_err();
        assert_eq!(err.source_namespace, "<none>");
        repo.allow_cross_namespace_restore = true;
        assert!(check_restore_namespace("shop", "abcd1234", Some("bank"), "main", &repo).is_ok());
        assert!(check_restore_namespace("shop", "abcd1234", None, "main", &repo).is_ok());
    }

    #[test]
    fn namespace_from_tags() {
        let tags = vec!["series=a/pvc/b".to_string(), "namespace=a".to_string()];
        assert_eq!(snapshot_namespace(&tags), Some("a"));
        assert_eq!(snapshot_namespace(&[]), None);
    }
}
