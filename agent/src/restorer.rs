//! Restore: recreate a snapshot's files under a target directory.
//!
//! Three phases. **Plan**: walk the snapshot's trees, create directories and empty files of
//! the right size, and note where every blob goes. **Content**: worker threads take one pack
//! at a time, read only the spans holding needed blobs, open and verify each blob (AEAD tag
//! and keyed id) and write it at its offsets; all-zero chunks are skipped so holes stay
//! sparse. **Finish**: set modes, owners (as root) and times; create hard links, symlinks and
//! special files; fix directory metadata deepest first.
//!
//! Safety: every name is checked to be one plain path component; directories are created
//! by the restorer and never followed if they turn out to be symlinks; files are opened
//! with `O_NOFOLLOW`; hard links only point at files restored in this run. Nothing is
//! written outside the target. A file whose data cannot be read or verified is removed and
//! reported, the rest is restored, and the restore returns an error — it never reports
//! success for an incomplete restore or leaves wrong bytes in place.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;

use filetime::FileTime;
use podvault_proto::snapshot::Snapshot;
use podvault_proto::tree::{Node, NodeKind};
use podvault_proto::{BlobId, PackId, TreeId};

use crate::error::{Error, Result};
use crate::index::{BlobLocation, MasterIndex};
use crate::progress::Progress;
use crate::repository::{pack_path, Repository};

/// What to restore and where.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RestoreOptions {
    /// Snapshot id, unique id prefix, or `latest`.
    pub snapshot: String,
    /// Directory to restore into (created if missing).
    #[arg(long)]
    pub target: PathBuf,
    /// Restore only these paths (relative to the snapshot root); repeatable.
    #[arg(long = "include", value_name = "PATH")]
    pub includes: Vec<String>,
    /// Delete files in the target that are not in the snapshot (within restored directories).
    #[arg(long)]
    pub delete: bool,
    /// Parallel pack readers.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreOutcome {
    /// Regular files restored.
    pub files: u64,
    /// Directories restored.
    pub dirs: u64,
    /// Other entries (symlinks, hard links, special files).
    pub others: u64,
    /// File bytes restored.
    pub bytes: u64,
    /// Entries not recreated for lack of privilege (device nodes when not root), or sockets.
    pub skipped: Vec<String>,
}

struct PlannedFile {
    path: PathBuf,
    node: Node,
    failed: Option<String>,
}

struct Plan {
    files: Vec<PlannedFile>,
    dirs: Vec<(PathBuf, Node)>,
    deferred: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, usize, Node)>,
    placements: HashMap<BlobId, Vec<(usize, u64)>>,
    first_link: HashMap<(u64, u64), usize>,
}

