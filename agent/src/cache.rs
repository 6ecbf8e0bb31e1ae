//! Local cache of a repository's metadata: snapshot and index objects, and whole tree packs.
//!
//! Everything cached is immutable and named by its content id, so an entry never goes stale:
//! `snapshots/<id>` and `index/<id>` are the sealed objects (their name is the BLAKE3 hash of
//! their bytes, checked on every read), `trees/<pack-id>` a whole pack of tree blobs (every
//! blob read from it is authenticated and its id checked when it is opened, like a blob read
//! from the repository). An entry that fails either check is deleted and fetched again, so a
//! damaged cache costs a download, never a wrong answer.
//!
//! Layout: `<root>/<repository id>/{snapshots,index,trees}/`; the repository id comes from
//! the decrypted config, so one repository's cache is never used for another (and would not
//! authenticate if it were). Entries are written to a temporary file and renamed into place,
//! so several processes can share a cache; an entry another process removed is a miss.
//! Deleting the whole directory is always safe. The cache is bounded: when it grows past its
//! limit the least recently used entries (by modification time, refreshed on use) are
//! removed until it is back under 80 % of the limit. Objects this process writes (snapshots,
//! index objects, tree packs) are written through, so the next run finds them. Snapshot and index entries whose
//! objects are no longer in the repository are dropped when their kind is listed.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use podvault_proto::PackId;

/// Default size limit of one repository's cache.
pub const DEFAULT_LIMIT: u64 = 4 << 30;

/// The cache kinds, each a subdirectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sealed snapshot objects.
    Snapshot,
    /// Sealed index objects.
    Index,
    /// Whole tree packs.
    TreePack,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Snapshot => "snapshots",
            Kind::Index => "index",
            Kind::TreePack => "trees",
        }
    }
}

/// Hits, misses and bytes of one process's use of a cache.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Entries read from the cache.
    pub hits: AtomicU64,
    /// Entries stored (fetched from the repository, or written through).
    pub misses: AtomicU64,
    /// Entries found damaged (deleted and fetched again).
    pub damaged: AtomicU64,
    /// Entries removed to stay within the limit.
    pub evicted: AtomicU64,
}

/// One repository's cache directory.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    limit: u64,
    /// Bytes in the cache as of the last scan plus what this process added since.
    size: AtomicU64,
    /// Serializes eviction scans within the process.
    evicting: Mutex<()>,
    stats: CacheStats,
}

