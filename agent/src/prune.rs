//! Reclaiming space: the two-phase, lock-free prune, and the backup's side of its protocol.
//!
//! ## The protocol
//! Several agents back up into one repository while a prune runs beside them; there is no
//! global lock. Safety rests on three rules:
//!
//! 1. **Mark, don't delete.** A prune run works out which blobs the snapshots it can see
//!    reference. Packs with no referenced blob, and packs left by killed backups that no index
//!    lists ("orphans"), are *marked*: the index object the prune writes lists them as
//!    pending with `marked_at` (now) and `delete_after` (now + grace). Packs that are mostly
//!    garbage (above `--repack-threshold`) have their live blobs copied into new packs first
//!    and are then marked the same way. Nothing is deleted in this phase.
//! 2. **Backups never build on marked packs.** A backup loads the index when it starts; blobs
//!    that live only in marked packs count as absent and are stored again. Every pack the
//!    backup deduplicates against (and every pack it writes) is recorded. Right before writing
//!    its snapshot the backup reads the index objects written since it started
//!    ([`check_dependencies`]): if one of its packs was marked and half of that mark's grace
//!    period has already passed — or the pack is already gone, because the backup outlived a
//!    whole mark-and-delete cycle — it fails instead of writing a snapshot that might point
//!    at deleted data. A later retry stores the data anew.
//! 3. **Delete late, and only what is still garbage.** A later prune run deletes a marked
//!    pack only when `delete_after` lies before the moment it started listing snapshots and
//!    no snapshot it lists still needs a blob that exists only in that pack. A pack that a
//!    snapshot needs again (written by a backup that started before the mark) is *resurrected*:
//!    the new index lists it as live.
//! 4. **Deleted packs stay marked.** A deleted pack is kept in the new index's pending list
//!    (a tombstone) for [`TOMBSTONE_SECS`] after its deletion time. An index object that still
//!    lists it as live can appear after the prune read the index — a backup indexing packs it
//!    uploaded before they were marked as orphans, or adopting "orphans" it listed just before
//!    the deletion — and without the tombstone the next backup would deduplicate against a
//!    pack that is gone. With it the pack stays pending: never reused, never adopted, and
//!    `check` knows it is gone on purpose. The next prune drops such index objects.
//!
//! 5. **Running backups are left alone.** A backup announces itself before its first upload
//!    with an index object naming its *session* (random id, start time) and writes one at
//!    least every heartbeat interval (10 minutes) while it runs, with the packs it made
//!    durable since, and one marking it finished once its snapshot is saved or it failed
//!    (the `sink` module). A session is alive until it is marked finished or its latest
//!    index object is older than `--session-timeout` (default one hour). While any session is alive,
//!    a pack that would be marked (unused, orphaned or to be repacked) and whose object was
//!    written at or after the earliest live session's start, less [`SESSION_SKEW_SECS`], is
//!    left as it is (reported as protected). Prune reads the sessions after listing the
//!    packs, so a session that uploaded a listed pack is always seen: its announcement
//!    precedes its first upload. Prune carries the live sessions into the index object it
//!    writes, so superseding their index objects loses none. A killed backup stops beating;
//!    once it has timed out its packs are orphans like any other and are marked and deleted
//!    by rules 1 and 3. A backup stalled longer than the timeout loses this protection and
//!    falls back to rule 2 (it fails at its commit rather than write a broken snapshot).
//!
//! Times: the mark's `marked_at` is taken right before the index holding it is written (a
//! backup cannot see a mark earlier), rounded down; `delete_after` is that moment rounded up
//! plus the grace period. Rule 2 refuses from the midpoint of the two (measured in
//! milliseconds), rule 3 deletes once `delete_after` has passed in whole seconds.
//!
//! Why this is enough: a backup that depends on a marked pack P writes its snapshot at a time
//! `c` before the midpoint, `c < mark + (grace + 1 s)/2` (rule 2) — or, if it did not see the
//! mark, before the mark was written. A prune may delete P only if it started listing at
//! `s ≥ mark + grace` (rule 3), so `s > c + (grace − 1 s)/2`: the snapshot is durable before
//! the listing starts, the prune sees it, and resurrects P. The argument needs clock skew
//! between machines plus the time from the check to the snapshot write to stay below half
//! the grace period — the default grace is 24 hours — and a backup to index a pack it uploaded
//! within the tombstone period (it does so every 64 packs, every heartbeat and at the end).
//! Rule 5 makes rule 2's refusal the exception: a backup of any length beside any number of
//! prunes keeps its uploads, as long as it beats and clocks (backup's and the store's) agree
//! within [`SESSION_SKEW_SECS`]. `--grace 0`
//! deletes in the same run and is only safe when nothing else writes to the repository.
//!
//! Index objects: the prune writes one new index object holding every live and pending pack
//! it knows and listing all index objects it read as superseded, then deletes those. Readers
//! that find an index object gone between listing and reading list again (the replacement
//! exists before anything is deleted). Order of writes: repacked packs → new index → delete
//! superseded index objects → delete packs.
//!
//! Two prunes must not run at the same time (one per repository; the controller runs one).
//! A prune refuses to run if any snapshot, tree or index object cannot be read: it never
//! deletes on the strength of an incomplete picture.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use podvault_proto::index::{IndexEntry, IndexFile, PackInfo, PendingPack, Session};
use podvault_proto::pack::BlobType;
use podvault_proto::{BlobId, IndexId, PackId, TreeId};

