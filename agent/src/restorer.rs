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
//!
//! ## Hostile repositories
//! A repository may be damaged or written by someone else, so every tree is treated as
//! untrusted input (see `tests/tests/hostile.rs`). Problems with one entry are reported
//! (by path, entry name and tree id) and that entry is skipped; its siblings are still
//! restored and the restore ends with an error:
//! - entries whose name is not one plain component (`..`, `.`, empty, `/` or NUL inside,
//!   absolute) are skipped, never joined to a path;
//! - names that occur more than once in a tree are all skipped (which one is real cannot be
//!   told, and a symlink sharing a directory's or file's name must never be written through);
//!   trees are sorted here, so an unsorted tree still restores;
//! - a directory whose tree cannot be loaded (missing, damaged, not a tree, or one of its own
//!   ancestors, i.e. a cycle) or that nests deeper than [`MAX_DEPTH`] is skipped and not
//!   created. The depth bound also bounds the planner's recursion, which runs on its own
//!   thread with a stack sized for it (the agent's blocking threads have only 2 MiB);
//!   paths that deep exceed `PATH_MAX` anyway;
//! - a file whose chunks are missing or do not add up to its size is never created, so a
//!   hostile size cannot make it allocate; any other error creating one entry fails that
//!   entry only (a full disk fails the files that do not fit);
//! - when the restore is canceled, files it created but did not finish are removed rather
//!   than left zero-filled.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use filetime::FileTime;
use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::Snapshot;
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, PackId, Record, TreeId};

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

/// Deepest directory nesting restored (a path that deep is far beyond `PATH_MAX`).
pub const MAX_DEPTH: usize = 2048;
/// Stack of the planning thread: 32 KiB per level of [`MAX_DEPTH`] (virtual; only the
/// levels actually reached are touched).
const PLAN_STACK: usize = MAX_DEPTH * 32 * 1024;

struct PlannedFile {
    path: PathBuf,
    node: Node,
    failed: Option<String>,
    /// The restorer created (and truncated) the file; it is removed if the restore stops.
    created: bool,
}

struct Plan {
    files: Vec<PlannedFile>,
    dirs: Vec<(PathBuf, Node)>,
    deferred: Vec<(PathBuf, Node)>,
    links: Vec<(PathBuf, usize, Node)>,
    placements: HashMap<BlobId, Vec<(usize, u64)>>,
    first_link: HashMap<(u64, u64), usize>,
    /// Entries that could not be planned, each naming its path and why.
    errors: Vec<String>,
}

impl Plan {
    /// Records an entry that will not be restored.
    fn error(&mut self, message: String) {
        tracing::error!("not restored: {message}");
        self.errors.push(message);
    }

