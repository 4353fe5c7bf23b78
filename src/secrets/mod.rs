//! `secrets/`: the age-encrypted copy of `pki/`, its manifest, and the Nix files that consume it.
//!
//! [`Vault`] reads PKI material from the plaintext in `pki/` or, in a fresh clone where only
//! `secrets/` exists, decrypts it with the admin identity. [`seal`] brings `secrets/` in line
//! with `pki/` and the config, encrypting only files whose content or recipients changed.

pub mod manifest;
pub mod nix;
pub mod seal;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::catalogue::{self, Part};
use crate::config::{Config, Node};
use crate::error::{Error, Result};
use crate::issuing;
use crate::store::Store;
use manifest::{Entry, Manifest};
use seal::{Identity, Recipient};

/// The generated admin identity, used when `secrets.admins` is empty.
pub const ADMIN_IDENTITY: &str = "admin.agekey";

/// PKI material, from `pki/` or decrypted from `secrets/`.
pub struct Vault {
    store: Store,
    identity: Option<PathBuf>,
    identities: OnceLock<std::result::Result<Vec<Identity>, (String, String)>>,
}

impl Vault {
    /// A vault over `store`; `identity` is the admin identity given by `-i` or `KPKI_IDENTITY`.
    pub fn new(store: Store, identity: Option<PathBuf>) -> Vault {
        Vault {
            store,
            identity,
            identities: OnceLock::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `pki/REL` exists in plaintext or encrypted.
    pub fn exists(&self, rel: &str) -> bool {
        self.store.has_pki(rel) || self.store.secret_path(rel).exists()
    }

    /// The content of `pki/REL`: the plaintext, else the decrypted secret, else `None`.
    pub fn read(&self, rel: &str) -> Result<Option<Zeroizing<String>>> {
        if let Some(text) = self.store.read_pki(rel)? {
            return Ok(Some(Zeroizing::new(text)));
        }
        let path = self.store.secret_path(rel);
        let Some(ciphertext) = self.store.read_secret(&format!("{rel}.age"))? else {
            return Ok(None);
        };
        let plaintext = seal::decrypt(&ciphertext, self.identities()?, &path)?;
        let text = String::from_utf8(plaintext.to_vec())
            .map_err(|_| Error::file(&path, "does not hold a PEM file"))?;
        Ok(Some(Zeroizing::new(text)))
    }

    /// The admin identities, loaded once: `-i`/`KPKI_IDENTITY` if given, else the generated
    /// `pki/admin.agekey` and `~/.ssh/id_ed25519`, whichever exist.
    fn identities(&self) -> Result<&[Identity]> {
        let loaded = self.identities.get_or_init(|| {
            let candidates: Vec<PathBuf> = match &self.identity {
                Some(path) => vec![path.clone()],
                None => default_identity_files(&self.store),
            };
            if candidates.is_empty() {
                return Err((
                    "secrets/ must be decrypted, but no identity was given".to_string(),
                    "pass -i FILE (an age identity or OpenSSH private key) or set KPKI_IDENTITY"
                        .to_string(),
                ));
            }
            let mut all = Vec::new();
            for path in candidates {
                match seal::load_identities(&path) {
                    Ok(ids) => all.extend(ids),
                    Err(e) => {
                        return Err((e.to_string(), e.hint().unwrap_or_default().to_string()));
                    }
                }
            }
            Ok(all)
        });
        loaded
            .as_deref()
            .map_err(|(message, hint)| Error::usage(message.clone(), Some(hint.clone())))
    }
}

/// The identity files tried when none is given.
fn default_identity_files(store: &Store) -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".ssh/id_ed25519"));
    [Some(store.pki_path(ADMIN_IDENTITY)), home]
        .into_iter()
        .flatten()
        .filter(|p| p.is_file())
        .collect()
}

/// The admin recipients in effect, and a new identity to write when one must be generated.
pub struct Admins {
    pub recipients: Vec<String>,
    /// A generated identity (file text, recipient) that must be written to `pki/admin.agekey`.
    pub generated: Option<Zeroizing<String>>,
}

