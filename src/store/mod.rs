//! The cluster directory on disk: its layout, the only code that touches files, and the lock.
//!
//! Reads open regular files only, without following links or blocking on a FIFO, up to a size
//! limit. Writes go through a [`Transaction`]: every file of a change is written aside, made
//! durable, and renamed into place under a journal, so a crash leaves the old state or (after
//! the next run replays the journal) the new one, never a mix.

mod ignore;
pub use ignore::pki_gitignore_update;
mod transaction;

use std::fs;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use ignore::plaintext_ignored;
pub use ignore::tracked;
pub use transaction::{Transaction, fault};

/// Mode of private keys and identities.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of public files: certificates, encrypted secrets, Nix files.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories under `pki/`.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of directories under `secrets/`.
pub const PUBLIC_DIR_MODE: u32 = 0o755;

/// The largest PEM or age file kpki reads: far above any certificate bundle or key.
pub const PEM_LIMIT: u64 = 1 << 20;
/// The largest text file kpki reads (config, manifest, Nix files of a fleet).
pub const TEXT_LIMIT: u64 = 64 << 20;

/// What `pki/.gitignore` says: no plaintext certificate, key or identity ever enters git, nor
/// kpki's local bookkeeping.
pub const PKI_GITIGNORE: &str = "# Written by kpki: plaintext stays out of git; secrets/ holds the encrypted copies.\n*.pem\n*.der\n*.agekey\n*.kubeconfig\n/.kpki/\n";

/// kpki's bookkeeping directory under `pki/` (git-ignored): the cache record and the journal.
pub const STATE_DIR: &str = ".kpki";

/// The cache record's name under [`STATE_DIR`]: what the state above knows of the files in
/// place. Recovering from an interrupted commit drops it (the next run reads everything).
pub const RECORD_FILE: &str = "cache";

/// Room one written file may take beyond its bytes: blocks and inode for it and its directory
/// entry, generously.
const ROOM_PER_FILE: u64 = 8 * 1024;

/// The prefix of temporary files, which never end in `.pem`.
const TEMP_PREFIX: &str = ".kpki-";

/// Where every file of a change is written before it is renamed into place, under `pki/.kpki/`:
/// git-ignored as a whole, so an interrupted run leaves no private key that `git add -A` stages.
const TEMP_DIR: &str = "tmp";

/// The cluster directory's lock, released when dropped.
pub struct Lock {
    _dir: Option<fs::File>,
}

/// What identifies a file's version without reading it: inode, size, modification time and
/// change time. Replacing a file (kpki's writes, git checkout, an editor) changes it; so does
/// an edit in place with its mtime set back (`touch -r`), since no one can set the ctime (as
/// git's index knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// `INO.LEN.MTIME.CTIME`, as the cache record keeps it.
    pub fn render(&self) -> String {
        format!(
            "{}.{}.{}.{}",
            self.ino, self.len, self.mtime_ns, self.ctime_ns
        )
    }

    /// The inverse of [`Stamp::render`].
    pub fn parse(s: &str) -> Option<Stamp> {
        let mut parts = s.split('.');
        let stamp = Stamp {
            ino: parts.next()?.parse().ok()?,
            len: parts.next()?.parse().ok()?,
            mtime_ns: parts.next()?.parse().ok()?,
            ctime_ns: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(stamp)
    }
}

/// A cluster directory: `pki/` (plaintext, git-ignored) and `secrets/` (encrypted, committed).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Directories below the root already found not to be links, this run.
    real_dirs: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

