//! Where sealed blobs go: per-type packers, bounded concurrent uploads, and index writing.
//!
//! Invariant: a blob appears in an index object only after the pack holding it has been
//! written successfully, and index objects are written before the snapshot that needs them.
//!
//! A backup is a *session* to prune (rule 5 of the engine's `prune` module): before its first
//! pack is uploaded it writes an index object naming the session (a random id and its start
//! time), then one every [`PACKS_PER_INDEX`] durable packs, one at least every heartbeat
//! interval while it runs (with the packs made durable since, or none), one at the end, and
//! a last one marking the session finished once the snapshot is saved (or the backup failed).
//! Prune leaves alone the packs uploaded while a session is alive, and counts it dead once
//! it has written nothing for its `--session-timeout`; an interrupted backup's index objects
//! let the next backup reuse what it uploaded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use podvault_proto::index::{IndexEntry, IndexFile, PackInfo, Session};
use podvault_proto::pack::{BlobType, PackHeader};
use podvault_proto::{BlobId, PackId};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::backend::runtime;
use crate::error::{Error, Result};
use crate::packer::{FinishedPack, Packer};
use crate::repository::{pack_path, Repository};

/// Packs being stored at once in a local directory: each is already a file in the
/// repository's spool directory and only needs `fsync` and a rename, so two let one flush
/// while the next is written, at no cost in memory.
const MAX_UPLOADS_LOCAL: usize = 2;
/// Uploads in flight at once to S3, where one request takes long enough that a second one
/// keeps the link busy. Each reads its spooled pack into memory for the PUT.
const MAX_UPLOADS_REMOTE: usize = 2;
/// Write an index object once this many packs are durable, so an interrupted backup's packs
/// are found and reused by the next one.
const PACKS_PER_INDEX: usize = 64;
/// Longest time between two index objects of a running backup that has uploaded anything
/// (its heartbeat). `PODVAULT_BACKUP_HEARTBEAT_SECS` overrides it (tests).
pub const HEARTBEAT: Duration = Duration::from_secs(600);