/// `secrets.admins`, else the recipient of `pki/admin.agekey`, else (before any secret exists)
/// a newly generated identity.
pub fn admins(store: &Store, config: &Config) -> Result<Admins> {
    if !config.admins.is_empty() {
        return Ok(Admins {
            recipients: config.admins.iter().map(|a| seal::canonical(a)).collect(),
            generated: None,
        });
    }
    let path = store.pki_path(ADMIN_IDENTITY);
    if let Some(text) = crate::store::read_optional(&path)?.map(Zeroizing::new) {
        let recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .ok_or_else(|| Error::file(&path, "has no \"# public key:\" line"))?;
        return Ok(Admins {
            recipients: vec![recipient.trim().to_string()],
            generated: None,
        });
    }
    if Manifest::exists(store) {
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
        for node in &config.nodes {
            if let Some(key) = &node.host_key {
                let what = format!("node \"{}\": host_key", node.name);
                parsed.insert(seal::canonical(key), seal::parse_recipient(key, &what)?);
            }
        }
        Ok(Recipients { admins, parsed })
    }

    pub fn admins(&self) -> &[String] {
        &self.admins
    }

    /// The canonical recipients of a file: the admins, then the host keys of its readers.
    fn of(&self, sealed: &Sealed<'_>) -> Vec<String> {
        let mut keys = self.admins.clone();
        for node in &sealed.readers {
            if let Some(key) = node.host_key.as_deref().map(seal::canonical)
                && !keys.contains(&key)
            {
                keys.push(key);
            }
        }
        keys
    }
}

/// One file of `secrets/`: what it holds and who may read it.
pub struct Sealed<'c> {
    /// The path under `pki/`; the encrypted copy is `secrets/REL.age`.
    pub rel: String,
    pub content: Content,
    /// Its `age.secrets` name on the nodes that read it.
    pub name: String,
    /// The user that owns it on a node.
    pub owner: &'static str,
    /// The nodes the catalogue gives it to; those with a host key can decrypt it.
    pub readers: Vec<&'c Node>,
}

/// What a sealed file holds, which decides how its public fingerprint is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// A certificate or public key: fingerprinted as it is.
    Public,
    /// A private key: fingerprinted by its public key.
    PrivateKey,
    /// The admin kubeconfig, made in memory from the admin certificate, key and CA.
    AdminKubeconfig,
}

/// Where the admin kubeconfig is kept, relative to `pki/` (it never exists there in plaintext).
pub const ADMIN_KUBECONFIG: &str = "kubernetes/admin.kubeconfig";

/// Every file that belongs in `secrets/`: the catalogue's, the extra users', the files of
/// rotations in progress and the admin kubeconfig.
pub fn sealed_files<'c>(
    config: &'c Config,
    users: &[String],
    rotation: &[(String, Content)],
) -> Vec<Sealed<'c>> {
    let mut sealed: Vec<Sealed<'c>> = catalogue::items(config)
        .into_iter()
        .flat_map(|item| {
            [Part::Cert, Part::Key].map(|part| Sealed {
                rel: item.file(part),
                content: content_of(part),
                name: nix::secret_name(&item, part),
                owner: item.entry.owner,
                readers: item.readers(part, config),
            })
        })
        .collect();
    for user in users {
        for part in [Part::Cert, Part::Key] {
            sealed.push(admin_only(
                catalogue::user_file(user, part),
                content_of(part),
            ));
        }
    }
    for (rel, content) in rotation {
        sealed.push(admin_only(rel.clone(), *content));
    }
    sealed.push(admin_only(
        ADMIN_KUBECONFIG.to_string(),
        Content::AdminKubeconfig,
    ));
    sealed
}

fn content_of(part: Part) -> Content {
    match part {
        Part::Cert => Content::Public,
        Part::Key => Content::PrivateKey,
    }
}

/// A file for the admins only.
fn admin_only<'c>(rel: String, content: Content) -> Sealed<'c> {
    Sealed {
        name: String::new(),
        rel,
        content,
        owner: "root",
        readers: Vec::new(),
    }
}

