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
}

impl Store {
    /// The cluster directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            dirs: Arc::default(),
        }
    }

    /// Makes every rename so far durable: fsyncs the directories written into.
    pub fn sync(&self) -> Result<()> {
        let dirs: Vec<PathBuf> = self.lock().unsynced.drain().collect();
        for dir in dirs {
            fs::File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(&dir, e))?;
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Dirs> {
        self.dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `dir` (mode `mode`) unless this run already did.
    fn ensure_dir(&self, dir: &Path, mode: u32) -> Result<()> {
        if self.lock().existing.contains(dir) {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        self.lock().existing.insert(dir.to_path_buf());
        Ok(())
    }

    /// Writes `path` atomically in a directory made with `dir_mode`; its directory is synced later.
    fn write(&self, path: &Path, contents: &[u8], mode: u32, dir_mode: u32) -> Result<()> {
        let dir = path.parent().expect("written paths have a parent");
        self.ensure_dir(dir, dir_mode)?;
        replace(path, contents, mode)?;
        self.lock().unsynced.insert(dir.to_path_buf());
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
        read_optional(&self.pki_path(rel))
    }

    /// Whether `pki/REL` exists.
    pub fn has_pki(&self, rel: &str) -> bool {
        self.pki_path(rel).exists()
    }

    /// Writes `pki/REL` atomically; private material gets mode 0600, the rest 0644.
    pub fn write_pki(&self, rel: &str, contents: &[u8], private: bool) -> Result<()> {
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
        _ => Ok(()),
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
        .prefix(".kpki-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    tmp.as_file().sync_data().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
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
