//! `secrets/`: the age-encrypted copy of `pki/`, its manifest, and the Nix files that consume it.
//!
//! [`Vault`] reads PKI material from the plaintext in `pki/` or, in a fresh clone where only
//! `secrets/` exists, decrypts it with the admin identity. [`seal`] brings `secrets/` in line
//! with `pki/` and the config, encrypting only files whose content or recipients changed.

pub mod manifest;
pub mod nix;
pub mod seal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rayon::prelude::*;
use zeroize::Zeroizing;

use crate::catalogue::{self, Part};
use crate::config::Config;
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
        let Some(ciphertext) = crate::store::read_optional_bytes(&path)? else {
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
    fn of(&self, sealed: &nix::Sealed<'_>) -> Vec<String> {
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

/// Every file that belongs in `secrets/` under `config`, with its readers.
pub fn sealed_files(config: &Config) -> Vec<nix::Sealed<'_>> {
    catalogue::items(config)
        .into_iter()
        .flat_map(|item| {
            [Part::Cert, Part::Key].map(|part| nix::Sealed {
                item,
                part,
                readers: item.readers(part, config),
            })
        })
        .collect()
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
    let old = Manifest::load(store)?;
    let sealed = sealed_files(config);
    let results = sealed
        .par_iter()
        .map(|s| seal_one(vault, &old, recipients, s))
        .collect::<Result<Vec<_>>>()?;
    let mut sealing = Sealing::default();
    let mut manifest = Manifest::default();
    for (rel, entry, encrypted) in results {
        if encrypted {
            sealing.encrypted.push(format!("{rel}.age"));
        }
        manifest.files.insert(rel, entry);
    }
    let files = [
        (manifest::FILE, manifest.render()),
        (
            "secrets.nix",
            nix::secrets_nix(config, recipients.admins(), &sealed),
        ),
        ("kpki.nix", nix::module_nix(config, &sealed)),
    ];
    for (name, text) in files {
        if store.write_secret_if_changed(name, text.as_bytes())? {
            sealing.written.push(name.to_string());
        }
    }
    Ok(sealing)
}

/// Seals one file if needed; returns its path, its manifest entry and whether it was encrypted.
fn seal_one(
    vault: &Vault,
    old: &Manifest,
    recipients: &Recipients,
    sealed: &nix::Sealed<'_>,
) -> Result<(String, Entry, bool)> {
    let store = vault.store();
    let rel = sealed.item.file(sealed.part);
    let keys = recipients.of(sealed);
    let plaintext = store.read_pki(&rel)?.map(Zeroizing::new);
    let previous = old
        .files
        .get(&rel)
        .filter(|_| store.secret_path(&rel).exists());
    let public = match (&plaintext, previous) {
        (Some(text), _) => public_fingerprint(text, sealed.part, &store.pki_path(&rel))?,
        (None, Some(entry)) => entry.public.clone(),
        (None, None) => {
            return Err(Error::file(
                &store.pki_path(&rel),
                "is missing, and secrets/ has no copy",
            ));
        }
    };
    let entry = Entry {
        public,
        recipients: keys,
    };
    if previous == Some(&entry) {
        return Ok((rel, entry, false));
    }
    let text = match plaintext {
        Some(text) => text,
        None => vault.read(&rel)?.expect("the secret exists"),
    };
    let parsed: Vec<&Recipient> = entry
        .recipients
        .iter()
        .map(|k| &recipients.parsed[k])
        .collect();
    let ciphertext = seal::encrypt(text.as_bytes(), &parsed, &rel)?;
    store.write_secret(&format!("{rel}.age"), &ciphertext)?;
    Ok((rel, entry, true))
}

/// The fingerprint of a file's public material: the file itself for certificates and public
/// keys, the public key derived from it for private keys.
fn public_fingerprint(text: &str, part: Part, path: &Path) -> Result<String> {
    match part {
        Part::Cert => Ok(manifest::fingerprint(text.as_bytes())),
        Part::Key => {
            use rcgen::PublicKeyData;
            let key = issuing::parse_key(text).map_err(|m| Error::file(path, m))?;
            Ok(manifest::fingerprint(&key.subject_public_key_info()))
        }
    }
}