use crate::blob::open_blob;
use crate::error::{Error, Result};
use crate::index::MasterIndex;
use crate::packer::{FinishedPack, Packer};
use crate::repository::{pack_path, Repository};

/// How long a deleted pack stays in the index's pending list after its deletion time (rule 4):
/// a week, 48 bytes per pack.
pub const TOMBSTONE_SECS: i64 = 7 * 24 * 3600;

/// Slack between a backup's clock (its session start) and the store's (a pack's write time)
/// in rule 5.
pub const SESSION_SKEW_SECS: i64 = 10 * 60;

/// Settings for `prune`.
#[derive(Debug, Clone, clap::Args)]
pub struct PruneOptions {
    /// How long a pack stays marked before it may be deleted (e.g. `24h`, `30m`, `0s`).
    /// Must exceed clock skew plus the longest backup commit; `0s` is only safe when
    /// nothing else writes to the repository.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Repack packs in which more than this percentage of the bytes is unused.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub repack_threshold: u8,
    /// Report what would be done without changing the repository.
    #[arg(long)]
    pub dry_run: bool,
    /// A running backup that has written no index object for this long counts as dead, and
    /// its packs as orphans (backups write one at least every 10 minutes).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            grace: Duration::from_secs(24 * 3600),
            repack_threshold: 50,
            dry_run: false,
            session_timeout: Duration::from_secs(3600),
        }
    }
}

/// What a prune did (or would do, in a dry run).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    /// Snapshots whose data was kept.
    pub snapshots: usize,
    /// Blobs referenced by them.
    pub blobs_referenced: usize,
    /// Packs in the repository before the run.
    pub packs_before: usize,
    /// Packs newly marked for deletion (unused, repacked or orphaned).
    pub packs_marked: usize,
    /// Of those, packs whose live blobs were copied into new packs first.
    pub packs_repacked: usize,
    /// New packs written by repacking.
    pub packs_written: usize,
    /// Bytes copied by repacking.
    pub bytes_repacked: u64,
    /// Packs deleted (their grace period had passed and nothing needed them).
    pub packs_deleted: usize,
    /// Bytes freed by deleting them.
    pub bytes_deleted: u64,
    /// Marked packs a snapshot turned out to need, kept as live again.
    pub packs_resurrected: usize,
    /// Packs still marked, waiting for their grace period.
    pub packs_pending: usize,
    /// Index objects replaced by the new one.
    pub index_objects_replaced: usize,
    /// Backups running now (sessions alive, rule 5).
    pub sessions_alive: usize,
    /// Packs that would have been marked but were written while a backup runs (rule 5).
    pub packs_protected: usize,
}

