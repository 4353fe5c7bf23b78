//! `secrets/`: what it must hold under the config and this run's [`State`], how far each
//! encrypted file is from that, and committing a run's changes to `pki/` and `secrets/` at once.
//!
//! [`plan`] compares every file that belongs in `secrets/` with the manifest and, for encrypted
//! files changed since kpki last saw them (a pull, `agenix -e`, a hand edit), checks their age
//! header against the due recipients and, with an identity, their content against the
//! manifest. [`commit`] then writes, in one transaction: this run's plaintext changes, the
//! refreshed cache, every file to encrypt anew, the manifest, `secrets.nix` and `kpki.nix`.

pub mod nix;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::agefile::{self as seal, Recipient};
use crate::catalogue::ManagedFile;
use crate::catalogue::{self, CaName, Part};
use crate::config::Config;
use crate::error::{Error, InOrder, Result};
use crate::manifest::{self, FileEntry, Manifest};
use crate::pem::{self, FileKind};
use crate::state::record::{FastMap, FastSet, listing_hash};
use crate::state::{ADMIN_IDENTITY, Known, Place, Record, State};
use crate::store::{self, Store};
use crate::trust;

/// The admin recipients in effect, and a new identity to write when one must be generated.
pub struct Admins {
    pub recipients: Vec<String>,
    /// A generated identity (file text) that must be written to `pki/admin.agekey`.
    pub generated: Option<Zeroizing<String>>,
}

/// `secrets.admins`, else the recipient of the identity in `pki/admin.agekey` (derived from the
/// identity itself, never from its comment), else (before any secret exists) a new identity.
pub fn admins(store: &Store, config: &Config) -> Result<Admins> {
    if !config.admins.is_empty() {
        return Ok(Admins {
            recipients: config.admins.iter().map(|a| seal::canonical(a)).collect(),
            generated: None,
        });
    }
    let path = store.pki_path(ADMIN_IDENTITY);
    if let Some(text) = store.read(&path, store::PEM_LIMIT)?.map(Zeroizing::new) {
        let text = std::str::from_utf8(&text).map_err(|_| Error::file(&path, "is not text"))?;
        let recipient = seal::identity_recipient(text).map_err(|m| Error::file(&path, m))?;
        return Ok(Admins {
            recipients: vec![recipient],
            generated: None,
        });
    }
    if store.secrets_path(manifest::FILE).exists() {
        return Err(Error::Config {
            file: store.config_path(),
            message: format!(
                "secrets.admins is empty and {} is missing, so nobody could decrypt secrets/",
                path.display()
            ),
        });
    }
    let (text, recipient) = seal::generate_identity();
    Ok(Admins {
        recipients: vec![recipient],
        generated: Some(text),
    })
}

/// Every recipient of the cluster, parsed once.
pub struct Recipients {
    admins: Vec<String>,
    parsed: HashMap<String, Recipient>,
    /// Each node's host key in canonical form, by node name: a file for every host asks for
    /// thousands.
    hosts: FastMap<String, String>,
    /// Who may be encrypted to though the last signed state never was (`--accept-recipients`).
    accepted: Vec<String>,
}

impl Recipients {
    /// Parses the admins and every node's host key.
    pub fn new(config: &Config, admins: Vec<String>) -> Result<Recipients> {
        let mut parsed = HashMap::new();
        for (i, admin) in admins.iter().enumerate() {
            parsed.insert(
                admin.clone(),
                seal::parse_recipient(admin, &format!("secrets.admins[{i}]"))?,
            );
        }
        // Thousands of host keys: parsed on every core.
        let hosts = config
            .nodes
            .par_iter()
            .filter_map(|node| {
                let key = node.host_key.as_ref()?;
                let what = format!("node \"{}\": host_key", node.name);
                let canonical = seal::canonical(key);
                Some(seal::parse_recipient(key, &what).map(|r| (&node.name, canonical, r)))
            })
            .collect::<Vec<_>>()
            .in_order()?;
        let mut by_node = FastMap::default();
        for (name, canonical, recipient) in hosts {
            by_node.insert(name.clone(), canonical.clone());
            parsed.insert(canonical, recipient);
        }
        Ok(Recipients {
            admins,
            parsed,
            hosts: by_node,
            accepted: Vec::new(),
        })
    }

    /// The same recipients, allowed to include `accepted` (node names, recipients or `all`)
    /// though the last signed state never encrypted to them.
    pub fn accepting(mut self, accepted: &[String]) -> Recipients {
        self.accepted = accepted.to_vec();
        self
    }

    /// Whether the admin confirmed `new`.
    fn accepts(&self, new: &NewRecipient) -> bool {
        self.accepted.iter().any(|who| {
            who == "all"
                || new.node.as_deref() == Some(who.as_str())
                || seal::canonical(who) == new.key
        })
    }

    pub fn admins(&self) -> &[String] {
        &self.admins
    }

    /// The canonical recipients of a file: the admins, then the host keys of its readers.
    fn of(&self, sealed: &ManagedFile<'_>) -> Vec<String> {
        let mut keys = self.admins.clone();
        // A set for the duplicates: a file for every host has thousands of readers.
        let mut seen: FastSet<&str> = self.admins.iter().map(String::as_str).collect();
        for node in &sealed.readers {
            if let Some(key) = self.hosts.get(&node.name)
                && seen.insert(key)
            {
                keys.push(key.clone());
            }
        }
        keys
    }
}

