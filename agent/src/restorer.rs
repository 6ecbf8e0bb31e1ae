//! Restore: recreate a snapshot's files under a target directory.
//!
//! Three phases. **Plan**: walk the snapshot's trees, create directories and empty files of
//! the right size, and note where every blob goes. **Content**: worker threads take one pack
//! at a time, read only the spans holding needed blobs, open and verify each blob (AEAD tag
//! and keyed id) and write it at its offsets; all-zero chunks are skipped so holes stay
//! sparse. **Finish**: set modes, owners (as root) and times; create hard links, symlinks and
//! special files; fix directory metadata deepest first.
//!
//! Safety: every name is checked to be one plain path component; hard links only point at
//! files restored in this run. Nothing is written outside the target. A file whose data
//! cannot be read or verified is removed and reported, the rest is restored, and the
//! restore returns an error — it never reports success for an incomplete restore or leaves
//! wrong bytes in place.
//!
//! ## Live targets
//! The target may be a volume whose owner changes it during the restore (see
//! [`crate::fsat`]), so no path below the target is ever resolved by a path lookup that could
//! follow a symlink. The target is opened once; each directory is created with `mkdirat`
//! and opened with `O_DIRECTORY|O_NOFOLLOW` relative to its parent's descriptor, and its
//! device and inode are recorded. Later phases reopen a directory with `openat2`
//! (`RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS`, or one `O_NOFOLLOW` open
//! per component) and refuse it unless it is still the recorded directory. Files are created
//! with `O_CREAT|O_EXCL|O_NOFOLLOW` relative to their directory — an existing non-directory
//! in the way is unlinked first, so the restore never writes into an inode it did not
//! create (a hard link to elsewhere, a file swapped in) — and owner, mode and times are set
//! with `fchown`/`fchmod`/`futimens` on the open file. Links, symlinks, FIFOs, device nodes
//! and deletions use `linkat`, `symlinkat`, `mknodat` and `unlinkat` relative to a checked
//! directory. An entry that was replaced under the restore is refused and named; the
//! restore then ends with an error.
//!
//! ## Cost per file
//! A file that is one chunk or less (most files of a many-small-files tree) is created,
//! written and given its metadata in one open when its chunk is decrypted: `openat`,
//! `pwrite`, `fchown` (as root), `fchmod`, `futimens`, `close`. Larger files are created
//! (and sized) first, written chunk by chunk through a checked reopen, and finished with
//! one more open. Directory descriptors are cached per worker thread.
//!
//! ## Restricted policy
//! With [`RestoreOptions::restricted`] (the agent's default for snapshots restored into a
//! pod's volume) a snapshot restores what a pod could legitimately have had and plants no
//! privilege. The rule, per entry:
//! - owners and groups are restored as recorded, uid and gid 0 included: the kubelet, root
//!   init containers and root pods make root-owned files, and owning a file grants nobody
//!   anything;
//! - permission bits are restored as recorded, except that the setuid bit is dropped when
//!   the owner is uid 0 and the setgid bit when the group is gid 0 (directories keep setgid:
//!   there it only decides the group of new entries). A setuid or setgid bit for any other
//!   owner is what a process running as that owner can set on its own file, and a pod may
//!   run as any non-root uid; a setuid-root or setgid-root file needs `CAP_FSETID`-level
//!   privilege to make and would hand root to whoever can run it;
//! - device nodes are not created (reported as skipped): making one needs `CAP_MKNOD`, and
//!   a device node in a volume reaches the node's hardware;
//! - nothing is written into another file system mounted inside the target.
//!
//! The CLI keeps the unrestricted behaviour unless `--restricted` is given.
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
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

use podvault_proto::pack::BlobType;
use podvault_proto::snapshot::Snapshot;
use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::{BlobId, PackId, Record, TreeId};
use rustix::fs::{AtFlags, Gid, Mode, OFlags, Uid};