/// One pack as the index describes it.
pub(crate) struct PackState {
    /// Pack id, size and type.
    pub info: PackInfo,
    /// Blobs in the pack, sorted by id.
    pub blobs: Vec<(BlobId, IndexEntry)>,
}

/// Runs a prune.
pub fn prune(repo: &Repository, opts: &PruneOptions) -> Result<PruneReport> {
    let now = unix_now();
    let grace = i64::try_from(opts.grace.as_secs()).unwrap_or(i64::MAX / 2);
    let mut report = PruneReport::default();

    // Snapshots before the index: a snapshot is written only after the index objects it
    // needs, so every snapshot listed here is covered by the index loaded next.
    let snapshots = repo.snapshots().map_err(refuse)?;
    let files = repo.load_index_files()?;
    let read_ids: Vec<IndexId> = files.iter().map(|(id, _)| *id).collect();
    let packs = pack_states(&files);
    let index = MasterIndex::from_files(files);
    let listed: HashSet<PackId> = repo.list_packs()?.into_iter().collect();
    report.packs_before = listed.len();

    // Everything any snapshot needs. Listed after `now`: rule 3 compares against it.
    report.snapshots = snapshots.len();
    let roots: Vec<TreeId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    let referenced = referenced_blobs(repo, &index, roots)?;
    report.blobs_referenced = referenced.len();

    let mut pending: HashMap<PackId, PendingPack> = index.pending().clone();
    let is_pending = |p: &PackId, pending: &HashMap<PackId, PendingPack>| pending.contains_key(p);

    // Referenced blobs that a live pack holds, claimed by the first live pack (by id order)
    // so duplicates left by concurrent writers become garbage in the others.
    let mut order: Vec<&PackId> = packs.keys().collect();
    order.sort();
    let mut claimed: HashMap<BlobId, PackId> = HashMap::new();
    for id in &order {
        if is_pending(id, &pending) {
            continue;
        }
        for (blob, _) in &packs[*id].blobs {
            if referenced.contains(blob) {
                claimed.entry(*blob).or_insert(**id);
            }
        }
    }
    // Marked packs holding the only copy of a referenced blob come back to life.
    for id in &order {
        if !is_pending(id, &pending) {
            continue;
        }
        // A pack already gone stays a tombstone: resurrecting it would not bring data back.
        let needed = listed.contains(*id)
            && packs[*id]
                .blobs
                .iter()
                .any(|(b, _)| referenced.contains(b) && !claimed.contains_key(b));
        if needed {
            pending.remove(*id);
            report.packs_resurrected += 1;
            for (blob, _) in &packs[*id].blobs {
                if referenced.contains(blob) {
                    claimed.entry(*blob).or_insert(**id);
                }
            }
        }
    }

    // Phase one: mark unused and mostly-unused live packs, and orphans. Marks get their time
    // when they are written (below).
    let mut marked: HashSet<PackId> = HashSet::new();
    let mut to_repack: Vec<PackId> = Vec::new();
    for id in &order {
        if is_pending(id, &pending) || !listed.contains(*id) {
            continue;
        }
        let state = &packs[*id];
        let used: u64 = state
            .blobs
            .iter()
            .filter(|(b, _)| claimed.get(b) == Some(*id))
            .map(|(_, e)| e.length as u64)
            .sum();
        let size = state.info.size.max(1) as u64;
        let unused_pct = (size.saturating_sub(used)) * 100 / size;
        if used == 0 {
            marked.insert(**id);
        } else if unused_pct > opts.repack_threshold as u64 {
            to_repack.push(**id);
        }
    }
    for id in &listed {
        if !packs.contains_key(id) && !pending.contains_key(id) {
            marked.insert(*id);
        }
    }

    // Rule 5: sessions read after the packs were listed; packs written since the earliest
    // live one started stay as they are.
    let sessions = live_sessions(&session_records(repo)?, now, opts.session_timeout);
    report.sessions_alive = sessions.len();
    if let Some(started) = sessions.iter().map(|s| s.started).min() {
        let since = started - SESSION_SKEW_SECS;
        let protected = |id: &PackId| -> Result<bool> {
            Ok(match repo.backend().modified(&pack_path(id)) {
                Ok(Some(at)) => at >= since,
                // No time from the store: keep it rather than guess.
                Ok(None) => true,
                Err(e) if e.is_not_found() => false,
                Err(e) => return Err(e),
            })
        };
        let before = marked.len() + to_repack.len();
        let mut keep = HashSet::new();
        for id in &marked {
            if !protected(id)? {
                keep.insert(*id);
            }
        }
        marked = keep;
        let mut keep = Vec::new();
        for id in to_repack {
            if !protected(&id)? {
                keep.push(id);
            }
        }
        to_repack = keep;
        report.packs_protected = before - marked.len() - to_repack.len();
    }
    report.packs_marked = marked.len();
    let mut mark = |id: PackId| marked.insert(id);

    // Copy the live blobs of mostly-garbage packs.
    let mut new_packs: Vec<PackState> = Vec::new();
    if !to_repack.is_empty() {
        let keep: Vec<(PackId, Vec<(BlobId, IndexEntry)>)> = to_repack
            .iter()
            .map(|id| {
                let blobs = packs[id]
                    .blobs
                    .iter()
                    .filter(|(b, _)| claimed.get(b) == Some(id))
                    .cloned()
                    .collect();
                (*id, blobs)
            })
            .collect();
        if !opts.dry_run {
            new_packs = repack(repo, &packs, &keep, &mut report)?;
            for state in &new_packs {
                for (b, _) in &state.blobs {
                    claimed.insert(*b, state.info.id);
                }
            }
        }
        for id in &to_repack {
            mark(*id);
            report.packs_marked += 1;
            report.packs_repacked += 1;
        }
    }

    // Phase two: delete marked packs whose grace period has passed (relative to `now`,
    // taken before the snapshots were listed) and that nothing resurrected. Deleted packs
    // stay pending as tombstones (rule 4) until those expire.
    let mut delete: Vec<PackId> = Vec::new();
    pending.retain(|id, p| {
        if !listed.contains(id) {
            // Deleted earlier.
            return p.delete_after.saturating_add(TOMBSTONE_SECS) > now;
        }
        if p.delete_after <= now {
            delete.push(*id);
        }
        true
    });
    if opts.grace.is_zero() {
        delete.extend(marked.iter().copied());
    }
    delete.sort();
    report.packs_deleted = delete.len();
    report.bytes_deleted = delete
        .iter()
        .map(|id| packs.get(id).map_or(0, |s| s.info.size as u64))
        .sum();
    let still_marked = pending.keys().filter(|id| listed.contains(*id)).count();
    report.packs_pending = still_marked + marked.len() - delete.len();
    report.index_objects_replaced = read_ids.len();
    if opts.dry_run {
        return Ok(report);
    }

    // The new marks, timed now that they are about to become visible.
    let (marked_at, ceil) = mark_time();
    for id in marked {
        pending.insert(
            id,
            PendingPack {
                id,
                marked_at,
                delete_after: ceil.saturating_add(grace),
            },
        );
    }

    // The new index: every pack that stays, live or pending, and the tombstones.
    let deleted: HashSet<PackId> = delete.iter().copied().collect();
    let gone =
        |id: &PackId| deleted.contains(id) || (!listed.contains(id) && pending.contains_key(id));
    let mut file = IndexFile {
        supersedes: read_ids.clone(),
        sessions,
        ..IndexFile::default()
    };
    let mut kept: Vec<(&PackInfo, &Vec<(BlobId, IndexEntry)>)> = new_packs
        .iter()
        .map(|state| (&state.info, &state.blobs))
        .collect();
    kept.extend(
        order
            .iter()
            .filter(|id| !gone(id))
            .map(|id| (&packs[*id].info, &packs[*id].blobs)),
    );
    for (n, (info, blobs)) in kept.iter().enumerate() {
        file.packs.push(**info);
        for (blob, e) in blobs.iter() {
            // One entry per blob: the claiming pack's copy, else the first seen.
            if claimed.get(blob).is_some_and(|c| *c != info.id) {
                continue;
            }
            file.entries.push(IndexEntry {
                id: *blob,
                pack: n as u32,
                ..*e
            });
        }
    }
    file.sort();
    file.entries.dedup_by(|a, b| a.id == b.id);
    let mut marks: Vec<PendingPack> = pending.into_values().collect();
    marks.sort_by_key(|p| p.id);
    file.pending = marks;
    repo.save(&file)?;
    for id in &read_ids {
        repo.backend()
            .delete(&crate::repository::object_path::<IndexFile>(id))?;
    }
    for id in &delete {
        repo.backend().delete(&pack_path(id))?;
    }
    Ok(report)
}