impl Store {
    /// The cluster directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            real_dirs: Default::default(),
        }
    }

    /// The cluster directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the cluster directory when it does not exist yet, so that it can be locked
    /// before anything else is written in it.
    pub fn create_root(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .create(&self.root)
            .map_err(|e| Error::io(&self.root, e))
    }

    /// Takes the cluster directory's lock (`exclusive` for commands that write), waiting up to
    /// `KPKI_LOCK_TIMEOUT` seconds (default 10) for another kpki to finish. Then completes a
    /// change that an interrupted run committed (its journal) and removes the temporary files
    /// it left; a reader takes the lock exclusively for that moment.
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        let dir = match fs::File::open(&self.root) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock { _dir: None }),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        if !dir
            .metadata()
            .map_err(|e| Error::io(&self.root, e))?
            .is_dir()
        {
            return Err(Error::file(&self.root, "is not a directory"));
        }
        // kpki's bookkeeping (journal, temporary files, cache record) through a link would be
        // read and written elsewhere: refused like every other link in the cluster directory.
        self.refuse_links(&self.temp_dir())?;
        let wait = lock_timeout();
        if !exclusive && self.journal_path().exists() {
            flock(&dir, &self.root, true, wait)?;
            transaction::recover(self)?;
            dir.unlock().map_err(|e| Error::io(&self.root, e))?;
        }
        flock(&dir, &self.root, exclusive, wait)?;
        fault::lock_taken();
        if exclusive {
            transaction::recover(self)?;
            if self.state_path(transaction::WRITING).exists() || self.interrupted() {
                self.remove_temporary_files()?;
                remove_optional(&self.state_path(transaction::WRITING))?;
            }
        }
        Ok(Lock { _dir: Some(dir) })
    }

    /// `pki/.kpki/tmp/`, where the files of a change are written first.
    pub fn temp_dir(&self) -> PathBuf {
        self.state_path(TEMP_DIR)
    }

    /// Whether an interrupted run left temporary files (for a reader, which may not remove
    /// them: the next writer does).
    pub fn interrupted(&self) -> bool {
        self.temporary_files().next().is_some()
    }

    /// The files in `pki/.kpki/tmp/` and the worker directories below it.
    fn temporary_files(&self) -> impl Iterator<Item = PathBuf> {
        walkdir::WalkDir::new(self.temp_dir())
            .min_depth(1)
            .max_depth(2)
            .follow_links(false)
            .into_iter()
            .flatten()
            .filter(|e| !e.file_type().is_dir())
            .map(walkdir::DirEntry::into_path)
    }

    /// Removes the temporary files an interrupted run left: everything in `pki/.kpki/tmp/`, and
    /// `.kpki-*` files in `pki/` and `secrets/` (where an older kpki wrote them).
    fn remove_temporary_files(&self) -> Result<()> {
        for temp in self.temporary_files() {
            remove_optional(&temp)?;
        }
        for dir in [self.pki_dir(), self.secrets_dir()] {
            for entry in walkdir::WalkDir::new(&dir)
                .follow_links(false)
                .into_iter()
                .flatten()
            {
                if entry.file_type().is_file()
                    && entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX)
                {
                    remove_optional(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Refuses to start writing `files` files when the filesystem has clearly too little room
    /// for them, so that a full disk stops a command before it changed anything.
    pub fn ensure_room(&self, files: usize, bytes: u64) -> Result<()> {
        let at = if self.root.exists() {
            self.root.as_path()
        } else {
            Path::new(".")
        };
        let Ok(fs) = rustix::fs::statvfs(at) else {
            return Ok(());
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let need = (files as u64)
            .saturating_mul(ROOM_PER_FILE)
            .saturating_add(bytes);
        if free < need {
            return Err(Error::Unavailable {
                path: self.root.clone(),
                message: format!(
                    "{} KiB free, but about {} KiB are needed; nothing was written",
                    free / 1024,
                    need / 1024
                ),
                hint: "free some space, then run this again".into(),
            });
        }
        Ok(())
    }

    /// `pki/`.
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    /// `pki/kpki.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.pki_dir().join("kpki.toml")
    }

    /// A path under `pki/`.
    pub fn pki_path(&self, rel: &str) -> PathBuf {
        self.pki_dir().join(rel)
    }

    /// A path under `pki/.kpki/`.
    pub fn state_path(&self, name: &str) -> PathBuf {
        self.pki_dir().join(STATE_DIR).join(name)
    }

    fn journal_path(&self) -> PathBuf {
        self.state_path(transaction::JOURNAL)
    }

    /// `secrets/`.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// A path under `secrets/`.
    pub fn secrets_path(&self, rel: &str) -> PathBuf {
        self.secrets_dir().join(rel)
    }

    /// The encrypted copy of `pki/REL`: `secrets/REL.age`.
    pub fn secret_path(&self, rel: &str) -> PathBuf {
        let mut path = self.secrets_path(rel).into_os_string();
        path.push(".age");
        path.into()
    }

    /// The bytes of a file below the cluster directory, or `None` when it does not exist.
    /// Only a regular file of at most `limit` bytes is read; a link, a FIFO or a device is
    /// refused without blocking.
    pub fn read(&self, path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
        self.refuse_links(path)?;
        read_regular(path, limit)
    }

    /// Like [`Store::read`], with the stamp of the very file read.
    pub fn read_stamped(&self, path: &Path, limit: u64) -> Result<Option<(Vec<u8>, Stamp)>> {
        self.refuse_links(path)?;
        read_file(path, limit)
    }

    /// The text of a file below the cluster directory (config, manifest, Nix files).
    pub fn read_text(&self, path: &Path) -> Result<Option<String>> {
        self.read(path, TEXT_LIMIT)?
            .map(|bytes| {
                String::from_utf8(bytes).map_err(|_| Error::file(path, "is not UTF-8 text"))
            })
            .transpose()
    }

    /// The version stamp of a regular file, or `None` when it does not exist.
    pub fn stamp(&self, path: &Path) -> Result<Option<Stamp>> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_file() => Ok(Some(Stamp::of(&meta))),
            Ok(meta) => Err(not_regular(path, &meta)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// A directory's stamp and the sorted names in it, or `None` when it was changed while
    /// read, or so recently that a change within the file system's clock tick would not show
    /// in its stamp (the "racy git" problem, solved as git's untracked cache does): such a
    /// listing is not kept.
    pub fn settled_listing(
        &self,
        dir: &Path,
        now: time::OffsetDateTime,
    ) -> Result<Option<(Stamp, Vec<String>)>> {
        let Some(before) = self.dir_stamp(dir)? else {
            return Ok(None);
        };
        if before.mtime_ns.max(before.ctime_ns) > now.unix_timestamp_nanos() - SETTLED_NS {
            return Ok(None);
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
            // A name that is not UTF-8 is no file of kpki's: such a directory is always listed.
            let Ok(name) = name.into_string() else {
                return Ok(None);
            };
            names.push(name);
        }
        names.sort();
        Ok((self.dir_stamp(dir)? == Some(before)).then_some((before, names)))
    }

    /// The stamp of a real directory (no link), `None` when there is none at `dir`.
    pub fn dir_stamp(&self, dir: &Path) -> Result<Option<Stamp>> {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => Ok(Some(Stamp::of(&meta))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(dir, e)),
        }
    }

    /// Refuses a path below the cluster directory that passes through a symbolic link: a link
    /// could make kpki read or write key material outside it.
    pub fn refuse_links(&self, path: &Path) -> Result<()> {
        let Ok(below) = path.strip_prefix(&self.root) else {
            return Ok(());
        };
        let mut at = self.root.clone();
        let known = |p: &Path| {
            self.real_dirs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(p)
        };
        for part in below.components() {
            at.push(part);
            if known(&at) {
                continue;
            }
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::file(
                        &at,
                        "is a symbolic link; kpki does not follow links inside the cluster directory",
                    ));
                }
                Ok(meta) if meta.is_dir() => {
                    self.real_dirs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(at.clone());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Replaces `pki/.kpki/NAME` (kpki's bookkeeping) atomically.
    pub fn write_state(&self, name: &str, contents: &[u8]) -> Result<()> {
        let path = self.state_path(name);
        let dir = path.parent().expect("state files have a parent");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        transaction::replace(self, &path, contents, PUBLIC_MODE)
    }

    /// A new transaction on this cluster directory.
    pub fn transaction(&self) -> Transaction {
        Transaction::new(self.clone())
    }

    /// The names (relative to `dir`, `/`-separated) of the regular files below `dir`, sorted.
    pub fn list(&self, dir: &Path) -> Result<Vec<String>> {
        self.list_except(dir, |_| false)
    }

    /// [`Store::list`], but not below the directories (children of `dir`) that `skip` names,
    /// which are not even opened.
    pub fn list_except(&self, dir: &Path, skip: impl Fn(&Path) -> bool) -> Result<Vec<String>> {
        self.refuse_links(dir)?;
        // Read here, not walked: a walker opens every directory it meets, even past its depth.
        let top = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut found = Vec::new();
        for entry in top {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            let (Ok(kind), Some(name)) = (entry.file_type(), name.to_str()) else {
                continue;
            };
            let path = entry.path();
            if kind.is_file() {
                found.push(name.to_string());
            } else if kind.is_dir() && !skip(&path) {
                let below = walk(&path)?;
                let files = below.iter().filter(|e| e.file_type().is_file());
                found.extend(files.filter_map(|e| {
                    let rel = e.path().strip_prefix(dir).ok()?.to_str()?;
                    Some(rel.to_string())
                }));
            }
        }
        found.sort();
        Ok(found)
    }
}

/// The entries below `dir` (links not followed); one that vanishes while listed is left out.
fn walk(dir: &Path) -> Result<Vec<walkdir::DirEntry>> {
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        match entry {
            Ok(e) => entries.push(e),
            Err(e)
                if e.io_error()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) => {}
            Err(e) => return Err(Error::file(dir, e.to_string())),
        }
    }
    Ok(entries)
}

/// How old a directory's last change must be for its listing to be kept: well above any
/// file system's timestamp tick.
const SETTLED_NS: i128 = 2_000_000_000;

/// `KPKI_LOCK_TIMEOUT` in seconds (default 10), at most a day.
fn lock_timeout() -> u64 {
    std::env::var("KPKI_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(10)
        .min(86_400)
}

/// Takes `dir`'s flock, waiting up to `wait` seconds.
fn flock(dir: &fs::File, root: &Path, exclusive: bool, wait: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    loop {
        let attempt = if exclusive {
            dir.try_lock()
        } else {
            dir.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Unavailable {
                    path: root.to_path_buf(),
                    message: "another kpki is working on this cluster directory".into(),
                    hint: format!("it did not finish within {wait}s; run this again when it has"),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(root, e)),
        }
    }
}

/// Why a path that is not a regular file cannot be read.
fn not_regular(path: &Path, meta: &fs::Metadata) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_symlink() {
        "is a symbolic link; kpki does not follow links inside the cluster directory"
    } else if t.is_dir() {
        "is a directory, not a file"
    } else if t.is_fifo() {
        "is a FIFO, not a regular file"
    } else if t.is_char_device() || t.is_block_device() {
        "is a device, not a regular file"
    } else {
        "is not a regular file"
    };
    Error::file(path, what)
}

/// Reads a regular file of at most `limit` bytes, or `None` when it does not exist. Opened
/// without following a link and without blocking (a FIFO swapped in is refused, not waited on).
pub fn read_regular(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    Ok(read_file(path, limit)?.map(|(bytes, _)| bytes))
}

/// [`read_regular`], with the stamp of the file read.
fn read_file(path: &Path, limit: u64) -> Result<Option<(Vec<u8>, Stamp)>> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
        Err(e) => {
            return Err(match fs::symlink_metadata(path) {
                Ok(meta) if !meta.file_type().is_file() => not_regular(path, &meta),
                _ => Error::io(path, e),
            });
        }
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path, &meta));
    }
    if meta.len() > limit {
        return Err(too_large(path, limit));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(path, limit));
    }
    Ok(Some((bytes, Stamp::of(&meta))))
}

