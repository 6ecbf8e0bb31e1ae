//! Repository settings from a BackupRepository and its Secrets, and open-or-init.
//!
//! Opened repositories are kept for [`OPENED_TTL`] (keyed by location and password), so
//! the Argon2id key derivation runs once per repository and not once per operation; before
//! reuse the repository's config is read again and must still open with the kept key (a
//! repository deleted and created anew at the same place is opened afresh). Every opened
//! repository uses the agent's metadata cache ([`set_cache_root`]).
//!
//! The Secrets are read by the API seam (from the agent's own namespace only) and handed here
//! as plain key → bytes maps, so building a [`Location`] is a pure function.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use podvault_proto::crd::BackupRepositorySpec;

use crate::backend::{Location, S3Location};
use crate::error::Error;
use crate::repository::{InitOptions, Repository};

/// Default Secret key of the S3 access key id.
pub const ACCESS_KEY_ID_KEY: &str = "AWS_ACCESS_KEY_ID";
/// Default Secret key of the S3 secret access key.
pub const SECRET_ACCESS_KEY_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// Everything needed to open one repository.
#[derive(Clone)]
pub struct RepoSettings {
    /// The BackupRepository's name.
    pub name: String,
    /// Its spec (for cross-namespace rules).
    pub spec: BackupRepositorySpec,
    /// Where it lives, with credentials.
    pub location: Location,
    /// Its password.
    pub password: Vec<u8>,
}

impl std::fmt::Debug for RepoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoSettings")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The contents of a Secret: `data` (decoded) overlaid with `stringData`.
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Reads `key` from a Secret's data, naming the Secret and key when missing or empty.
pub fn secret_value(secret_name: &str, data: &SecretData, key: &str) -> Result<Vec<u8>, String> {
    match data.get(key) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        Some(_) => Err(format!("key {key:?} of Secret {secret_name} is empty")),
        None => Err(format!("Secret {secret_name} has no key {key:?}")),
    }
}

/// Builds the settings of BackupRepository `name` from its spec, the password Secret's data
/// and (S3 only) the credentials Secret's data.
pub fn settings(
    name: &str,
    spec: &BackupRepositorySpec,
    password_secret: &SecretData,
    credentials_secret: Option<&SecretData>,
) -> Result<RepoSettings, String> {
    spec.validate()
        .map_err(|e| format!("BackupRepository {name}: {e}"))?;
    let password = secret_value(
        &spec.password_secret.name,
        password_secret,
        &spec.password_secret.key,
    )
    .map_err(|e| format!("BackupRepository {name}: password: {e}"))?;
    let location = match (&spec.backend.s3, &spec.backend.fs) {
        (Some(s3), _) => {
            let (access_key_id, secret_access_key) = match &spec.credentials_secret {
                Some(r) => {
                    let data = credentials_secret.ok_or_else(|| {
                        format!("BackupRepository {name}: Secret {} not read", r.name)
                    })?;
                    let text = |key: &str| -> Result<String, String> {
                        let v = secret_value(&r.name, data, key)
                            .map_err(|e| format!("BackupRepository {name}: credentials: {e}"))?;
                        String::from_utf8(v).map_err(|_| {
                            format!(
                                "BackupRepository {name}: key {key:?} of Secret {} is not UTF-8",
                                r.name
                            )
                        })
                    };
                    (
                        Some(text(
                            r.access_key_id_key.as_deref().unwrap_or(ACCESS_KEY_ID_KEY),
                        )?),
                        Some(text(
                            r.secret_access_key_key
                                .as_deref()
                                .unwrap_or(SECRET_ACCESS_KEY_KEY),
                        )?),
                    )
                }
                None => (None, None),
            };
            Location::S3(S3Location {
                bucket: s3.bucket.clone(),
                prefix: s3
                    .prefix
                    .as_deref()
                    .unwrap_or("")
                    .trim_matches('/')
                    .to_string(),
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id,
                secret_access_key,
                session_token: None,
                virtual_host_style: !s3.path_style,
                options: Default::default(),
                ca_bundle: match &s3.ca_bundle {
                    Some(pem) => {
                        crate::tls::parse_ca_bundle(pem.as_bytes()).map_err(|e| {
                            format!("BackupRepository {name}: spec.backend.s3.caBundle {e}")
                        })?;
                        Some(pem.as_bytes().to_vec())
                    }
                    None => None,
                },
            })
        }
        (None, Some(fs)) => Location::Fs(fs.path.clone().into()),
        // validate() refuses a spec with neither.
        (None, None) => {
            return Err(format!(
                "BackupRepository {name}: spec.backend: set s3 or fs"
            ))
        }
    };
    Ok(RepoSettings {
        name: name.to_string(),
        spec: spec.clone(),
        location,
        password,
    })
}