use crate::error::{Error, Result};
use crate::fsat::{self, Meta};
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
    /// Restricted policy for untrusted snapshots: owners as recorded, but no device nodes,
    /// no setuid bit on files owned by uid 0, no setgid bit on files of gid 0, nothing
    /// written into another file system mounted inside the target. The node agent sets this
    /// unless allowed otherwise.
    #[arg(long)]
    pub restricted: bool,
    /// The directory every path must be (device and inode), set by the node agent when it
    /// found the path from a trusted root without following symlinks (a hostPath
    /// PersistentVolume below an allowed host directory); a path reaching anything else
    /// fails the operation. Never set from user input.
    #[arg(skip)]
    pub pinned_root: Option<crate::fsat::DirId>,
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
    /// Entries not recreated: device nodes when not root or under the restricted policy,
    /// and sockets.
    pub skipped: Vec<String>,
}

/// Deepest directory nesting restored (a path that deep is far beyond `PATH_MAX`).
pub const MAX_DEPTH: usize = 2048;
/// Stack of the planning thread: 32 KiB per level of [`MAX_DEPTH`] (virtual; only the
/// levels actually reached are touched).
const PLAN_STACK: usize = MAX_DEPTH * 32 * 1024;
/// Longest path restored (Linux `PATH_MAX`, terminating NUL included).
const PATH_MAX: usize = 4096;

/// How owners and modes are applied.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// Running as root: owners are restored.
    root: bool,
    /// The restricted policy (see the module docs).
    restricted: bool,
    /// The target's device, when entries on other devices are refused.
    dev: Option<u64>,
}

impl Policy {
    /// Owner (`None`: leave as created), group and permission bits for `node`.
    fn owner_mode(&self, node: &Node) -> (Option<Uid>, Option<Gid>, Mode) {
        let mut mode = node.mode & 0o7777;
        let uid = node.uid;
        if self.restricted {
            if uid == 0 {
                mode &= !0o4000;
            }
            if node.gid == 0 && node.kind != NodeKind::Dir {
                mode &= !0o2000;
            }
        }
        // -1 means "unchanged" to chown; a snapshot saying so is taken at its word.
        let uid = (self.root && uid != u32::MAX).then(|| Uid::from_raw(uid));
        let gid = (self.root && node.gid != u32::MAX).then(|| Gid::from_raw(node.gid));
        (uid, gid, Mode::from_raw_mode(mode))
    }
}

/// A directory the restore created or entered.
struct PlannedDir {
    /// Where it is (for messages).
    path: PathBuf,
    /// Its path relative to the target (for reopening it).
    rel: PathBuf,
    /// What it was when the planner opened it; every reopen must find the same directory.
    meta: Meta,
    /// Its node: `None` for the target itself and for directories only crossed to reach
    /// included paths.
    node: Option<Node>,
}

struct PlannedFile {
    path: PathBuf,
    /// Its directory (index into [`Plan::dirs`]) and name there.
    dir: usize,
    name: Vec<u8>,
    node: Node,
    failed: Option<String>,
    /// At most one chunk: created, written and finished in one open when its chunk arrives
    /// (or in the finish phase when it has none).
    single: bool,
    /// A larger file as created (and sized) before its content: reopened only if it is
    /// still this inode. Removed if the restore stops.
    created: Option<Meta>,
}

struct Plan {
    dirs: Vec<PlannedDir>,
    files: Vec<PlannedFile>,
    /// Symlinks and special files: directory, name, node, path.
    deferred: Vec<(usize, Vec<u8>, Node, PathBuf)>,
    /// Hard links: directory, name, first file, path.
    links: Vec<(usize, Vec<u8>, usize, PathBuf)>,
    placements: HashMap<BlobId, Vec<(usize, u64)>>,
    first_link: HashMap<(u64, u64), usize>,
    /// Entries that could not be planned, each naming its path and why.
    errors: Vec<String>,
    /// Single files finished while their content was written.
    finished: Vec<AtomicBool>,
}

impl Plan {
    /// Records an entry that will not be restored.
    fn error(&mut self, message: String) {
        tracing::error!("not restored: {message}");
        self.errors.push(message);
    }

    /// Removes files this restore created but did not finish (the restore was stopped).
    fn abandon(&self, root: BorrowedFd<'_>) {
        let mut dirs = Dirs::new(root, &self.dirs);
        for f in self.files.iter().filter(|f| f.created.is_some()) {
            if let Ok(d) = dirs.get(f.dir) {
                let _ = rustix::fs::unlinkat(d, f.name.as_slice(), AtFlags::empty());
            }
        }
    }
}

