//! Verifying a repository: structure always, data on request.
//!
//! Structural check: every key file, index object and snapshot reads, verifies against its
//! name and decodes; every pack an index lists exists with the size the index records; every
//! tree reachable from a snapshot loads; every blob a tree refers to is indexed in a pack that
//! exists. With `--read-data` (or a deterministic `--read-data-subset`), packs are downloaded
//! and every blob is decrypted, decompressed and checked against its id, and each pack's own
//! header is compared with the index.
//!
//! Damage is reported by object, and then translated into what it costs the user: for each
//! snapshot, the files (and directories) that cannot be restored intact. Nothing is modified.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;

use podvault_proto::index::IndexFile;
use podvault_proto::key::KeyFile;
use podvault_proto::pack::{parse_trailer, PackHeader, TRAILER_LEN};
use podvault_proto::snapshot::Snapshot;
use podvault_proto::{BlobId, ObjectKind, PackId, Record, TreeId};

use crate::blob::open_blob;
use crate::error::{Error, Result};
use crate::index::MasterIndex;
use crate::prune::pack_states;
use crate::repository::{object_path, pack_path, Repository};

/// Which packs `--read-data-subset` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Subset {
    /// Part `n` of `m` (1-based): packs whose id falls in that bucket. Running 1/m … m/m
    /// in turn reads every pack once.
    Part {
        /// Which part.
        n: u32,
        /// Of how many.
        m: u32,
    },
    /// About this percentage of the packs, always the same ones (lowest ids first).
    Percent(f64),
}

impl FromStr for Subset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{s:?} is not a subset: use N/M (e.g. 1/10) or P% (e.g. 5%)");
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!("subset percentage {p} is outside (0, 100]"));
            }
            return Ok(Subset::Percent(p));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if m == 0 || n == 0 || n > m {
            return Err(format!("subset {n}/{m}: need 1 <= N <= M"));
        }
        Ok(Subset::Part { n, m })
    }
}

impl Subset {
    /// True when the pack belongs to the subset.
    pub fn contains(&self, id: &PackId) -> bool {
        match *self {
            Subset::Part { n, m } => {
                let v = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
                v % m == n - 1
            }
            Subset::Percent(p) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&id.0[..8]);
                (u64::from_be_bytes(b) as f64) < p / 100.0 * u64::MAX as f64
            }
        }
    }
}

/// Settings for `check`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckOptions {
    /// Download every pack and verify every blob.
    #[arg(long)]
    pub read_data: bool,
    /// Download only a deterministic subset of the packs: `N/M` (part N of M; run 1/M … M/M
    /// in turn to cover everything) or `P%`.
    #[arg(long, value_name = "N/M|P%", conflicts_with = "read_data")]
    pub read_data_subset: Option<Subset>,
    /// Parallel pack downloads with --read-data (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Something wrong with one object.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    /// The object (path in the repository, or blob/tree).
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

/// The files of one snapshot that cannot be restored intact.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Affected {
    /// Snapshot id.
    pub snapshot: String,
    /// Paths inside the snapshot, each with the reason.
    pub paths: Vec<Problem>,
}

/// The outcome of a check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Damage found (empty: the repository is sound).
    pub errors: Vec<Problem>,
    /// Harmless findings (e.g. packs left by interrupted backups).
    pub warnings: Vec<String>,
    /// Snapshots whose files are affected by the damage.
    pub affected: Vec<Affected>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Distinct trees checked.
    pub trees: usize,
    /// Distinct blobs referenced.
    pub blobs: usize,
    /// Packs in the index.
    pub packs: usize,
    /// Packs downloaded and verified.
    pub packs_read: usize,
    /// Blobs decrypted and verified.
    pub blobs_read: usize,
    /// Bytes downloaded.
    pub bytes_read: u64,
}

