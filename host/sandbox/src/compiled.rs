//! The compiled-code cache: components compiled once, kept on disk.
//!
//! Cranelift compiles a Rust plugin in 0.3–0.5 s, a JavaScript or Python
//! one (which carries its interpreter) in 14–36 s. The cache keeps
//! wasmtime's serialised form of each compiled component, so a restart, a
//! second router on the same machine, or a reload of a file that did not
//! change loads it in milliseconds instead.
//!
//! An entry's name is the SHA-256 of the component's bytes and a digest of
//! the engine's [compatibility hash](wasmtime::Engine::precompile_compatibility_hash)
//! (wasmtime's version, the target and CPU features, the compiler
//! settings): an entry made by another engine is never looked up.
//!
//! # Why loading an entry is sound
//!
//! [`Component::deserialize`] is `unsafe`: wasmtime maps the bytes as
//! machine code and trusts them to be what one of its engines wrote. Bytes
//! that are anything else are undefined behaviour, so an entry is used only
//! when all of these hold, and is otherwise a miss (compiled again, and the
//! entry rewritten):
//!
//! 1. the directory, resolved to its real path when the cache opens, and
//!    every directory above it belong to the host's user or to root, and
//!    no one else may write to them (above the cache directory, a
//!    directory others may write to counts only with the sticky bit, as
//!    `/tmp` has): no one else can swap the directory or a link on the way;
//! 2. the entry is a regular file, not a link, with one name, owned by the
//!    host's user and writable by no one else, and the file read is the
//!    one checked (its device and inode, before and after opening);
//! 3. it starts with this cache's magic and format version, the SHA-256 of
//!    its key (the component's SHA-256 and the engine's) and the SHA-256 of
//!    the rest, and both hold: a torn write, a truncated or bit-rotted
//!    file, an entry copied under another component's name, or a file
//!    written by anything else fails here, before wasmtime sees a byte;
//! 4. the digests are checked on the bytes in memory, and those same bytes
//!    are handed to wasmtime (not the file, which could change in between);
//! 5. entries are written by this user, mode 0600, under a fresh temporary
//!    name, and renamed into place, so a reader never sees half an entry;
//! 6. wasmtime checks its own header again on load (its version, the
//!    target, the engine's settings) and refuses a mismatch.
//!
//! Whoever could still forge an entry runs as the host's user (or root),
//! and could replace the host's binary or attach to its process anyway. On
//! a platform where ownership cannot be checked, the cache stays off.
//!
//! Compilation and the cache's reads and writes run on blocking threads,
//! never on the event path. A cache that cannot be read or written costs a
//! compilation and a log line, never a load.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use switchyard_core::identity::hex;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of an entry; the last two digits are the format version.
const MAGIC: &[u8; 8] = b"SWYDCC02";
/// Magic, the SHA-256 of the entry's key, then the SHA-256 of what follows.
const HEADER_LEN: usize = MAGIC.len() + 32 + 32;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct CompiledCache {
    dir: PathBuf,
    /// Hex digest of the engine's compatibility hash.
    engine_key: String,
    /// Most bytes of entries kept; the least recently used go first.
    max_bytes: u64,
    /// The user the host runs as, who must own every entry.
    uid: u32,
}

/// Why the cache is off.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be made or read.
    #[error("compiled-code cache {dir}: {error}")]
    Io {
        /// The directory.
        dir: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Someone other than this user could write entries into it.
    #[error(
        "compiled-code cache {dir}: {why}; entries there are machine code the host would run, so the cache stays off (make the directory the host user's own, mode 0700, or set another `[runtime] compile_cache`)"
    )]
    Unsafe {
        /// The directory.
        dir: String,
        /// What is wrong with it.
        why: String,
    },
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Loaded from the cache.
    Hit,
    /// Compiled, and written to the cache.
    Compiled,
    /// Compiled; the cache had a bad entry (or none) and could not be
    /// written.
    CompiledNotCached,
}

impl Source {
    /// `cache`, `compiled` or `compiled-not-cached`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Hit => "cache",
            Source::Compiled => "compiled",
            Source::CompiledNotCached => "compiled-not-cached",
        }
    }
}

/// The lock of one entry's compilation, shared by every cache in the
/// process.
fn in_flight(path: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex, PoisonError};
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
    // Forget locks nobody holds, so the map stays as small as the loads
    // in progress.
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks.entry(path.to_path_buf()).or_default().clone()
}