/// The extra client users (`kpki issue client`), from `pki/users/` and `secrets/users/`.
pub fn users(store: &Store) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for (dir, suffix) in [
        (store.pki_path(catalogue::USERS_DIR), ".pem"),
        (store.secrets_path(catalogue::USERS_DIR), ".pem.age"),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        for entry in entries {
            let name = entry.map_err(|e| Error::io(&dir, e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(user) = name.strip_suffix(suffix).filter(|u| !u.ends_with("-key")) {
                names.insert(user.to_string());
            }
        }
    }
    Ok(names.into_iter().collect())
}

/// What `secrets/` must hold under the current `pki/` and config.
pub struct SealPlan<'c> {
    pub sealed: Vec<Sealed<'c>>,
    /// The manifest entry each sealed file must have, in the same order.
    pub entries: Vec<Entry>,
    /// Whether each file's encrypted copy is missing or out of date, in the same order.
    pub stale: Vec<bool>,
}

impl SealPlan<'_> {
    /// The files whose encrypted copy is missing or out of date.
    pub fn stale_files(&self) -> impl Iterator<Item = &Sealed<'_>> {
        self.sealed
            .iter()
            .zip(&self.stale)
            .filter(|(_, s)| **s)
            .map(|(f, _)| f)
    }

    /// The manifest that describes `secrets/` once the plan is carried out.
    pub fn manifest(&self) -> Manifest {
        let files = self.sealed.iter().zip(&self.entries);
        Manifest {
            files: files.map(|(s, e)| (s.rel.clone(), e.clone())).collect(),
        }
    }
}

/// Compares every file of `pki/` (plaintext, or the manifest's word for a file only `secrets/`
/// holds) and its due recipients with the manifest. Reads only.
pub fn plan<'c>(
    vault: &Vault,
    config: &'c Config,
    recipients: &Recipients,
) -> Result<SealPlan<'c>> {
    let store = vault.store();
    let old = Manifest::load(store)?;
    let sealed = sealed_files(config, &users(store)?, &rotation_files(vault));
    let mut entries = sealed
        .par_iter()
        .filter(|s| s.content != Content::AdminKubeconfig)
        .map(|s| file_entry(store, &old, recipients, s))
        .collect::<Result<Vec<_>>>()?;
    let files = Manifest {
        files: sealed
            .iter()
            .map(|s| s.rel.clone())
            .zip(entries.iter().cloned())
            .collect(),
    };
    for s in sealed
        .iter()
        .filter(|s| s.content == Content::AdminKubeconfig)
    {
        entries.push(Entry {
            public: admin_kubeconfig_fingerprint(config, &files),
            recipients: recipients.of(s),
        });
    }
    let stale = sealed
        .iter()
        .zip(&entries)
        .map(|(s, e)| previous_entry(store, &old, &s.rel) != Some(e))
        .collect();
    Ok(SealPlan {
        sealed,
        entries,
        stale,
    })
}

/// The files of CA rotations in progress: the cross-signed CA and the previous CA key.
fn rotation_files(vault: &Vault) -> Vec<(String, Content)> {
    catalogue::CAS
        .iter()
        .flat_map(|ca| {
            [
                (catalogue::cross_file(*ca), Content::Public),
                (catalogue::previous_key_file(*ca), Content::PrivateKey),
            ]
        })
        .filter(|(rel, _)| vault.exists(rel))
        .collect()
}

impl SealPlan<'_> {
    /// Encrypted files in `secrets/` that nothing in the catalogue, the users or a rotation
    /// accounts for, such as the files of a node removed from the config (relative to `secrets/`).
    pub fn orphans(&self, store: &Store) -> Vec<String> {
        let known: HashSet<String> = self
            .sealed
            .iter()
            .map(|s| format!("{}.age", s.rel))
            .collect();
        let dir = store.secrets_dir();
        let mut found: Vec<String> = walkdir::WalkDir::new(&dir)
            .follow_links(false)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .filter_map(|e| Some(e.path().strip_prefix(&dir).ok()?.to_str()?.to_string()))
            .filter(|rel| rel.ends_with(".age") && !known.contains(rel))
            .collect();
        found.sort();
        found
    }
}

