//! Descriptor-relative access to trees someone else controls (a pod's volume).
//!
//! The agent runs as root and reads and writes directories that the pod owning them can
//! change at the same moment, e.g. by swapping a directory with a symlink to another tenant's
//! volume (`renameat2(RENAME_EXCHANGE)`). Path-based calls resolve every component again on
//! each call and so follow such a swap. Everything below a root therefore goes through this
//! module, whose invariants are:
//! - a root is opened once, by the path the operator (or the agent) gave; everything under
//!   it is reached relative to an open directory descriptor, one plain name at a time;
//! - no call follows a symlink in any component: directories are opened with
//!   `O_DIRECTORY|O_NOFOLLOW`, files with `O_NOFOLLOW`, entries are examined with
//!   `fstatat(AT_SYMLINK_NOFOLLOW)`, and paths of several components are only resolved by
//!   [`open_dir_beneath`] (`openat2` with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
//!   RESOLVE_NO_MAGICLINKS`, or one `O_NOFOLLOW` open per component where `openat2` is
//!   missing);
//! - what was opened is compared with what was listed ([`Meta::same_inode`]: device and
//!   inode, plus the type), so an entry replaced between listing and opening is refused
//!   rather than read or written.
//!
//! The calls are [`rustix`]'s safe wrappers; nothing here is `unsafe`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Once;

use podvault_proto::tree::NodeKind;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, CWD};

/// What `stat` says about an entry, in portable integer types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Device of the file system holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
}

impl Meta {
    /// Converts a `stat` result (field types differ between architectures).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub fn from_stat(s: &rustix::fs::Stat) -> Self {
        Meta {
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            mode: s.st_mode as u32,
            nlink: s.st_nlink as u64,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            rdev: s.st_rdev as u64,
            size: s.st_size.max(0) as u64,
            mtime_ns: (s.st_mtime as i64) * 1_000_000_000 + s.st_mtime_nsec as i64,
            ctime_ns: (s.st_ctime as i64) * 1_000_000_000 + s.st_ctime_nsec as i64,
        }
    }

    /// The entry's type.
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.mode)
    }

    /// The entry's type as a tree node kind.
    pub fn kind(&self) -> NodeKind {
        match self.file_type() {
            FileType::Directory => NodeKind::Dir,
            FileType::Symlink => NodeKind::Symlink,
            FileType::Fifo => NodeKind::Fifo,
            FileType::Socket => NodeKind::Socket,
            FileType::CharacterDevice => NodeKind::CharDevice,
            FileType::BlockDevice => NodeKind::BlockDevice,
            _ => NodeKind::File,
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == FileType::Directory
    }

    /// True for a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == FileType::RegularFile
    }

    /// True when `other` is the same object: same device, inode and type.
    pub fn same_inode(&self, other: &Meta) -> bool {
        self.dev == other.dev && self.ino == other.ino && self.file_type() == other.file_type()
    }
}

/// A directory named by device and inode: what a caller that found it safely expects a later
/// open by path to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    /// Device of the file system holding it.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl DirId {
    /// True when `meta` is this directory.
    pub fn is(&self, meta: &Meta) -> bool {
        meta.is_dir() && meta.dev == self.dev && meta.ino == self.ino
    }
}

/// Finds the directory `rel` beneath the trusted directory `root` (opened by its path) without
/// following any symlink or leaving `root` ([`open_dir_beneath`]), and names it.
pub fn pin_beneath(root: &Path, rel: &Path) -> io::Result<DirId> {
    let root_fd = open_root(root)?;
    let fd = open_dir_beneath(root_fd.as_fd(), rel)?;
    let meta = fstat(fd.as_fd())?;
    Ok(DirId {
        dev: meta.dev,
        ino: meta.ino,
    })
}

/// The error for a root that is not the directory pinned for it.
pub fn not_pinned(path: &Path) -> io::Error {
    io::Error::other(format!(
        "{} is no longer the directory found for it (it was replaced, or a component became a symlink); not followed",
        path.display()
    ))
}

/// An error for an entry that was replaced between being listed and being opened.
pub fn replaced() -> io::Error {
    io::Error::other("replaced by another file while it was being accessed; not followed")
}

/// Raises the soft limit on open descriptors to the hard limit, once per process: walking
/// and restoring hold a descriptor per directory level (and a bounded number listed ahead),
/// and the usual soft limit of 1024 is far below what the kernel allows.
pub fn raise_fd_limit() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let lim = getrlimit(Resource::Nofile);
        if lim.current < lim.maximum {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: lim.maximum,
                    maximum: lim.maximum,
                },
            );
        }
    });
}

