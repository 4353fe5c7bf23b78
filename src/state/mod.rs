//! The PKI as one run sees it: the committed state (`secrets/` and its manifest, the truth), the
//! plaintext cache in `pki/`, and this run's changes on top. The one reader of PKI material:
//! every file is parsed strictly and its fingerprint matched against the manifest before it is
//! trusted, and read at most once per run.
//!
//! `pki/` is a cache of one manifest state, which `pki/.kpki/cache` records. A plaintext file
//! is *fresh* when it holds what the manifest says; *stale* when it holds what the manifest said
//! when the cache was last synced (a teammate committed since): then the committed version is
//! decrypted instead, and writers refresh the cache; *changed* when it holds neither: plaintext
//! edited outside kpki, which writers refuse to seal and readers report.

pub mod record;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use crate::agefile::{self as seal, Identity};
use crate::catalogue::{self, CaName, Part};
use crate::error::{Error, InOrder, Result};
use crate::manifest::{Loaded, Manifest, Revocation, Signature, Superseded};
use crate::pem::{self, Material};
use crate::store::{PEM_LIMIT, Stamp, Store};
use record::FastMap;
pub use record::{Known, Record};

/// The generated admin identity, used when `secrets.admins` is empty.
pub const ADMIN_IDENTITY: &str = "admin.agekey";

/// Whether this run may write: readers report plaintext changed outside kpki and read the
/// committed version; writers refuse to run on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Where a file's trusted content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `pki/` holds it (what the manifest says, or there is no committed state yet).
    Plain { fingerprint: String },
    /// Only `secrets/` holds it.
    Sealed,
    /// `pki/` holds an older committed version; the current one is in `secrets/` if `sealed`.
    Stale { sealed: bool },
    /// `pki/` holds a file the committed state no longer has.
    Removed,
    /// `pki/` holds something kpki did not write; the committed version is in `secrets/` if
    /// `sealed`.
    Changed { sealed: bool },
    /// Nowhere.
    Absent,
}

/// The PKI of one cluster directory, for one run.
pub struct State {
    store: Store,
    access: Access,
    /// The committed manifest, its fingerprint and signature.
    loaded: Loaded,
    record: Record,
    identities: Identities,
    places: Shared<String, Place>,
    /// Stamps of files looked at this run, by path (as bytes: hashing a `Path` walks its
    /// components, and this map is asked tens of thousands of times).
    stamps: Shared<std::ffi::OsString, Option<Stamp>>,
    /// `pki/` files parsed this run, trusted or not.
    plain: Mutex<FastMap<String, Arc<Material>>>,
    /// Trusted contents read this run.
    contents: Mutex<FastMap<String, Arc<Material>>>,
    changes: Mutex<BTreeMap<String, Option<Arc<Material>>>>,
    /// The revocation ledger as this run changed it.
    revoked: Mutex<Option<BTreeMap<String, Revocation>>>,
    /// The certificates a CA rotation superseded, as this run changed them.
    superseded: Mutex<Option<BTreeMap<String, Superseded>>>,
    /// The signer and generation this run verified, for the commit to pin.
    verified: Mutex<Option<crate::trust::Pin>>,
    /// [`State::divergent`] once found: places do not change within a run.
    divergent: OnceLock<Vec<(String, Place)>>,
}

/// At thousands of nodes, freeing the public bookkeeping (the manifest, the record, every
/// stamp and place) one allocation at a time takes longer than a no-op command's work, and a
/// command's state lives until the process exits, which returns it all at once: it is left to
/// that, as compilers do with their arenas. Plaintext (`plain`, `contents`, `changes`) is
/// dropped as ever, so every key is zeroized.
impl Drop for State {
    fn drop(&mut self) {
        std::mem::forget(std::mem::take(&mut self.loaded));
        std::mem::forget(std::mem::take(&mut self.record));
        self.places.forget();
        self.stamps.forget();
    }
}