/// Open directories of the plan, reopened on demand (beneath the target, never through a
/// symlink, checked against what the planner saw); a few are kept open per thread.
struct Dirs<'a> {
    root: BorrowedFd<'a>,
    dirs: &'a [PlannedDir],
    open: Vec<(usize, OwnedFd)>,
}

/// Directory descriptors each thread keeps open.
const DIRS_KEPT: usize = 16;

impl<'a> Dirs<'a> {
    fn new(root: BorrowedFd<'a>, dirs: &'a [PlannedDir]) -> Self {
        Dirs {
            root,
            dirs,
            open: Vec::new(),
        }
    }

    /// The open directory `i` of the plan.
    fn get(&mut self, i: usize) -> io::Result<BorrowedFd<'_>> {
        if i == 0 {
            return Ok(self.root);
        }
        let pos = match self.open.iter().position(|(j, _)| *j == i) {
            Some(pos) => pos,
            None => {
                let d = &self.dirs[i];
                let fd = fsat::open_dir_beneath(self.root, &d.rel)?;
                if !fsat::fstat(fd.as_fd())?.same_inode(&d.meta) {
                    return Err(fsat::replaced());
                }
                if self.open.len() >= DIRS_KEPT {
                    self.open.remove(0);
                }
                self.open.push((i, fd));
                self.open.len() - 1
            }
        };
        Ok(self.open[pos].1.as_fd())
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
    fsat::raise_fd_limit();
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
    // The target itself is named by the operator (or the agent) and trusted; below it
    // nothing is.
    fs::create_dir_all(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let root_fd = fsat::open_root(&opts.target).map_err(|e| Error::io(&opts.target, e))?;
    let root_meta = fsat::fstat(root_fd.as_fd()).map_err(|e| Error::io(&opts.target, e))?;
    if opts.pinned_root.is_some_and(|pin| !pin.is(&root_meta)) {
        return Err(Error::io(&opts.target, fsat::not_pinned(&opts.target)));
    }
    let restricted = opts.restricted;
    let policy = Policy {
        root: rustix::process::geteuid().is_root(),
        restricted,
        dev: restricted.then_some(root_meta.dev),
    };
    let mut plan = Plan {
        dirs: vec![PlannedDir {
            path: opts.target.clone(),
            rel: PathBuf::new(),
            meta: root_meta,
            node: None,
        }],
        files: Vec::new(),
        deferred: Vec::new(),
        links: Vec::new(),
        placements: HashMap::new(),
        first_link: HashMap::new(),
        errors: Vec::new(),
        finished: Vec::new(),
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
                let mut walk = PlanWalk {
                    repo,
                    index: &index,
                    delete: opts.delete,
                    policy,
                    plan: &mut plan,
                    ancestors: vec![snapshot.tree],
                    rel: Vec::new(),
                };
                walk.tree(&snapshot.tree, root, (root_fd.as_fd(), 0), &includes)
            })
            .map_err(|e| Error::io(&opts.target, e))?;
        planner
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err(e) = planned {
        plan.abandon(root_fd.as_fd());
        return Err(e);
    }
    plan.finished = plan.files.iter().map(|_| AtomicBool::new(false)).collect();
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Canceled);
    }
    let threads = opts.threads.max(1);
    create_files(&mut plan, root_fd.as_fd(), threads);
    for f in plan.files.iter().filter(|f| f.failed.is_none()) {
        Progress::add(&progress.files_total, 1);
        Progress::add(&progress.bytes_total, f.node.size);
    }
    if cancel.load(Ordering::Relaxed) {
        plan.abandon(root_fd.as_fd());
        return Err(Error::Canceled);
    }

    // Content: one job per pack.
    let mut by_pack: HashMap<PackId, Vec<(BlobId, BlobLocation)>> = HashMap::new();
    for id in plan.placements.keys() {
        if let Some(loc) = index.lookup(id) {
            by_pack.entry(loc.pack).or_default().push((*id, loc));
        }
    }
    // Packs in the order of their first placement, so files (and so directories) come
    // roughly in plan order and each worker's directory cache keeps hitting.
    let mut by_pack: Vec<_> = by_pack.into_iter().collect();
    let first = |blobs: &[(BlobId, BlobLocation)]| {
        blobs
            .iter()
            .filter_map(|(id, _)| plan.placements.get(id)?.first().map(|p| p.0))
            .min()
            .unwrap_or(usize::MAX)
    };
    by_pack.sort_by_cached_key(|(_, blobs)| std::cmp::Reverse(first(blobs)));
    let jobs = Mutex::new(by_pack);
    let failures: Mutex<Vec<(usize, String)>> = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut dirs = Dirs::new(root_fd.as_fd(), &plan.dirs);
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some((pack, mut blobs)) =
                        jobs.lock().unwrap_or_else(|p| p.into_inner()).pop()
                    else {
                        return;
                    };
                    blobs.sort_by_key(|(_, l)| l.offset);
                    restore_pack(
                        repo, &pack, &blobs, &plan, &mut dirs, &policy, &failures, progress,
                    );
                }
            });
        }
    });
    if cancel.load(Ordering::Relaxed) {
        plan.abandon(root_fd.as_fd());
        return Err(Error::Canceled);
    }
    for (i, why) in failures.into_inner().unwrap_or_else(|p| p.into_inner()) {
        plan.files[i].failed.get_or_insert(why);
    }

    // Finish: metadata (and empty files), removal of failed files, links, special files,
    // directories.
    // Plan errors were logged when found; everything else is logged here.
    let mut failed: Vec<String> = std::mem::take(&mut plan.errors);
    let mut fail = |message: String| {
        tracing::error!("not restored: {message}");
        failed.push(message);
    };
    let metadata = for_each_file(&plan, root_fd.as_fd(), threads, |dirs, i, f| {
        if plan.finished[i].load(Ordering::Relaxed) {
            return Ok(());
        }
        let r = if f.single {
            // No chunk: an empty file (or one all a hole).
            write_single(dirs, f, None, &policy)
        } else {
            finish_file(dirs, f, &policy)
        };
        r.map_err(|e| format!("{}: {e}", f.path.display()))
    });
    let mut dirs = Dirs::new(root_fd.as_fd(), &plan.dirs);
    for (f, set) in plan.files.iter().zip(metadata) {
        if let Some(why) = &f.failed {
            if f.created.is_some() {
                if let Ok(d) = dirs.get(f.dir) {
                    let _ = rustix::fs::unlinkat(d, f.name.as_slice(), AtFlags::empty());
                }
            }
            fail(format!("{}: {why}", f.path.display()));
            continue;
        }
        if let Some(Err(e)) = set {
            fail(e);
            continue;
        }
        outcome.files += 1;
        outcome.bytes += f.node.size;
        Progress::add(&progress.files_done, 1);
    }
    for (dir, name, first, path) in &plan.links {
        let src = &plan.files[*first];
        if src.failed.is_some() {
            fail(format!(
                "{}: hard link to a file that was not restored",
                path.display()
            ));
            continue;
        }
        match hard_link(&mut dirs, (src.dir, &src.name), (*dir, name)) {
            Ok(()) => outcome.others += 1,
            Err(e) => fail(format!("{}: {e}", path.display())),
        }
    }
    for (dir, name, node, path) in &plan.deferred {
        let r = dirs
            .get(*dir)
            .and_then(|d| create_special(d, name, node, &policy));
        match r {
            Ok(true) => outcome.others += 1,
            Ok(false) => outcome.skipped.push(path.display().to_string()),
            Err(e) => fail(format!("{}: {e}", path.display())),
        }
    }
    // Deepest first: a directory's times are set after everything inside it.
    for (i, d) in plan.dirs.iter().enumerate().rev() {
        let Some(node) = &d.node else { continue };
        let r = dirs.get(i).and_then(|fd| set_metadata(fd, node, &policy));
        if let Err(e) = r {
            fail(format!("{}: {e}", d.path.display()));
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
/// stored order); entries are validated by [`PlanWalk::tree`].
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

/// The planner's walk over the snapshot's trees.
struct PlanWalk<'a, 'p> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    delete: bool,
    policy: Policy,
    plan: &'p mut Plan,
    /// Trees from the root to the current one (cycle detection).
    ancestors: Vec<TreeId>,
    /// Names from the root to the current directory (include matching).
    rel: Vec<Vec<u8>>,
}

impl PlanWalk<'_, '_> {
    /// Plans the entries of one directory, open as `dir` (descriptor, index in the plan).
    fn tree(
        &mut self,
        tree_id: &TreeId,
        nodes: Vec<Node>,
        dir: (BorrowedFd<'_>, usize),
        includes: &[Vec<Vec<u8>>],
    ) -> Result<()> {
        let (dir_fd, dir_index) = dir;
        let dir_path = self.plan.dirs[dir_index].path.clone();
        let dir_rel = self.plan.dirs[dir_index].rel.clone();
        if self.delete && includes.is_empty() {
            remove_extraneous(dir_fd, &dir_path, &nodes)?;
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
            self.rel.push(node.name.clone());
            let selected =
                includes.is_empty() || includes.iter().any(|inc| self.rel.starts_with(inc));
            let ancestor = includes
                .iter()
                .any(|inc| inc.starts_with(&self.rel) && inc.len() > self.rel.len());
            self.rel.pop();
            if !(selected || ancestor) {
                continue;
            }
            if !node.name_is_safe() {
                self.plan.error(format!(
                    "{}: entry {:?} in tree {tree_id}: unsafe name (not a single path component)",
                    dir_path.display(),
                    node.display_name()
                ));
                continue;
            }
            let path = dir_path.join(fsat::os(&node.name));
            if path.as_os_str().len() >= PATH_MAX {
                // Descriptor-relative calls could go deeper, but nothing could open it by
                // path afterwards (the application included).
                self.plan.error(format!(
                    "{}: the path is longer than PATH_MAX ({PATH_MAX} bytes)",
                    path.display()
                ));
                continue;
            }
            if copies > 1 {
                self.plan.error(format!(
                    "{}: entry {:?} appears {copies} times in tree {tree_id}; none of them is restored",
                    path.display(),
                    node.display_name()
                ));
                continue;
            }
            self.rel.push(node.name.clone());
            match node.kind {
                NodeKind::Dir => {
                    let sub = match node.subtree {
                        None => Err("the directory has no subtree".to_owned()),
                        Some(sub) if self.ancestors.contains(&sub) => Err(format!(
                            "its tree {sub} is one of its own ancestors (a cycle)"
                        )),
                        Some(_) if self.ancestors.len() >= MAX_DEPTH => {
                            Err(format!("directories nest deeper than {MAX_DEPTH} levels"))
                        }
                        Some(sub) => load_tree(self.repo, self.index, &sub)
                            .map(|nodes| (sub, nodes))
                            .map_err(|e| e.to_string()),
                    };
                    let planned = sub.and_then(|sub| {
                        let opened = ensure_dir(dir_fd, &node.name, self.policy.dev)
                            .map_err(|e| e.to_string())?;
                        Ok((sub, opened))
                    });
                    match planned {
                        Err(why) => self.plan.error(format!(
                            "{}: directory in tree {tree_id}: {why}",
                            path.display()
                        )),
                        Ok(((sub, sub_nodes), (fd, meta))) => {
                            let index = self.plan.dirs.len();
                            self.plan.dirs.push(PlannedDir {
                                path,
                                rel: dir_rel.join(fsat::os(&node.name)),
                                meta,
                                node: selected.then(|| node.clone()),
                            });
                            let inner: Vec<Vec<Vec<u8>>> = if selected {
                                Vec::new()
                            } else {
                                includes.to_vec()
                            };
                            self.ancestors.push(sub);
                            let r = self.tree(&sub, sub_nodes, (fd.as_fd(), index), &inner);
                            self.ancestors.pop();
                            r?;
                        }
                    }
                }
                _ if !selected => {}
                NodeKind::File => self.file(dir_index, path, node),
                _ => self
                    .plan
                    .deferred
                    .push((dir_index, node.name.clone(), node.clone(), path)),
            }
            self.rel.pop();
        }
        Ok(())
    }

    /// Plans one file: notes where its chunks go. A file that cannot be restored is
    /// recorded as failed and never created.
    fn file(&mut self, dir: usize, path: PathBuf, node: &Node) {
        let plan = &mut *self.plan;
        let key = (node.device, node.inode);
        if node.links > 1 {
            if let Some(&first) = plan.first_link.get(&key) {
                if plan.files[first].node.content == node.content {
                    plan.links.push((dir, node.name.clone(), first, path));
                    return;
                }
            }
        }
        let mut failed = None;
        let mut chunks = Vec::with_capacity(node.content.len());
        let mut offset = 0u64;
        for c in &node.content {
            let id = BlobId(c.0);
            match self.index.lookup(&id) {
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
            dir,
            name: node.name.clone(),
            single: node.content.len() <= 1,
            node: node.clone(),
            failed,
            created: None,
        });
    }
}

/// Files handed to one thread at a time by [`for_each_file`].
const FILE_BATCH: usize = 256;

/// Runs `work` on every planned file not yet failed, on `threads` threads (each with its
/// own directory cache), and returns what it said about each, beside the file (`None` for
/// files already failed). Creating a file or setting its metadata is a handful of system
/// calls; for many small files these dominate a restore, and the kernel serializes them
/// only within one directory.
fn for_each_file<T: Send>(
    plan: &Plan,
    root: BorrowedFd<'_>,
    threads: usize,
    work: impl Fn(&mut Dirs<'_>, usize, &PlannedFile) -> T + Sync,
) -> Vec<Option<T>> {
    let files = &plan.files;
    let next = AtomicUsize::new(0);
    let done: Vec<(usize, T)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut dirs = Dirs::new(root, &plan.dirs);
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
                            out.push((i, work(&mut dirs, i, f)));
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

/// Creates every planned file of more than one chunk (empty, of its final size) and
/// records what it created; a file that cannot be created is marked failed and receives no
/// content. Files of one chunk or none are created when they are written.
fn create_files(plan: &mut Plan, root: BorrowedFd<'_>, threads: usize) {
    let created = for_each_file(plan, root, threads, |dirs, _, f| {
        if f.single {
            return Ok(None);
        }
        let d = dirs.get(f.dir).map_err(|e| e.to_string())?;
        let file = create_at(d, &f.name).map_err(|e| e.to_string())?;
        let r = file
            .set_len(f.node.size)
            .and_then(|()| fsat::fstat(file.as_fd()));
        match r {
            Ok(meta) => Ok(Some(meta)),
            Err(e) => {
                let _ = rustix::fs::unlinkat(d, f.name.as_slice(), AtFlags::empty());
                Err(e.to_string())
            }
        }
    });
    for (f, r) in plan.files.iter_mut().zip(created) {
        match r {
            None | Some(Ok(None)) => {}
            Some(Ok(Some(meta))) => f.created = Some(meta),
            Some(Err(e)) => f.failed = Some(e),
        }
    }
}

/// Creates the regular file `name` in `dir` for writing, mode 0600: `O_CREAT|O_EXCL|
/// O_NOFOLLOW`, so it is always a new inode of the restore's own. A non-directory in the
/// way is unlinked first (never written through: it may be a hard link to a file elsewhere
/// or a symlink); a directory in the way is an error.
fn create_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mode = Mode::from_raw_mode(0o600);
    match rustix::fs::openat(dir, name, flags, mode) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    remove_non_dir(dir, name)?;
    Ok(File::from(rustix::fs::openat(dir, name, flags, mode)?))
}

/// Removes a non-directory `name` of `dir`, if there is one; a directory is an error.
fn remove_non_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match fsat::stat_at(dir, name) {
        Ok(m) if m.is_dir() => Err(io::Error::other("a directory is in the way")),
        Ok(_) => match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies owner (as root), mode and times on an open descriptor, in that order (a change
/// of owner clears setuid bits, which the mode then sets if wanted).
fn set_metadata(fd: BorrowedFd<'_>, node: &Node, policy: &Policy) -> io::Result<()> {
    let (uid, gid, mode) = policy.owner_mode(node);
    if uid.is_some() || gid.is_some() {
        rustix::fs::fchown(fd, uid, gid)?;
    }
    rustix::fs::fchmod(fd, mode)?;
    rustix::fs::futimens(fd, &fsat::times(node.mtime_ns))?;
    Ok(())
}

/// Creates, writes and finishes a file of at most one chunk in one open. `data` is its
/// chunk (`None`: no chunk, or an all-zero one: the file is one hole of its size). On
/// failure nothing the restorer made is left.
fn write_single(
    dirs: &mut Dirs<'_>,
    f: &PlannedFile,
    data: Option<&[u8]>,
    policy: &Policy,
) -> io::Result<()> {
    let dir = dirs.get(f.dir)?;
    let file = create_at(dir, &f.name)?;
    let r = (|| {
        match data {
            Some(d) => file.write_all_at(d, 0)?,
            None if f.node.size > 0 => file.set_len(f.node.size)?,
            None => {}
        }
        set_metadata(file.as_fd(), &f.node, policy)
    })();
    if r.is_err() {
        let _ = rustix::fs::unlinkat(dir, f.name.as_slice(), AtFlags::empty());
    }
    r
}

/// Opens a file this restore created (a larger one) for writing, checking it is still
/// the inode it created.
fn reopen(dirs: &mut Dirs<'_>, f: &PlannedFile) -> io::Result<File> {
    let Some(expected) = &f.created else {
        return Err(io::Error::other("not created"));
    };
    let dir = dirs.get(f.dir)?;
    let fd = rustix::fs::openat(
        dir,
        f.name.as_slice(),
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    if !fsat::fstat(fd.as_fd())?.same_inode(expected) {
        return Err(fsat::replaced());
    }
    Ok(File::from(fd))
}

/// Sets a larger file's metadata once its content is written.
fn finish_file(dirs: &mut Dirs<'_>, f: &PlannedFile, policy: &Policy) -> io::Result<()> {
    let file = reopen(dirs, f)?;
    set_metadata(file.as_fd(), &f.node, policy)
}

/// Reads the needed spans of one pack and writes its blobs wherever they belong.
#[allow(clippy::too_many_arguments)]
fn restore_pack(
    repo: &Repository,
    pack: &PackId,
    blobs: &[(BlobId, BlobLocation)],
    plan: &Plan,
    dirs: &mut Dirs<'_>,
    policy: &Policy,
    failures: &Mutex<Vec<(usize, String)>>,
    progress: &Progress,
) {
    const MAX_GAP: u64 = 1 << 20;
    // A span is held in memory (twice while the backend copies it out) by each of the
    // readers, so it stays small; a blob larger than this is still read in one piece.
    const MAX_SPAN: u64 = 4 << 20;
    let fail = |file: usize, why: String| {
        failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((file, why));
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
                    for &(file, _) in plan.placements.get(id).into_iter().flatten() {
                        fail(file, e.to_string());
                    }
                    continue;
                }
            };
            let zero = data.iter().all(|&b| b == 0);
            for &(file, offset) in plan.placements.get(id).into_iter().flatten() {
                let f = &plan.files[file];
                if f.failed.is_some() {
                    continue;
                }
                let r = if f.single {
                    let r = write_single(dirs, f, (!zero).then_some(&data[..]), policy);
                    if r.is_ok() {
                        plan.finished[file].store(true, Ordering::Relaxed);
                    }
                    r
                } else if zero {
                    Ok(())
                } else {
                    reopen(dirs, f).and_then(|h| h.write_all_at(&data, offset))
                };
                if let Err(e) = r {
                    fail(file, format!("writing: {e}"));
                    continue;
                }
                Progress::add(&progress.bytes_done, data.len() as u64);
            }
        }
        i = j;
    }
}

/// Creates the directory `name` of `dir`, or accepts an existing real directory, and opens
/// it; never follows a symlink (a non-directory in the way is unlinked and replaced). With
/// `dev`, a directory on another device (a mount point) is refused.
fn ensure_dir(dir: BorrowedFd<'_>, name: &[u8], dev: Option<u64>) -> io::Result<(OwnedFd, Meta)> {
    let mode = Mode::from_raw_mode(0o700);
    match rustix::fs::mkdirat(dir, name, mode) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = match fsat::open_dir_at(dir, name) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                rustix::io::Errno::from_io_error(&e),
                Some(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
            ) =>
        {
            remove_non_dir(dir, name)?;
            rustix::fs::mkdirat(dir, name, mode)?;
            fsat::open_dir_at(dir, name)?
        }
        Err(e) => return Err(e),
    };
    let meta = fsat::fstat(fd.as_fd())?;
    if dev.is_some_and(|d| d != meta.dev) {
        return Err(io::Error::other(
            "a mount point of another file system; not restored into",
        ));
    }
    Ok((fd, meta))
}

/// Removes entries of `dir` that the snapshot's directory does not have.
fn remove_extraneous(dir: BorrowedFd<'_>, path: &Path, nodes: &[Node]) -> Result<()> {
    // A descriptor of its own, so the listing starts at the beginning.
    let listing = rustix::io::fcntl_dupfd_cloexec(dir, 0)
        .map_err(io::Error::from)
        .and_then(|d| {
            // The duplicate shares the position; rewinding it rewinds both, which is what
            // we want.
            rustix::fs::seek(&d, rustix::fs::SeekFrom::Start(0))?;
            fsat::read_names(d.as_fd())
        })
        .map_err(|e| Error::io(path, e))?;
    for name in listing {
        if nodes
            .binary_search_by(|n| n.name.as_slice().cmp(&name))
            .is_err()
        {
            let p = path.join(fsat::os(&name));
            remove_tree(dir, &name, 0).map_err(|err| Error::io(&p, err))?;
        }
    }
    Ok(())
}

/// Removes `name` of `dir` and, if it is a directory, everything in it, relative to open
/// descriptors and never following a symlink.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> io::Result<()> {
    let meta = match fsat::stat_at(dir, name) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directories nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let sub = fsat::open_dir_verified(dir, name, &meta)?;
    for child in fsat::read_names(sub.as_fd())? {
        remove_tree(sub.as_fd(), &child, depth + 1)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// Links `to` (directory index, name) to the restored file at `from`.
fn hard_link(dirs: &mut Dirs<'_>, from: (usize, &[u8]), to: (usize, &[u8])) -> io::Result<()> {
    // Two descriptors at once: the source's is duplicated out of the cache.
    let src = rustix::io::fcntl_dupfd_cloexec(dirs.get(from.0)?, 0)?;
    let dst = dirs.get(to.0)?;
    remove_non_dir(dst, to.1)?;
    Ok(rustix::fs::linkat(
        &src,
        from.1,
        dst,
        to.1,
        AtFlags::empty(),
    )?)
}

/// Creates a symlink, FIFO or device node `node` as `name` of `dir`; `Ok(false)` when
/// skipped (sockets; device nodes without root or under the restricted policy).
fn create_special(
    dir: BorrowedFd<'_>,
    name: &[u8],
    node: &Node,
    policy: &Policy,
) -> io::Result<bool> {
    let kind = match node.kind {
        NodeKind::Symlink => {
            remove_non_dir(dir, name)?;
            rustix::fs::symlinkat(node.symlink_target.as_slice(), dir, name)?;
            let (uid, gid, _) = policy.owner_mode(node);
            if uid.is_some() || gid.is_some() {
                rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            }
            rustix::fs::utimensat(
                dir,
                name,
                &fsat::times(node.mtime_ns),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
            return Ok(true);
        }
        NodeKind::Fifo => rustix::fs::FileType::Fifo,
        NodeKind::CharDevice if policy.root && !policy.restricted => {
            rustix::fs::FileType::CharacterDevice
        }
        NodeKind::BlockDevice if policy.root && !policy.restricted => {
            rustix::fs::FileType::BlockDevice
        }
        _ => return Ok(false),
    };
    remove_non_dir(dir, name)?;
    let rdev = if kind == rustix::fs::FileType::Fifo {
        0
    } else {
        node.rdev
    };
    rustix::fs::mknodat(dir, name, kind, Mode::from_raw_mode(0o600), rdev)?;
    // Owner, mode and times through an O_PATH handle checked to be what was just made:
    // opening a FIFO or device for I/O could block or have effects, and the path-based
    // calls would follow a symlink swapped in.
    let fd = fsat::open_path_at(dir, name)?;
    let meta = fsat::fstat(fd.as_fd())?;
    if meta.file_type() != kind || meta.rdev != rdev {
        return Err(fsat::replaced());
    }
    let (uid, gid, mode) = policy.owner_mode(node);
    if uid.is_some() || gid.is_some() {
        rustix::fs::chownat(&fd, "", uid, gid, AtFlags::EMPTY_PATH)?;
    }
    fsat::chmod_times_path_fd(fd.as_fd(), mode.as_raw_mode(), node.mtime_ns)?;
    Ok(true)
}