fn heartbeat() -> Duration {
    std::env::var("PODVAULT_BACKUP_HEARTBEAT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(HEARTBEAT, |s| Duration::from_secs(s.max(1)))
}

/// The session's index writing, shared with the heartbeat thread.
struct Indexer {
    repo: Repository,
    session: Session,
    durable: Mutex<Vec<(PackInfo, PackHeader)>>,
    indexed: Mutex<Vec<PackId>>,
    /// Serialises index writes (the heartbeat and the uploading threads).
    writing: Mutex<()>,
    /// Set when the backup ends: the heartbeat thread stops.
    stop: (Mutex<bool>, Condvar),
}

impl Indexer {
    /// The index writing of session `id`, started at `started` (Unix seconds).
    fn new(repo: Repository, id: [u8; 16], started: i64) -> Self {
        Indexer {
            repo,
            session: Session {
                id,
                started,
                written: 0,
                finished: false,
            },
            durable: Mutex::new(Vec::new()),
            indexed: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
            stop: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Writes an index object with the packs made durable since the last one (possibly
    /// none) and the session, stamped now (and `finished` if so).
    fn write(&self) -> Result<()> {
        self.write_as(false)
    }

    fn write_as(&self, finished: bool) -> Result<()> {
        let _one = lock(&self.writing);
        let packs = std::mem::take(&mut *lock(&self.durable));
        let mut file = IndexFile {
            sessions: vec![Session {
                written: unix_now(),
                finished,
                ..self.session
            }],
            ..IndexFile::default()
        };
        let ids: Vec<PackId> = packs.iter().map(|(info, _)| info.id).collect();
        for (n, (info, header)) in packs.into_iter().enumerate() {
            file.packs.push(info);
            file.entries.extend(header.blobs.iter().map(|b| IndexEntry {
                id: b.id,
                pack: n as u32,
                offset: b.offset,
                length: b.length,
                raw_length: b.raw_length,
            }));
        }
        file.sort();
        // The same blob may sit in two packs of this session only if two threads raced;
        // the index format requires unique ids, so keep the first.
        file.entries.dedup_by(|a, b| a.id == b.id);
        self.repo.save(&file)?;
        lock(&self.indexed).extend(ids);
        Ok(())
    }

    /// Until the backup ends: an index object every `every`. The stop flag is checked
    /// before every wait, so a stop that came while the thread started or wrote is never
    /// missed.
    fn beat(&self, every: Duration) {
        let (stopped, wake) = &self.stop;
        loop {
            let (done, _) = wake
                .wait_timeout_while(lock(stopped), every, |stop| !*stop)
                .unwrap_or_else(|p| p.into_inner());
            if *done {
                return;
            }
            drop(done);
            if let Err(e) = self.write() {
                // The commit check catches any pack of ours a prune marked meanwhile.
                tracing::warn!(error = %e, "writing the backup's heartbeat index object failed");
            }
        }
    }
}

/// Unix seconds now.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Shared by the archiver's threads.
pub struct PackSink {
    repo: Repository,
    data: Mutex<Packer>,
    tree: Mutex<Packer>,
    permits: Arc<Semaphore>,
    uploads: Mutex<Vec<JoinHandle<()>>>,
    indexer: Arc<Indexer>,
    /// The heartbeat thread, once the session is announced.
    heart: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The session's first index object is written.
    announced: std::sync::atomic::AtomicBool,
    /// Its end is recorded.
    ended: std::sync::atomic::AtomicBool,
    failure: Arc<Mutex<Option<Error>>>,
    /// Bytes of sealed blobs added.
    pub stored: AtomicU64,
    /// Packs uploaded.
    pub packs: AtomicU64,
}

impl PackSink {
    /// A sink writing into `repo`.
    pub fn new(repo: &Repository) -> Result<Self> {
        let target = repo.config().pack_target_size as usize;
        let spool = repo.backend().spool_dir()?;
        Ok(PackSink {
            repo: repo.clone(),
            data: Mutex::new(Packer::new(BlobType::Data, target, &spool)),
            tree: Mutex::new(Packer::new(BlobType::Tree, target, &spool)),
            permits: Arc::new(Semaphore::new(
                if repo.backend().location().starts_with("s3://") {
                    MAX_UPLOADS_REMOTE
                } else {
                    MAX_UPLOADS_LOCAL
                },
            )),
            uploads: Mutex::new(Vec::new()),
            indexer: Arc::new(Indexer::new(repo.clone(), rand::random(), unix_now())),
            heart: Mutex::new(None),
            announced: Default::default(),
            ended: Default::default(),
            failure: Arc::new(Mutex::new(None)),
            stored: AtomicU64::new(0),
            packs: AtomicU64::new(0),
        })
    }

    fn packer(&self, ty: BlobType) -> &Mutex<Packer> {
        match ty {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    /// Adds a sealed blob; uploads the pack when it is full. Blocks while too many uploads
    /// are in flight (back-pressure that bounds memory).
    ///
    /// The upload slot is taken *before* the full pack is closed, with the packer still
    /// locked: while uploads lag, other threads wait to add rather than start another pack,
    /// so at most the uploading packs plus one open pack per type exist (on disk; an S3
    /// upload reads its pack into memory).
    pub fn add(&self, ty: BlobType, id: BlobId, sealed: &[u8], raw_length: u32) -> Result<()> {
        self.check()?;
        self.stored
            .fetch_add(sealed.len() as u64, Ordering::Relaxed);
        let mut packer = lock(self.packer(ty));
        if packer.add(id, sealed, raw_length)? {
            let permit = runtime().block_on(self.permits.clone().acquire_owned());
            let pack = packer.finish(self.repo.key())?;
            drop(packer);
            self.upload(pack, permit)?;
        }
        Ok(())
    }

    /// Starts uploading `pack` (if any) in the slot `permit` (the semaphore is never
    /// closed, but a pack is never dropped silently either).
    fn upload(
        &self,
        pack: Option<FinishedPack>,
        permit: std::result::Result<OwnedSemaphorePermit, AcquireError>,
    ) -> Result<()> {
        let Some(pack) = pack else { return Ok(()) };
        let permit = permit.map_err(|e| Error::InvalidInput(format!("pack upload: {e}")))?;
        self.announce()?;
        self.maybe_write_index()?;
        // Tree packs go into the local cache as they are written: the next backup reads
        // its parent's trees from there.
        if pack.header.blob_type == BlobType::Tree {
            if let Some(cache) = self.repo.cache() {
                cache.put_file(
                    crate::cache::Kind::TreePack,
                    &crate::cache::Cache::pack_name(&pack.id),
                    pack.file.path(),
                );
            }
        }
        let backend = self.repo.backend().clone();
        let indexer = self.indexer.clone();
        let failure = self.failure.clone();
        self.packs.fetch_add(1, Ordering::Relaxed);
        let handle = runtime().spawn(async move {
            let _permit = permit;
            let info = pack.info();
            match backend
                .write_file_async(&pack_path(&pack.id), pack.file)
                .await
            {
                Ok(()) => lock(&indexer.durable).push((info, pack.header)),
                Err(e) => {
                    lock(&failure).get_or_insert(e);
                }
            }
        });
        let mut uploads = lock(&self.uploads);
        uploads.retain(|h| !h.is_finished());
        uploads.push(handle);
        Ok(())
    }

    /// Fails if an upload has failed.
    pub fn check(&self) -> Result<()> {
        match lock(&self.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Before the session's first upload: an index object naming it (so that a prune
    /// listing the pack also finds a live session that started before it), and the
    /// heartbeat thread.
    fn announce(&self) -> Result<()> {
        let mut heart = lock(&self.heart);
        if heart.is_some() || self.was_announced() {
            return Ok(());
        }
        self.indexer.write()?;
        self.announced.store(true, Ordering::Relaxed);
        let indexer = self.indexer.clone();
        let every = heartbeat();
        *heart = Some(
            std::thread::Builder::new()
                .name("podvault-heartbeat".into())
                .spawn(move || indexer.beat(every))
                .map_err(|e| Error::InvalidInput(format!("starting the heartbeat thread: {e}")))?,
        );
        Ok(())
    }

    /// Writes an index object for the durable packs if enough have accumulated.
    pub fn maybe_write_index(&self) -> Result<()> {
        let ready = lock(&self.indexer.durable).len() >= PACKS_PER_INDEX;
        if ready {
            self.indexer.write()?;
        }
        Ok(())
    }

    /// Stops the heartbeat thread (idempotent).
    fn stop_heartbeat(&self) {
        let (stopped, wake) = &self.indexer.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(h) = lock(&self.heart).take() {
            let _ = h.join();
        }
    }

    /// Ends the session once the snapshot is saved (or the backup failed): an index object
    /// saying so, so that prune stops protecting uploads for it at once rather than after
    /// the session timeout. Best effort; idempotent.
    pub fn end_session(&self) {
        self.stop_heartbeat();
        if self.was_announced() && !self.ended.swap(true, Ordering::Relaxed) {
            if let Err(e) = self.indexer.write_as(true) {
                tracing::warn!(error = %e, "recording the end of the backup's session failed; prune counts it alive until it times out");
            }
        }
    }

    fn was_announced(&self) -> bool {
        self.announced.load(Ordering::Relaxed)
    }

    /// Packs written and indexed by this sink so far.
    pub fn written_packs(&self) -> Vec<PackId> {
        lock(&self.indexer.indexed).clone()
    }

    /// Closes open packs, waits for every upload and writes the remaining index entries.
    /// After `Ok`, every blob added is durable and indexed.
    pub fn finish(&self) -> Result<()> {
        for ty in [BlobType::Data, BlobType::Tree] {
            let mut packer = lock(self.packer(ty));
            if packer.is_empty() {
                continue;
            }
            let permit = runtime().block_on(self.permits.clone().acquire_owned());
            let pack = packer.finish(self.repo.key())?;
            drop(packer);
            self.upload(pack, permit)?;
        }
        let handles = std::mem::take(&mut *lock(&self.uploads));
        for h in handles {
            if let Err(e) = runtime().block_on(h) {
                return Err(Error::InvalidInput(format!("upload task failed: {e}")));
            }
        }
        self.check()?;
        self.stop_heartbeat();
        // Every upload was announced first; what is left is the packs made durable since
        // the last index object.
        if !lock(&self.indexer.durable).is_empty() {
            self.indexer.write()?;
        }
        Ok(())
    }
}

impl Drop for PackSink {
    /// A backup that fails or is canceled ends its session (best effort; otherwise prune
    /// counts it dead once it times out).
    fn drop(&mut self) {
        self.end_session();
    }
}

/// Locks a mutex, recovering from poisoning (the data is plain and stays consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Location;
    use crate::repository::InitOptions;

    #[test]
    fn a_stop_that_comes_before_the_first_wait_ends_the_heartbeat_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            kdf: crate::crypto::KdfCost {
                memory_kib: 1024,
                iterations: 1,
                parallelism: 1,
            },
            ..InitOptions::default()
        };
        let repo = Repository::init(&Location::Fs(tmp.path().join("r")), b"pw", &opts).unwrap();
        let indexer = Arc::new(Indexer::new(repo, [1; 16], 0));
        // A short backup: finished (stop set, notified) before the thread ever waited.
        *lock(&indexer.stop.0) = true;
        indexer.stop.1.notify_all();
        let (tx, rx) = std::sync::mpsc::channel();
        let beating = indexer.clone();
        std::thread::spawn(move || {
            beating.beat(Duration::from_secs(3600));
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the heartbeat thread missed a stop that came before it waited");
    }
}