impl State {
    /// Opens the cluster directory's state; `identity` is the admin identity of `-i` or
    /// `KPKI_IDENTITY`.
    pub fn open(store: Store, identity: Option<PathBuf>, access: Access) -> Result<State> {
        // Megabytes each at thousands of nodes: read side by side.
        let (loaded, record) = rayon::join(|| Manifest::load(&store), || Record::load(&store));
        let loaded = loaded?;
        Ok(State {
            identities: Identities::new(&store, identity),
            store,
            access,
            loaded,
            record,
            places: Shared::default(),
            stamps: Shared::default(),
            plain: Mutex::default(),
            contents: Mutex::default(),
            changes: Mutex::default(),
            revoked: Mutex::default(),
            superseded: Mutex::default(),
            verified: Mutex::default(),
            divergent: OnceLock::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The committed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.loaded.manifest
    }

    /// The committed manifest as read, with its signature (for `trust`).
    pub fn loaded(&self) -> &Loaded {
        &self.loaded
    }

    /// The committed manifest's signature, if it has one.
    pub fn signature(&self) -> Option<&Signature> {
        self.loaded.signed.as_ref().map(|(_, s)| s)
    }

    /// Records what this run verified of the manifest (`trust::check`).
    pub fn set_verified(&self, pin: Option<crate::trust::Pin>) {
        *lock(&self.verified) = pin;
    }

    /// What this run verified of the manifest, if anything.
    pub fn verified(&self) -> Option<crate::trust::Pin> {
        lock(&self.verified).clone()
    }

    /// The fingerprint of the committed manifest, if there is one.
    pub fn manifest_fingerprint(&self) -> Option<&str> {
        self.loaded.fingerprint.as_deref()
    }

    /// Whether a committed state exists (secrets were sealed before).
    pub fn is_committed(&self) -> bool {
        self.loaded.fingerprint.is_some()
    }

    /// What the Nix files were last written from, per the cache record.
    /// The cache record as this run found it.
    pub fn record(&self) -> &Record {
        &self.record
    }

    pub fn recorded_outputs(&self) -> Option<&record::Outputs> {
        self.record.outputs.as_ref()
    }

    /// What the cache record knew of `rel`.
    pub fn known(&self, rel: &str) -> Option<&Known> {
        self.record.files.get(rel)
    }

    /// Where the trusted content of `pki/REL` is.
    pub fn place(&self, rel: &str) -> Result<Place> {
        if let Some(place) = self.places.get(rel) {
            return Ok(place);
        }
        let place = self.resolve(rel)?;
        self.places.insert(rel.to_string(), place.clone());
        Ok(place)
    }

    /// Whether `pki/REL` exists and is the very file the cache record knows (same stamp),
    /// holding what the committed manifest says: content kpki itself wrote or checked since the
    /// manifest was written. `None` when `pki/` holds no such file.
    pub fn as_recorded(&self, rel: &str) -> Result<Option<bool>> {
        let Some(stamp) = self.stamp(&self.store.pki_path(rel))? else {
            return Ok(None);
        };
        let known = self.record.files.get(rel);
        let committed = self.loaded.manifest.files.get(rel);
        Ok(Some(match (known, committed) {
            (Some(k), Some(c)) => k.plain == Some(stamp) && k.public == c.public,
            _ => false,
        }))
    }

    /// Whether `secrets/DIR` holds exactly the sorted `names`, by the cache record: its stamp
    /// is the one recorded with a listing of these names. Saves listing it.
    pub fn listed_as(&self, dir: &str, names: &[&str]) -> Result<bool> {
        let Some((stamp, hash)) = self.record.dirs.get(dir) else {
            return Ok(false);
        };
        Ok(*hash == record::listing_hash(names.iter().copied())
            && self.store.dir_stamp(&self.store.secrets_path(dir))? == Some(*stamp))
    }

    /// The stamp of a file below the cluster directory, looked at once per run.
    pub fn stamp(&self, path: &Path) -> Result<Option<Stamp>> {
        if let Some(stamp) = self.stamps.get(path.as_os_str()) {
            return Ok(stamp);
        }
        let stamp = self.store.stamp(path)?;
        self.stamps.insert(path.as_os_str().to_owned(), stamp);
        Ok(stamp)
    }

    fn resolve(&self, rel: &str) -> Result<Place> {
        let committed = self.loaded.manifest.files.get(rel);
        let sealed = committed.is_some() && self.stamp(&self.store.secret_path(rel))?.is_some();
        let Some(stamp) = self.stamp(&self.store.pki_path(rel))? else {
            return Ok(if sealed { Place::Sealed } else { Place::Absent });
        };
        let known = self.record.files.get(rel);
        let fingerprint = match known {
            Some(k) if k.plain == Some(stamp) => k.public.clone(),
            _ => self.parse_plain(rel)?.fingerprint.clone(),
        };
        let as_synced = known.is_some_and(|k| k.public == fingerprint);
        let unrecorded = self.record.manifest.is_none();
        Ok(match committed {
            Some(entry) if entry.public == fingerprint => Place::Plain { fingerprint },
            Some(_) if as_synced || unrecorded => Place::Stale { sealed },
            None if !self.is_committed() => Place::Plain { fingerprint },
            None if as_synced || unrecorded => Place::Removed,
            _ => Place::Changed { sealed },
        })
    }

    /// Reads `pki/REL` and keeps it for this run: parsed strictly, unless it is unchanged since
    /// kpki recorded it (then it is what kpki wrote or checked).
    fn parse_plain(&self, rel: &str) -> Result<Arc<Material>> {
        let path = self.store.pki_path(rel);
        let (bytes, stamp) = self
            .store
            .read_stamped(&path, PEM_LIMIT)?
            .ok_or_else(|| Error::file(&path, "disappeared while kpki was reading it"))?;
        let bytes = zeroize::Zeroizing::new(bytes);
        let recorded = self
            .record
            .files
            .get(rel)
            .filter(|k| k.plain == Some(stamp));
        let material = match recorded {
            Some(known) => {
                Material::recorded(catalogue::file_kind(rel), &bytes, known.public.clone())
            }
            None => pem::parse(catalogue::file_kind(rel), &bytes),
        }
        .map_err(|m| Error::file(&path, m))?;
        let material = Arc::new(material);
        lock(&self.plain).insert(rel.to_string(), material.clone());
        Ok(material)
    }

    /// Whether a rotation of the CA `name` is in progress: the old CA's key is kept beside the
    /// new one (and `ca.pem` is the bundle new + old, which [`State::ca_bundle`] holds it to).
    /// Known from the manifest alone, without decrypting anything.
    pub fn rotating(&self, name: CaName) -> Result<bool> {
        self.exists(&catalogue::previous_key_file(name))
    }

    /// The certificate file of the CA `name`: exactly one CA certificate, or two (new, then old)
    /// while a rotation is recorded (its previous key kept). A bundle with more CAs than that would
    /// make every reader trust a CA nobody rotated in, so it is refused.
    pub fn ca_bundle(&self, name: CaName) -> Result<Arc<Material>> {
        let item = catalogue::ca_item(name);
        let rel = item.file(Part::Cert);
        let bundle = self.require(&rel)?;
        let count = bundle.blocks().len();
        let rotating = self.exists(&catalogue::previous_key_file(name))?;
        if count > 1 + usize::from(rotating) {
            return Err(Error::file(
                &self.store().pki_path(&rel),
                format!(
                    "holds {count} CA certificates, but {}",
                    if rotating {
                        "a rotation has two (new and old)".to_string()
                    } else {
                        format!("no rotation of the {} CA is recorded", name.dir())
                    }
                ),
            ));
        }
        Ok(bundle)
    }

    /// The trusted content of `pki/REL`: this run's change, else the fresh plaintext, else the
    /// committed version decrypted and checked against the manifest; `None` when there is none.
    pub fn read(&self, rel: &str) -> Result<Option<Arc<Material>>> {
        if let Some(change) = lock(&self.changes).get(rel) {
            return Ok(change.clone());
        }
        if let Some(m) = lock(&self.contents).get(rel) {
            return Ok(Some(m.clone()));
        }
        match self.place(rel)? {
            Place::Plain { fingerprint } => {
                let parsed = lock(&self.plain).get(rel).cloned();
                let material = match parsed {
                    Some(m) => m,
                    None => self.parse_plain(rel)?,
                };
                if material.fingerprint != fingerprint {
                    return Err(self.changed_error(rel));
                }
                lock(&self.contents).insert(rel.to_string(), material.clone());
                Ok(Some(material))
            }
            Place::Sealed | Place::Stale { sealed: true } => self.read_sealed(rel).map(Some),
            Place::Changed { sealed: true } if self.access == Access::Read => {
                self.read_sealed(rel).map(Some)
            }
            Place::Changed { .. } if self.access == Access::Write => Err(self.changed_error(rel)),
            _ => Ok(None),
        }
    }

    /// The content of `pki/REL`, which must exist.
    pub fn require(&self, rel: &str) -> Result<Arc<Material>> {
        self.read(rel)?.ok_or_else(|| {
            Error::file(
                &self.store.pki_path(rel),
                "is missing, and secrets/ has no copy",
            )
        })
    }

    /// Decrypts `secrets/REL.age` and checks it against the manifest, whatever `pki/` holds
    /// (`verify`); kept for this run.
    pub fn check_sealed(&self, rel: &str) -> Result<()> {
        self.read_sealed(rel).map(|_| ())
    }

    /// Decrypts `secrets/REL.age` and checks it against the manifest; kept for this run.
    fn read_sealed(&self, rel: &str) -> Result<Arc<Material>> {
        let path = self.store.secret_path(rel);
        let plaintext = self.decrypt(rel)?;
        let material = pem::parse(catalogue::file_kind(rel), &plaintext)
            .map_err(|m| Error::file(&path, format!("decrypted, it {m}")))?;
        let expected = self
            .loaded
            .manifest
            .files
            .get(rel)
            .map(|e| e.public.as_str());
        if expected != Some(material.fingerprint.as_str()) {
            return Err(Error::file(
                &path,
                "does not hold what the manifest records for it (edited, replaced by another file, or taken from an older state)",
            ));
        }
        let material = Arc::new(material);
        let mut contents = lock(&self.contents);
        Ok(contents.entry(rel.to_string()).or_insert(material).clone())
    }

    /// The plaintext of `secrets/REL.age`, unchecked: for the checks that compare it.
    pub fn decrypt(&self, rel: &str) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        let path = self.store.secret_path(rel);
        let ciphertext = self
            .store
            .read(&path, PEM_LIMIT)?
            .ok_or_else(|| Error::file(&path, "is missing"))?;
        let identities = self.identities.get().map_err(|e| match e {
            // Name the file that made decryption necessary.
            Error::Identity { message, hint } => Error::Identity {
                message: format!("pki/{rel}: {message}"),
                hint,
            },
            e => e,
        })?;
        seal::decrypt(&ciphertext, identities, &path, self.identities.source())
    }

    /// Whether an admin identity is at hand (given, generated, or `~/.ssh/id_ed25519`). An
    /// identity given with `-i` that cannot be used is an error; a default one is just absent.
    pub fn has_identity(&self) -> Result<bool> {
        match self.identities.get() {
            Ok(_) => Ok(true),
            Err(e) if self.identities.given => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Whether `pki/REL` exists in this run's view.
    pub fn exists(&self, rel: &str) -> Result<bool> {
        if let Some(change) = lock(&self.changes).get(rel) {
            return Ok(change.is_some());
        }
        Ok(match self.place(rel)? {
            Place::Plain { .. } | Place::Sealed => true,
            Place::Stale { sealed } | Place::Changed { sealed } => sealed,
            Place::Removed | Place::Absent => false,
        })
    }

    /// The fingerprint of `pki/REL`'s public material in this run's view, without reading it
    /// when the manifest or the cache record already says.
    pub fn fingerprint(&self, rel: &str) -> Result<Option<String>> {
        if let Some(change) = lock(&self.changes).get(rel) {
            return Ok(change.as_ref().map(|m| m.fingerprint.clone()));
        }
        let committed = || {
            self.loaded
                .manifest
                .files
                .get(rel)
                .map(|e| e.public.clone())
        };
        Ok(match self.place(rel)? {
            Place::Plain { fingerprint } => Some(fingerprint),
            Place::Sealed => committed(),
            Place::Stale { sealed } | Place::Changed { sealed } => sealed.then(committed).flatten(),
            Place::Removed | Place::Absent => None,
        })
    }

    /// Sets `pki/REL` to `material` for the rest of the run and the commit.
    pub fn put(&self, rel: &str, material: Material) -> Arc<Material> {
        let material = Arc::new(material);
        lock(&self.changes).insert(rel.to_string(), Some(material.clone()));
        material
    }

    /// Removes `pki/REL` (and its encrypted copy) at the commit.
    pub fn delete(&self, rel: &str) {
        lock(&self.changes).insert(rel.to_string(), None);
    }

    /// The revoked certificates, by serial: as committed, or as this run changed them.
    pub fn revocations(&self) -> BTreeMap<String, Revocation> {
        lock(&self.revoked)
            .clone()
            .unwrap_or_else(|| self.loaded.manifest.revoked.clone())
    }

    /// Replaces the revocation ledger for the rest of the run and the commit.
    pub fn set_revocations(&self, revoked: BTreeMap<String, Revocation>) {
        *lock(&self.revoked) = Some(revoked);
    }

    /// The certificates an etcd CA rotation in progress superseded, by serial.
    pub fn superseded(&self) -> BTreeMap<String, Superseded> {
        let changed = lock(&self.superseded).clone();
        changed.unwrap_or_else(|| self.loaded.manifest.superseded.clone())
    }

    /// Replaces the superseded certificates for the rest of the run and the commit.
    pub fn set_superseded(&self, superseded: BTreeMap<String, Superseded>) {
        *lock(&self.superseded) = Some(superseded);
    }

    /// This run's changes, by path.
    pub fn changes(&self) -> BTreeMap<String, Option<Arc<Material>>> {
        lock(&self.changes).clone()
    }

    /// The paths under `pki/` below `dir` (e.g. `users`) in this run's view: committed or
    /// changed this run, or (before anything was committed) present in `pki/`.
    pub fn listed(&self, dir: &str) -> Result<Vec<String>> {
        let prefix = format!("{dir}/");
        let mut found: BTreeSet<String> = self
            .manifest()
            .files
            .keys()
            .filter(|rel| rel.starts_with(&prefix))
            .cloned()
            .collect();
        if !self.is_committed() {
            let local = self.store.list(&self.store.pki_path(dir))?;
            found.extend(local.into_iter().map(|f| format!("{prefix}{f}")));
        }
        for (rel, change) in lock(&self.changes).iter() {
            if rel.starts_with(&prefix) {
                match change {
                    Some(_) => found.insert(rel.clone()),
                    None => found.remove(rel),
                };
            }
        }
        let mut listed = Vec::new();
        for rel in found {
            if self.exists(&rel)? {
                listed.push(rel);
            }
        }
        Ok(listed)
    }

    /// The plaintext files of `pki/` that are not what the committed state says, each with its
    /// place: stale or removed (a teammate committed since) and changed outside kpki.
    pub fn divergent(&self) -> Result<Vec<(String, Place)>> {
        if let Some(found) = self.divergent.get() {
            return Ok(found.clone());
        }
        // Every file the manifest or the record knows, each once: the record's by hash, then
        // the manifest's it lacks (a sorted set of both was 5% of a no-op rotate at scale).
        let manifest = &self.loaded.manifest.files;
        let known = &self.record.files;
        let rels: Vec<&String> = known
            .keys()
            .chain(manifest.keys().filter(|rel| !known.contains_key(*rel)))
            .collect();
        let mut divergent = rels
            .into_par_iter()
            .map(|rel| Ok((rel, self.place(rel)?)))
            .collect::<Vec<_>>()
            .in_order()?
            .into_iter()
            .filter(|(_, p)| {
                matches!(
                    p,
                    Place::Stale { .. } | Place::Removed | Place::Changed { .. }
                )
            })
            .map(|(rel, p)| (rel.clone(), p))
            .collect::<Vec<_>>();
        divergent.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(self.divergent.get_or_init(|| divergent).clone())
    }

    /// For a writer: refuses to work on plaintext changed outside kpki, naming every such file;
    /// returns the stale files and those the committed state removed, which the commit
    /// refreshes.
    pub fn audit(&self) -> Result<Vec<(String, Place)>> {
        let divergent = self.divergent()?;
        let changed: Vec<&str> = divergent
            .iter()
            .filter(|(_, p)| matches!(p, Place::Changed { .. }))
            .map(|(rel, _)| rel.as_str())
            .collect();
        if changed.is_empty() {
            return Ok(divergent);
        }
        let files: Vec<String> = changed.iter().map(|r| format!("pki/{r}")).collect();
        let moved = self.record.manifest.is_some()
            && self.record.manifest.as_deref() != self.manifest_fingerprint();
        let message = if moved {
            format!(
                "{}: changed in pki/ but never sealed, and secrets/ has moved on since (another admin committed); refusing to mix the two",
                files.join(", ")
            )
        } else {
            format!(
                "{}: changed outside kpki (neither what secrets/ holds nor what kpki last wrote); refusing to seal it",
                files.join(", ")
            )
        };
        Err(Error::usage(
            message,
            Some(
                "remove those files from pki/ to use the committed versions in secrets/ (kpki import adopts certificates made elsewhere)"
                    .into(),
            ),
        ))
    }

    fn changed_error(&self, rel: &str) -> Error {
        Error::file(
            &self.store.pki_path(rel),
            "changed outside kpki (neither what secrets/ holds nor what kpki last wrote); remove it to use the committed version",
        )
    }
}

/// A map that rayon's threads share, split into shards, each behind a lock of its own: with
/// one lock, tens of thousands of look-ups from both cores queue on each other.
struct Shared<K, V> {
    shards: [Mutex<FastMap<K, V>>; SHARDS],
    hasher: foldhash::fast::RandomState,
}

const SHARDS: usize = 16;

impl<K, V> Default for Shared<K, V> {
    fn default() -> Self {
        Shared {
            shards: std::array::from_fn(|_| Mutex::default()),
            hasher: Default::default(),
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Shared<K, V> {
    fn shard<Q: std::hash::Hash + ?Sized>(&self, key: &Q) -> &Mutex<FastMap<K, V>> {
        use std::hash::BuildHasher;
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        lock(self.shard(key)).get(key).cloned()
    }

    fn insert(&self, key: K, value: V) {
        lock(self.shard(&key)).insert(key, value);
    }

    /// Leaves the entries to the process's exit (see [`State`]'s `Drop`).
    fn forget(&mut self) {
        for shard in &mut self.shards {
            std::mem::forget(std::mem::take(
                shard.get_mut().unwrap_or_else(|e| e.into_inner()),
            ));
        }
    }
}

/// A poisoned lock only means another thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Identities as loaded, or why not (message, hint).
type IdentitiesLoaded = std::result::Result<Vec<Identity>, (String, Option<String>)>;

/// The admin identities, loaded once, and where they came from (for errors).
struct Identities {
    files: Vec<PathBuf>,
    /// Whether the files were given (`-i`, `KPKI_IDENTITY`) rather than found by default.
    given: bool,
    /// How the identity files were chosen, for errors: given, or picked by default.
    source: String,
    loaded: OnceLock<IdentitiesLoaded>,
}

impl Identities {
    /// `-i`/`KPKI_IDENTITY` if given (an empty value counts as not given), else the generated
    /// `pki/admin.agekey` and `~/.ssh/id_ed25519`, whichever exist.
    fn new(store: &Store, given: Option<PathBuf>) -> Identities {
        match given.filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Identities {
                source: format!("the identity {}", path.display()),
                files: vec![path],
                given: true,
                loaded: OnceLock::new(),
            },
            None => {
                let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".ssh/id_ed25519"));
                let files: Vec<PathBuf> = [Some(store.pki_path(ADMIN_IDENTITY)), home]
                    .into_iter()
                    .flatten()
                    .filter(|p| p.is_file())
                    .collect();
                let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                Identities {
                    source: format!(
                        "the identity {} (used because no -i was given)",
                        names.join(" and ")
                    ),
                    files,
                    given: false,
                    loaded: OnceLock::new(),
                }
            }
        }
    }

    fn source(&self) -> &str {
        &self.source
    }

    fn get(&self) -> Result<&[Identity]> {
        let loaded = self.loaded.get_or_init(|| {
            if self.files.is_empty() {
                return Err((
                    "secrets/ must be decrypted, but no identity was given".to_string(),
                    Some(
                        "pass -i FILE (an age identity or OpenSSH private key) or set KPKI_IDENTITY"
                            .to_string(),
                    ),
                ));
            }
            let mut all = Vec::new();
            for path in &self.files {
                match seal::load_identities(path) {
                    Ok(ids) => all.extend(ids),
                    Err(e) => return Err((e.to_string(), e.hint().map(String::from))),
                }
            }
            Ok(all)
        });
        loaded
            .as_deref()
            .map_err(|(message, hint)| Error::Identity {
                message: message.clone(),
                hint: hint.clone(),
            })
    }
}