/// How long an opened repository is kept for the next operation.
pub const OPENED_TTL: Duration = Duration::from_secs(600);

static CACHE_ROOT: OnceLock<(Option<PathBuf>, u64)> = OnceLock::new();

type Opened = HashMap<[u8; 32], (Instant, Repository)>;

fn opened() -> &'static Mutex<Opened> {
    static OPENED: OnceLock<Mutex<Opened>> = OnceLock::new();
    OPENED.get_or_init(Mutex::default)
}

/// Sets the metadata cache root of every repository this process opens (once, at start).
pub fn set_cache_root(root: Option<PathBuf>, limit: u64) {
    let _ = CACHE_ROOT.set((root, limit));
}

/// Identity of settings: location with its credentials, and password.
fn settings_key(s: &RepoSettings) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}", s.location).as_bytes());
    h.update(b"\0");
    h.update(&s.password);
    *h.finalize().as_bytes()
}

/// Opens the repository (reusing one opened recently with the same settings); with
/// `init`, creates it when it has never been initialised (first use). When two agents
/// initialise at once, the loser opens the winner's repository.
pub fn open_repository(s: &RepoSettings, init: bool) -> crate::Result<Repository> {
    let key = settings_key(s);
    let kept = {
        let mut m = opened().lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, (at, _)| at.elapsed() < OPENED_TTL);
        m.get(&key).map(|(_, r)| r.clone())
    };
    if let Some(repo) = kept {
        match repo.config_still_opens() {
            Ok(true) => return Ok(repo),
            Ok(false) => {
                tracing::info!(repository = %s.name, "repository config changed; opening it again")
            }
            Err(e) => return Err(e),
        }
    }
    let (root, limit) = CACHE_ROOT
        .get()
        .cloned()
        .unwrap_or((None, crate::cache::DEFAULT_LIMIT));
    let repo = open_uncached(s, init)?.with_cache(root.as_deref(), limit);
    opened()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, (Instant::now(), repo.clone()));
    Ok(repo)
}

/// Why the agent cannot use an `fs` repository at `path`, if it can tell before trying: the
/// path (or, when missing, its nearest existing parent) is on a read-only file system — the
/// agent's root filesystem, when no volume is mounted there.
pub fn fs_location_problem(path: &std::path::Path) -> Option<String> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    st.f_flag
        .contains(rustix::fs::StatVfsMountFlags::RDONLY)
        .then(|| {
            format!(
                "spec.backend.fs.path {} is not writable in the agent: {} is on a read-only file \
                 system (the agent's root filesystem is read-only; mount a volume at {} in the \
                 agent — chart value agent.repositoryVolumes, or the commented `repo` volume \
                 in deploy/manifests/20-agent.yaml)",
                path.display(),
                existing.display(),
                path.display()
            )
        })
}

/// Opens (or with `init` creates on first use) the repository; nothing kept.
fn open_uncached(s: &RepoSettings, init: bool) -> crate::Result<Repository> {
    match Repository::open(&s.location, &s.password) {
        Err(Error::NotInitialised { .. }) if init => {
            tracing::info!(repository = %s.name, location = %s.location, "initialising repository on first use");
            match Repository::init(&s.location, &s.password, &InitOptions::default()) {
                Err(Error::AlreadyInitialised { .. }) => Repository::open(&s.location, &s.password),
                r => r,
            }
        }
        r => r,
    }
}

