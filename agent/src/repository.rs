//! Opening, creating and reading a repository; saving and loading records.
//!
//! Object naming: `config`; `keys/<id>`, `snapshots/<id>`, `index/<id>` where the id is the
//! BLAKE3 hash of the stored bytes (checked on every load, so a damaged object is named as
//! such before decryption is even tried); `data/<first two hex digits>/<pack-id>`.
//! Objects are written once and never modified.

use std::sync::Arc;

use podvault_proto::config::{ChunkerParams, Config};
use podvault_proto::index::IndexFile;
use podvault_proto::key::KeyFile;
use podvault_proto::pack::{parse_trailer, BlobType, PackHeader, TRAILER_LEN};
use podvault_proto::snapshot::Snapshot;
use podvault_proto::tree::Tree;
use podvault_proto::{
    BlobId, IndexId, ObjectId, ObjectKind, ObjectRecord, PackId, Record, SnapshotId, TreeId,
};
use rand::RngCore;

use crate::backend::{Backend, Location};
use crate::blob::open_blob;
use crate::cache::{self, Cache, TreePacks};
use crate::crypto::{self, KdfCost, MasterKey};
use crate::error::{Error, Result};
use crate::index::{BlobLocation, MasterIndex, Precision};

/// Options for creating a repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// zstd level (0 disables compression).
    pub compression_level: i32,
    /// Target pack size in bytes.
    pub pack_size: u32,
    /// Argon2id cost of the first key.
    pub kdf: KdfCost,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression_level: Config::DEFAULT_COMPRESSION,
            pack_size: Config::DEFAULT_PACK_SIZE,
            kdf: KdfCost::default(),
        }
    }
}

/// Path of a pack object.
pub fn pack_path(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("data/{}/{hex}", &hex[..2])
}

/// Path of an object of a record's kind.
pub fn object_path<R: ObjectRecord>(id: &R::Id) -> String {
    match R::KIND {
        ObjectKind::Config => "config".into(),
        kind => format!("{}/{id}", kind.name()),
    }
}

/// An open repository: backend, unwrapped key and config.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Backend,
    key: Arc<MasterKey>,
    /// The key file that opened the repository.
    key_id: Option<podvault_proto::KeyId>,
    config: Config,
    /// Local metadata cache, when attached.
    cache: Option<Arc<Cache>>,
    /// Whole tree packs: verification state, fetches in flight, memory copies.
    tree_packs: Arc<TreePacks>,
}