/// Every file of `secrets/` for this state: the catalogue's files, the extra users on record,
/// and the rotation and revocation files that exist.
pub fn sealed_files<'c>(state: &State, config: &'c Config) -> Result<Vec<ManagedFile<'c>>> {
    catalogue::files(config, &users(state)?, |rel| state.exists(rel))
}

/// The extra client users (`kpki issue client`), by name.
pub fn users(state: &State) -> Result<Vec<String>> {
    Ok(state
        .listed(catalogue::USERS_DIR)?
        .iter()
        .filter_map(|rel| catalogue::user_of(rel))
        .map(String::from)
        .collect())
}

/// Why an encrypted file must be written again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// Never sealed.
    New,
    /// The manifest lists it but `secrets/` lost it.
    Missing,
    /// Its content changed this run.
    Content,
    /// Its due recipients changed (a host key, an admin, a role).
    Recipients,
    /// It was changed outside kpki and is wrong: other recipients, content the manifest does not
    /// vouch for, an admin locked out. The text says which.
    Damaged(String),
}

impl Stale {
    /// Why, in words.
    pub fn describe(&self) -> String {
        match self {
            Stale::New => "not encrypted yet".into(),
            Stale::Missing => "missing from secrets/".into(),
            Stale::Content => "out of date".into(),
            Stale::Recipients => "due recipients changed".into(),
            Stale::Damaged(why) => why.clone(),
        }
    }
}

/// One file's standing.
#[derive(Debug, Clone)]
pub struct Standing {
    /// The manifest entry it must have; `None` when its content exists nowhere (missing).
    pub due: Option<FileEntry>,
    /// Why its encrypted copy must be written again, if it must.
    pub stale: Option<Stale>,
    /// The SHA-256 and stamp of its encrypted copy, when known to be good.
    pub checked: Option<(String, store::Stamp)>,
    /// Its encrypted copy changed since kpki last saw it and could not be checked (no identity).
    pub unchecked: bool,
}

/// How deep [`plan`] checks encrypted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// Those changed since kpki last wrote or checked them.
    Changed,
    /// Every one: decrypted and compared with the manifest (`verify`).
    All,
}

/// What `secrets/` must hold, and how far each file is from it.
pub struct SealPlan<'c> {
    pub sealed: Vec<ManagedFile<'c>>,
    /// Per sealed file, in the same order.
    pub standings: Vec<Standing>,
    /// Files the manifest lists that the config no longer accounts for (a removed node or
    /// declaration), still in `secrets/`: kept, as committed, until `kpki rotate --prune`.
    pub leftovers: Vec<(String, FileEntry)>,
    /// The revocation ledger to commit.
    pub revoked: std::collections::BTreeMap<String, manifest::Revocation>,
    /// The certificates superseded by an etcd CA rotation in progress, to commit.
    pub superseded: std::collections::BTreeMap<String, manifest::Superseded>,
    /// The committed manifest's generation (a write increases it when signing).
    pub generation: u64,
    /// Each CA's certificates, as the manifest records them.
    pub cas: std::collections::BTreeMap<String, Vec<String>>,
}

/// A plan holds public facts only (paths, fingerprints, recipients); like the [`State`]'s
/// bookkeeping, it is left to the process exit to free at once (4% of a no-op `rotate` at
/// 5,000 nodes went to freeing it allocation by allocation).
impl Drop for SealPlan<'_> {
    fn drop(&mut self) {
        std::mem::forget(std::mem::take(&mut self.sealed));
        std::mem::forget(std::mem::take(&mut self.standings));
    }
}

impl SealPlan<'_> {
    /// The files whose encrypted copy must be written again, with why.
    pub fn stale_files(&self) -> impl Iterator<Item = (&ManagedFile<'_>, &Stale)> {
        self.sealed
            .iter()
            .zip(&self.standings)
            .filter_map(|(s, st)| Some((s, st.stale.as_ref()?)))
    }

    /// Files whose content exists nowhere (a node added since the last init, say).
    pub fn missing(&self) -> impl Iterator<Item = &ManagedFile<'_>> {
        self.sealed
            .iter()
            .zip(&self.standings)
            .filter(|(_, st)| st.due.is_none())
            .map(|(s, _)| s)
    }

    /// How many encrypted files changed since kpki last saw them and went unchecked.
    pub fn unchecked(&self) -> usize {
        self.standings.iter().filter(|s| s.unchecked).count()
    }

    /// The manifest that describes `secrets/` once the plan is carried out.
    pub fn manifest(&self) -> Manifest {
        let due = self
            .sealed
            .iter()
            .zip(&self.standings)
            .filter_map(|(s, st)| Some((s.rel.clone(), st.due.clone()?)));
        Manifest {
            generation: self.generation,
            files: due.chain(self.leftovers.iter().cloned()).collect(),
            revoked: self.revoked.clone(),
            superseded: self.superseded.clone(),
            cas: self.cas.clone(),
        }
    }

    /// Whether `manifest` is the one [`SealPlan::manifest`] makes, compared in place: at
    /// thousands of nodes a copy of it costs more than the comparison.
    pub fn describes(&self, manifest: &Manifest) -> bool {
        let due = self
            .sealed
            .iter()
            .zip(&self.standings)
            .filter_map(|(s, st)| Some((&s.rel, st.due.as_ref()?)));
        let leftovers = self.leftovers.iter().map(|(rel, entry)| (rel, entry));
        let mut count = 0;
        let same = due.chain(leftovers).all(|(rel, entry)| {
            count += 1;
            manifest.files.get(rel) == Some(entry)
        });
        // Files are unique by path, so equal counts leave the manifest nothing more.
        same && count == manifest.files.len()
            && manifest.generation == self.generation
            && manifest.revoked == self.revoked
            && manifest.superseded == self.superseded
            && manifest.cas == self.cas
    }

    /// Encrypted files in `secrets/` that neither the manifest nor the config accounts for
    /// (relative to `secrets/`): put there by hand, or left by an older kpki. Unless `depth` is
    /// `All`, a directory the cache record saw holding exactly its known files, unchanged
    /// since, is not listed again.
    pub fn orphans(&self, state: &State, depth: Depth) -> Result<Vec<String>> {
        let known: HashSet<String> = self
            .sealed
            .iter()
            .map(|s| &s.rel)
            .chain(self.leftovers.iter().map(|(rel, _)| rel))
            .map(|rel| format!("{rel}.age"))
            .collect();
        let store = state.store();
        let settled = match depth {
            Depth::All => HashSet::new(),
            Depth::Changed => settled_dirs(state, &known)?,
        };
        Ok(store
            .list_except(&store.secrets_dir(), |dir| settled.contains(dir))?
            .into_iter()
            .filter(|rel| rel.ends_with(".age") && !known.contains(rel))
            .collect())
    }
}

