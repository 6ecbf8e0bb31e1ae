//! `podvault restore-wait`: the init container that holds a new pod until its volume has been
//! restored, and the completion marker it waits for.
//!
//! The agent writes `<volume>/.podvault/<pvr-uid>` (content: the snapshot id) after a
//! successful restore ([`put_marker`]): atomically (a hidden temporary file renamed into
//! place) and relative to open directory descriptors, never following a symlink the pod may
//! have put at `.podvault` or at either file name (see [`crate::fsat`]). This command polls
//! `<dir>/.podvault/` for a marker, removes it (and the directory when it is then empty, so
//! the application never sees it), and exits 0. With a timeout it exits 1 when none appears
//! in time.
//!
//! A marker is a regular file (not a symlink, FIFO or directory) whose content is a
//! snapshot id in hex. The init container cannot know the PodVolumeRestore's uid unless it is
//! told (the uid is assigned when the PVR is created, usually after the pod spec is
//! written); given `--uid` (or `PODVAULT_RESTORE_UID`) only the marker of that restore is
//! accepted, otherwise any marker is. Whoever can write the volume can forge a marker
//! without `--uid` — but could equally rewrite the restored data, so the marker is a
//! hand-over signal, not a security boundary.

use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvault_proto::k8s::RESTORE_MARKER_DIR;
use rustix::fs::{AtFlags, Mode, OFlags};

use crate::cli::{EXIT_FAILURE, EXIT_OK};
use crate::error::Error;
use crate::fsat;

/// Options of `podvault restore-wait`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreWaitArgs {
    /// The volume's mount directory in this container.
    #[arg(long)]
    pub dir: PathBuf,
    /// Give up after this many seconds (0 = wait forever).
    #[arg(long, env = "PODVAULT_RESTORE_WAIT_TIMEOUT", default_value_t = 0)]
    pub timeout_secs: u64,
    /// Milliseconds between checks.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Accept only the marker of the PodVolumeRestore with this uid.
    #[arg(long, env = "PODVAULT_RESTORE_UID")]
    pub uid: Option<String>,
}

/// Why writing a marker failed: the step, the path and the OS error.
#[derive(Debug)]
pub struct MarkerError {
    /// What was being done.
    pub what: &'static str,
    /// Where.
    pub path: PathBuf,
    /// The OS error.
    pub source: io::Error,
}

impl std::fmt::Display for MarkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.source)
    }
}

/// True for a name usable as a marker: one plain component, not hidden.
fn marker_name_ok(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 200
        && !uid.starts_with('.')
        && !uid.bytes().any(|b| b == b'/' || b == 0)
}

/// Writes `<volume_dir>/.podvault/<uid>` holding `snapshot` (see the module docs) and
/// returns its path.
pub fn put_marker(
    volume_dir: &Path,
    pinned: Option<fsat::DirId>,
    uid: &str,
    snapshot: &str,
) -> Result<PathBuf, MarkerError> {
    let dir_path = volume_dir.join(RESTORE_MARKER_DIR);
    let path = dir_path.join(uid);
    let err = |what: &'static str, path: &Path, source: io::Error| MarkerError {
        what,
        path: path.to_owned(),
        source,
    };
    if !marker_name_ok(uid) {
        return Err(err(
            "naming",
            &path,
            io::Error::other("the restore's uid is not a plain file name"),
        ));
    }
    let volume = fsat::open_root(volume_dir).map_err(|e| err("opening", volume_dir, e))?;
    if let Some(pin) = pinned {
        let meta = fsat::fstat(volume.as_fd()).map_err(|e| err("opening", volume_dir, e))?;
        if !pin.is(&meta) {
            return Err(err("opening", volume_dir, fsat::not_pinned(volume_dir)));
        }
    }
    let dir = marker_dir(volume.as_fd()).map_err(|e| err("creating", &dir_path, e))?;
    let tmp = format!(".{uid}.tmp");
    let tmp_path = dir_path.join(&tmp);
    let write = || -> io::Result<()> {
        match rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let mut file = std::fs::File::from(fd);
        io::Write::write_all(&mut file, format!("{snapshot}\n").as_bytes())?;
        file.sync_all()
    };
    write().map_err(|e| err("writing", &tmp_path, e))?;
    // rename never follows a symlink at the new name: it replaces it.
    rustix::fs::renameat(&dir, tmp.as_str(), &dir, uid)
        .map_err(|e| err("renaming", &path, e.into()))?;
    let _ = rustix::fs::fsync(&dir);
    Ok(path)
}

