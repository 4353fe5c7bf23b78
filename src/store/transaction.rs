//! All-or-nothing changes: every file of a change is written aside first, made durable with one
//! `syncfs`, then a journal naming every rename is made durable, then the renames and removals
//! run, then one more `syncfs`, then the journal goes. A crash before the journal leaves only
//! temporary files (removed by the next run); a crash after it is completed by the next run,
//! which replays the journal. Durability is paid once per change, not once per file.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use zeroize::Zeroizing;

use super::{Store, TEMP_PREFIX, remove_optional};
use crate::error::{Error, Result};

/// The journal's name under `pki/.kpki/`.
pub const JOURNAL: &str = "journal";

/// Exists while a commit may have temporary files about: the next writer looks for leftovers
/// only then (walking a fleet's directories every time would cost more than the rest).
pub const WRITING: &str = "writing";

/// One file to write.
struct Pending {
    path: PathBuf,
    contents: Zeroizing<Vec<u8>>,
    mode: u32,
    dir_mode: u32,
}

/// What the transaction does to one path.
enum Op {
    Write(Pending),
    Remove,
}

/// A change to the cluster directory, carried out by [`Transaction::commit`].
pub struct Transaction {
    store: Store,
    /// The last word on each path.
    ops: std::collections::BTreeMap<PathBuf, Op>,
    writes: Vec<Pending>,
    removals: Vec<PathBuf>,
    /// Temporary files written but not yet renamed, removed if the commit fails.
    temps: Vec<PathBuf>,
    /// Whether this transaction put the writing mark.
    marked: bool,
}

impl Transaction {
    pub(super) fn new(store: Store) -> Transaction {
        Transaction {
            store,
            ops: Default::default(),
            writes: Vec::new(),
            removals: Vec::new(),
            temps: Vec::new(),
            marked: false,
        }
    }

    /// Replaces (or creates) `path` with `contents`, mode `mode`; missing directories are made
    /// with `dir_mode`.
    pub fn write(&mut self, path: PathBuf, contents: Zeroizing<Vec<u8>>, mode: u32, dir_mode: u32) {
        let pending = Pending {
            path: path.clone(),
            contents,
            mode,
            dir_mode,
        };
        self.ops.insert(path, Op::Write(pending));
    }

    /// Removes `path` if it exists.
    pub fn remove(&mut self, path: PathBuf) {
        self.ops.insert(path, Op::Remove);
    }

    /// Whether the transaction changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Carries out the change: refuses first what it must not write (plaintext git would not
    /// ignore, paths through links, a disk too full), then writes, syncs, journals and renames;
    /// `then` runs once every file is in place, before the journal goes (a crash in between
    /// makes the next run replay the journal and drop what `then` wrote: kpki's cache record).
    pub fn commit(mut self, then: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        for (path, op) in std::mem::take(&mut self.ops) {
            match op {
                Op::Write(pending) => self.writes.push(pending),
                Op::Remove => self.removals.push(path),
            }
        }
        for path in self.writes.iter().map(|w| &w.path).chain(&self.removals) {
            self.store.refuse_links(path)?;
        }
        self.mark_writing()?;
        self.write_ignore_rules_first()?;
        let plaintext: Vec<&Path> = self
            .writes
            .iter()
            .map(|w| w.path.as_path())
            .filter(|p| is_plaintext(&self.store, p))
            .collect();
        super::plaintext_ignored(&self.store, &plaintext)?;
        let bytes = self.writes.iter().map(|w| w.contents.len() as u64).sum();
        self.store.ensure_room(self.writes.len(), bytes)?;
        let mut dirs = BTreeSet::new();
        for w in &self.writes {
            let dir = parent(&w.path);
            if dirs.insert(dir.to_path_buf()) {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(w.dir_mode)
                    .create(dir)
                    .map_err(|e| Error::io(dir, e))?;
            }
        }
        let temps = self
            .writes
            .par_iter()
            .map(|w| write_temp(&w.path, &w.contents, w.mode))
            .collect::<Vec<_>>();
        let mut failed = None;
        for t in temps {
            match t {
                Ok(path) => self.temps.push(path),
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        dirs.extend(self.removals.iter().map(|p| parent(p).to_path_buf()));
        sync(&self.temps, &dirs)?;
        let renames: Vec<(PathBuf, PathBuf)> = self
            .temps
            .iter()
            .cloned()
            .zip(self.writes.iter().map(|w| w.path.clone()))
            .collect();
        write_journal(&self.store, &renames, &self.removals)?;
        apply(&renames, &self.removals)?;
        self.temps.clear();
        sync(&[], &dirs)?;
        then()?;
        remove_optional(&self.store.journal_path())?;
        self.unmark_writing()
    }
}

impl Transaction {
    /// Marks the cluster directory as being written, before any temporary file exists.
    fn mark_writing(&mut self) -> Result<()> {
        let marker = self.store.state_path(WRITING);
        let dir = parent(&marker);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(super::PRIVATE_DIR_MODE)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
        fs::File::create(&marker).map_err(|e| Error::io(&marker, e))?;
        self.marked = true;
        Ok(())
    }

    /// Removes the mark once no temporary file of this change is left.
    fn unmark_writing(&mut self) -> Result<()> {
        self.marked = false;
        match fs::remove_file(self.store.state_path(WRITING)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(&self.store.state_path(WRITING), e))
            }
            _ => Ok(()),
        }
    }