/// The directories of `secrets/` that hold exactly the `known` files (`DIR/NAME.age`) as the
/// cache record saw them, unchanged since: they need not be listed.
fn settled_dirs(state: &State, known: &HashSet<String>) -> Result<HashSet<PathBuf>> {
    let mut by_dir: HashMap<&str, Vec<&str>> = HashMap::new();
    for (dir, name) in known.iter().filter_map(|rel| rel.rsplit_once('/')) {
        by_dir.entry(dir).or_default().push(name);
    }
    let settled = by_dir
        .into_par_iter()
        .map(|(dir, mut names)| {
            names.sort_unstable();
            let path = state.store().secrets_path(dir);
            Ok(state.listed_as(dir, &names)?.then_some(path))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(settled.into_iter().flatten().collect())
}

/// Compares every file that belongs in `secrets/` with the manifest; checks encrypted files as
/// deep as `depth` says. Reads only.
pub fn plan<'c>(
    state: &State,
    config: &'c Config,
    recipients: &Recipients,
    depth: Depth,
) -> Result<SealPlan<'c>> {
    let sealed = sealed_files(state, config)?;
    let deep = state.has_identity()?;
    let fingerprints = sealed
        .par_iter()
        .map(|s| match s.kind {
            FileKind::Kubeconfig => Ok(None),
            _ => state.fingerprint(&s.rel),
        })
        .collect::<Vec<_>>()
        .in_order()?;
    let by_rel: HashMap<&str, &Option<String>> = sealed
        .iter()
        .map(|s| s.rel.as_str())
        .zip(&fingerprints)
        .collect();
    let standings = sealed
        .par_iter()
        .zip(&fingerprints)
        .map(|(s, fp)| {
            let fp = match s.kind {
                FileKind::Kubeconfig => admin_kubeconfig_fingerprint(config, &by_rel),
                _ => fp.clone(),
            };
            let due = match fp {
                Some(public) => Some(FileEntry {
                    certificate: certificate_facts(state, s, &public, depth)?,
                    public,
                    recipients: recipients.of(s),
                }),
                None => None,
            };
            standing(state, config, s, due, depth, deep)
        })
        .collect::<Vec<_>>()
        .in_order()?;
    let leftovers = leftovers(state, &sealed)?;
    Ok(SealPlan {
        sealed,
        standings,
        leftovers,
        revoked: state.revocations(),
        superseded: state.superseded(),
        generation: state.manifest().generation,
        cas: ca_certificates(state)?,
    })
}

/// The certificates of every CA's `ca.pem`, for the manifest: read where the state can, else
/// as committed.
fn ca_certificates(state: &State) -> Result<std::collections::BTreeMap<String, Vec<String>>> {
    use base64::Engine;
    let mut cas = std::collections::BTreeMap::new();
    for ca in catalogue::CAS {
        let certs = match state.read(&catalogue::ca_file(ca)) {
            Ok(Some(bundle)) => bundle
                .blocks()
                .iter()
                .map(|der| base64::engine::general_purpose::STANDARD.encode(der))
                .collect(),
            Ok(None) => continue,
            // Unreadable here (no identity) or damaged (reported by the checks of the file
            // itself): the committed certificates stand.
            Err(Error::Identity { .. } | Error::File { .. }) => {
                match state.manifest().cas.get(ca.dir()) {
                    Some(committed) => committed.clone(),
                    None => continue,
                }
            }
            Err(e) => return Err(e),
        };
        cas.insert(ca.dir().to_string(), certs);
    }
    Ok(cas)
}