/// Creates (if needed) and opens `.podvault` in the open volume: never through a symlink
/// (anything but a directory there is replaced), never on another file system.
fn marker_dir(volume: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let name = RESTORE_MARKER_DIR;
    match rustix::fs::mkdirat(volume, name, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = match fsat::open_dir_at(volume, name.as_bytes()) {
        Ok(fd) => fd,
        Err(_) => {
            let meta = fsat::stat_at(volume, name.as_bytes())?;
            if meta.is_dir() {
                return Err(io::Error::other("cannot open the marker directory"));
            }
            rustix::fs::unlinkat(volume, name, AtFlags::empty())?;
            rustix::fs::mkdirat(volume, name, Mode::from_raw_mode(0o755))?;
            fsat::open_dir_at(volume, name.as_bytes())?
        }
    };
    if fsat::fstat(fd.as_fd())?.dev != fsat::fstat(volume)?.dev {
        return Err(io::Error::other("a mount point; not written into"));
    }
    // `restore-wait` runs as whatever user the pod's init container has (the shipped image:
    // 65532) and must remove the marker, which the agent (root) creates: the directory is
    // writable by all (no sticky bit, which would keep others from removing root's marker).
    // It lives in the pod's own volume, whose writers could forge a marker anyway (see the
    // module docs), and the agent never follows anything in it.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o777))?;
    Ok(fd)
}

/// A marker found: its directory, name and path.
struct Found {
    dir: OwnedFd,
    volume: OwnedFd,
    name: Vec<u8>,
    path: PathBuf,
}

/// True when `content` is a snapshot id in hex (what the agent writes).
fn is_snapshot_id(content: &[u8]) -> bool {
    let id = content.strip_suffix(b"\n").unwrap_or(content);
    (4..=64).contains(&id.len()) && id.iter().all(u8::is_ascii_hexdigit)
}

/// Reads a candidate marker: a regular file (opened relative to the marker directory, never
/// through a symlink, never blocking on a FIFO) holding a snapshot id.
fn valid_marker(dir: BorrowedFd<'_>, name: &[u8]) -> bool {
    let Ok(fd) = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    if !fsat::fstat(fd.as_fd()).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut content = Vec::new();
    std::fs::File::from(fd)
        .take(128)
        .read_to_end(&mut content)
        .is_ok()
        && is_snapshot_id(&content)
}

fn find(dir: &Path, uid: Option<&str>) -> Result<Option<Found>, Error> {
    let markers = dir.join(RESTORE_MARKER_DIR);
    let volume = fsat::open_root(dir).map_err(|e| Error::io(dir, e))?;
    let marker_dir = match fsat::open_dir_at(volume.as_fd(), RESTORE_MARKER_DIR.as_bytes()) {
        Ok(d) => d,
        // Missing, or not a directory (a symlink is never followed): no marker yet.
        Err(_) => return Ok(None),
    };
    let mut names: Vec<Vec<u8>> = fsat::read_names(marker_dir.as_fd())
        .map_err(|e| Error::io(&markers, e))?
        .into_iter()
        .filter(|n| !n.starts_with(b"."))
        .filter(|n| uid.is_none_or(|u| n == u.as_bytes()))
        .collect();
    names.sort();
    for name in names {
        if valid_marker(marker_dir.as_fd(), &name) {
            let path = markers.join(fsat::os(&name));
            return Ok(Some(Found {
                dir: marker_dir,
                volume,
                name,
                path,
            }));
        }
    }
    Ok(None)
}

/// The first marker in `<dir>/.podvault/` (only `uid`'s when given), if any.
pub fn find_marker(dir: &Path, uid: Option<&str>) -> Result<Option<PathBuf>, Error> {
    Ok(find(dir, uid)?.map(|f| f.path))
}

/// Waits for a marker (only `uid`'s when given), removes it, and returns the path it had;
/// `None` on timeout.
pub fn wait_for_marker(
    dir: &Path,
    uid: Option<&str>,
    timeout: Option<Duration>,
    interval: Duration,
) -> Result<Option<PathBuf>, Error> {
    if !dir.is_dir() {
        return Err(Error::InvalidInput(format!(
            "restore-wait: {} is not a directory (mount the volume there)",
            dir.display()
        )));
    }
    let start = Instant::now();
    loop {
        if let Some(found) = find(dir, uid)? {
            rustix::fs::unlinkat(&found.dir, found.name.as_slice(), AtFlags::empty())
                .map_err(|e| Error::io(&found.path, e.into()))?;
            // Only removes an empty directory; other markers or temporaries keep it.
            let _ = rustix::fs::unlinkat(&found.volume, RESTORE_MARKER_DIR, AtFlags::REMOVEDIR);
            return Ok(Some(found.path));
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(None);
        }
        std::thread::sleep(interval);
    }
}

/// Runs `podvault restore-wait`.
pub fn run(args: &RestoreWaitArgs) -> crate::Result<u8> {
    let timeout = (args.timeout_secs > 0).then(|| Duration::from_secs(args.timeout_secs));
    let markers = args.dir.join(RESTORE_MARKER_DIR);
    match &args.uid {
        Some(uid) => eprintln!(
            "waiting for the restore marker {}",
            markers.join(uid).display()
        ),
        None => eprintln!("waiting for the restore marker in {}", markers.display()),
    }
    match wait_for_marker(
        &args.dir,
        args.uid.as_deref(),
        timeout,
        Duration::from_millis(args.interval_ms.max(10)),
    )? {
        Some(marker) => {
            eprintln!("restore complete ({}); starting", marker.display());
            Ok(EXIT_OK)
        }
        None => {
            eprintln!(
                "error: no restore marker appeared within {} s",
                args.timeout_secs
            );
            Ok(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The init container runs as another user than the agent (the shipped image: 65532):
    /// it must be able to remove the marker the agent wrote, even from a directory that
    /// existed with a narrower mode.
    #[test]
    fn the_marker_directory_lets_any_user_remove_the_marker() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join(".podvault")).unwrap();
        std::fs::set_permissions(
            tmp.path().join(".podvault"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        put_marker(tmp.path(), None, "uid-1", "0123abcd").unwrap();
        let mode = std::fs::metadata(tmp.path().join(".podvault"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o777);
    }

    #[test]
    fn times_out_without_marker_and_ignores_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".podvault")).unwrap();
        std::fs::write(tmp.path().join(".podvault/.uid.tmp"), "x").unwrap();
        let got = wait_for_marker(
            tmp.path(),
            None,
            Some(Duration::from_millis(50)),
            Duration::from_millis(10),
        )
        .unwrap();
        assert_eq!(got, None);
        assert!(tmp.path().join(".podvault/.uid.tmp").exists());
    }

    #[test]
    fn missing_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = wait_for_marker(
            &tmp.path().join("nope"),
            None,
            None,
            Duration::from_millis(10),
        )
        .unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn returns_once_the_marker_appears_and_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                crate::worker::execute::write_marker(&dir, None, "uid-1", "abcd").unwrap();
            })
        };
        let got = wait_for_marker(
            &dir,
            None,
            Some(Duration::from_secs(10)),
            Duration::from_millis(10),
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(got, Some(dir.join(".podvault/uid-1")));
        assert!(!dir.join(".podvault").exists());
    }

    #[test]
    fn only_regular_files_with_a_snapshot_id_and_the_expected_uid_count() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let m = dir.join(".podvault");
        std::fs::create_dir_all(&m).unwrap();
        // Not markers: a symlink to a valid-looking file, a FIFO, junk content.
        std::fs::write(dir.join("elsewhere"), "abcdef0123\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere"), m.join("a-link")).unwrap();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            m.join("b-fifo"),
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        std::fs::write(m.join("c-junk"), "not an id").unwrap();
        assert_eq!(find_marker(dir, None).unwrap(), None);
        put_marker(dir, None, "uid-2", "abcdef0123").unwrap();
        std::fs::write(m.join("d-forged"), "abcdef0123\n").unwrap();
        assert_eq!(find_marker(dir, Some("uid-3")).unwrap(), None);
        assert_eq!(
            find_marker(dir, Some("uid-2")).unwrap(),
            Some(m.join("uid-2"))
        );
        assert_eq!(find_marker(dir, None).unwrap(), Some(m.join("d-forged")));
    }

    #[test]
    fn put_marker_replaces_a_symlinked_marker_dir_and_refuses_bad_uids() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, vol.join(".podvault")).unwrap();
        let p = put_marker(&vol, None, "uid-1", "abcd0123").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "abcd0123\n");
        assert!(std::fs::symlink_metadata(vol.join(".podvault"))
            .unwrap()
            .is_dir());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A symlink at the marker's own name is replaced, not written through.
        std::fs::write(outside.join("victim"), "keep").unwrap();
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(outside.join("victim"), &p).unwrap();
        put_marker(&vol, None, "uid-1", "abcd0123").unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("victim")).unwrap(),
            "keep"
        );
        assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
        for bad in ["", "../x", "a/b", ".hidden"] {
            assert!(put_marker(&vol, None, bad, "abcd0123").is_err(), "{bad:?}");
        }
    }
}