/// Every session record of the index objects there are now, read one object at a time (an
/// object deleted meanwhile was superseded by one that carries its live sessions).
fn session_records(repo: &Repository) -> Result<Vec<Session>> {
    let mut out = Vec::new();
    for id in repo.list::<IndexFile>()? {
        match repo.load::<IndexFile>(&id) {
            Ok(f) => out.extend(f.sessions),
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The sessions (running backups) among `records` whose latest heartbeat is less than
/// `timeout` before `now` and that have not finished, each with that heartbeat.
pub(crate) fn live_sessions(records: &[Session], now: i64, timeout: Duration) -> Vec<Session> {
    let timeout = i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX / 2);
    let mut latest: HashMap<[u8; 16], Session> = HashMap::new();
    let mut finished: HashSet<[u8; 16]> = HashSet::new();
    for s in records {
        if s.finished {
            finished.insert(s.id);
        }
        let e = latest.entry(s.id).or_insert(*s);
        if s.written > e.written {
            *e = *s;
        }
    }
    let mut alive: Vec<Session> = latest
        .into_values()
        .filter(|s| !finished.contains(&s.id) && now.saturating_sub(s.written) < timeout)
        .collect();
    alive.sort_by_key(|s| s.id);
    alive
}

/// Groups the entries of all (non-superseded) index objects by pack.
pub(crate) fn pack_states(files: &[(IndexId, IndexFile)]) -> HashMap<PackId, PackState> {
    let superseded: HashSet<IndexId> = files
        .iter()
        .flat_map(|(_, f)| f.supersedes.iter().copied())
        .collect();
    let mut packs: HashMap<PackId, PackState> = HashMap::new();
    for (id, file) in files {
        if superseded.contains(id) {
            continue;
        }
        for e in &file.entries {
            let info = file.packs[e.pack as usize];
            let state = packs.entry(info.id).or_insert_with(|| PackState {
                info,
                blobs: Vec::new(),
            });
            state.blobs.push((e.id, *e));
        }
        for info in &file.packs {
            packs.entry(info.id).or_insert_with(|| PackState {
                info: *info,
                blobs: Vec::new(),
            });
        }
    }
    for state in packs.values_mut() {
        state.blobs.sort_by_key(|(b, _)| *b);
        state.blobs.dedup_by_key(|(b, _)| *b);
    }
    packs
}

/// Why prune stops without changing anything.
fn refuse(e: Error) -> Error {
    Error::InvalidInput(format!(
        "prune refuses to run because part of the repository cannot be read \
         (nothing was changed; run `podvault check`): {e}"
    ))
}

/// Every blob (trees and file contents) reachable from the given snapshot trees.
fn referenced_blobs(
    repo: &Repository,
    index: &MasterIndex,
    roots: Vec<TreeId>,
) -> Result<HashSet<BlobId>> {
    let mut referenced = HashSet::new();
    let mut stack = roots;
    while let Some(tree_id) = stack.pop() {
        if !referenced.insert(BlobId::from(tree_id)) {
            continue;
        }
        let tree = repo.load_tree(index, &tree_id).map_err(refuse)?;
        for node in tree.nodes {
            if let Some(sub) = node.subtree {
                stack.push(sub);
            }
            referenced.extend(node.content.iter().map(|c| BlobId(c.0)));
        }
    }
    Ok(referenced)
}

/// Copies the given blobs of each pack into new packs; returns the packs written.
fn repack(
    repo: &Repository,
    packs: &HashMap<PackId, PackState>,
    keep: &[(PackId, Vec<(BlobId, IndexEntry)>)],
    report: &mut PruneReport,
) -> Result<Vec<PackState>> {
    let target = repo.config().pack_target_size as usize;
    let spool = repo.backend().spool_dir()?;
    let mut packers: HashMap<BlobType, Packer> = HashMap::new();
    let mut written = Vec::new();
    let mut upload = |pack: FinishedPack| -> Result<()> {
        let info = pack.info();
        repo.backend().write_file(&pack_path(&pack.id), pack.file)?;
        let blobs = pack
            .header
            .blobs
            .iter()
            .map(|b| {
                (
                    b.id,
                    IndexEntry {
                        id: b.id,
                        pack: 0,
                        offset: b.offset,
                        length: b.length,
                        raw_length: b.raw_length,
                    },
                )
            })
            .collect();
        written.push(PackState { info, blobs });
        Ok(())
    };
    for (pack_id, blobs) in keep {
        if blobs.is_empty() {
            continue;
        }
        let ty = packs[pack_id].info.blob_type;
        let path = pack_path(pack_id);
        let bytes = repo.backend().read(&path)?;
        for (blob, e) in blobs {
            let range = e.offset as usize..e.offset as usize + e.length as usize;
            let sealed = bytes.get(range).ok_or_else(|| Error::Corrupt {
                object: path.clone(),
                detail: format!("blob {blob} lies past the end of the pack"),
            })?;
            // Never copy damage forward: the blob must open and match its id.
            open_blob(repo.key(), ty, blob, e.raw_length, sealed).map_err(|detail| {
                Error::Corrupt {
                    object: format!("{path} (blob {blob})"),
                    detail: format!("{detail}; prune stopped before changing anything"),
                }
            })?;
            report.bytes_repacked += sealed.len() as u64;
            let packer = packers
                .entry(ty)
                .or_insert_with(|| Packer::new(ty, target, &spool));
            if packer.add(*blob, sealed, e.raw_length)? {
                if let Some(p) = packer.finish(repo.key())? {
                    upload(p)?;
                }
            }
        }
    }
    for (_, mut packer) in packers {
        if let Some(p) = packer.finish(repo.key())? {
            upload(p)?;
        }
    }
    report.packs_written = written.len();
    Ok(written)
}

/// Indexes packs that no index object lists and prune has not marked — packs a killed
/// backup uploaded — so this backup (and everyone after) reuses them. Returns how many.
pub fn adopt_orphan_packs(repo: &Repository, index: &mut MasterIndex) -> Result<usize> {
    let known: HashSet<PackId> = index
        .packs()
        .map(|p| p.id)
        .chain(index.pending().keys().copied())
        .collect();
    let mut file = IndexFile::default();
    for id in repo.list_packs()? {
        if known.contains(&id) {
            continue;
        }
        let (size, header) = match repo.read_pack_header(&id) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(pack = %id, error = %e, "not reusing an unindexed pack");
                continue;
            }
        };
        let n = file.packs.len() as u32;
        file.packs.push(PackInfo {
            id,
            size: size as u32,
            blob_type: header.blob_type,
        });
        file.entries.extend(header.blobs.iter().map(|b| IndexEntry {
            id: b.id,
            pack: n,
            offset: b.offset,
            length: b.length,
            raw_length: b.raw_length,
        }));
    }
    if file.packs.is_empty() {
        return Ok(0);
    }
    file.sort();
    file.entries.dedup_by(|a, b| a.id == b.id);
    let adopted = file.packs.len();
    repo.save(&file)?;
    *index = repo.load_index()?;
    Ok(adopted)
}