/// What the manifest records of a certificate file's certificate: carried over from the
/// committed entry while the content is the same, as kpki last saw it, and the facts complete
/// (an older kpki's lack the usage and key), else read from the file (always, for a deep
/// check, so that `verify` finds facts that do not match). `None` for other files, and where
/// the content cannot be read (no identity): the committed facts stand.
fn certificate_facts(
    state: &State,
    sealed: &ManagedFile<'_>,
    public: &str,
    depth: Depth,
) -> Result<Option<crate::inspection::PublicFacts>> {
    if sealed.kind != FileKind::Certificates {
        return Ok(None);
    }
    let committed = state
        .manifest()
        .files
        .get(&sealed.rel)
        .filter(|c| c.public == public)
        .and_then(|c| c.certificate.clone());
    // Facts are carried over for content kpki has seen since they were signed (or cannot see
    // without decrypting); a file put into pki/ by other means is read, so that facts an
    // editor left behind are made anew.
    if depth == Depth::Changed
        && committed
            .as_ref()
            .is_some_and(crate::inspection::PublicFacts::complete)
        && state.as_recorded(&sealed.rel)? != Some(false)
    {
        return Ok(committed);
    }
    // Content that cannot be read (no identity) or used (found and reported by the checks of
    // the content itself) leaves the committed facts standing.
    let material = match state.read(&sealed.rel) {
        Ok(Some(m)) => m,
        Ok(None) | Err(Error::Identity { .. } | Error::File { .. }) => return Ok(committed),
        Err(e) => return Err(e),
    };
    let path = state.store().pki_path(&sealed.rel);
    crate::inspection::public_facts(material.first())
        .map(Some)
        .map_err(|m| Error::file(&path, m))
}

/// The manifest's files that `sealed` lacks and whose encrypted copy still exists (one deleted
/// by hand is gone for good), unless this run deleted them.
fn leftovers(state: &State, sealed: &[ManagedFile<'_>]) -> Result<Vec<(String, FileEntry)>> {
    let due: HashSet<&str> = sealed.iter().map(|s| s.rel.as_str()).collect();
    let changes = state.changes();
    let mut found = Vec::new();
    for (rel, entry) in &state.manifest().files {
        if due.contains(rel.as_str()) || changes.contains_key(rel) {
            continue;
        }
        if state.stamp(&state.store().secret_path(rel))?.is_some() {
            found.push((rel.clone(), entry.clone()));
        }
    }
    Ok(found)
}

/// How far one file's encrypted copy is from `due`.
fn standing(
    state: &State,
    config: &Config,
    sealed: &ManagedFile<'_>,
    due: Option<FileEntry>,
    depth: Depth,
    deep: bool,
) -> Result<Standing> {
    let mut standing = Standing {
        due,
        stale: None,
        checked: None,
        unchecked: false,
    };
    let Some(due) = &standing.due else {
        return Ok(standing);
    };
    let store = state.store();
    let path = store.secret_path(&sealed.rel);
    let committed = state.manifest().files.get(&sealed.rel);
    let stamp = state.stamp(&path)?;
    standing.stale = match (committed, stamp) {
        (None, _) => Some(Stale::New),
        (Some(_), None) => Some(Stale::Missing),
        (Some(c), _) if c.public != due.public => Some(Stale::Content),
        (Some(c), _) if c.recipients != due.recipients => Some(Stale::Recipients),
        _ => None,
    };
    let (Some(stamp), None) = (stamp, &standing.stale) else {
        return Ok(standing);
    };
    let known = state.known(&sealed.rel).and_then(|k| k.sealed.clone());
    if depth == Depth::Changed
        && let Some((hash, at)) = &known
        && *at == stamp
    {
        standing.checked = Some((hash.clone(), stamp));
        return Ok(standing);
    }
    let bytes = store
        .read(&path, store::PEM_LIMIT)?
        .ok_or_else(|| Error::file(&path, "disappeared while kpki was reading it"))?;
    let hash = pem::fingerprint(&bytes);
    if depth == Depth::Changed && known.as_ref().is_some_and(|(h, _)| *h == hash) {
        standing.checked = Some((hash, stamp));
        return Ok(standing);
    }
    if let Some(why) = header_problem(sealed, due, &bytes) {
        standing.stale = Some(Stale::Damaged(why));
    } else if !deep {
        standing.unchecked = true;
    } else if let Some(why) = content_problem(state, config, sealed)? {
        standing.stale = Some(Stale::Damaged(why));
    } else {
        standing.checked = Some((hash, stamp));
    }
    Ok(standing)
}

/// Whether an age header's stanzas differ from the due recipients: X25519 stanzas by number
/// (they name no key), SSH stanzas by their key tag.
fn header_problem(sealed: &ManagedFile<'_>, due: &FileEntry, bytes: &[u8]) -> Option<String> {
    let mut have = match seal::header_stanzas(bytes) {
        Ok(h) => h,
        Err(e) => return Some(e),
    };
    let mut want = seal::expected_stanzas(&due.recipients);
    have.sort();
    want.sort();
    if have == want {
        return None;
    }
    let to_nodes =
        have.iter().any(|(kind, _)| kind.starts_with("ssh-")) && sealed.readers.is_empty();
    Some(
        if to_nodes && sealed.rel.contains("/ca-") && sealed.kind == FileKind::PrivateKey {
            "a CA key is encrypted to a node".into()
        } else {
            "encrypted to other recipients than secrets.nix lists".into()
        },
    )
}

/// Whether a decrypted file differs from what the manifest vouches for; errors that name the
/// file (an admin locked out, a damaged file) are problems too. Identity errors are not.
fn content_problem(
    state: &State,
    config: &Config,
    sealed: &ManagedFile<'_>,
) -> Result<Option<String>> {
    let outcome = match sealed.kind {
        FileKind::Kubeconfig => state.decrypt(&sealed.rel).and_then(|plain| {
            let due = crate::kubeconfig::admin(state, config, &config.cluster.api_server)?;
            Ok((due.as_bytes() != plain.as_slice()).then(|| {
                "does not hold the admin kubeconfig kpki would write (edited, or taken from an older state)"
                    .to_string()
            }))
        }),
        _ => state.check_sealed(&sealed.rel).map(|()| None),
    };
    match outcome {
        Err(Error::File { message, .. }) => Ok(Some(message)),
        other => other,
    }
}

/// The admin kubeconfig's fingerprint: that of what it embeds, so it is sealed again exactly
/// when the admin certificate, the CA, the cluster name or the server changes.
fn admin_kubeconfig_fingerprint(
    config: &Config,
    fps: &HashMap<&str, &Option<String>>,
) -> Option<String> {
    let fp = |rel: &str| fps.get(rel).and_then(|f| f.as_deref());
    let admin = crate::kubeconfig::admin_item().file(Part::Cert);
    let inputs = [
        fp(&admin)?,
        fp(&crate::kubeconfig::ca_cert())?,
        config.cluster.name.as_str(),
        config.cluster.api_server.as_str(),
    ];
    Some(pem::fingerprint(inputs.join("\n").as_bytes()))
}

/// A file outside `pki/` and `secrets/`'s PKI files that a command writes with its changes: the
/// config, `pki/.gitignore`, a generated identity.
pub struct ExtraFile {
    pub path: PathBuf,
    pub contents: Zeroizing<Vec<u8>>,
    pub mode: u32,
}

/// What [`commit`] changed, relative to the cluster directory.
#[derive(Debug, Default)]
pub struct Committed {
    /// Files encrypted anew into `secrets/`.
    pub encrypted: Vec<String>,
    /// Other files written (manifest, Nix files, refreshed plaintext).
    pub written: Vec<String>,
    /// Plaintext files refreshed from `secrets/` (a teammate committed since).
    pub refreshed: Vec<String>,
    /// Plaintext files put back from `secrets/` (deleted from the cache by hand).
    pub restored: Vec<String>,
    /// Who this commit encrypted to that the committed (signed) state never did, as the
    /// admin accepted: the config is not signed, so a pusher could have added them.
    pub new_recipients: Vec<String>,
}

impl Committed {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.encrypted.is_empty()
            && self.written.is_empty()
            && self.refreshed.is_empty()
            && self.restored.is_empty()
    }
}