/// Opens a root directory by the path an operator gave (symlinks in it are followed: the
/// path is trusted, what is below it is not).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` of `dir`; fails on anything else, a symlink included.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` of `dir` and checks it is the one `expected` describes.
pub fn open_dir_verified(dir: BorrowedFd<'_>, name: &[u8], expected: &Meta) -> io::Result<OwnedFd> {
    let fd = open_dir_at(dir, name)?;
    if !fstat(fd.as_fd())?.same_inode(expected) {
        return Err(replaced());
    }
    Ok(fd)
}

/// Opens the regular file `name` of `dir` for reading, never following a symlink nor
/// blocking on a FIFO, and checks it is the one `expected` describes. Returns the file and
/// its metadata as of the open.
pub fn open_file_verified(
    dir: BorrowedFd<'_>,
    name: &[u8],
    expected: &Meta,
) -> io::Result<(File, Meta)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let meta = fstat(fd.as_fd())?;
    if !meta.same_inode(expected) || !meta.is_file() {
        return Err(replaced());
    }
    Ok((File::from(fd), meta))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Meta> {
    Ok(Meta::from_stat(&rustix::fs::statat(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
    )?))
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Meta> {
    Ok(Meta::from_stat(&rustix::fs::fstat(fd)?))
}

/// The target of the symlink `name` of `dir` (fails if it is not a symlink any more).
pub fn read_link_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<u8>> {
    Ok(rustix::fs::readlinkat(dir, name, Vec::new())?.into_bytes())
}

/// The names in an open directory (`.` and `..` left out), in the order the kernel gives.
/// Reads from the descriptor's current position: pass a freshly opened one.
pub fn read_names(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 32 * 1024];
    let mut raw = rustix::fs::RawDir::new(dir, &mut buf);
    let mut names = Vec::new();
    while let Some(entry) = raw.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    Ok(names)
}

/// A name as an `OsStr` (for messages and paths).
pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// Opens the directory at `rel` (plain components only) beneath `root` without following
/// any symlink or leaving `root`: `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|
/// RESOLVE_NO_MAGICLINKS)`, or one `O_NOFOLLOW` open per component where the kernel lacks
/// `openat2`. The caller compares the result with what it expects.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        return Ok(rustix::io::fcntl_dupfd_cloexec(root, 0)?);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    for _ in 0..4 {
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => return Ok(fd),
            // A rename somewhere on the system raced the lookup: try again.
            Err(rustix::io::Errno::AGAIN) => continue,
            Err(rustix::io::Errno::NOSYS) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut fd: Option<OwnedFd> = None;
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::other(format!(
                "{}: not a plain relative path",
                rel.display()
            )));
        };
        let next = match &fd {
            Some(f) => open_dir_at(f.as_fd(), name.as_bytes())?,
            None => open_dir_at(root, name.as_bytes())?,
        };
        fd = Some(next);
    }
    fd.ok_or_else(|| io::Error::other("empty path"))
}

/// Timestamps setting both access and modification time to `mtime_ns`.
pub fn times(mtime_ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The `/proc/self/fd/<n>` alias of an open descriptor: the way to `chmod`/`utimes` an
/// object held by an `O_PATH` descriptor (FIFOs, device nodes) without opening it for I/O
/// and without a path lookup anyone else can redirect.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens `name` of `dir` as an `O_PATH` handle (no I/O, never follows a symlink).
pub fn open_path_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `chmod` and `utimes` through an `O_PATH` handle (see [`proc_fd_path`]).
pub fn chmod_times_path_fd(fd: BorrowedFd<'_>, mode: u32, mtime_ns: i64) -> io::Result<()> {
    let p = proc_fd_path(fd);
    rustix::fs::chmodat(CWD, p.as_str(), Mode::from_raw_mode(mode), AtFlags::empty())?;
    rustix::fs::utimensat(CWD, p.as_str(), &times(mtime_ns), AtFlags::empty())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_refuses_symlinks_and_dotdot() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), root.join("link")).unwrap();
        let fd = open_root(&root).unwrap();
        assert!(open_dir_beneath(fd.as_fd(), Path::new("a/b")).is_ok());
        assert!(open_dir_beneath(fd.as_fd(), Path::new("link")).is_err());
        assert!(open_dir_beneath(fd.as_fd(), Path::new("a/../..")).is_err());
        assert!(open_dir_at(fd.as_fd(), b"link").is_err());
        let a = stat_at(fd.as_fd(), b"a").unwrap();
        assert!(open_dir_verified(fd.as_fd(), b"a", &a).is_ok());
        let b = stat_at(fd.as_fd(), b"link").unwrap();
        assert_eq!(b.kind(), NodeKind::Symlink);
        assert!(open_dir_verified(fd.as_fd(), b"a", &b).is_err());
        let mut names = read_names(fd.as_fd()).unwrap();
        names.sort();
        assert_eq!(names, vec![b"a".to_vec(), b"link".to_vec()]);
    }
}
