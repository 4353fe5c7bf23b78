//! The cluster directory on disk: its layout, and the only code that writes files.
//!
//! Every write is atomic (a temp file in the same directory, fsync, rename, fsync of the
//! directory), so a crash leaves either the old file or the new one, never half of one.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Mode of private keys and identities.
pub const SECRET_MODE: u32 = 0o600;
/// Mode of public files: certificates, encrypted secrets, Nix files.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of directories under `pki/`.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of directories under `secrets/`.
pub const PUBLIC_DIR_MODE: u32 = 0o755;

/// What `pki/.gitignore` says: no plaintext certificate, key or identity ever enters git.
pub const PKI_GITIGNORE: &str = "# Written by kpki: plaintext stays out of git; secrets/ holds the encrypted copies.\n*.pem\n*.agekey\n*.kubeconfig\n";

/// Room one written file may take: a block for the file and one for its temporary copy,
/// generously.
const ROOM_PER_FILE: u64 = 16 * 1024;

/// The prefix of temporary files, which never end in `.pem`.
const TEMP_PREFIX: &str = ".kpki-";

/// The cluster directory's lock, released when dropped.
pub struct Lock {
    _dir: Option<fs::File>,
}

/// A cluster directory: `pki/` (plaintext, git-ignored) and `secrets/` (encrypted, committed).
///
/// Writes are atomic per file; the directories they renamed into are fsynced once, by
/// [`Store::sync`], rather than after every file (thousands of files at fleet size).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    dirs: Arc<Mutex<Dirs>>,
}

/// Directories this run created or renamed files into.
#[derive(Debug, Default)]
struct Dirs {
    existing: HashSet<PathBuf>,
    unsynced: HashSet<PathBuf>,
    /// `pki/.gitignore` as read once this run.
    gitignore: Option<String>,
}