/// Commits this run: refuses plaintext changed outside kpki, then writes in one transaction
/// the changes made to `state`, the refreshed cache, every file to encrypt anew, the manifest,
/// `secrets.nix`, `kpki.nix` and `extras`; then records what `pki/` now caches.
pub fn commit(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    extras: Vec<ExtraFile>,
) -> Result<Committed> {
    let plan = plan(state, config, recipients, Depth::Changed)?;
    commit_planned(state, config, recipients, extras, plan)
}

/// [`commit`] with the plan already made, which must reflect every change made to `state`.
pub fn commit_planned(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    extras: Vec<ExtraFile>,
    plan: SealPlan<'_>,
) -> Result<Committed> {
    let store = state.store();
    let new = new_recipients(state, config, &plan);
    refuse_unaccepted(recipients, &new)?;
    let divergent = state.audit()?;
    let mut txn = store.transaction();
    let mut committed = Committed::default();
    let changes = state.changes();
    for (rel, change) in &changes {
        match change {
            Some(m) => cache(&mut txn, store, config, rel, m),
            None => {
                txn.remove(store.pki_path(rel));
                txn.remove(store.secret_path(rel));
            }
        }
    }
    for (rel, place) in divergent
        .iter()
        .filter(|(rel, _)| !changes.contains_key(rel))
    {
        match place {
            Place::Stale { sealed: true } => {
                cache(&mut txn, store, config, rel, &*state.require(rel)?)
            }
            _ => txn.remove(store.pki_path(rel)),
        }
        committed.refreshed.push(format!("pki/{rel}"));
    }
    // A file kpki had cached that a hand deleted: put back (one decryption per file, so a
    // fresh clone, which never had a cache, is not filled wholesale).
    for s in &plan.sealed {
        let cached_before = state.known(&s.rel).is_some_and(|k| k.plain.is_some());
        let cacheable = match s.kind {
            FileKind::Kubeconfig => false,
            FileKind::PrivateKey => config.plaintext_keys,
            _ => true,
        };
        if cached_before
            && cacheable
            && !changes.contains_key(&s.rel)
            && state.place(&s.rel)? == Place::Sealed
        {
            cache(&mut txn, store, config, &s.rel, &*state.require(&s.rel)?);
            committed.restored.push(format!("pki/{}", s.rel));
        }
    }
    if !config.plaintext_keys {
        for s in plan
            .sealed
            .iter()
            .filter(|s| s.kind == FileKind::PrivateKey)
        {
            if !changes.contains_key(&s.rel) && store.stamp(&store.pki_path(&s.rel))?.is_some() {
                txn.remove(store.pki_path(&s.rel));
                committed.written.push(format!(
                    "pki/{} (removed: secrets.plaintext_keys = false)",
                    s.rel
                ));
            }
        }
    }
    committed.new_recipients = new.iter().map(NewRecipient::describe).collect();
    // Rendering the Nix files and signing the manifest take a while at a thousand nodes:
    // alongside the encryption.
    let ((encrypted, outputs), signed) = rayon::join(
        || {
            rayon::join(
                || encrypt_stale(state, config, recipients, &plan),
                || outdated_outputs(state, config, recipients, &plan, Depth::Changed),
            )
        },
        || {
            manifest_outdated(state, &plan)
                .then(|| signed_manifest(state, &plan))
                .transpose()
        },
    );
    let mut hashes = HashMap::new();
    for (rel, ciphertext, hash) in encrypted? {
        hashes.insert(rel.clone(), hash);
        txn.write(
            store.secret_path(&rel),
            Zeroizing::new(ciphertext),
            store::PUBLIC_MODE,
            store::PUBLIC_DIR_MODE,
        );
        committed.encrypted.push(format!("secrets/{rel}.age"));
    }
    for (name, text) in outputs? {
        txn.write(
            store.secrets_path(name),
            Zeroizing::new(text.into_bytes()),
            store::PUBLIC_MODE,
            store::PUBLIC_DIR_MODE,
        );
        committed.written.push(format!("secrets/{name}"));
    }
    if let Some(text) = store::pki_gitignore_update(store)? {
        let path = store.pki_path(".gitignore");
        committed.written.push("pki/.gitignore".to_string());
        txn.write(
            path,
            Zeroizing::new(text.as_bytes().to_vec()),
            store::PUBLIC_MODE,
            store::PRIVATE_DIR_MODE,
        );
    }
    for extra in extras {
        txn.write(
            extra.path,
            extra.contents,
            extra.mode,
            store::PRIVATE_DIR_MODE,
        );
    }
    committed.encrypted.sort();
    let signed = match signed? {
        Some((text, pin, manifest)) => {
            txn.write(
                store.secrets_path(manifest::FILE),
                Zeroizing::new(text.clone().into_bytes()),
                store::PUBLIC_MODE,
                store::PUBLIC_DIR_MODE,
            );
            committed
                .written
                .push(format!("secrets/{}", manifest::FILE));
            Some((pem::fingerprint(text.as_bytes()), pin, manifest))
        }
        None => None,
    };
    let manifest_fp = match &signed {
        Some((fp, ..)) => Some(fp.clone()),
        None => state.manifest_fingerprint().map(str::to_string),
    };
    if txn.is_empty() {
        // Nothing to write, but the record may be missing or behind (a pull, an older kpki):
        // bring it up to date, so the next command need not read everything again.
        let record = record(state, config, &plan, manifest_fp, &hashes, |p| {
            state.stamp(p)
        })?;
        // Compared as read at the start, not rendered: at thousands of nodes it is megabytes.
        if record != *state.record() {
            store.write_state(crate::state::record::FILE, record.render().as_bytes())?;
        }
        keep_parsed(state, None);
        trust::pin(store, state.verified())?;
        return Ok(committed);
    }
    txn.commit(|written| {
        let stamp = |p: &std::path::Path| match written.get(p) {
            Some(stamp) => Ok(Some(*stamp)),
            None => store.stamp(p),
        };
        let record = record(state, config, &plan, manifest_fp, &hashes, stamp)?;
        store.write_state(crate::state::record::FILE, record.render().as_bytes())
    })?;
    let (pin, written) = match signed {
        Some((fp, pin, manifest)) => (Some(pin), Some((manifest, fp))),
        None => (None, None),
    };
    keep_parsed(state, written);
    trust::pin(store, pin.or(state.verified()))?;
    Ok(committed)
}