/// What [`seal`] changed.
#[derive(Debug, Default)]
pub struct Sealing {
    /// Files (relative to `secrets/`) encrypted anew.
    pub encrypted: Vec<String>,
    /// Other files of `secrets/` rewritten (manifest, secrets.nix, kpki.nix).
    pub written: Vec<String>,
}

/// Brings `secrets/` in line with `pki/` and the config: encrypts each file whose public
/// material or recipients differ from the manifest, then rewrites the manifest and the Nix files
/// where their text changed.
pub fn seal(vault: &Vault, config: &Config, recipients: &Recipients) -> Result<Sealing> {
    let store = vault.store();
    let plan = plan(vault, config, recipients)?;
    let work: Vec<(&Sealed<'_>, &Entry)> = plan
        .sealed
        .iter()
        .zip(&plan.entries)
        .zip(&plan.stale)
        .filter(|(_, stale)| **stale)
        .map(|(pair, _)| pair)
        .collect();
    let bar = crate::progress::bar(work.len(), "encrypting");
    let mut encrypted = work
        .par_iter()
        .map(|(s, entry)| {
            let done = encrypt_file(vault, config, recipients, s, entry);
            bar.inc();
            done
        })
        .collect::<Result<Vec<_>>>()?;
    encrypted.sort();
    let mut sealing = Sealing {
        encrypted,
        written: Vec::new(),
    };
    for (name, text) in nix_files(config, recipients, &plan) {
        if store.write_secret_if_changed(name, text.as_bytes())? {
            sealing.written.push(name.to_string());
        }
    }
    Ok(sealing)
}

/// Whether `secrets/` already is what `plan` describes: no stale file, and the manifest and Nix
/// files as they must read.
pub fn is_current(
    store: &Store,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<bool> {
    Ok(plan.stale_files().next().is_none()
        && outdated_files(store, config, recipients, plan)?.is_empty())
}

/// Which of the manifest, `secrets.nix` and `kpki.nix` do not read as `plan` says they must.
pub fn outdated_files(
    store: &Store,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<Vec<&'static str>> {
    let mut outdated = Vec::new();
    for (name, text) in nix_files(config, recipients, plan) {
        if crate::store::read_optional(&store.secrets_path(name))?.as_deref() != Some(text.as_str())
        {
            outdated.push(name);
        }
    }
    Ok(outdated)
}

/// The manifest, `secrets.nix` and `kpki.nix` as they must read after `plan`.
pub fn nix_files(
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> [(&'static str, String); 3] {
    [
        (manifest::FILE, plan.manifest().render()),
        (
            "secrets.nix",
            nix::secrets_nix(config, recipients.admins(), &plan.sealed),
        ),
        ("kpki.nix", nix::module_nix(config, &plan.sealed)),
    ]
}

/// The entry a file of `pki/` must have: its public fingerprint and due recipients.
fn file_entry(
    store: &Store,
    old: &Manifest,
    recipients: &Recipients,
    sealed: &Sealed<'_>,
) -> Result<Entry> {
    let rel = &sealed.rel;
    let public = match store.read_pki(rel)?.map(Zeroizing::new) {
        Some(text) => public_fingerprint(&text, sealed.content, &store.pki_path(rel))?,
        None => match previous_entry(store, old, rel) {
            Some(entry) => entry.public.clone(),
            None => {
                return Err(Error::file(
                    &store.pki_path(rel),
                    "is missing, and secrets/ has no copy",
                ));
            }
        },
    };
    Ok(Entry {
        public,
        recipients: recipients.of(sealed),
    })
}

/// The admin kubeconfig's fingerprint: that of what it embeds, so it is sealed again exactly
/// when the admin certificate, the CA, the cluster name or the server changes.
fn admin_kubeconfig_fingerprint(config: &Config, files: &Manifest) -> String {
    let admin = catalogue::Item {
        entry: catalogue::entry("admin").expect("admin is catalogued"),
        node: None,
    };
    let ca = catalogue::Item {
        entry: catalogue::ca_entry(catalogue::CaName::Kubernetes),
        node: None,
    };
    let mut inputs: Vec<&str> = [admin.file(Part::Cert), ca.file(Part::Cert)]
        .iter()
        .map(|rel| {
            files
                .files
                .get(rel)
                .map(|e| e.public.as_str())
                .unwrap_or_default()
        })
        .collect();
    inputs.extend([
        config.cluster.name.as_str(),
        config.cluster.api_server.as_str(),
    ]);
    manifest::fingerprint(inputs.join("\n").as_bytes())
}

/// Encrypts one file to `entry`'s recipients; returns its path under `secrets/`.
fn encrypt_file(
    vault: &Vault,
    config: &Config,
    recipients: &Recipients,
    sealed: &Sealed<'_>,
    entry: &Entry,
) -> Result<String> {
    let text = match sealed.content {
        Content::AdminKubeconfig => admin_kubeconfig(vault, config, &config.cluster.api_server)?,
        _ => vault
            .read(&sealed.rel)?
            .ok_or_else(|| Error::file(&vault.store().pki_path(&sealed.rel), "is missing"))?,
    };
    let parsed: Vec<&Recipient> = entry
        .recipients
        .iter()
        .map(|k| &recipients.parsed[k])
        .collect();
    let ciphertext = seal::encrypt(text.as_bytes(), &parsed, &sealed.rel)?;
    let rel = format!("{}.age", sealed.rel);
    vault.store().write_secret(&rel, &ciphertext)?;
    Ok(rel)
}

/// The admin kubeconfig for `server`, from the vault.
pub fn admin_kubeconfig(vault: &Vault, config: &Config, server: &str) -> Result<Zeroizing<String>> {
    let admin = catalogue::Item {
        entry: catalogue::entry("admin").expect("admin is catalogued"),
        node: None,
    };
    client_kubeconfig(
        vault,
        config,
        &admin.file(Part::Cert),
        &admin.file(Part::Key),
        "kubernetes-admin",
        server,
    )
}

/// A kubeconfig for the client whose certificate and key are `cert` and `key` under `pki/`.
pub fn client_kubeconfig(
    vault: &Vault,
    config: &Config,
    cert: &str,
    key: &str,
    user: &str,
    server: &str,
) -> Result<Zeroizing<String>> {
    let ca_rel = catalogue::Item {
        entry: catalogue::ca_entry(catalogue::CaName::Kubernetes),
        node: None,
    }
    .file(Part::Cert);
    let need = |rel: &str| {
        vault.read(rel)?.ok_or_else(|| {
            Error::file(
                &vault.store().pki_path(rel),
                "is missing; run kpki init first",
            )
        })
    };
    let (ca, cert, key) = (need(&ca_rel)?, need(cert)?, need(key)?);
    let kubeconfig = crate::kubeconfig::Kubeconfig {
        cluster: &config.cluster.name,
        server,
        ca_pem: &ca,
        user,
        cert_pem: &cert,
        key_pem: &key,
    };
    Ok(Zeroizing::new(kubeconfig.render()))
}

/// The manifest entry of `rel`, if its encrypted copy still exists.
fn previous_entry<'m>(store: &Store, old: &'m Manifest, rel: &str) -> Option<&'m Entry> {
    old.files
        .get(rel)
        .filter(|_| store.secret_path(rel).exists())
}

/// The fingerprint of a file's public material: the file itself for certificates and public
/// keys, the public key derived from it for private keys.
fn public_fingerprint(text: &str, content: Content, path: &Path) -> Result<String> {
    match content {
        Content::PrivateKey => {
            use rcgen::PublicKeyData;
            let key = issuing::parse_key(text).map_err(|m| Error::file(path, m))?;
            Ok(manifest::fingerprint(&key.subject_public_key_info()))
        }
        Content::Public | Content::AdminKubeconfig => Ok(manifest::fingerprint(text.as_bytes())),
    }
}