/// Opens the repository; creates it when it has never been initialised (first use).
pub fn open_or_init(s: &RepoSettings) -> crate::Result<Repository> {
    open_repository(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_fs_location_has_no_problem() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(fs_location_problem(&tmp.path().join("not/yet/there")), None);
        assert_eq!(fs_location_problem(tmp.path()), None);
    }

    fn spec(yaml: &str) -> BackupRepositorySpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> SecretData {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn s3_settings_from_spec_and_secrets() {
        let s = spec(
            "
backend: {s3: {endpoint: 'http://127.0.0.1:9000', bucket: b, prefix: /cluster-a/, pathStyle: true}}
passwordSecret: {name: pw, key: password}
credentialsSecret: {name: creds}
",
        );
        let got = settings(
            "default",
            &s,
            &data(&[("password", "hunter2")]),
            Some(&data(&[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
            ])),
        )
        .unwrap();
        assert_eq!(got.password, b"hunter2");
        let Location::S3(l) = &got.location else {
            panic!("{:?}", got.location)
        };
        assert_eq!(l.bucket, "b");
        assert_eq!(l.prefix, "cluster-a");
        assert_eq!(l.region, "us-east-1");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(l.access_key_id.as_deref(), Some("id"));
        assert_eq!(l.secret_access_key.as_deref(), Some("secret"));
        assert!(!l.virtual_host_style);
    }

    #[test]
    fn errors_name_the_secret_and_key() {
        let s = spec(
            "
backend: {s3: {bucket: b}}
passwordSecret: {name: pw, key: password}
credentialsSecret: {name: creds, accessKeyIdKey: id}
",
        );
        let err = settings("r", &s, &data(&[]), None).unwrap_err();
        assert_eq!(
            err,
            "BackupRepository r: password: Secret pw has no key \"password\""
        );
        let err = settings("r", &s, &data(&[("password", "")]), None).unwrap_err();
        assert_eq!(
            err,
            "BackupRepository r: password: key \"password\" of Secret pw is empty"
        );
        let err = settings(
            "r",
            &s,
            &data(&[("password", "p")]),
            Some(&data(&[("AWS_ACCESS_KEY_ID", "x")])),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "BackupRepository r: credentials: Secret creds has no key \"id\""
        );
        let both = spec(
            "
backend: {s3: {bucket: b}, fs: {path: /r}}
passwordSecret: {name: pw, key: password}
",
        );
        assert!(settings("r", &both, &data(&[("password", "p")]), None)
            .unwrap_err()
            .contains("not both"));
    }

    #[test]
    fn fs_repository_is_initialised_on_first_use_then_opened() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(&format!(
            "
backend: {{fs: {{path: {}}}}}
passwordSecret: {{name: pw, key: password}}
",
            tmp.path().join("repo").display()
        ));
        let st = settings("nfs", &s, &data(&[("password", "pw1")]), None).unwrap();
        let a = open_or_init(&st).unwrap();
        let b = open_or_init(&st).unwrap();
        assert_eq!(a.config().repository_id, b.config().repository_id);
        let mut wrong = st.clone();
        wrong.password = b"nope".to_vec();
        assert_eq!(open_or_init(&wrong).unwrap_err().reason(), "wrong_password");
    }

    #[test]
    fn an_opened_repository_is_kept_and_a_replaced_one_opened_afresh() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("repo");
        let s = spec(&format!(
            "
backend: {{fs: {{path: {}}}}}
passwordSecret: {{name: pw, key: password}}
",
            path.display()
        ));
        let st = settings("kept", &s, &data(&[("password", "pw1")]), None).unwrap();
        let first = open_or_init(&st).unwrap();
        // Without key files nothing could open it again: success means the kept one.
        let keys = path.join("keys");
        let saved = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&keys).unwrap() {
            let e = e.unwrap();
            std::fs::rename(e.path(), saved.path().join(e.file_name())).unwrap();
        }
        let again = open_repository(&st, false).unwrap();
        assert_eq!(again.config().repository_id, first.config().repository_id);
        // Replaced at the same place (same password): the kept key no longer opens the
        // config, so the new repository is opened.
        std::fs::remove_dir_all(&path).unwrap();
        let replaced = open_or_init(&st).unwrap();
        assert_ne!(
            replaced.config().repository_id,
            first.config().repository_id
        );
        // And gone: an error, not the kept repository.
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(
            open_repository(&st, false).unwrap_err().reason(),
            "not_initialised"
        );
    }
}
