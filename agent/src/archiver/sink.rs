//! Where sealed blobs go: per-type packers, bounded concurrent uploads, and index writing.
//!
//! Invariant: a blob appears in an index object only after the pack holding it has been
//! written successfully, and index objects are written before the snapshot that needs them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use podvault_proto::index::{IndexEntry, IndexFile, PackInfo};
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

/// Shared by the archiver's threads.
pub struct PackSink {
    repo: Repository,
    data: Mutex<Packer>,
    tree: Mutex<Packer>,
    permits: Arc<Semaphore>,
    uploads: Mutex<Vec<JoinHandle<()>>>,
    durable: Arc<Mutex<Vec<(PackInfo, PackHeader)>>>,
    indexed: Mutex<Vec<PackId>>,
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
            durable: Arc::new(Mutex::new(Vec::new())),
            indexed: Mutex::new(Vec::new()),
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
        let durable = self.durable.clone();
        let failure = self.failure.clone();
        self.packs.fetch_add(1, Ordering::Relaxed);
        let handle = runtime().spawn(async move {
            let _permit = permit;
            let info = pack.info();
            match backend
                .write_file_async(&pack_path(&pack.id), pack.file)
                .await
            {
                Ok(()) => lock(&durable).push((info, pack.header)),
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

    /// Writes an index object for the durable packs if enough have accumulated.
    pub fn maybe_write_index(&self) -> Result<()> {
        let ready = lock(&self.durable).len() >= PACKS_PER_INDEX;
        if ready {
            self.write_index()?;
        }
        Ok(())
    }

    fn write_index(&self) -> Result<()> {
        let packs = std::mem::take(&mut *lock(&self.durable));
        if packs.is_empty() {
            return Ok(());
        }
        let mut file = IndexFile::default();
        lock(&self.indexed).extend(packs.iter().map(|(info, _)| info.id));
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
        Ok(())
    }

    /// Packs written and indexed by this sink so far.
    pub fn written_packs(&self) -> Vec<PackId> {
        lock(&self.indexed).clone()
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
        self.write_index()
    }
}

/// Locks a mutex, recovering from poisoning (the data is plain and stays consistent).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