/// Restores `snapshot` per `opts` (the snapshot field of `opts` is not consulted).
pub fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    opts: &RestoreOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<RestoreOutcome> {
    let index = repo.load_index()?;
    let includes: Vec<Vec<Vec<u8>>> = opts
        .includes
        .iter()
        .map(|p| {
            p.split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(|c| c.as_bytes().to_vec())
                .collect()
        })
        .collect();
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let mut plan = Plan {
        files: Vec::new(),
        dirs: Vec::new(),
        deferred: Vec::new(),
        links: Vec::new(),
        placements: HashMap::new(),
        first_link: HashMap::new(),
    };
    let mut outcome = RestoreOutcome::default();
    plan_tree(
        repo,
        &index,
        &snapshot.tree,
        &opts.target,
        &mut Vec::new(),
        &includes,
        opts.delete,
        &mut plan,
        progress,
    )?;
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }

    // Content: one job per pack.
    let mut by_pack: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
    for id in plan.placements.keys() {
        if let Some(loc) = index.lookup(id) {
            by_pack.entry(loc.pack).or_default().push((*id, loc));
        }
    }
    let jobs = Mutex::new(by_pack.into_iter().collect::<Vec<_>>());
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    let threads = opts.threads.max(1);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if cancel.load(Ordering::Relaxed) {
                    return;
                }
                let Some((pack, mut blobs)) = jobs.lock().unwrap_or_else(|p| p.into_inner()).pop()
                else {
                    return;
                };
                blobs.sort_by_key(|(_, l)| l.offset);
                restore_pack(repo, &pack, &blobs, &plan, &failures, progress);
            });
        }
    });
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }
    for (i, why) in failures.into_inner().unwrap_or_else(|p| p.into_inner()) {
        plan.files[i].failed.get_or_insert(why);
    }

    // Finish: metadata, removal of failed files, links, special files, directories.
    let root = nix::unistd::geteuid().is_root();
    let mut failed: Vec<String> = Vec::new();
    for f in &plan.files {
        if let Some(why) = &f.failed {
            let _ = fs::remove_file(&f.path);
            tracing::error!(path = %f.path.display(), "not restored: {why}");
            failed.push(format!("{}: {why}", f.path.display()));
            continue;
        }
        if let Err(e) = set_metadata(&f.path, &f.node, root, false) {
            failed.push(e.to_string());
            continue;
        }
        outcome.files += 1;
        outcome.bytes += f.node.size;
    }
    for (path, first, _) in &plan.links {
        if plan.files[*first].failed.is_some() {
            failed.push(format!(
                "{}: hard link to a file that was not restored",
                path.display()
            ));
            continue;
        }
        let r = remove_non_dir(path).and_then(|()| {
            fs::hard_link(&plan.files[*first].path, path).map_err(|e| Error::io(path, e))
        });
        match r {
            Ok(()) => outcome.others += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    for (path, node) in &plan.deferred {
        match create_special(path, node, root) {
            Ok(true) => outcome.others += 1,
            Ok(false) => outcome.skipped.push(path.display().to_string()),
            Err(e) => failed.push(e.to_string()),
        }
    }
    for (path, node) in plan.dirs.iter().rev() {
        if let Err(e) = set_metadata(path, node, root, false) {
            failed.push(e.to_string());
        }
        outcome.dirs += 1;
    }
    if let Some(first) = failed.first() {
        return Err(Error::RestoreIncomplete {
            failed: failed.len(),
            first: first.clone(),
        });
    }
    Ok(outcome)
}

#[allow(clippy::too_many_arguments)]
fn plan_tree(
    repo: &Repository,
    index: &MasterIndex,
    tree_id: &TreeId,
    dir: &Path,
    rel: &mut Vec<Vec<u8>>,
    includes: &[Vec<Vec<u8>>],
    delete: bool,
    plan: &mut Plan,
    progress: &Progress,
) -> Result<()> {
    let tree = repo.load_tree(index, tree_id)?;
    for node in &tree.nodes {
        if !node.name_is_safe() {
            return Err(Error::Corrupt {
                object: format!("tree {tree_id}"),
                detail: format!("unsafe entry name {:?}", node.display_name()),
            });
        }
    }
    if delete && includes.is_empty() {
        remove_extraneous(dir, &tree.nodes)?;
    }
    for node in &tree.nodes {
        rel.push(node.name.clone());
        let selected = includes.is_empty() || includes.iter().any(|inc| rel.starts_with(inc));
        let ancestor = includes
            .iter()
            .any(|inc| inc.starts_with(rel) && inc.len() > rel.len());
        let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
        if selected || ancestor {
            match node.kind {
                NodeKind::Dir => {
                    ensure_dir(&path)?;
                    let sub = node.subtree.ok_or_else(|| Error::Corrupt {
                        object: format!("tree {tree_id}"),
                        detail: format!("directory {:?} has no subtree", node.display_name()),
                    })?;
                    let inner: Vec<Vec<Vec<u8>>> = if selected {
                        Vec::new()
                    } else {
                        includes.to_vec()
                    };
                    plan_tree(
                        repo,
                        index,
                        &sub,
                        &path,
                        rel,
                        if selected { &inner } else { includes },
                        delete,
                        plan,
                        progress,
                    )?;
                    if selected {
                        plan.dirs.push((path, node.clone()));
                    }
                }
                _ if !selected => {}
                NodeKind::File => plan_file(index, path, node, plan, progress)?,
                _ => plan.deferred.push((path, node.clone())),
            }
        }
        rel.pop();
    }
    Ok(())
}

fn plan_file(
    index: &MasterIndex,
    path: PathBuf,
    node: &Node,
    plan: &mut Plan,
    progress: &Progress,
) -> Result<()> {
    let key = (node.device, node.inode);
    if node.links > 1 {
        if let Some(&first) = plan.first_link.get(&key) {
            if plan.files[first].node.content == node.content {
                plan.links.push((path, first, node.clone()));
                return Ok(());
            }
        }
    }
    remove_non_file(&path)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let mut failed = None;
    let mut offset = 0u64;
    let n = plan.files.len();
    for c in &node.content {
        let id = BlobId(c.0);
        match index.lookup(&id) {
            Some(loc) => {
                plan.placements.entry(id).or_default().push((n, offset));
                offset += loc.raw_length as u64;
            }
            None => {
                failed.get_or_insert(format!("chunk {id} is not in the repository index"));
            }
        }
    }
    if failed.is_none() && offset != node.size {
        failed = Some(format!(
            "chunks hold {offset} bytes but the file size is {}",
            node.size
        ));
    }
    file.set_len(node.size).map_err(|e| Error::io(&path, e))?;
    Progress::add(&progress.files_total, 1);
    Progress::add(&progress.bytes_total, node.size);
    if node.links > 1 {
        plan.first_link.insert(key, n);
    }
    plan.files.push(PlannedFile {
        path,
        node: node.clone(),
        failed,
    });
    Ok(())
}

/// Reads the needed spans of one pack and writes its blobs wherever they belong.
fn restore_pack(
    repo: &Repository,
    pack: &PackId,
    blobs: &[(BlobId, BlobLocation)],
    plan: &Plan,
    failures: &Mutex<Vec<(usize, String)>>,
    progress: &Progress,
) {
    const MAX_GAP: u64 = 1 << 20;
    let fail = |id: &BlobId, why: String| {
        let mut f = failures.lock().unwrap_or_else(|p| p.into_inner());
        for &(file, _) in plan.placements.get(id).into_iter().flatten() {
            f.push((file, why.clone()));
        }
    };
    let mut i = 0;
    while i < blobs.len() {
        // Extend the span while the next blob starts close to the current end.
        let start = blobs[i].1.offset as u64;
        let mut end = start + blobs[i].1.length as u64;
        let mut j = i + 1;
        while j < blobs.len() && (blobs[j].1.offset as u64) <= end + MAX_GAP {
            end = end.max(blobs[j].1.offset as u64 + blobs[j].1.length as u64);
            j += 1;
        }
        let span = repo.backend().read_range(&pack_path(pack), start..end);
        for (id, loc) in &blobs[i..j] {
            let data = match &span {
                Ok(bytes) => {
                    let from = (loc.offset as u64 - start) as usize;
                    repo.open_sealed(loc, id, &bytes[from..from + loc.length as usize])
                }
                Err(e) => Err(Error::Corrupt {
                    object: pack_path(pack),
                    detail: e.to_string(),
                }),
            };
            let data = match data {
                Ok(d) => d,
                Err(e) => {
                    fail(id, e.to_string());
                    continue;
                }
            };
            let zero = data.iter().all(|&b| b == 0);
            for &(file, offset) in plan.placements.get(id).into_iter().flatten() {
                let f = &plan.files[file];
                if !zero {
                    let r = OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(&f.path)
                        .and_then(|h| h.write_all_at(&data, offset));
                    if let Err(e) = r {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((file, format!("writing: {e}")));
                        continue;
                    }
                }
                Progress::add(&progress.bytes_done, data.len() as u64);
            }
        }
        i = j;
    }
}

/// Creates a directory, or accepts an existing real directory; never follows a symlink.
fn ensure_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io(path, e))?,
        Err(_) => {}
    }
    fs::create_dir(path).map_err(|e| Error::io(path, e))
}

