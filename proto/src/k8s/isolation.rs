//! Namespaces are hostile to each other: a namespace admin writes any PodVolumeBackup or
//! PodVolumeRestore spec and any pod annotation in their namespace. Three rules keep what they
//! write inside their namespace:
//!
//! - **Restores** ([`check_restore_namespace`]): a PodVolumeRestore lives in the namespace of
//!   the pod it writes into and may restore a snapshot only when that snapshot's recorded
//!   identity (see [`crate::snapshot`]) names the same namespace, unless the BackupRepository
//!   sets `allowCrossNamespaceRestore`. A snapshot without an identity (a CLI backup, or a
//!   version-1 snapshot with ambiguous tags) counts as another namespace.
//! - **Tags** ([`check_user_tags`]): a PodVolumeBackup's `spec.tags` may not use an identity
//!   key. Identity is a field of the snapshot record that tags never reach; refusing the old
//!   identity keys keeps look-alikes out of new snapshots (older agents and scripts read them).
//! - **Repositories** ([`check_repository_access`]): a namespace uses a BackupRepository only
//!   when the repository's `spec.allowedNamespaces` names it (by name or label selector). No
//!   field means no namespace: a repository is opened to tenants by the cluster admin, never
//!   by default.

use std::collections::BTreeMap;

use kube::core::{Selector, SelectorExt};

use crate::crd::BackupRepositorySpec;
use crate::snapshot::LEGACY_IDENTITY_KEYS;

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

/// Prefix of tag keys reserved for podvault.
pub const RESERVED_TAG_PREFIX: &str = "podvault.dev/";

/// A user tag that uses a key reserved for a snapshot's identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.tags: tag {tag:?} uses the reserved key {key:?} (reserved: {reserved}, and any key starting with {RESERVED_TAG_PREFIX}); a snapshot's identity is recorded by the agent")]
pub struct ReservedTagError {
    /// The tag as given.
    pub tag: String,
    /// Its key.
    pub key: String,
    /// The reserved keys, comma-separated.
    pub reserved: String,
}