/// Keeps the parse of the manifest for the next command: the one this commit `written` (with
/// its fingerprint), else the committed one when it was parsed from TOML this time. A cache:
/// a failure to keep it costs the next command a parse, nothing else.
fn keep_parsed(state: &State, written: Option<(manifest::Manifest, String)>) {
    let store = state.store();
    let _ = match (written, state.manifest_fingerprint()) {
        (Some((manifest, fp)), _) => manifest::save_parsed(store, &manifest, &fp),
        (None, Some(fp)) if !state.loaded().from_cache => {
            manifest::save_parsed(store, state.manifest(), fp)
        }
        _ => Ok(()),
    };
}

/// A recipient the last signed state never had, and the node whose host key it is (none: an
/// admin).
struct NewRecipient {
    key: String,
    node: Option<String>,
}

impl NewRecipient {
    /// The recipient with where the config names it.
    fn describe(&self) -> String {
        let short: String = self.key.chars().take(28).collect();
        match &self.node {
            Some(node) => format!("node {node}'s host_key {short}…"),
            None => format!("secrets.admins {short}…"),
        }
    }

    /// How `--accept-recipients` names it.
    fn accept_as(&self) -> String {
        self.node.clone().unwrap_or_else(|| self.key.clone())
    }
}

/// The recipients of the files `plan` encrypts that no file of the committed manifest has:
/// an admin or a host key that came into the config since the last signed state.
fn new_recipients(state: &State, config: &Config, plan: &SealPlan<'_>) -> Vec<NewRecipient> {
    let sealed_to: std::collections::BTreeSet<&str> = plan
        .standings
        .iter()
        .filter(|st| st.stale.is_some())
        .filter_map(|st| st.due.as_ref())
        .flat_map(|e| e.recipients.iter().map(String::as_str))
        .collect();
    if sealed_to.is_empty() || !state.is_committed() {
        return Vec::new();
    }
    let known: HashSet<&str> = state
        .manifest()
        .files
        .values()
        .flat_map(|e| e.recipients.iter().map(String::as_str))
        .collect();
    let new: Vec<&str> = sealed_to
        .into_iter()
        .filter(|r| !known.contains(r))
        .collect();
    if new.is_empty() {
        return Vec::new();
    }
    let hosts: HashMap<String, &str> = config
        .nodes
        .iter()
        .filter_map(|n| Some((seal::canonical(n.host_key.as_deref()?), n.name.as_str())))
        .collect();
    new.into_iter()
        .map(|key| NewRecipient {
            key: key.to_string(),
            node: hosts.get(key).map(|n| n.to_string()),
        })
        .collect()
}