fn too_large(path: &Path, limit: u64) -> Error {
    Error::file(
        path,
        format!(
            "is larger than {} KiB, far more than such a file holds",
            limit / 1024
        ),
    )
}

/// Removes a file that may not exist.
fn remove_optional(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        Err(_) => Ok(()),
        Ok(()) => {
            fault::operation_done();
            Ok(())
        }
    }
}

/// Replaces a file outside the cluster directory (a kubeconfig) atomically and durably. A
/// symbolic link at `path` is written through (its target is replaced), never replaced itself.
pub fn write_outside(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            fs::canonicalize(path).map_err(|e| Error::io(path, e))?
        }
        Ok(meta) if !meta.file_type().is_file() => return Err(not_regular(path, &meta)),
        _ => path.to_path_buf(),
    };
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        Some(_) => PathBuf::from("."),
        None => return Err(Error::file(path, "is not a file name")),
    };
    if target.file_name().is_none() {
        return Err(Error::file(path, "is not a file name"));
    }
    if !dir.is_dir() {
        return Err(Error::file(
            path,
            format!("cannot be written: {} is not a directory", dir.display()),
        ));
    }
    // Beside the target: outside the cluster directory, there is no kpki place on its
    // filesystem. The temporary file is 0600 from the first byte all the same.
    transaction::replace_via(&dir, &target, contents, mode).map_err(|e| e.at(path))?;
    for synced in [&target, &dir] {
        fs::File::open(synced)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_is_kept_only_once_its_directory_has_settled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let sub = dir.path().join("secrets/node-01");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("b.pem.age"), "").unwrap();
        fs::write(sub.join("a.pem.age"), "").unwrap();
        let now = time::OffsetDateTime::now_utc();
        // Just changed: a file added within the same clock tick would not show in its stamp.
        assert_eq!(store.settled_listing(&sub, now).unwrap(), None);
        let later = now + time::Duration::seconds(3);
        let (stamp, names) = store.settled_listing(&sub, later).unwrap().unwrap();
        assert_eq!(names, ["a.pem.age", "b.pem.age"]);
        assert_eq!(store.dir_stamp(&sub).unwrap(), Some(stamp));
        // A name that is not UTF-8 could pass for another once made readable: never kept.
        use std::os::unix::ffi::OsStrExt;
        fs::write(sub.join(std::ffi::OsStr::from_bytes(b"x\xff.pem.age")), "").unwrap();
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
        assert_eq!(store.settled_listing(&sub, later).unwrap(), None);
        assert_eq!(store.dir_stamp(&dir.path().join("missing")).unwrap(), None);
        assert_eq!(store.dir_stamp(&sub.join("a.pem.age")).unwrap(), None);
    }
}