    /// Writes the `.gitignore` files of the change ahead of the rest: the check that git ignores
    /// the plaintext reads them from disk. Written early, they protect the old state just as well.
    fn write_ignore_rules_first(&mut self) -> Result<()> {
        let (rules, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|w| w.path.file_name().is_some_and(|n| n == ".gitignore"));
        self.writes = rest;
        for w in rules {
            let dir = parent(&w.path);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(w.dir_mode)
                .create(dir)
                .map_err(|e| Error::io(dir, e))?;
            replace(&w.path, &w.contents, w.mode)?;
        }
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        for temp in &self.temps {
            let _ = fs::remove_file(temp);
        }
        if self.marked && !self.store.journal_path().exists() {
            let _ = fs::remove_file(self.store.state_path(WRITING));
        }
    }
}

/// Whether `path` is a plaintext file under `pki/` that must stay out of git.
fn is_plaintext(store: &Store, path: &Path) -> bool {
    path.starts_with(store.pki_dir())
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pem" | "agekey" | "kubeconfig")
        )
}

fn parent(path: &Path) -> &Path {
    path.parent().expect("written paths have a parent")
}

/// Writes `contents` to a new temporary file beside `path`; returns the temporary file's path.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf> {
    let dir = parent(path);
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
    let (_, temp) = tmp.keep().map_err(|e| io(e.error))?;
    fault::operation_done();
    // tempfile makes the path absolute; keep the form of `path` (the journal names both
    // relative to the cluster directory).
    Ok(match temp.file_name() {
        Some(name) => dir.join(name),
        None => temp,
    })
}

/// Makes the written files (and renames so far) durable: one `syncfs` per filesystem touched,
/// else an fsync per file and directory where `syncfs` is not available.
fn sync(files: &[PathBuf], dirs: &BTreeSet<PathBuf>) -> Result<()> {
    let mut devices = BTreeSet::new();
    for dir in dirs {
        let handle = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
        let dev = handle.metadata().map_err(|e| Error::io(dir, e))?.dev();
        if devices.insert(dev) && rustix::fs::syncfs(&handle).is_err() {
            return sync_each(files, dirs);
        }
    }
    Ok(())
}