impl Cache {
    /// Opens (creating it) the cache of the repository `repository_id` under `root`.
    pub fn open(root: &Path, repository_id: &[u8; 32], limit: u64) -> io::Result<Cache> {
        fs::create_dir_all(root)?;
        // Backup tools skip directories tagged like this (https://bford.info/cachedir/).
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            let _ = fs::write(
                &tag,
                "Signature: 8a477f597d28d172789f06886806bc55\n\
                 # This is the podvault cache; it can be deleted at any time.\n",
            );
        }
        let dir = root.join(hex::encode(repository_id));
        for kind in [Kind::Snapshot, Kind::Index, Kind::TreePack] {
            fs::create_dir_all(dir.join(kind.dir()))?;
        }
        let cache = Cache {
            size: AtomicU64::new(0),
            dir,
            limit: limit.max(1 << 20),
            evicting: Mutex::new(()),
            stats: CacheStats::default(),
        };
        let (size, _) = cache.scan();
        cache.size.store(size, Ordering::Relaxed);
        if size > cache.limit {
            cache.evict();
        }
        Ok(cache)
    }

    /// The directory of this repository's cache.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Use counters.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn path(&self, kind: Kind, name: &str) -> PathBuf {
        self.dir.join(kind.dir()).join(name)
    }

    /// The cached bytes of an entry, if present (its use time is refreshed).
    pub fn get(&self, kind: Kind, name: &str) -> Option<Vec<u8>> {
        let path = self.path(kind, name);
        match fs::read(&path) {
            Ok(bytes) => {
                touch(&path);
                Some(bytes)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(entry = %path.display(), error = %e, "cache entry unreadable; fetching from the repository");
                }
                None
            }
        }
    }

    /// Counts a hit (the caller verified the entry).
    pub fn hit(&self) {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes an entry that failed verification.
    pub fn remove_damaged(&self, kind: Kind, name: &str, why: &str) {
        let path = self.path(kind, name);
        tracing::warn!(entry = %path.display(), "damaged cache entry ({why}); fetching it again");
        self.stats.damaged.fetch_add(1, Ordering::Relaxed);
        let _ = fs::remove_file(path);
    }

    /// Stores an entry fetched from (or just written to) the repository. Failing to store is not an error for
    /// the caller (the cache is an optimization), only logged.
    pub fn put(&self, kind: Kind, name: &str, bytes: &[u8]) {
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let target = self.path(kind, name);
        let stored = (|| -> io::Result<()> {
            let parent = target.parent().unwrap_or(&self.dir);
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(parent)?;
            tmp.write_all(bytes)?;
            tmp.persist(&target).map_err(|e| e.error)?;
            Ok(())
        })();
        match stored {
            Ok(()) => {
                let size =
                    self.size.fetch_add(bytes.len() as u64, Ordering::Relaxed) + bytes.len() as u64;
                if size > self.limit {
                    self.evict();
                }
            }
            Err(e) => {
                tracing::warn!(entry = %target.display(), error = %e, "could not store a cache entry")
            }
        }
    }

    /// Stores a copy of the file `src` as an entry (write-through of an object this process
    /// has just written, so the next reader finds it). Failing is only logged.
    pub fn put_file(&self, kind: Kind, name: &str, src: &Path) {
        match fs::read(src) {
            Ok(bytes) => self.put(kind, name, &bytes),
            Err(e) => {
                tracing::warn!(file = %src.display(), error = %e, "could not cache a written object")
            }
        }
    }

    /// Drops the entries of `kind` whose names are not in `keep` (objects removed from the
    /// repository by forget or prune).
    pub fn retain(&self, kind: Kind, keep: &HashSet<String>) {
        let Ok(entries) = fs::read_dir(self.dir.join(kind.dir())) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // Another process's temporary file, unless it is old.
                if is_old(&e) {
                    let _ = fs::remove_file(e.path());
                }
                continue;
            }
            if !keep.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Name of a tree pack's entry.
    pub fn pack_name(id: &PackId) -> String {
        id.to_hex()
    }

    /// Reads `len` bytes at `offset` of a cached entry.
    pub fn read_at(&self, kind: Kind, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(self.path(kind, name))?;
        let mut buf = vec![0; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Total size and entries (path, size, use time), oldest first.
    fn scan(&self) -> (u64, Vec<(PathBuf, u64, SystemTime)>) {
        let mut total = 0;
        let mut entries = Vec::new();
        for kind in [Kind::Snapshot, Kind::Index, Kind::TreePack] {
            let Ok(dir) = fs::read_dir(self.dir.join(kind.dir())) else {
                continue;
            };
            for e in dir.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if !meta.is_file() {
                    continue;
                }
                total += meta.len();
                let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                entries.push((e.path(), meta.len(), used));
            }
        }
        entries.sort_by_key(|e| e.2);
        (total, entries)
    }

    /// Removes the least recently used entries until the cache is under 80 % of its limit.
    fn evict(&self) {
        let Ok(_guard) = self.evicting.try_lock() else {
            return;
        };
        let (mut total, entries) = self.scan();
        let goal = self.limit / 5 * 4;
        for (path, len, _) in entries {
            if total <= goal {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                self.stats.evicted.fetch_add(1, Ordering::Relaxed);
            }
            total = total.saturating_sub(len);
        }
        self.size.store(total, Ordering::Relaxed);
    }
}

/// Whole tree packs of one open repository: which cached packs this process has verified,
/// fetches in flight (so a pack is downloaded once however many threads want it), and,
/// without a disk cache, a small in-memory set of recently used packs.
#[derive(Debug, Default)]
pub struct TreePacks {
    verified: Mutex<HashSet<PackId>>,
    inflight: Mutex<std::collections::HashMap<PackId, std::sync::Arc<Mutex<()>>>>,
    memory: Mutex<std::collections::VecDeque<(PackId, std::sync::Arc<Vec<u8>>)>>,
}

/// Bytes of tree packs held in memory when there is no disk cache.
pub const MEMORY_TREE_PACKS: usize = 32 << 20;

impl TreePacks {
    /// Whether this process has verified the cached copy of `pack`.
    pub fn is_verified(&self, pack: &PackId) -> bool {
        lock(&self.verified).contains(pack)
    }

    /// Records (or forgets) that the cached copy of `pack` was verified.
    pub fn set_verified(&self, pack: &PackId, ok: bool) {
        let mut v = lock(&self.verified);
        if ok {
            v.insert(*pack);
        } else {
            v.remove(pack);
        }
    }

    /// The lock a fetch of `pack` holds.
    pub fn fetch_lock(&self, pack: &PackId) -> std::sync::Arc<Mutex<()>> {
        lock(&self.inflight).entry(*pack).or_default().clone()
    }

    /// A pack held in memory.
    pub fn remembered(&self, pack: &PackId) -> Option<std::sync::Arc<Vec<u8>>> {
        let mut m = lock(&self.memory);
        let i = m.iter().position(|(id, _)| id == pack)?;
        let entry = m.remove(i)?;
        let bytes = entry.1.clone();
        m.push_back(entry);
        Some(bytes)
    }

    /// Holds a pack in memory, dropping the least recently used beyond the bound.
    pub fn remember(&self, pack: PackId, bytes: std::sync::Arc<Vec<u8>>) {
        let mut m = lock(&self.memory);
        m.retain(|(id, _)| *id != pack);
        m.push_back((pack, bytes));
        while m.len() > 1 && m.iter().map(|(_, b)| b.len()).sum::<usize>() > MEMORY_TREE_PACKS {
            m.pop_front();
        }
    }

    /// Forgets a pack held in memory.
    pub fn forget(&self, pack: &PackId) {
        lock(&self.memory).retain(|(id, _)| id != pack);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refreshes an entry's use time (best effort).
fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn is_old(e: &fs::DirEntry) -> bool {
    e.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() > 3600)
}

/// The default cache root: `$XDG_CACHE_HOME/podvault`, else `~/.cache/podvault`.
pub fn default_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("podvault"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/podvault"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_are_evicted_oldest_first() {
        let tmp = tempfile::tempdir().unwrap();
        let id = [7u8; 32];
        let cache = Cache::open(tmp.path(), &id, 3 << 20).unwrap();
        assert!(tmp.path().join("CACHEDIR.TAG").is_file());
        let mb = vec![1u8; 1 << 20];
        cache.put(Kind::TreePack, "a", &mb);
        // Modification times decide the order; make them distinct.
        let old = SystemTime::now() - std::time::Duration::from_secs(100);
        fs::File::options()
            .append(true)
            .open(cache.path(Kind::TreePack, "a"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        cache.put(Kind::TreePack, "b", &mb);
        cache.put(Kind::Index, "c", &mb);
        // Older than the entry added next, whatever the file system's time resolution.
        for (kind, name, age) in [(Kind::TreePack, "b", 50), (Kind::Index, "c", 40)] {
            fs::File::options()
                .append(true)
                .open(cache.path(kind, name))
                .unwrap()
                .set_modified(SystemTime::now() - std::time::Duration::from_secs(age))
                .unwrap();
        }
        assert_eq!(cache.get(Kind::TreePack, "b").as_deref(), Some(&mb[..]));
        // 4 MiB > 3 MiB: the oldest (a) goes, then b or c until ≤ 2.4 MiB.
        cache.put(Kind::Snapshot, "d", &mb);
        assert!(cache.get(Kind::TreePack, "a").is_none());
        let left = ["b", "c", "d"]
            .iter()
            .zip([Kind::TreePack, Kind::Index, Kind::Snapshot])
            .filter(|(n, k)| cache.path(*k, n).exists())
            .count();
        assert_eq!(left, 2);
        assert!(cache.path(Kind::Snapshot, "d").exists(), "newest kept");
        assert_eq!(cache.stats().evicted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn retain_drops_entries_of_removed_objects_only() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = Cache::open(tmp.path(), &[1; 32], DEFAULT_LIMIT).unwrap();
        cache.put(Kind::Snapshot, "keep", b"x");
        cache.put(Kind::Snapshot, "gone", b"y");
        cache.put(Kind::Index, "gone", b"z");
        cache.retain(Kind::Snapshot, &HashSet::from(["keep".to_owned()]));
        assert!(cache.get(Kind::Snapshot, "keep").is_some());
        assert!(cache.get(Kind::Snapshot, "gone").is_none());
        assert!(
            cache.get(Kind::Index, "gone").is_some(),
            "other kinds untouched"
        );
    }

    #[test]
    fn caches_of_two_repositories_are_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Cache::open(tmp.path(), &[1; 32], DEFAULT_LIMIT).unwrap();
        let b = Cache::open(tmp.path(), &[2; 32], DEFAULT_LIMIT).unwrap();
        a.put(Kind::Index, "x", b"a's");
        assert!(b.get(Kind::Index, "x").is_none());
        assert_ne!(a.dir(), b.dir());
    }
}