impl Store {
    /// The cluster directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            dirs: Arc::default(),
        }
    }

    /// Takes the cluster directory's lock (`exclusive` for commands that write), waiting up to
    /// `KPKI_LOCK_TIMEOUT` seconds (default 10) for another kpki to finish. A writer then removes
    /// the temporary files an interrupted run left behind.
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        let dir = match fs::File::open(&self.root) {
            Ok(dir) => dir,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Lock { _dir: None }),
            Err(e) => return Err(Error::io(&self.root, e)),
        };
        let wait = std::env::var("KPKI_LOCK_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
        loop {
            let attempt = if exclusive {
                dir.try_lock()
            } else {
                dir.try_lock_shared()
            };
            match attempt {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    return Err(Error::usage(
                        format!(
                            "{}: another kpki is working on this cluster directory",
                            self.root.display()
                        ),
                        Some(format!(
                            "it did not finish within {wait}s; run this again when it has"
                        )),
                    ));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&self.root, e)),
            }
        }
        if exclusive {
            self.remove_temporary_files()?;
        }
        Ok(Lock { _dir: Some(dir) })
    }

    /// Removes `.kpki-*` files that an interrupted run left in `pki/` and `secrets/`.
    fn remove_temporary_files(&self) -> Result<()> {
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
    pub fn ensure_room(&self, files: usize) -> Result<()> {
        let at = if self.root.exists() {
            self.root.as_path()
        } else {
            Path::new(".")
        };
        let Ok(fs) = rustix::fs::statvfs(at) else {
            return Ok(());
        };
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        let rewritten: u64 = ["manifest.toml", "secrets.nix", "kpki.nix"]
            .iter()
            .filter_map(|f| fs::metadata(self.secrets_path(f)).ok())
            .map(|m| m.len())
            .sum();
        let need = files as u64 * ROOM_PER_FILE + 2 * rewritten;
        if free < need {
            return Err(Error::usage(
                format!(
                    "{}: {} KiB free, but about {} KiB are needed; nothing was written",
                    self.root.display(),
                    free / 1024,
                    need / 1024
                ),
                Some("free some space, then run this again".into()),
            ));
        }
        Ok(())
    }

    /// Makes every rename so far durable: fsyncs the directories written into.
    pub fn sync(&self) -> Result<()> {
        let dirs: Vec<PathBuf> = self.dirs().unsynced.drain().collect();
        for dir in dirs {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, Dirs> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `dir` (mode `mode`) unless this run already did.
    fn ensure_dir(&self, dir: &Path, mode: u32) -> Result<()> {
        if self.dirs().existing.contains(dir) {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        self.dirs().existing.insert(dir.to_path_buf());
        Ok(())
    }

    /// Writes `path` atomically in a directory made with `dir_mode`; its directory is synced later.
    fn write(&self, path: &Path, contents: &[u8], mode: u32, dir_mode: u32) -> Result<()> {
        let dir = path.parent().expect("written paths have a parent");
        self.refuse_links(path)?;
        self.ensure_dir(dir, dir_mode)?;
        replace(path, contents, mode)?;
        self.dirs().unsynced.insert(dir.to_path_buf());
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

    /// The text of `pki/REL`, or `None` when it does not exist.
    pub fn read_pki(&self, rel: &str) -> Result<Option<String>> {
        let path = self.pki_path(rel);
        self.refuse_links(&path)?;
        read_optional(&path)
    }

    /// The bytes of `secrets/REL`, or `None` when it does not exist.
    pub fn read_secret(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let path = self.secrets_path(rel);
        self.refuse_links(&path)?;
        read_optional_bytes(&path)
    }

    /// Refuses a path below the cluster directory that passes through a symbolic link: a link
    /// could make kpki read or write key material outside it.
    fn refuse_links(&self, path: &Path) -> Result<()> {
        let Ok(below) = path.strip_prefix(&self.root) else {
            return Ok(());
        };
        let mut at = self.root.clone();
        for part in below.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::file(
                        &at,
                        "is a symbolic link; kpki does not follow links inside the cluster directory",
                    ));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Refuses to write plaintext `pki/REL` when `pki/.gitignore` would let it into git.
    fn refuse_unignored(&self, rel: &str) -> Result<()> {
        let gitignore = self.pki_dir().join(".gitignore");
        if self.dirs().gitignore.is_none() {
            let text = read_optional(&gitignore)?.unwrap_or_default();
            self.dirs().gitignore = Some(text);
        }
        let dirs = self.dirs();
        let text = dirs.gitignore.as_deref().unwrap_or_default();
        let patterns: &[&str] = match rel.rsplit('.').next() {
            Some("pem") => &["*.pem", "*/*.pem", "**/*.pem"],
            Some("agekey") => &["*.agekey", "**/*.agekey"],
            _ => return Ok(()),
        };
        if text.lines().any(|l| patterns.contains(&l.trim())) {
            return Ok(());
        }
        Err(Error::usage(
            format!(
                "{}: does not ignore {}, so plaintext pki/{rel} could reach git",
                gitignore.display(),
                patterns[0]
            ),
            Some("add the lines *.pem, *.agekey and *.kubeconfig to it".into()),
        ))
    }

    /// Whether `pki/REL` exists.
    pub fn has_pki(&self, rel: &str) -> bool {
        self.pki_path(rel).exists()
    }

    /// Writes `pki/REL` atomically; private material gets mode 0600, the rest 0644.
    pub fn write_pki(&self, rel: &str, contents: &[u8], private: bool) -> Result<()> {
        self.refuse_unignored(rel)?;
        let mode = if private { SECRET_MODE } else { PUBLIC_MODE };
        self.write(&self.pki_path(rel), contents, mode, PRIVATE_DIR_MODE)
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
        self.secrets_path(&format!("{rel}.age"))
    }

    /// Writes `secrets/REL` atomically (committed, so readable: 0644 in 0755 directories).
    pub fn write_secret(&self, rel: &str, contents: &[u8]) -> Result<()> {
        self.write(
            &self.secrets_path(rel),
            contents,
            PUBLIC_MODE,
            PUBLIC_DIR_MODE,
        )
    }

    /// Writes `secrets/REL` unless it already holds exactly `contents`; returns whether it wrote.
    pub fn write_secret_if_changed(&self, rel: &str, contents: &[u8]) -> Result<bool> {
        if read_optional_bytes(&self.secrets_path(rel))?.as_deref() == Some(contents) {
            return Ok(false);
        }
        self.write_secret(rel, contents)?;
        Ok(true)
    }

    /// Removes `pki/REL` if it exists.
    pub fn remove_pki(&self, rel: &str) -> Result<()> {
        remove_optional(&self.pki_path(rel))
    }

    /// Removes `secrets/REL` if it exists.
    pub fn remove_secret(&self, rel: &str) -> Result<()> {
        remove_optional(&self.secrets_path(rel))
    }

    /// Creates `pki/` and its `.gitignore` when missing; returns whether anything was written.
    pub fn prepare_pki(&self) -> Result<bool> {
        let gitignore = self.pki_dir().join(".gitignore");
        self.ensure_dir(&self.pki_dir(), PRIVATE_DIR_MODE)?;
        if gitignore.exists() {
            return Ok(false);
        }
        self.write(
            &gitignore,
            PKI_GITIGNORE.as_bytes(),
            PUBLIC_MODE,
            PRIVATE_DIR_MODE,
        )?;
        Ok(true)
    }

    /// Writes `pki/kpki.toml`.
    pub fn write_config(&self, text: &str) -> Result<()> {
        self.write(
            &self.config_path(),
            text.as_bytes(),
            PUBLIC_MODE,
            PRIVATE_DIR_MODE,
        )
    }
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

/// Reads a file that may not exist.
pub fn read_optional_bytes(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads a text file that may not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Replaces `path` with `contents` (mode `mode`, whatever the umask) in one rename, its data
/// on disk first. The rename itself is durable once the directory is synced.
fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().expect("written paths have a parent");
    let io = |e| Error::io(path, e);
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    tmp.as_file().sync_data().map_err(io)?;
    fault::operation_done();
    tmp.persist(path).map_err(|e| io(e.error))?;
    fault::operation_done();
    Ok(())
}

/// A test-only crash switch: with `KPKI_FAULT_AFTER=N` in a debug build, the process aborts
/// right after its Nth file operation (a temp file written, a rename, a removal), as a crash or
/// a power cut would stop it. Release builds have no switch.
mod fault {
    #[cfg(debug_assertions)]
    pub fn operation_done() {
        use std::sync::OnceLock;
        use std::sync::atomic::{AtomicU64, Ordering};
        static DONE: AtomicU64 = AtomicU64::new(0);
        static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
        let limit = LIMIT.get_or_init(|| std::env::var("KPKI_FAULT_AFTER").ok()?.parse().ok());
        if limit.is_some_and(|n| DONE.fetch_add(1, Ordering::SeqCst) + 1 == n) {
            std::process::abort();
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn operation_done() {}
}

/// Replaces a file outside the cluster directory (a kubeconfig) atomically and durably.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    replace(path, contents, mode)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}