/// The fallback of [`sync`]: fsync every file and directory.
fn sync_each(files: &[PathBuf], dirs: &BTreeSet<PathBuf>) -> Result<()> {
    for path in files.iter().chain(dirs) {
        fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Renames every temporary file into place and removes what goes.
fn apply(renames: &[(PathBuf, PathBuf)], removals: &[PathBuf]) -> Result<()> {
    for (temp, path) in renames {
        fs::rename(temp, path).map_err(|e| Error::io(path, e))?;
        fault::operation_done();
    }
    for path in removals {
        remove_optional(path)?;
    }
    Ok(())
}

/// Writes the journal: one line per rename (`R TEMP PATH`) and removal (`D PATH`), relative to
/// the cluster directory, durable before the first rename.
fn write_journal(
    store: &Store,
    renames: &[(PathBuf, PathBuf)],
    removals: &[PathBuf],
) -> Result<()> {
    let rel = |p: &Path| -> Result<String> {
        p.strip_prefix(store.root())
            .ok()
            .and_then(Path::to_str)
            .filter(|s| !s.contains(['\t', '\n']))
            .map(String::from)
            .ok_or_else(|| Error::file(p, "cannot be journaled"))
    };
    let mut text = String::from("kpki journal 1\n");
    for (temp, path) in renames {
        text.push_str(&format!("R\t{}\t{}\n", rel(temp)?, rel(path)?));
    }
    for path in removals {
        text.push_str(&format!("D\t{}\n", rel(path)?));
    }
    let journal = store.journal_path();
    let dir = parent(&journal);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(super::PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    replace(&journal, text.as_bytes(), super::PUBLIC_MODE)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Completes the change an interrupted run journaled: renames what is still aside, removes what
/// goes, then drops the journal. Runs under the exclusive lock.
pub(super) fn recover(store: &Store) -> Result<()> {
    let journal = store.journal_path();
    let Some(text) = super::read_regular(&journal, super::TEXT_LIMIT)? else {
        return Ok(());
    };
    let text =
        String::from_utf8(text).map_err(|_| Error::file(&journal, "is not a kpki journal"))?;
    let mut lines = text.lines();
    if lines.next() != Some("kpki journal 1") {
        return Err(Error::file(&journal, "is not a kpki journal"));
    }
    let bad = || {
        Error::file(
            &journal,
            "is damaged; remove it and check pki/ and secrets/",
        )
    };
    let mut renames = Vec::new();
    let mut removals = Vec::new();
    let mut dirs = BTreeSet::new();
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        let at = |rel: &str| -> Result<PathBuf> {
            let path = Path::new(rel);
            if path.is_absolute()
                || path
                    .components()
                    .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(bad());
            }
            Ok(store.root().join(path))
        };
        match fields.as_slice() {
            ["R", temp, path] => {
                let (temp, path) = (at(temp)?, at(path)?);
                dirs.insert(parent(&path).to_path_buf());
                if temp.exists() {
                    renames.push((temp, path));
                }
            }
            ["D", path] => {
                let path = at(path)?;
                dirs.insert(parent(&path).to_path_buf());
                removals.push(path);
            }
            _ => return Err(bad()),
        }
    }
    apply(&renames, &removals)?;
    dirs.retain(|d| d.is_dir());
    sync(&[], &dirs)?;
    remove_optional(&store.state_path(crate::state::record::FILE))?;
    remove_optional(&journal)
}

/// Replaces `path` with `contents` (mode `mode`, whatever the umask) in one rename, its data
/// on disk first. The rename itself is durable once the directory is synced.
pub(super) fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let temp = write_temp(path, contents, mode)?;
    let synced = fs::File::open(&temp).and_then(|f| f.sync_data());
    let renamed = synced.and_then(|()| fs::rename(&temp, path));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&temp);
        return Err(Error::io(path, e));
    }
    fault::operation_done();
    Ok(())
}

/// A test-only crash switch: with `KPKI_FAULT_AFTER=N` in a debug build, the process aborts
/// right after its Nth file operation (a temporary file written, a rename, a removal), as a
/// crash or a power cut would stop it. Release builds have no switch.
pub mod fault {
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

    /// A test-only handshake: with `KPKI_PAUSE_AFTER_LOCK=FILE` in a debug build, kpki creates
    /// FILE once it holds the cluster directory's lock and waits (up to a minute) until FILE is
    /// gone, so a test can act while the lock is certainly held.
    #[cfg(debug_assertions)]
    pub fn lock_taken() {
        let Some(marker) = std::env::var_os("KPKI_PAUSE_AFTER_LOCK") else {
            return;
        };
        let marker = std::path::PathBuf::from(marker);
        if std::fs::write(&marker, b"locked\n").is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while marker.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[cfg(not(debug_assertions))]
    pub fn lock_taken() {}
}