impl CheckReport {
    /// True when no damage was found.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, object: impl Into<String>, detail: impl ToString) {
        self.errors.push(Problem {
            object: object.into(),
            detail: detail.to_string(),
        });
    }
}

/// Checks the repository.
pub fn check(repo: &Repository, opts: &CheckOptions) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    check_keys(repo, &mut report)?;

    // Index objects, one by one so one damaged object does not hide the rest.
    let mut files = Vec::new();
    for id in repo.list::<IndexFile>()? {
        match repo.load::<IndexFile>(&id) {
            Ok(f) => files.push((id, f)),
            Err(e) if e.is_not_found() => {} // superseded by a concurrent prune
            Err(e) => report.error(object_path::<IndexFile>(&id), error_detail(&e)),
        }
    }
    let packs = pack_states(&files);
    let index = MasterIndex::from_files(files);
    report.packs = packs.len();

    // Packs: present, with the recorded size.
    let listed: HashSet<PackId> = repo.list_packs()?.into_iter().collect();
    let mut missing: HashSet<PackId> = HashSet::new();
    let mut order: Vec<&PackId> = packs.keys().collect();
    order.sort();
    for id in &order {
        let state = &packs[*id];
        let pending = index.pending().contains_key(*id);
        if !listed.contains(*id) {
            missing.insert(**id);
            if !pending {
                report.error(
                    pack_path(id),
                    "listed in the index but missing from the store",
                );
            }
            continue;
        }
        match repo.backend().size(&pack_path(id)) {
            Ok(size) if size == state.info.size as u64 => {}
            Ok(size) => {
                missing.insert(**id);
                report.error(
                    pack_path(id),
                    format!("is {size} bytes, the index says {}", state.info.size),
                );
            }
            Err(e) => {
                missing.insert(**id);
                report.error(pack_path(id), error_detail(&e));
            }
        }
    }
    let unindexed = listed
        .iter()
        .filter(|id| !packs.contains_key(*id) && !index.pending().contains_key(*id))
        .count();
    if unindexed > 0 {
        report.warnings.push(format!(
            "{unindexed} pack(s) are not in any index (left by interrupted backups; the next \
             backup reuses them, prune removes them)"
        ));
    }

    // Data: download and verify.
    let mut bad: HashMap<BlobId, String> = HashMap::new();
    let selected: Vec<PackId> = order
        .iter()
        .filter(|id| !missing.contains(**id))
        .filter(|id| {
            opts.read_data
                || opts
                    .read_data_subset
                    .as_ref()
                    .is_some_and(|s| s.contains(id))
        })
        .map(|id| **id)
        .collect();
    if !selected.is_empty() {
        let results = read_packs(repo, &packs, &selected, opts.threads);
        for r in results {
            report.packs_read += 1;
            report.bytes_read += r.bytes;
            report.blobs_read += r.blobs_ok;
            for (object, detail) in r.problems {
                report.error(object, detail);
            }
            bad.extend(r.bad_blobs);
        }
    }
    for id in &missing {
        if let Some(state) = packs.get(id) {
            for (b, _) in &state.blobs {
                bad.entry(*b)
                    .or_insert_with(|| format!("its pack {} is missing or damaged", pack_path(id)));
            }
        }
    }

    // Snapshots → trees → blobs.
    let mut walker = TreeWalk {
        repo,
        index: &index,
        bad: &bad,
        clean: HashSet::new(),
        seen_trees: HashSet::new(),
        blobs: HashSet::new(),
        tree_errors: HashMap::new(),
    };
    let mut snapshot_ids = repo.list::<Snapshot>()?;
    snapshot_ids.sort();
    for sid in snapshot_ids {
        report.snapshots += 1;
        let snap = match repo.load::<Snapshot>(&sid) {
            Ok(s) => s,
            Err(e) => {
                report.error(object_path::<Snapshot>(&sid), error_detail(&e));
                report.affected.push(Affected {
                    snapshot: sid.to_hex(),
                    paths: vec![Problem {
                        object: "/".into(),
                        detail: "the snapshot itself cannot be read".into(),
                    }],
                });
                continue;
            }
        };
        let mut paths = Vec::new();
        walker.walk(snap.tree, "", &mut paths);
        if !paths.is_empty() {
            report.affected.push(Affected {
                snapshot: sid.to_hex(),
                paths,
            });
        }
    }
    report.trees = walker.seen_trees.len();
    report.blobs = walker.blobs.len();
    let mut tree_errors: Vec<_> = walker.tree_errors.into_iter().collect();
    tree_errors.sort();
    for (tree, detail) in tree_errors {
        report.error(format!("tree {tree}"), detail);
    }
    // Missing blobs are damage even when only snapshots reveal them.
    let mut missing_blobs: Vec<_> = walker
        .blobs
        .iter()
        .filter(|b| index.lookup(b).is_none())
        .collect();
    missing_blobs.sort();
    for b in missing_blobs {
        report.error(
            format!("blob {b}"),
            "referenced by a snapshot but not in any index",
        );
    }
    Ok(report)
}

