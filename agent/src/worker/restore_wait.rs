//! `podvault restore-wait`: the init container that holds a new pod until its volume has been
//! restored.
//!
//! The agent writes `<volume>/.podvault/<pvr-uid>` after a successful restore (atomically: a
//! hidden temporary file renamed into place). This command polls `<dir>/.podvault/` for a
//! marker (any non-hidden regular file), removes it (and the directory when it is then empty,
//! so the application never sees it), and exits 0. With a timeout it exits 1 when none
//! appears in time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podvault_proto::k8s::RESTORE_MARKER_DIR;

use crate::cli::{EXIT_FAILURE, EXIT_OK};
use crate::error::Error;

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
}

/// The first marker in `<dir>/.podvault/`, if any (hidden files are temporaries).
pub fn find_marker(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let markers = dir.join(RESTORE_MARKER_DIR);
    let entries = match std::fs::read_dir(&markers) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&markers, e)),
    };
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&markers, e))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_file()) {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

/// Waits for a marker, removes it, and returns the path it had; `None` on timeout.
pub fn wait_for_marker(
    dir: &Path,
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
        if let Some(marker) = find_marker(dir)? {
            std::fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
            // Only removes an empty directory; other markers or temporaries keep it.
            let _ = std::fs::remove_dir(dir.join(RESTORE_MARKER_DIR));
            return Ok(Some(marker));
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
    eprintln!(
        "waiting for the restore marker in {}",
        args.dir.join(RESTORE_MARKER_DIR).display()
    );
    match wait_for_marker(
        &args.dir,
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

    #[test]
    fn times_out_without_marker_and_ignores_temporaries() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".podvault")).unwrap();
        std::fs::write(tmp.path().join(".podvault/.uid.tmp"), "x").unwrap();
        let got = wait_for_marker(
            tmp.path(),
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
        let err =
            wait_for_marker(&tmp.path().join("nope"), None, Duration::from_millis(10)).unwrap_err();
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
                crate::worker::execute::write_marker(&dir, "uid-1", "abcd").unwrap();
            })
        };
        let got = wait_for_marker(
            &dir,
            Some(Duration::from_secs(10)),
            Duration::from_millis(10),
        )
        .unwrap();
        writer.join().unwrap();
        assert_eq!(got, Some(dir.join(".podvault/uid-1")));
        assert!(!dir.join(".podvault").exists());
    }
}