impl Repository {
    /// Creates a repository at `location` protected by `password`.
    pub fn init(location: &Location, password: &[u8], opts: &InitOptions) -> Result<Self> {
        opts.chunker.validate().map_err(Error::InvalidInput)?;
        if !(0..=22).contains(&opts.compression_level) {
            return Err(Error::InvalidInput(format!(
                "compression level {} is outside 0..=22",
                opts.compression_level
            )));
        }
        let backend = Backend::open(location)?;
        if backend.exists("config")? {
            return Err(Error::AlreadyInitialised {
                location: backend.location().to_owned(),
            });
        }
        // A repository that lost its config still holds snapshots and data: a new master key
        // beside them would make them unreadable for good. (Key files alone are not data:
        // they are what a concurrent creator writes first, or what a killed one left.)
        for dir in [ObjectKind::Snapshot, ObjectKind::Index] {
            if !backend.list(dir.name())?.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "{} has no config but already holds podvault objects ({}/); refusing to \
                     create a new repository over them — restore the config object, or \
                     choose an empty location",
                    backend.location(),
                    dir.name()
                )));
            }
        }
        let mut repository_id = [0u8; 32];
        rand::rng().fill_bytes(&mut repository_id);
        let mut repo = Repository {
            backend,
            key: Arc::new(MasterKey::generate()),
            key_id: None,
            config: Config {
                repository_id,
                chunker: opts.chunker,
                compression_level: opts.compression_level,
                pack_target_size: opts.pack_size.max(1 << 20),
            },
            cache: None,
            tree_packs: Arc::default(),
        };
        // Creation is decided by one atomic step: creating `config` if absent. Any number of
        // creators may race; each writes its own key file first (a config without a key
        // would be a repository nobody can open), then exactly one creates the config. The
        // losers delete their key file and report AlreadyInitialised; until they do, `open`
        // skips a key whose master key does not open the config.
        let key_id = repo.add_key(password, opts.kdf)?;
        repo.key_id = Some(key_id);
        let sealed = repo
            .key
            .seal(ObjectKind::Config.aad(), &repo.config.encode());
        let created = match repo.backend.create_if_absent("config", sealed) {
            Ok(created) => created,
            Err(e) => {
                // Unknown outcome: keep the key (it may be the one that opens the config).
                return Err(e);
            }
        };
        if !created {
            let location = repo.backend.location().to_owned();
            if let Err(e) = repo.backend.delete(&object_path::<KeyFile>(&key_id)) {
                tracing::warn!(error = %e, "could not remove the key file of a lost concurrent init");
            }
            return Err(Error::AlreadyInitialised { location });
        }
        Ok(repo)
    }

    /// Opens the repository at `location` with `password`.
    pub fn open(location: &Location, password: &[u8]) -> Result<Self> {
        let backend = Backend::open(location)?;
        let not_init = || Error::NotInitialised {
            location: backend.location().to_owned(),
        };
        if !backend.exists("config")? {
            return Err(not_init());
        }
        let keys = backend.list(ObjectKind::Key.name())?;
        if keys.is_empty() {
            return Err(Error::Corrupt {
                object: format!("{}/keys/", backend.location()),
                detail: "the repository has a config but no key files".into(),
            });
        }
        // Every key file this password opens is tried against the config: normally the
        // first one opens it; a key whose master key does not seal the config is one a
        // creator that lost a concurrent init has not removed yet (or a stray), and skipped.
        let sealed = backend.read("config")?;
        let mut damaged = Vec::new();
        let mut unwrapped = 0;
        let mut config_err = None;
        let mut opened = None;
        for path in &keys {
            match try_key(&backend, path, password)? {
                KeyOutcome::Opens(k, id) => {
                    unwrapped += 1;
                    match k.open(ObjectKind::Config.aad(), &sealed) {
                        Ok(plain) => {
                            opened = Some((k, id, plain));
                            break;
                        }
                        Err(e) => config_err = Some(e.to_string()),
                    }
                }
                KeyOutcome::OtherPassword => {}
                KeyOutcome::Damaged(d) => damaged.push(d),
            }
        }
        let Some((key, key_id, plain)) = opened else {
            if unwrapped > 0 {
                return Err(Error::Corrupt {
                    object: "config".into(),
                    detail: format!(
                        "{} (with each of the {unwrapped} key file(s) this password opens)",
                        config_err.unwrap_or_default()
                    ),
                });
            }
            if damaged.len() == keys.len() {
                return Err(Error::Corrupt {
                    object: format!("{}/keys/", backend.location()),
                    detail: damaged.join("; "),
                });
            }
            return Err(Error::WrongPassword {
                location: backend.location().to_owned(),
                keys: keys.len(),
            });
        };
        let config = decode::<Config>("config", &plain)?;
        config.chunker.validate().map_err(|d| Error::Corrupt {
            object: "config".into(),
            detail: d,
        })?;
        Ok(Repository {
            backend,
            key: Arc::new(key),
            key_id,
            config,
            cache: None,
            tree_packs: Arc::default(),
        })
    }

    /// Adds a key file wrapping the master key under `password`.
    pub fn add_key(&self, password: &[u8], cost: KdfCost) -> Result<podvault_proto::KeyId> {
        let (kdf, sealed) =
            crypto::wrap_master_key(&self.key, password, cost).map_err(Error::InvalidInput)?;
        kdf.check().map_err(Error::InvalidInput)?;
        let kf = KeyFile {
            version: KeyFile::VERSION,
            created: chrono::Utc::now().to_rfc3339(),
            hostname: hostname(),
            kdf,
            master_key: hex::encode(sealed),
        };
        let bytes = kf.encode();
        let id = podvault_proto::KeyId(*blake3::hash(&bytes).as_bytes());
        self.backend.write(&object_path::<KeyFile>(&id), bytes)?;
        Ok(id)
    }

    /// All key files, by id (damaged ones are errors naming them).
    pub fn keys(&self) -> Result<Vec<(podvault_proto::KeyId, KeyFile)>> {
        let mut out = Vec::new();
        for id in self.list::<KeyFile>()? {
            let path = object_path::<KeyFile>(&id);
            let bytes = self.backend.read(&path)?;
            verify_name(&path, &bytes)?;
            out.push((id, decode::<KeyFile>(&path, &bytes)?));
        }
        out.sort_by(|a, b| a.1.created.cmp(&b.1.created).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Removes a key file. Refuses to remove the last key (the repository would be lost)
    /// and, unless `allow_current`, the key this repository was opened with.
    pub fn remove_key(&self, id: &podvault_proto::KeyId, allow_current: bool) -> Result<()> {
        let ids = self.list::<KeyFile>()?;
        if !ids.contains(id) {
            return Err(Error::InvalidInput(format!(
                "no key {id} in {}",
                self.backend.location()
            )));
        }
        if ids.len() <= 1 {
            return Err(Error::InvalidInput(format!(
                "key {} is the repository's only key; removing it would make the repository                  unreadable (add another key first)",
                id.short()
            )));
        }
        if !allow_current && self.key_id == Some(*id) {
            return Err(Error::InvalidInput(format!(
                "key {} is the one this command opened the repository with; use                  `podvault key passwd` to replace it, or open with another key to remove it",
                id.short()
            )));
        }
        self.backend.delete(&object_path::<KeyFile>(id))
    }

    /// Attaches the local metadata cache under `root` (see [`crate::cache`]): snapshots,
    /// index objects and tree packs are then read from it when present. A cache that
    /// cannot be created is logged and the repository is used without one.
    pub fn with_cache(mut self, root: Option<&std::path::Path>, limit: u64) -> Self {
        self.cache = root.and_then(|root| {
            match Cache::open(root, &self.config.repository_id, limit) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    tracing::warn!(cache = %root.display(), error = %e, "cache unusable; reading everything from the repository");
                    None
                }
            }
        });
        self
    }

    /// Whether the repository's `config` still opens with this repository's key and says
    /// the same (false: the repository was replaced since it was opened).
    pub fn config_still_opens(&self) -> Result<bool> {
        let sealed = match self.backend.read("config") {
            Ok(s) => s,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(self
            .key
            .open(ObjectKind::Config.aad(), &sealed)
            .ok()
            .and_then(|plain| Config::decode(&plain).ok())
            .is_some_and(|c| c.encode() == self.config.encode()))
    }

    /// The attached cache.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_deref()
    }

    /// The key file the repository was opened (or created) with.
    pub fn key_id(&self) -> Option<podvault_proto::KeyId> {
        self.key_id
    }

    /// The storage backend.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The master key.
    pub fn key(&self) -> &Arc<MasterKey> {
        &self.key
    }

    /// The repository configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Seals and stores a record; returns its id.
    pub fn save<R: ObjectRecord>(&self, record: &R) -> Result<R::Id> {
        let sealed = self.key.seal(R::KIND.aad(), &record.encode());
        let id = R::Id::from_bytes(*blake3::hash(&sealed).as_bytes());
        let path = object_path::<R>(&id);
        let through = self.cache.as_ref().zip(cache_kind(R::KIND));
        let copy = through.map(|_| sealed.clone());
        self.backend.write(&path, sealed)?;
        if let (Some((cache, kind)), Some(copy)) = (through, copy) {
            cache.put(kind, object_name(&path), &copy);
        }
        Ok(id)
    }

    /// Loads, verifies and decodes a record. Snapshots and index objects come from the
    /// cache when it holds them (and pass the same checks there).
    pub fn load<R: ObjectRecord>(&self, id: &R::Id) -> Result<R> {
        let path = object_path::<R>(id);
        let cached = self.cache.as_ref().zip(cache_kind(R::KIND));
        if let Some((cache, kind)) = cached {
            let name = object_name(&path);
            if let Some(sealed) = cache.get(kind, name) {
                match self.unseal::<R>(&path, &sealed) {
                    Ok(r) => {
                        cache.hit();
                        return Ok(r);
                    }
                    Err(e) => cache.remove_damaged(kind, name, &e.to_string()),
                }
            }
        }
        let sealed = self.backend.read(&path)?;
        let record = self.unseal::<R>(&path, &sealed)?;
        if let Some((cache, kind)) = cached {
            cache.put(kind, object_name(&path), &sealed);
        }
        Ok(record)
    }

    fn unseal<R: ObjectRecord>(&self, path: &str, sealed: &[u8]) -> Result<R> {
        verify_name(path, sealed)?;
        let plain = self
            .key
            .open(R::KIND.aad(), sealed)
            .map_err(|e| Error::Corrupt {
                object: path.to_owned(),
                detail: e.to_string(),
            })?;
        decode::<R>(path, &plain)
    }

    /// Ids of all objects of a record's kind. Cache entries of snapshots and index
    /// objects no longer listed are dropped.
    pub fn list<R: ObjectRecord>(&self) -> Result<Vec<R::Id>> {
        let mut ids = Vec::new();
        let mut names = std::collections::HashSet::new();
        for path in self.backend.list(R::KIND.name())? {
            let name = object_name(&path);
            match parse_id(name) {
                Some(b) => {
                    ids.push(R::Id::from_bytes(b));
                    names.insert(name.to_owned());
                }
                None => tracing::warn!(object = %path, "ignoring object with a malformed name"),
            }
        }
        if let Some((cache, kind)) = self.cache.as_ref().zip(cache_kind(R::KIND)) {
            cache.retain(kind, &names);
        }
        Ok(ids)
    }

    /// Ids of all pack objects (`data/`).
    pub fn list_packs(&self) -> Result<Vec<PackId>> {
        let mut ids = Vec::new();
        for path in self.backend.list("data")? {
            let name = object_name(&path);
            match parse_id(name) {
                Some(b) => ids.push(PackId(b)),
                None => tracing::warn!(object = %path, "ignoring object with a malformed name"),
            }
        }
        Ok(ids)
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, Snapshot)>> {
        let mut out = Vec::new();
        for id in self.list::<Snapshot>()? {
            match self.load::<Snapshot>(&id) {
                Ok(s) => out.push((id, s)),
                // Removed by a concurrent `forget` between listing and reading.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.1.time_ns.cmp(&b.1.time_ns).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// Resolves `latest`, a full id, or a unique id prefix.
    pub fn find_snapshot(&self, spec: &str) -> Result<(SnapshotId, Snapshot)> {
        self.find_snapshot_where(spec, |_| true)
    }

    /// Like [`Repository::find_snapshot`] among snapshots accepted by `filter`.
    pub fn find_snapshot_where(
        &self,
        spec: &str,
        filter: impl Fn(&Snapshot) -> bool,
    ) -> Result<(SnapshotId, Snapshot)> {
        if spec == "latest" {
            return self
                .snapshots()?
                .into_iter()
                .rfind(|(_, s)| filter(s))
                .ok_or_else(|| Error::SnapshotNotFound(spec.to_owned()));
        }
        let spec_l = spec.to_ascii_lowercase();
        if spec_l.is_empty() || !spec_l.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!(
                "{spec:?} is neither `latest` nor a snapshot id"
            )));
        }
        let matches: Vec<SnapshotId> = self
            .list::<Snapshot>()?
            .into_iter()
            .filter(|id| id.to_hex().starts_with(&spec_l))
            .collect();
        match matches.as_slice() {
            [] => Err(Error::SnapshotNotFound(spec.to_owned())),
            [id] => {
                let s = self.load::<Snapshot>(id)?;
                if filter(&s) {
                    Ok((*id, s))
                } else {
                    Err(Error::SnapshotNotFound(spec.to_owned()))
                }
            }
            _ => Err(Error::AmbiguousSnapshot(spec.to_owned())),
        }
    }

    /// Loads every index object into one lookup structure with full ids.
    pub fn load_index(&self) -> Result<MasterIndex> {
        self.load_index_with(Precision::Exact)
    }

    /// Loads the backup's compact deduplication view of the index ([`Precision::Dedup`]).
    pub fn load_dedup_index(&self) -> Result<MasterIndex> {
        self.load_index_with(Precision::Dedup)
    }

    /// Loads every index object into one lookup structure, merging object by object so only
    /// one decoded object is held beside the view. Retries like
    /// [`Repository::load_index_files`].
    pub fn load_index_with(&self, precision: Precision) -> Result<MasterIndex> {
        let mut attempt = 0;
        'again: loop {
            attempt += 1;
            let mut builder = MasterIndex::builder(precision);
            for id in self.list::<IndexFile>()? {
                match self.load::<IndexFile>(&id) {
                    Ok(f) => builder.add(id, f),
                    Err(e) if e.is_not_found() && attempt < 5 => continue 'again,
                    // A damaged index object is skipped, named: its blobs count as absent, so
                    // a backup stores them again (or adopts their packs) and a restore names
                    // the files it cannot restore. Prune, which must see everything, uses
                    // `load_index_files` and refuses instead.
                    Err(e @ (Error::Corrupt { .. } | Error::Decode { .. })) => {
                        tracing::warn!("skipping a damaged index object: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(builder.finish());
        }
    }

    /// Loads every index object. An object that disappears between listing and reading was
    /// superseded by a prune that has already written its replacement, so the listing is
    /// simply taken again.
    pub fn load_index_files(&self) -> Result<Vec<(IndexId, IndexFile)>> {
        let mut attempt = 0;
        'again: loop {
            attempt += 1;
            let mut files = Vec::new();
            for id in self.list::<IndexFile>()? {
                match self.load::<IndexFile>(&id) {
                    Ok(f) => files.push((id, f)),
                    Err(e) if e.is_not_found() && attempt < 5 => continue 'again,
                    Err(e) => return Err(e),
                }
            }
            return Ok(files);
        }
    }

    /// Reads, opens and verifies one blob.
    pub fn read_blob(&self, index: &MasterIndex, ty: BlobType, id: &BlobId) -> Result<Vec<u8>> {
        let loc = index.lookup(id).ok_or_else(|| Error::MissingBlob {
            id: id.to_hex(),
            what: ty.name().into(),
        })?;
        if loc.blob_type == BlobType::Tree {
            return self.read_tree_blob(&loc, id);
        }
        let sealed = self.read_sealed(&loc)?;
        self.open_sealed(&loc, id, &sealed)
    }

    /// Reads a tree blob through its whole pack: one request per tree pack (and none when
    /// the cache holds it) instead of one per directory. A cached copy that does not open
    /// is dropped and the blob is read from the repository.
    fn read_tree_blob(&self, loc: &BlobLocation, id: &BlobId) -> Result<Vec<u8>> {
        let sealed = self.tree_pack_span(loc)?;
        match self.open_sealed(loc, id, &sealed) {
            Ok(plain) => Ok(plain),
            Err(e) => {
                let name = Cache::pack_name(&loc.pack);
                if let Some(cache) = &self.cache {
                    cache.remove_damaged(cache::Kind::TreePack, &name, &e.to_string());
                }
                self.tree_packs.set_verified(&loc.pack, false);
                self.tree_packs.forget(&loc.pack);
                let sealed = self.read_sealed(loc)?;
                self.open_sealed(loc, id, &sealed)
            }
        }
    }

    /// The sealed bytes of a tree blob, from the cached (or remembered) whole pack, which
    /// is fetched first when absent.
    fn tree_pack_span(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        let range = loc.offset as usize..loc.offset as usize + loc.length as usize;
        let name = Cache::pack_name(&loc.pack);
        let packs = &self.tree_packs;
        let cached_span = |cache: &Cache| {
            cache
                .read_at(
                    cache::Kind::TreePack,
                    &name,
                    loc.offset as u64,
                    loc.length as usize,
                )
                .ok()
        };
        match &self.cache {
            Some(cache) if packs.is_verified(&loc.pack) => {
                if let Some(span) = cached_span(cache) {
                    cache.hit();
                    return Ok(span);
                }
                packs.set_verified(&loc.pack, false);
            }
            None => {
                if let Some(bytes) = packs.remembered(&loc.pack) {
                    return slice(&bytes, range, &loc.pack);
                }
            }
            _ => {}
        }
        let lock = packs.fetch_lock(&loc.pack);
        let _fetching = lock.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have fetched it while this one waited.
        if let Some(cache) = &self.cache {
            if packs.is_verified(&loc.pack) {
                if let Some(span) = cached_span(cache) {
                    cache.hit();
                    return Ok(span);
                }
            }
            if let Some(bytes) = cache.get(cache::Kind::TreePack, &name) {
                if blake3::hash(&bytes).as_bytes() == &loc.pack.0 {
                    cache.hit();
                    packs.set_verified(&loc.pack, true);
                    return slice(&bytes, range, &loc.pack);
                }
                cache.remove_damaged(cache::Kind::TreePack, &name, "hash mismatch");
            }
        } else if let Some(bytes) = packs.remembered(&loc.pack) {
            return slice(&bytes, range, &loc.pack);
        }
        let bytes = self.backend.read(&pack_path(&loc.pack))?;
        // A pack damaged in the repository is used as it is (each blob is authenticated
        // when opened, so intact blobs still read) but never cached.
        let intact = blake3::hash(&bytes).as_bytes() == &loc.pack.0;
        let span = slice(&bytes, range, &loc.pack)?;
        match &self.cache {
            Some(cache) if intact => {
                cache.put(cache::Kind::TreePack, &name, &bytes);
                packs.set_verified(&loc.pack, true);
            }
            None if intact => packs.remember(loc.pack, Arc::new(bytes)),
            _ => {}
        }
        Ok(span)
    }

    /// Reads a blob's sealed bytes.
    pub fn read_sealed(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        self.backend.read_range(
            &pack_path(&loc.pack),
            loc.offset as u64..loc.offset as u64 + loc.length as u64,
        )
    }

    /// Opens sealed blob bytes read from `loc`.
    pub fn open_sealed(&self, loc: &BlobLocation, id: &BlobId, sealed: &[u8]) -> Result<Vec<u8>> {
        open_blob(&self.key, loc.blob_type, id, loc.raw_length, sealed).map_err(|detail| {
            Error::Corrupt {
                object: pack_path(&loc.pack),
                detail,
            }
        })
    }

    /// Loads a directory tree.
    pub fn load_tree(&self, index: &MasterIndex, id: &TreeId) -> Result<Tree> {
        let bytes = self.read_blob(index, BlobType::Tree, &BlobId::from(*id))?;
        let tree = decode::<Tree>(&format!("tree {id}"), &bytes)?;
        if !tree.is_sorted() {
            return Err(Error::Corrupt {
                object: format!("tree {id}"),
                detail: "entries are not sorted and unique".into(),
            });
        }
        Ok(tree)
    }

    /// Reads and opens a pack's header (used to verify packs and rebuild indexes).
    pub fn read_pack_header(&self, id: &PackId) -> Result<(u64, PackHeader)> {
        let path = pack_path(id);
        let size = self.backend.size(&path)?;
        let corrupt = |detail: String| Error::Corrupt {
            object: path.clone(),
            detail,
        };
        if size < TRAILER_LEN as u64 {
            return Err(corrupt(format!("only {size} bytes long")));
        }
        let tail = self
            .backend
            .read_range(&path, size - TRAILER_LEN as u64..size)?;
        let hlen = parse_trailer(&tail).ok_or_else(|| corrupt("bad trailer".into()))? as u64;
        if hlen + TRAILER_LEN as u64 > size {
            return Err(corrupt("header length exceeds the pack".into()));
        }
        let start = size - TRAILER_LEN as u64 - hlen;
        let sealed = self.backend.read_range(&path, start..start + hlen)?;
        let plain = self
            .key
            .open(ObjectKind::Pack.aad(), &sealed)
            .map_err(|e| corrupt(format!("header: {e}")))?;
        Ok((size, decode::<PackHeader>(&path, &plain)?))
    }
}

/// The cache kind of a record kind, for the kinds that are cached.
fn cache_kind(kind: ObjectKind) -> Option<cache::Kind> {
    match kind {
        ObjectKind::Snapshot => Some(cache::Kind::Snapshot),
        ObjectKind::Index => Some(cache::Kind::Index),
        _ => None,
    }
}

/// The bytes `range` of a pack read whole.
fn slice(bytes: &[u8], range: std::ops::Range<usize>, pack: &PackId) -> Result<Vec<u8>> {
    bytes
        .get(range.clone())
        .map(<[u8]>::to_vec)
        .ok_or_else(|| Error::Corrupt {
            object: pack_path(pack),
            detail: format!(
                "{} bytes long, the index places a blob at {}..{}",
                bytes.len(),
                range.start,
                range.end
            ),
        })
}

/// What one key file says to a password.
enum KeyOutcome {
    /// The password unwraps this master key.
    Opens(MasterKey, Option<podvault_proto::KeyId>),
    /// Another password's key.
    OtherPassword,
    /// The key file is damaged (the message names it).
    Damaged(String),
}

/// Reads key file `path` and tries `password` on it.
fn try_key(backend: &Backend, path: &str, password: &[u8]) -> Result<KeyOutcome> {
    let bytes = backend.read(path)?;
    let kf = match verify_name(path, &bytes).and_then(|()| decode::<KeyFile>(path, &bytes)) {
        Ok(kf) => kf,
        Err(e) => return Ok(KeyOutcome::Damaged(e.to_string())),
    };
    let Ok(sealed) = hex::decode(&kf.master_key) else {
        return Ok(KeyOutcome::Damaged(format!(
            "{path}: master key is not hex"
        )));
    };
    Ok(
        match crypto::unwrap_master_key(password, &kf.kdf, &sealed) {
            Ok(Some(k)) => {
                let name = object_name(path);
                KeyOutcome::Opens(k, parse_id(name).map(podvault_proto::KeyId))
            }
            Ok(None) => KeyOutcome::OtherPassword,
            Err(detail) => KeyOutcome::Damaged(format!("{path}: {detail}")),
        },
    )
}

/// The last component of an object path: its id, for named objects.
fn object_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Checks that an object's bytes hash to the id in its name.
fn verify_name(path: &str, bytes: &[u8]) -> Result<()> {
    let name = object_name(path);
    if name != blake3::hash(bytes).to_hex().as_str() {
        return Err(Error::Corrupt {
            object: path.to_owned(),
            detail: "content does not match its name (hash mismatch)".into(),
        });
    }
    Ok(())
}

fn decode<R: Record>(object: &str, bytes: &[u8]) -> Result<R> {
    R::decode(bytes).map_err(|source| Error::Decode {
        object: object.to_owned(),
        source,
    })
}

/// This machine's host name (the node name in Kubernetes).
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

fn parse_id(name: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(name, &mut out).ok().map(|_| out)
}