/// Every key file must verify and decode, not just the one that opened the repository.
fn check_keys(repo: &Repository, report: &mut CheckReport) -> Result<()> {
    for id in repo.list::<KeyFile>()? {
        let path = object_path::<KeyFile>(&id);
        let bytes = match repo.backend().read(&path) {
            Ok(b) => b,
            Err(e) => {
                report.error(path, error_detail(&e));
                continue;
            }
        };
        if blake3::hash(&bytes).as_bytes() != &id.0 {
            report.error(path, "content does not match its name (hash mismatch)");
        } else if let Err(e) = KeyFile::decode(&bytes) {
            report.error(path, e);
        }
    }
    Ok(())
}

/// The result of reading one pack.
struct PackResult {
    bytes: u64,
    blobs_ok: usize,
    problems: Vec<(String, String)>,
    bad_blobs: Vec<(BlobId, String)>,
}

fn read_packs(
    repo: &Repository,
    packs: &HashMap<PackId, crate::prune::PackState>,
    selected: &[PackId],
    threads: Option<usize>,
) -> Vec<PackResult> {
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 16);
    let next = Mutex::new(0usize);
    let out = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(id) = selected.get(i) else { break };
                let r = read_pack(repo, id, &packs[id]);
                out.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            });
        }
    });
    out.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Downloads one pack; verifies its header against the index and every blob against its id.
fn read_pack(repo: &Repository, id: &PackId, state: &crate::prune::PackState) -> PackResult {
    let path = pack_path(id);
    let mut r = PackResult {
        bytes: 0,
        blobs_ok: 0,
        problems: Vec::new(),
        bad_blobs: Vec::new(),
    };
    let all_bad = |r: &mut PackResult, why: String| {
        r.bad_blobs
            .extend(state.blobs.iter().map(|(b, _)| (*b, why.clone())));
    };
    let bytes = match repo.backend().read(&path) {
        Ok(b) => b,
        Err(e) => {
            r.problems.push((path.clone(), error_detail(&e)));
            all_bad(&mut r, format!("pack {path} cannot be read"));
            return r;
        }
    };
    r.bytes = bytes.len() as u64;
    if blake3::hash(&bytes).as_bytes() != &id.0 {
        r.problems.push((
            path.clone(),
            "content does not match its name (hash mismatch)".into(),
        ));
    }
    match pack_header(repo, &path, &bytes) {
        Ok(header) => {
            let listed: HashMap<BlobId, (u32, u32)> = header
                .blobs
                .iter()
                .map(|b| (b.id, (b.offset, b.length)))
                .collect();
            for (b, e) in &state.blobs {
                if listed.get(b) != Some(&(e.offset, e.length)) {
                    r.problems.push((
                        format!("{path} (blob {b})"),
                        "the index and the pack header disagree about this blob".into(),
                    ));
                }
            }
        }
        Err(detail) => r.problems.push((path.clone(), format!("header: {detail}"))),
    }
    for (b, e) in &state.blobs {
        let range = e.offset as usize..e.offset as usize + e.length as usize;
        let verdict = match bytes.get(range) {
            None => Err("lies past the end of the pack".to_string()),
            Some(sealed) => {
                open_blob(repo.key(), state.info.blob_type, b, e.raw_length, sealed).map(|_| ())
            }
        };
        match verdict {
            Ok(()) => r.blobs_ok += 1,
            Err(detail) => {
                r.problems
                    .push((format!("{path} (blob {b})"), detail.clone()));
                r.bad_blobs.push((
                    *b,
                    format!("blob {} in {path} is damaged: {detail}", b.short()),
                ));
            }
        }
    }
    r
}