/// Rule 2 of the protocol: fails if a pack the new snapshot depends on was marked for
/// deletion long enough ago that a prune might delete it before it sees the snapshot — or
/// is already gone.
///
/// Cheap path: while every index object loaded at the start still exists, no prune has
/// completed since (a prune deletes every index object it read), so only the index objects
/// written since need reading. Otherwise the whole index is read again and the packs are
/// listed, because a mark may have come and gone (pack deleted) during the backup.
pub fn check_dependencies(
    repo: &Repository,
    index: &MasterIndex,
    depends: &HashSet<PackId>,
) -> Result<()> {
    let loaded: HashSet<IndexId> = index.index_ids().iter().copied().collect();
    let mut attempt = 0;
    'again: loop {
        attempt += 1;
        let now = unix_now_ms();
        let current = repo.list::<IndexFile>()?;
        if !loaded.iter().all(|id| current.contains(id)) {
            let index = repo.load_index()?;
            let listed: HashSet<PackId> = repo.list_packs()?.into_iter().collect();
            for p in depends {
                if !listed.contains(p) {
                    return Err(conflict(p, "was deleted by a prune"));
                }
                if let Some(mark) = index.pending().get(p) {
                    check_mark(mark, now)?;
                }
            }
            return Ok(());
        }
        for id in current {
            if loaded.contains(&id) {
                continue;
            }
            let file = match repo.load::<IndexFile>(&id) {
                Ok(f) => f,
                Err(e) if e.is_not_found() && attempt < 5 => continue 'again,
                Err(e) => return Err(e),
            };
            for mark in file.pending.iter().filter(|m| depends.contains(&m.id)) {
                check_mark(mark, now)?;
            }
        }
        return Ok(());
    }
}