    /// Removes files this restore created but did not finish (the restore was stopped).
    fn abandon(&self) {
        for f in self.files.iter().filter(|f| f.created) {
            let _ = fs::remove_file(&f.path);
        }
    }
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
        errors: Vec::new(),
    };
    let mut outcome = RestoreOutcome::default();
    let root = load_tree(repo, &index, &snapshot.tree)?;
    // The planner recurses once per directory level; its own thread gets a stack sized for
    // MAX_DEPTH levels whatever thread called us (the agent uses 2 MiB blocking threads).
    let planned = thread::scope(|s| {
        let planner = thread::Builder::new()
            .name("podvault-restore-plan".into())
            .stack_size(PLAN_STACK)
            .spawn_scoped(s, || {
                plan_tree(
                    repo,
                    &index,
                    &snapshot.tree,
                    root,
                    &opts.target,
                    &mut Vec::new(),
                    &includes,
                    opts.delete,
                    &mut plan,
                    &mut vec![snapshot.tree],
                )
            })
            .map_err(|e| Error::io(&opts.target, e))?;
        planner
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err(e) = planned {
        plan.abandon();
        return Err(e);
    }
    if cancel.load(Ordering::Relaxed) {
        plan.abandon();
        return Err(Error::Canceled);
    }
    let threads = opts.threads.max(1);
    create_files(&mut plan, threads, progress);
    if cancel.load(Ordering::Relaxed) {
        plan.abandon();
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
        plan.abandon();
        return Err(Error::Canceled);
    }
    for (i, why) in failures.into_inner().unwrap_or_else(|p| p.into_inner()) {
        plan.files[i].failed.get_or_insert(why);
    }

    // Finish: metadata, removal of failed files, links, special files, directories.
    let root = nix::unistd::geteuid().is_root();
    // Plan errors were logged when found; everything else is logged here.
    let mut failed: Vec<String> = std::mem::take(&mut plan.errors);
    let mut fail = |message: String| {
        tracing::error!("not restored: {message}");
        failed.push(message);
    };
    let metadata = for_each_file(&plan.files, threads, |f| {
        set_metadata(&f.path, &f.node, root, false)
    });
    for (f, set) in plan.files.iter().zip(metadata) {
        if let Some(why) = &f.failed {
            let _ = fs::remove_file(&f.path);
            fail(format!("{}: {why}", f.path.display()));
            continue;
        }
        if let Some(Err(e)) = set {
            fail(e.to_string());
            continue;
        }
        outcome.files += 1;
        outcome.bytes += f.node.size;
    }
    for (path, first, _) in &plan.links {
        if plan.files[*first].failed.is_some() {
            fail(format!(
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
            Err(e) => fail(e.to_string()),
        }
    }
    for (path, node) in &plan.deferred {
        match create_special(path, node, root) {
            Ok(true) => outcome.others += 1,
            Ok(false) => outcome.skipped.push(path.display().to_string()),
            Err(e) => fail(e.to_string()),
        }
    }
    for (path, node) in plan.dirs.iter().rev() {
        if let Err(e) = set_metadata(path, node, root, false) {
            fail(e.to_string());
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

/// Loads a tree to restore, with its entries sorted by name (stable, so duplicates stay in
/// stored order); entries are validated by [`plan_tree`].
fn load_tree(repo: &Repository, index: &MasterIndex, id: &TreeId) -> Result<Vec<Node>> {
    let bytes = repo.read_blob(index, BlobType::Tree, &BlobId::from(*id))?;
    let mut nodes = Tree::decode(&bytes)
        .map_err(|source| Error::Decode {
            object: format!("tree {id}"),
            source,
        })?
        .nodes;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

#[allow(clippy::too_many_arguments)]
fn plan_tree(
    repo: &Repository,
    index: &MasterIndex,
    tree_id: &TreeId,
    nodes: Vec<Node>,
    dir: &Path,
    rel: &mut Vec<Vec<u8>>,
    includes: &[Vec<Vec<u8>>],
    delete: bool,
    plan: &mut Plan,
    ancestors: &mut Vec<TreeId>,
) -> Result<()> {
    if delete && includes.is_empty() {
        remove_extraneous(dir, &nodes)?;
    }
    let mut i = 0;
    while i < nodes.len() {
        // Entries sharing a name are handled together.
        let copies = nodes[i..]
            .iter()
            .take_while(|n| n.name == nodes[i].name)
            .count();
        let node = &nodes[i];
        i += copies;
        rel.push(node.name.clone());
        let selected = includes.is_empty() || includes.iter().any(|inc| rel.starts_with(inc));
        let ancestor = includes
            .iter()
            .any(|inc| inc.starts_with(rel) && inc.len() > rel.len());
        rel.pop();
        if !(selected || ancestor) {
            continue;
        }
        if !node.name_is_safe() {
            plan.error(format!(
                "{}: entry {:?} in tree {tree_id}: unsafe name (not a single path component)",
                dir.display(),
                node.display_name()
            ));
            continue;
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
        if copies > 1 {
            plan.error(format!(
                "{}: entry {:?} appears {copies} times in tree {tree_id}; none of them is restored",
                path.display(),
                node.display_name()
            ));
            continue;
        }
        rel.push(node.name.clone());
        match node.kind {
            NodeKind::Dir => {
                let sub = match node.subtree {
                    None => Err("the directory has no subtree".to_owned()),
                    Some(sub) if ancestors.contains(&sub) => Err(format!(
                        "its tree {sub} is one of its own ancestors (a cycle)"
                    )),
                    Some(_) if ancestors.len() >= MAX_DEPTH => {
                        Err(format!("directories nest deeper than {MAX_DEPTH} levels"))
                    }
                    Some(sub) => load_tree(repo, index, &sub)
                        .map(|nodes| (sub, nodes))
                        .map_err(|e| e.to_string()),
                };
                let planned = sub.and_then(|sub| {
                    ensure_dir(&path).map_err(|e| match e {
                        // The path is named below.
                        Error::Io { source, .. } => source.to_string(),
                        other => other.to_string(),
                    })?;
                    Ok(sub)
                });
                match planned {
                    Err(why) => plan.error(format!(
                        "{}: directory in tree {tree_id}: {why}",
                        path.display()
                    )),
                    Ok((sub, sub_nodes)) => {
                        let inner: Vec<Vec<Vec<u8>>> = if selected {
                            Vec::new()
                        } else {
                            includes.to_vec()
                        };
                        ancestors.push(sub);
                        let r = plan_tree(
                            repo,
                            index,
                            &sub,
                            sub_nodes,
                            &path,
                            rel,
                            if selected { &inner } else { includes },
                            delete,
                            plan,
                            ancestors,
                        );
                        ancestors.pop();
                        r?;
                        if selected {
                            plan.dirs.push((path, node.clone()));
                        }
                    }
                }
            }
            _ if !selected => {}
            NodeKind::File => plan_file(index, path, node, plan),
            _ => plan.deferred.push((path, node.clone())),
        }
        rel.pop();
    }
    Ok(())
}

/// Plans one file: creates it at its full (sparse) size and notes where its chunks go. A
/// file that cannot be restored is recorded as failed and not created.
fn plan_file(index: &MasterIndex, path: PathBuf, node: &Node, plan: &mut Plan) {
    let key = (node.device, node.inode);
    if node.links > 1 {
        if let Some(&first) = plan.first_link.get(&key) {
            if plan.files[first].node.content == node.content {
                plan.links.push((path, first, node.clone()));
                return;
            }
        }
    }
    let mut failed = None;
    let mut chunks = Vec::with_capacity(node.content.len());
    let mut offset = 0u64;
    for c in &node.content {
        let id = BlobId(c.0);
        match index.lookup(&id) {
            Some(loc) => {
                chunks.push((id, offset));
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
    let n = plan.files.len();
    // The file itself is created later by `create_files`, in parallel; content is only
    // written into files that step created.
    if failed.is_none() {
        for (id, offset) in chunks {
            plan.placements.entry(id).or_default().push((n, offset));
        }
    }
    if node.links > 1 {
        plan.first_link.insert(key, n);
    }
    plan.files.push(PlannedFile {
        path,
        node: node.clone(),
        failed,
        created: false,
    });
}

/// Files handed to one thread at a time by [`for_each_file`].
const FILE_BATCH: usize = 256;

/// Runs `work` on every planned file not yet failed, on `threads` threads, and returns
/// what it said about each, beside the file (`None` for files already failed). Creating a file or setting its metadata
/// is a handful of system calls; for many small files these dominate a restore, and the
/// kernel serializes them only within one directory.
fn for_each_file<T: Send>(
    files: &[PlannedFile],
    threads: usize,
    work: impl Fn(&PlannedFile) -> T + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let done: Vec<(usize, T)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let start = next.fetch_add(FILE_BATCH, Ordering::Relaxed);
                        if start >= files.len() {
                            return out;
                        }
                        for (i, f) in files
                            .iter()
                            .enumerate()
                            .skip(start)
                            .take(FILE_BATCH)
                            .filter(|(_, f)| f.failed.is_none())
                        {
                            out.push((i, work(f)));
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut by_file: Vec<Option<T>> = files.iter().map(|_| None).collect();
    for (i, r) in done {
        by_file[i] = Some(r);
    }
    by_file
}

/// Creates every planned file that can be restored (empty, of its final size); a file that
/// cannot be created is marked failed and receives no content.
fn create_files(plan: &mut Plan, threads: usize, progress: &Progress) {
    let created = for_each_file(&plan.files, threads, |f| {
        create_file(&f.path, f.node.size).map_err(|e| e.to_string())
    });
    for (f, r) in plan.files.iter_mut().zip(created) {
        match r {
            None => {}
            Some(Ok(())) => {
                f.created = true;
                Progress::add(&progress.files_total, 1);
                Progress::add(&progress.bytes_total, f.node.size);
            }
            Some(Err(e)) => f.failed = Some(e),
        }
    }
}

/// Creates (or truncates) a regular file of `size` bytes, all a hole; never follows a
/// symlink. On failure nothing the restorer made is left at `path`.
fn create_file(path: &Path, size: u64) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(std::io::Error::other("a directory is in the way of a file"))
        }
        Ok(m) if !m.is_file() => fs::remove_file(path)?,
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    file.set_len(size).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
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
    // A span is held in memory (twice while the backend copies it out) by each of the
    // readers, so it stays small; a blob larger than this is still read in one piece.
    const MAX_SPAN: u64 = 4 << 20;
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
        while j < blobs.len()
            && (blobs[j].1.offset as u64) <= end + MAX_GAP
            && blobs[j].1.offset as u64 + blobs[j].1.length as u64 - start <= MAX_SPAN
        {
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
                if !f.created {
                    continue;
                }
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