fn pack_header(
    repo: &Repository,
    path: &str,
    bytes: &[u8],
) -> std::result::Result<PackHeader, String> {
    if bytes.len() < TRAILER_LEN {
        return Err(format!("only {} bytes long", bytes.len()));
    }
    let hlen = parse_trailer(&bytes[bytes.len() - TRAILER_LEN..]).ok_or("bad trailer")? as usize;
    let end = bytes.len() - TRAILER_LEN;
    let start = end
        .checked_sub(hlen)
        .ok_or("header length exceeds the pack")?;
    let plain = repo
        .key()
        .open(ObjectKind::Pack.aad(), &bytes[start..end])
        .map_err(|e| e.to_string())?;
    PackHeader::decode(&plain).map_err(|e| format!("{path}: {e}"))
}

/// Walks snapshot trees, memoising subtrees already found intact.
struct TreeWalk<'a> {
    repo: &'a Repository,
    index: &'a MasterIndex,
    bad: &'a HashMap<BlobId, String>,
    clean: HashSet<TreeId>,
    seen_trees: HashSet<TreeId>,
    blobs: HashSet<BlobId>,
    tree_errors: HashMap<TreeId, String>,
}

impl TreeWalk<'_> {
    /// Walks `tree` at `path`; appends affected paths; returns true when all is intact.
    fn walk(&mut self, tree: TreeId, path: &str, affected: &mut Vec<Problem>) -> bool {
        if self.clean.contains(&tree) {
            return true;
        }
        self.seen_trees.insert(tree);
        self.blobs.insert(BlobId::from(tree));
        let shown = if path.is_empty() { "/" } else { path };
        let loaded = match self.bad.get(&BlobId::from(tree)) {
            Some(why) => Err(why.clone()),
            None => self
                .repo
                .load_tree(self.index, &tree)
                .map_err(|e| error_detail(&e)),
        };
        let t = match loaded {
            Ok(t) => t,
            Err(detail) => {
                self.tree_errors.entry(tree).or_insert(detail.clone());
                affected.push(Problem {
                    object: format!("{shown} (directory; its contents are lost)"),
                    detail,
                });
                return false;
            }
        };
        let mut intact = true;
        for node in &t.nodes {
            let name = String::from_utf8_lossy(&node.name);
            let child = format!("{path}/{name}");
            for c in &node.content {
                let b = BlobId(c.0);
                self.blobs.insert(b);
                let why = match self.bad.get(&b) {
                    Some(why) => Some(why.clone()),
                    None if self.index.lookup(&b).is_none() => {
                        Some(format!("blob {} is not in any index", b.short()))
                    }
                    None => None,
                };
                if let Some(detail) = why {
                    affected.push(Problem {
                        object: child.clone(),
                        detail,
                    });
                    intact = false;
                    break;
                }
            }
            if let Some(sub) = node.subtree {
                intact &= self.walk(sub, &child, affected);
            }
        }
        if intact {
            self.clean.insert(tree);
        }
        intact
    }
}

fn error_detail(e: &Error) -> String {
    e.to_string()
}