/// Refuses to encrypt to a recipient new to the signed state that the admin did not accept:
/// `pki/kpki.toml` is not signed, so anyone who can push could have put it there.
fn refuse_unaccepted(recipients: &Recipients, new: &[NewRecipient]) -> Result<()> {
    let unaccepted: Vec<&NewRecipient> = new.iter().filter(|n| !recipients.accepts(n)).collect();
    if unaccepted.is_empty() {
        return Ok(());
    }
    let described: Vec<String> = unaccepted.iter().map(|n| n.describe()).collect();
    let names: Vec<String> = unaccepted.iter().map(|n| n.accept_as()).collect();
    let flag = if names.len() <= 8 {
        names.join(",")
    } else {
        "all".to_string()
    };
    Err(Error::usage(
        format!(
            "refusing to encrypt to {} recipient(s) the last signed state never had: {} (pki/kpki.toml is not signed: anyone with push access can add a recipient)",
            unaccepted.len(),
            crate::report::abbreviate(&described)
        ),
        Some(format!(
            "if you added them, run again with --accept-recipients {flag}; if not, see git log -p pki/kpki.toml"
        )),
    ))
}

/// Puts `material` into the plaintext cache at `pki/REL` (keys 0600, the rest 0644); a private
/// key only where the config keeps plaintext keys.
fn cache(
    txn: &mut store::Transaction,
    store: &Store,
    config: &Config,
    rel: &str,
    material: &pem::Material,
) {
    let path = store.pki_path(rel);
    let mode = match material.kind {
        FileKind::PrivateKey if !config.plaintext_keys => return txn.remove(path),
        FileKind::PrivateKey => store::SECRET_MODE,
        _ => store::PUBLIC_MODE,
    };
    txn.write(path, material.file_bytes(), mode, store::PRIVATE_DIR_MODE);
}