fn remove_non_file(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::io(
            path,
            std::io::Error::other("a directory is in the way of a file"),
        )),
        Ok(m) if !m.is_file() => fs::remove_file(path).map_err(|e| Error::io(path, e)),
        _ => Ok(()),
    }
}

fn remove_non_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Err(Error::io(
            path,
            std::io::Error::other("a directory is in the way"),
        )),
        Ok(_) => fs::remove_file(path).map_err(|e| Error::io(path, e)),
        Err(_) => Ok(()),
    }
}

/// Removes entries of `dir` that the snapshot's directory does not have.
fn remove_extraneous(dir: &Path, nodes: &[Node]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name();
        if nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name.as_bytes()))
            .is_err()
        {
            let p = e.path();
            let is_dir = fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            let r = if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.map_err(|err| Error::io(&p, err))?;
        }
    }
    Ok(())
}

/// Creates a symlink, FIFO or device node; `Ok(false)` when skipped.
fn create_special(path: &Path, node: &Node, root: bool) -> Result<bool> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    remove_non_dir(path)?;
    let mode = Mode::from_bits_truncate(node.mode & 0o7777);
    match node.kind {
        NodeKind::Symlink => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&node.symlink_target), path)
                .map_err(|e| Error::io(path, e))?;
            set_metadata(path, node, root, true)?;
            return Ok(true);
        }
        NodeKind::Fifo => nix::unistd::mkfifo(path, mode).map_err(|e| Error::io(path, e.into()))?,
        NodeKind::CharDevice | NodeKind::BlockDevice if root => {
            let kind = if node.kind == NodeKind::CharDevice {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(path, kind, mode, node.rdev).map_err(|e| Error::io(path, e.into()))?;
        }
        _ => return Ok(false),
    }
    set_metadata(path, node, root, false)?;
    Ok(true)
}

/// Applies owner (as root), mode and mtime.
fn set_metadata(path: &Path, node: &Node, root: bool, symlink: bool) -> Result<()> {
    if root {
        std::os::unix::fs::lchown(path, Some(node.uid), Some(node.gid))
            .map_err(|e| Error::io(path, e))?;
    }
    if !symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(node.mode & 0o7777))
            .map_err(|e| Error::io(path, e))?;
    }
    // utimensat(AT_SYMLINK_NOFOLLOW): never opens the entry (opening a FIFO would block)
    // and never follows a symlink.
    let mtime = FileTime::from_unix_time(
        node.mtime_ns.div_euclid(1_000_000_000),
        node.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(|e| Error::io(path, e))
}