/// Rule 2: a mark may be relied on until the midpoint between the earliest moment it can
/// have been written and its deletion time (`now_ms` in milliseconds, the mark in seconds).
fn check_mark(mark: &PendingPack, now_ms: i64) -> Result<()> {
    let half_ms = mark
        .marked_at
        .saturating_add(mark.delete_after)
        .saturating_mul(500);
    if now_ms >= half_ms {
        return Err(conflict(
            &mark.id,
            "was marked for deletion by a prune, and too much of its grace period has passed",
        ));
    }
    Ok(())
}

fn conflict(pack: &PackId, what: &str) -> Error {
    Error::InvalidInput(format!(
        "pack {pack}, which this backup depends on, {what} while the backup ran; no snapshot \
         was written, so nothing is lost — run the backup again (it stores that data anew)"
    ))
}

/// A new mark's `marked_at` and the moment its grace period starts from: now in whole
/// seconds, rounded down and up.
fn mark_time() -> (i64, i64) {
    let ms = unix_now_ms();
    (ms.div_euclid(1000), (ms + 999).div_euclid(1000))
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(marked_at: i64, delete_after: i64) -> PendingPack {
        PendingPack {
            id: PackId([7; 32]),
            marked_at,
            delete_after,
        }
    }

    #[test]
    fn a_mark_is_relied_on_until_the_midpoint_of_its_grace_period() {
        // Written at 100.x s (marked_at 100), grace 2 s from 101: midpoint 101.5 s.
        assert!(check_mark(&mark(100, 103), 101_499).is_ok());
        let err = check_mark(&mark(100, 103), 101_500)
            .unwrap_err()
            .to_string();
        assert!(err.contains("run the backup again"), "{err}");
        // A day's grace leaves half a day.
        let day = 24 * 3600;
        assert!(check_mark(&mark(0, day + 1), (day / 2) * 1000).is_ok());
        assert!(check_mark(&mark(0, day + 1), (day / 2 + 1) * 1000).is_err());
        // Huge grace periods do not overflow.
        assert!(check_mark(&mark(0, i64::MAX / 2), i64::MAX / 4).is_ok());
    }

    #[test]
    fn mark_times_bracket_now() {
        let before = unix_now_ms();
        let (floor, ceil) = mark_time();
        let after = unix_now_ms();
        assert!(floor * 1000 <= after && ceil * 1000 >= before);
        assert!(ceil - floor <= 1);
    }
}