/// Encrypts every stale file from its trusted content; returns `(rel, ciphertext, its
/// fingerprint)` triples.
fn encrypt_stale(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<Vec<(String, Vec<u8>, String)>> {
    let work: Vec<(&ManagedFile<'_>, &FileEntry)> = plan
        .sealed
        .iter()
        .zip(&plan.standings)
        .filter(|(_, st)| st.stale.is_some())
        .filter_map(|(s, st)| Some((s, st.due.as_ref()?)))
        .collect();
    let bar = crate::progress::bar(work.len(), "encrypting");
    work.par_iter()
        .map(|(s, entry)| {
            let plaintext = match s.kind {
                FileKind::Kubeconfig => {
                    let text = crate::kubeconfig::admin(state, config, &config.cluster.api_server)?;
                    Zeroizing::new(text.as_bytes().to_vec())
                }
                _ => state.require(&s.rel)?.file_bytes(),
            };
            let parsed: Vec<&Recipient> = entry
                .recipients
                .iter()
                .map(|k| &recipients.parsed[k])
                .collect();
            let ciphertext = seal::encrypt(&plaintext, &parsed, &s.rel)?;
            bar.inc();
            let hash = pem::fingerprint(&ciphertext);
            Ok((s.rel.clone(), ciphertext, hash))
        })
        .collect()
}

/// The cache record of what `pki/` and `secrets/` hold, by the stamps `stamp` reads.
fn record(
    state: &State,
    config: &Config,
    plan: &SealPlan<'_>,
    manifest: Option<String>,
    hashes: &HashMap<String, String>,
    stamp: impl Fn(&std::path::Path) -> Result<Option<store::Stamp>> + Sync,
) -> Result<Record> {
    let store = state.store();
    let mut record = Record {
        manifest,
        outputs: Some(crate::state::record::Outputs {
            config: outputs_key(config),
            stamps: OUTPUTS
                .iter()
                .map(|name| stamp(&store.secrets_path(name)))
                .collect::<Result<_>>()?,
        }),
        files: Default::default(),
        dirs: listings(state, plan)?,
    };
    // Tens of thousands of entries, each two stamps: on every core.
    record.files = plan
        .sealed
        .par_iter()
        .zip(&plan.standings)
        .filter_map(|(s, st)| Some((s, st.due.as_ref()?, st)))
        .map(|(s, due, st)| {
            let plain = stamp(&store.pki_path(&s.rel))?;
            let sealed_stamp = stamp(&store.secret_path(&s.rel))?;
            let hash = hashes
                .get(&s.rel)
                .cloned()
                .or_else(|| st.checked.as_ref().map(|(h, _)| h.clone()));
            let known = Known {
                public: due.public.clone(),
                plain,
                sealed: hash.zip(sealed_stamp),
            };
            Ok((s.rel.clone(), known))
        })
        .collect::<Result<_>>()?;
    Ok(record)
}

/// The listings of the directories of `secrets/` that hold sealed files: carried over while a
/// directory's stamp is unchanged, else listed again once it has settled, so that readers find
/// orphans without listing every directory ([`SealPlan::orphans`]).
fn listings(state: &State, plan: &SealPlan<'_>) -> Result<FastMap<String, (store::Stamp, String)>> {
    let store = state.store();
    let dirs: BTreeSet<&str> = plan
        .sealed
        .iter()
        .filter_map(|s| Some(s.rel.rsplit_once('/')?.0))
        .collect();
    let now = crate::clock::now();
    let listed = dirs
        .into_par_iter()
        .map(|dir| {
            let path = store.secrets_path(dir);
            if let Some((stamp, hash)) = state.record().dirs.get(dir)
                && store.dir_stamp(&path)? == Some(*stamp)
            {
                return Ok(Some((dir.to_string(), (*stamp, hash.clone()))));
            }
            Ok(store.settled_listing(&path, now)?.map(|(stamp, names)| {
                let hash = listing_hash(names.iter().map(String::as_str));
                (dir.to_string(), (stamp, hash))
            }))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(listed.into_iter().flatten().collect())
}

/// `secrets.nix` and `kpki.nix` as they must read after `plan`.
pub fn nix_files(
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> [(&'static str, String); 2] {
    [
        (
            "secrets.nix",
            nix::secrets_nix(config, recipients.admins(), plan),
        ),
        ("kpki.nix", nix::module_nix(config, plan)),
    ]
}

/// The files kpki writes besides the encrypted ones, in `secrets/`.
const OUTPUTS: [&str; 3] = [manifest::FILE, "secrets.nix", "kpki.nix"];

/// Which of the manifest, `secrets.nix` and `kpki.nix` do not read as `plan` says they must.
/// With `Depth::Changed`, files untouched since kpki wrote them from this very config and
/// manifest are current without being rendered again.
pub fn outdated_files(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
    depth: Depth,
) -> Result<Vec<&'static str>> {
    let outdated = outdated_outputs(state, config, recipients, plan, depth)?;
    let manifest = manifest_outdated(state, plan).then_some(manifest::FILE);
    Ok(manifest
        .into_iter()
        .chain(outdated.into_iter().map(|(name, _)| name))
        .collect())
}

/// Whether the manifest must be written (and signed) anew: its entries change, or it is not
/// signed yet.
fn manifest_outdated(state: &State, plan: &SealPlan<'_>) -> bool {
    !plan.describes(state.manifest()) || state.signature().is_none()
}

/// The Nix files among [`outdated_files`], each with the text it must have.
fn outdated_outputs(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
    depth: Depth,
) -> Result<Vec<(&'static str, String)>> {
    if depth == Depth::Changed && outputs_current(state, config, plan)? {
        return Ok(Vec::new());
    }
    let store = state.store();
    let mut outdated = Vec::new();
    for (name, text) in nix_files(config, recipients, plan) {
        if store.read_text(&store.secrets_path(name))?.as_deref() != Some(text.as_str()) {
            outdated.push((name, text));
        }
    }
    Ok(outdated)
}

/// What the Nix files are rendered from besides the state: the config (with kpki's version) and
/// kpki's NixOS module, so a changed module is written out even within one version.
fn outputs_key(config: &Config) -> String {
    pem::fingerprint(format!("{}\n{}", config.fingerprint, nix::MODULE).as_bytes())
}

/// Whether the manifest and the Nix files are what kpki last wrote (same stamps), from this
/// config and module, and the plan changes none of the manifest's entries.
fn outputs_current(state: &State, config: &Config, plan: &SealPlan<'_>) -> Result<bool> {
    let Some(recorded) = state.recorded_outputs() else {
        return Ok(false);
    };
    if recorded.config != outputs_key(config) || manifest_outdated(state, plan) {
        return Ok(false);
    }
    Ok(output_stamps(state.store())? == recorded.stamps)
}

/// The manifest for `plan`, at the next generation, signed by the Kubernetes CA of this run's
/// view (the new one during a rotation, linked to the last signer by its cross-signature).
fn signed_manifest(
    state: &State,
    plan: &SealPlan<'_>,
) -> Result<(String, trust::Pin, manifest::Manifest)> {
    let ca = catalogue::ca_item(CaName::Kubernetes);
    let cert = state.require(&ca.file(Part::Cert))?;
    let key_file = ca.file(Part::Key);
    let key = pem::parse_key(&state.require(&key_file)?.text)
        .map_err(|m| Error::file(&state.store().pki_path(&key_file), m))?;
    let cross = state.read(&catalogue::cross_file(CaName::Kubernetes))?;
    let cert_der = cert.first().to_vec();
    let cross_der = cross.as_deref().map(|m| m.first().to_vec());
    let mut manifest = plan.manifest();
    manifest.generation = trust::next_generation(state.store(), state.manifest())?;
    let signer = trust::Signer {
        cert_der: &cert_der,
        key: &key,
        cross_der: cross_der.as_deref(),
    };
    let text = trust::sign(&manifest, &signer, state.signature())?;
    let pin = trust::Pin {
        signer: trust::key_fingerprint(&cert_der).unwrap_or_default(),
        generation: manifest.generation,
    };
    Ok((text, pin, manifest))
}

/// The stamps of the manifest, `secrets.nix` and `kpki.nix`.
/// Whether `secrets/NAME` (one of the manifest and the Nix files) is exactly as kpki last
/// wrote it: then it is out of date because the config or the state changed, not by a hand.
pub fn output_as_written(state: &State, name: &str) -> Result<bool> {
    let Some(recorded) = state.recorded_outputs() else {
        return Ok(false);
    };
    let Some(i) = OUTPUTS.iter().position(|o| *o == name) else {
        return Ok(false);
    };
    let now = state.store().stamp(&state.store().secrets_path(name))?;
    Ok(now.is_some() && recorded.stamps.get(i) == Some(&now))
}

fn output_stamps(store: &Store) -> Result<Vec<Option<store::Stamp>>> {
    OUTPUTS
        .iter()
        .map(|name| store.stamp(&store.secrets_path(name)))
        .collect()
}