/// Feeds `Hash` output into SHA-256: a digest stable across processes,
/// which `DefaultHasher` does not promise.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        // Unused: the digest is read with `finalize`.
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CompiledCache {
    /// Open (and create) the cache directory for `engine`'s entries,
    /// keeping at most `max_bytes` of them.
    pub fn open(dir: &Path, engine: &Engine, max_bytes: u64) -> Result<Self, CacheError> {
        let io = |error| CacheError::Io {
            dir: dir.display().to_string(),
            error,
        };
        create_private_dir(dir).map_err(io)?;
        let dir = std::fs::canonicalize(dir).map_err(io)?;
        let uid = check_private(&dir)?;
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..12]);
        Ok(Self {
            dir,
            engine_key,
            max_bytes,
            uid,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry's path and the SHA-256 of its key.
    fn entry(&self, component: &[u8]) -> (PathBuf, [u8; 32]) {
        let name = format!("{}-{}", hex(&Sha256::digest(component)), self.engine_key);
        let key: [u8; 32] = Sha256::digest(name.as_bytes()).into();
        (self.dir.join(format!("{name}.cwasm")), key)
    }

    /// The compiled form of `component`: from the cache when it holds a
    /// sound entry, otherwise compiled and stored. Blocking: call it on a
    /// blocking thread.
    pub fn get_or_compile(
        &self,
        engine: &Engine,
        component: &[u8],
    ) -> wasmtime::Result<(Component, Source)> {
        let (path, key_digest) = self.entry(component);
        // One compilation per entry at a time in this process: a second
        // load of the same component (another runtime, a reload racing a
        // restart) waits, then finds the entry.
        let lock = in_flight(&path);
        let _compiling = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match read_entry(&path, self.uid) {
            Ok(bytes) => match verified(&bytes, &key_digest) {
                Ok(payload) => {
                    // SAFETY: see the module's documentation: `payload` is
                    // exactly what `Component::serialize` of an engine with
                    // this compatibility hash wrote (its SHA-256 matches the
                    // digest stored beside it, in a directory only this
                    // user can write), checked in memory, and these same
                    // bytes are what wasmtime gets; wasmtime checks its own
                    // header again.
                    #[allow(unsafe_code)]
                    let loaded = unsafe { Component::deserialize(engine, payload) };
                    match loaded {
                        Ok(component) => {
                            touch(&path);
                            return Ok((component, Source::Hit));
                        }
                        Err(e) => {
                            tracing::warn!(entry = %path.display(), "compiled-code cache: wasmtime refused the entry ({e:#}); compiling again")
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(entry = %path.display(), "compiled-code cache: {why}; compiling again")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(entry = %path.display(), "compiled-code cache: cannot read the entry ({e}); compiling again")
            }
        }
        let compiled = Component::new(engine, component)?;
        let source = match compiled
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|payload| {
                write_entry(&path, &key_digest, &payload).map_err(|e| e.to_string())
            }) {
            Ok(()) => {
                self.prune(&path);
                Source::Compiled
            }
            Err(e) => {
                tracing::warn!(entry = %path.display(), "compiled-code cache: cannot write the entry ({e}); the next load compiles again");
                Source::CompiledNotCached
            }
        };
        Ok((compiled, source))
    }
}

impl CompiledCache {
    /// Remove the least recently used entries (never `keep`, just written)
    /// until the cache holds at most `max_bytes`.
    fn prune(&self, keep: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let files: Vec<_> = dir.filter_map(Result::ok).collect();
        // Temporary files a crashed writer left, over an hour old.
        for f in &files {
            let stale = f.path().extension().is_some_and(|x| x == "tmp")
                && f.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600));
            if stale && let Err(e) = std::fs::remove_file(f.path()) {
                tracing::warn!(file = %f.path().display(), "compiled-code cache: cannot remove a stale temporary file ({e})");
            }
        }
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = files
            .iter()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max_bytes {
                break;
            }
            if path == keep {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total = total.saturating_sub(len);
                    tracing::debug!(entry = %path.display(), "compiled-code cache: evicted (least recently used)");
                }
                Err(e) => {
                    tracing::warn!(entry = %path.display(), "compiled-code cache: cannot evict ({e})")
                }
            }
        }
    }
}