/// Refuses user tags whose key (the text before the first `=`, or the whole tag) is an
/// identity key (`series`, `namespace`, `pod`, `pod-uid`, `pvc`, `volume`, `node`, `dump`,
/// `kind`) or starts with [`RESERVED_TAG_PREFIX`]. Keys compare case-sensitively after
/// trimming spaces, as tags are stored.
pub fn check_user_tags(tags: &[String]) -> Result<(), ReservedTagError> {
    for tag in tags {
        let key = tag.split_once('=').map_or(tag.as_str(), |(k, _)| k).trim();
        if LEGACY_IDENTITY_KEYS.contains(&key)
            || key == "kind"
            || key.starts_with(RESERVED_TAG_PREFIX)
        {
            return Err(ReservedTagError {
                tag: tag.clone(),
                key: key.to_string(),
                reserved: LEGACY_IDENTITY_KEYS
                    .iter()
                    .chain(&["kind"])
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// A namespace that may not use a BackupRepository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace {namespace} may not use BackupRepository {repository}: {detail}")]
pub struct RepositoryAccessError {
    /// The repository's name.
    pub repository: String,
    /// The namespace refused.
    pub namespace: String,
    /// Why.
    pub detail: String,
}

/// True when deciding access for a namespace needs its labels (the repository has a
/// selector).
pub fn access_needs_labels(repository: &BackupRepositorySpec) -> bool {
    repository
        .allowed_namespaces
        .as_ref()
        .is_some_and(|a| a.selector.is_some())
}

/// Decides whether `namespace` may use BackupRepository `repository_name` (spec
/// `repository`): listed in `spec.allowedNamespaces.names`, or its labels (`labels`, needed
/// when [`access_needs_labels`]) match `spec.allowedNamespaces.selector` (`{}` matches every
/// namespace). An absent `allowedNamespaces` allows no namespace.
pub fn check_repository_access(
    repository_name: &str,
    repository: &BackupRepositorySpec,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), RepositoryAccessError> {
    let refuse = |detail: String| RepositoryAccessError {
        repository: repository_name.to_string(),
        namespace: namespace.to_string(),
        detail,
    };
    let Some(allowed) = &repository.allowed_namespaces else {
        return Err(refuse(
            "it sets no spec.allowedNamespaces, which allows no namespace (list names, or a \
             selector; `selector: {}` allows every namespace)"
                .into(),
        ));
    };
    if allowed.names.iter().any(|n| n == namespace) {
        return Ok(());
    }
    let Some(selector) = &allowed.selector else {
        return Err(refuse(
            "it is not in spec.allowedNamespaces.names and there is no selector".into(),
        ));
    };
    let selector = Selector::try_from(selector.clone())
        .map_err(|e| refuse(format!("spec.allowedNamespaces.selector is invalid: {e}")))?;
    let Some(labels) = labels else {
        return Err(refuse(
            "its labels are unknown, so spec.allowedNamespaces.selector cannot be checked".into(),
        ));
    };
    if selector.matches(labels) {
        Ok(())
    } else {
        Err(refuse(format!(
            "it is not in spec.allowedNamespaces.names and its labels do not match \
             spec.allowedNamespaces.selector ({selector})"
        )))
    }
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
    fn reserved_tags_are_refused_by_key() {
        let ok: Vec<String> = ["scheduled", "app=shop", "db=main", "tier=series"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(check_user_tags(&ok).is_ok());
        for bad in [
            "series=victim/pod/app/data",
            "namespace=victim",
            "pod=app",
            "pod-uid=123",
            "pvc=data",
            "volume=data",
            "node=n",
            "dump=db.sql",
            "kind=dump",
            "podvault.dev/series=x",
            "podvault.dev/anything",
            " series =x",
            "series",
        ] {
            let tags = vec!["fine".to_string(), bad.to_string()];
            let err = check_user_tags(&tags).unwrap_err();
            assert_eq!(err.tag, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    fn repo(yaml: &str) -> BackupRepositorySpec {
        serde_yaml::from_str(&format!(
            "backend: {{fs: {{path: /r}}}}\npasswordSecret: {{name: p, key: k}}\n{yaml}"
        ))
        .unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_allowed_namespaces_allows_nobody() {
        let spec = repo("");
        assert!(!access_needs_labels(&spec));
        let err = check_repository_access("main", &spec, "shop", Some(&labels(&[]))).unwrap_err();
        assert!(err.to_string().starts_with(
            "namespace shop may not use BackupRepository main: it sets no spec.allowedNamespaces"
        ));
        // An empty object allows nobody either.
        let spec = repo("allowedNamespaces: {}");
        assert!(check_repository_access("main", &spec, "shop", None).is_err());
    }

    #[test]
    fn names_allow_exactly_those_namespaces() {
        let spec = repo("allowedNamespaces: {names: [shop, bank]}");
        assert!(!access_needs_labels(&spec));
        assert!(check_repository_access("main", &spec, "shop", None).is_ok());
        assert!(check_repository_access("main", &spec, "bank", None).is_ok());
        let err = check_repository_access("main", &spec, "attacker", None).unwrap_err();
        assert!(err.detail.contains("no selector"), "{err}");
        assert!(check_repository_access("main", &spec, "sho", None).is_err());
    }

    #[test]
    fn selectors_match_namespace_labels() {
        let spec = repo(
            "allowedNamespaces:\n  names: [ops]\n  selector:\n    matchLabels: {backup: podvault}\n    matchExpressions: [{key: tier, operator: NotIn, values: [dev]}]",
        );
        assert!(access_needs_labels(&spec));
        let yes = labels(&[("backup", "podvault"), ("tier", "prod")]);
        assert!(check_repository_access("main", &spec, "shop", Some(&yes)).is_ok());
        let dev = labels(&[("backup", "podvault"), ("tier", "dev")]);
        assert!(check_repository_access("main", &spec, "shop", Some(&dev)).is_err());
        assert!(check_repository_access("main", &spec, "shop", Some(&labels(&[]))).is_err());
        // Names still work, labels or not.
        assert!(check_repository_access("main", &spec, "ops", None).is_ok());
        // Labels unknown: refused, never guessed.
        let err = check_repository_access("main", &spec, "shop", None).unwrap_err();
        assert!(err.detail.contains("labels are unknown"), "{err}");
        // `selector: {}` allows every namespace.
        let all = repo("allowedNamespaces: {selector: {}}");
        assert!(check_repository_access("main", &all, "any", Some(&labels(&[]))).is_ok());
        // An invalid selector refuses with the reason.
        let bad =
            repo("allowedNamespaces: {selector: {matchExpressions: [{key: a, operator: Bogus}]}}");
        let err = check_repository_access("main", &bad, "x", Some(&labels(&[]))).unwrap_err();
        assert!(err.detail.contains("invalid"), "{err}");
    }
}