/// Mark an entry as used now, for eviction order. A failure only makes it
/// look older.
fn touch(path: &Path) {
    let touched = std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(entry = %path.display(), "compiled-code cache: cannot mark the entry used ({e})");
    }
}

/// The payload of an entry, if its header and digests hold.
fn verified<'b>(bytes: &'b [u8], key_digest: &[u8; 32]) -> Result<&'b [u8], &'static str> {
    if bytes.len() < HEADER_LEN {
        return Err("the entry is shorter than its header (truncated)");
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if &header[..MAGIC.len()] != MAGIC {
        return Err("the entry is not of this cache's format");
    }
    if header[MAGIC.len()..MAGIC.len() + 32] != key_digest[..] {
        return Err("the entry was made for another component or engine");
    }
    if header[MAGIC.len() + 32..] != Sha256::digest(payload)[..] {
        return Err("the entry's digest does not match its contents (torn write or corruption)");
    }
    Ok(payload)
}

/// Read an entry, if it is a regular file of one name, owned by `uid` and
/// writable by no one else, and the file read is the file checked.
#[cfg(unix)]
fn read_entry(path: &Path, uid: u32) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let refuse =
        |why: &str| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_string());
    let before = std::fs::symlink_metadata(path)?;
    if !before.file_type().is_file() {
        return Err(refuse("the entry is not a regular file"));
    }
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(refuse("the entry changed while it was opened"));
    }
    if meta.uid() != uid || meta.mode() & 0o022 != 0 || meta.nlink() != 1 {
        return Err(refuse(
            "the entry is not the host user's alone (its owner, mode or links)",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(not(unix))]
fn read_entry(path: &Path, _uid: u32) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

/// Write an entry, mode 0600, under a fresh temporary name, and rename it
/// into place.
fn write_entry(path: &Path, key_digest: &[u8; 32], payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.{}.{}.{nanos}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(key_digest)?;
        file.write_all(&Sha256::digest(payload))?;
        file.write_all(payload)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err()
        && let Err(e) = std::fs::remove_file(&tmp)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(file = %tmp.display(), "compiled-code cache: cannot remove a temporary file ({e})");
    }
    written
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Check that `dir` (a real path) and every directory above it belong to
/// this user or root and that no one else may write to them (above `dir`,
/// unless the sticky bit is set); returns this user's uid.
#[cfg(unix)]
fn check_private(dir: &Path) -> Result<u32, CacheError> {
    use std::os::unix::fs::MetadataExt;
    let unsafe_dir = |why: String| CacheError::Unsafe {
        dir: dir.display().to_string(),
        why,
    };
    let me = current_uid().map_err(|error| CacheError::Io {
        dir: dir.display().to_string(),
        error,
    })?;
    for (i, d) in dir.ancestors().enumerate() {
        let meta = std::fs::symlink_metadata(d).map_err(|error| CacheError::Io {
            dir: d.display().to_string(),
            error,
        })?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_dir(format!("{} is a symbolic link", d.display())));
        }
        if i == 0 && meta.uid() != me {
            return Err(unsafe_dir(format!(
                "it belongs to uid {}, the host runs as uid {me}",
                meta.uid()
            )));
        }
        if meta.uid() != me && meta.uid() != 0 {
            return Err(unsafe_dir(format!(
                "{} above it belongs to uid {}",
                d.display(),
                meta.uid()
            )));
        }
        let sticky = meta.mode() & 0o1000 != 0;
        if meta.mode() & 0o022 != 0 && (i == 0 || !sticky) {
            return Err(unsafe_dir(format!(
                "others may write to {} (mode {:o})",
                d.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(me)
}

/// The effective uid of this process: the owner of `/proc/self` on Linux,
/// else of a file it creates in the temporary directory (std has no
/// `geteuid`, and the crate denies `unsafe`).
#[cfg(unix)]
fn current_uid() -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let probe = std::env::temp_dir().join(format!(
        ".switchyard-uid-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let uid = file.metadata().map(|m| m.uid());
    std::fs::remove_file(&probe)?;
    uid
}

#[cfg(not(unix))]
fn check_private(dir: &Path) -> Result<u32, CacheError> {
    Err(CacheError::Unsafe {
        dir: dir.display().to_string(),
        why: "this platform's file ownership is not checked".to_string(),
    })
}
