//! Plan, then apply: compare the catalogue under the config with what is on disk, list the
//! steps that bring the two together, and carry them out (CAs first, then the rest in parallel).
//!
//! Planning reads only; it rejects a state it cannot complete (a CA certificate without its
//! key) before anything is written.

use std::collections::HashMap;

use rayon::prelude::*;
use time::OffsetDateTime;

use crate::catalogue::{self, CaName, Item, Kind, Part};
use crate::catalogue::{Subject, Usage};
use crate::config::{Config, Span};
use crate::error::{Error, Result};
use crate::inspection;
use crate::issuing::{self, Authority};
use crate::secrets::Vault;

/// One planned step: (re)create an item's certificate or public key, with a new key unless
/// `keep_key`.
#[derive(Debug, Clone, Copy)]
pub struct Action<'c> {
    pub item: Item<'c>,
    pub keep_key: bool,
    /// Overrides the config's validity.
    pub validity: Option<Span>,
}

/// What `init` must do: create every missing item, reusing any key already on disk, and
/// complete a re-key that a crash cut between its key and its certificate.
pub fn init<'c>(vault: &Vault, config: &'c Config) -> Result<Vec<Action<'c>>> {
    let mut actions = missing(vault, config)?;
    // A missing item has no pair on disk to compare, so the two lists never overlap.
    let repairs = catalogue::items(config)
        .into_iter()
        .filter(|item| interrupted_rekey(vault, item))
        .map(|item| Action {
            item,
            keep_key: true,
            validity: None,
        });
    actions.extend(repairs);
    Ok(actions)
}

/// The items whose certificate or key exists neither in `pki/` nor in `secrets/`, to be created
/// (reusing a key that exists). A CA certificate without its key is an error: kpki never
/// replaces a CA.
pub fn missing<'c>(vault: &Vault, config: &'c Config) -> Result<Vec<Action<'c>>> {
    let mut actions = Vec::new();
    for item in catalogue::items(config) {
        let cert = vault.exists(&item.file(Part::Cert));
        let key = vault.exists(&item.file(Part::Key));
        match (cert, key) {
            (true, true) => {}
            (true, false) if matches!(item.entry.kind, Kind::Ca(_)) => {
                return Err(Error::file(
                    &vault.store().pki_path(&item.file(Part::Key)),
                    format!(
                        "is missing while {} exists; kpki never replaces a CA",
                        item.file(Part::Cert)
                    ),
                ));
            }
            (_, keep_key) => actions.push(Action {
                item,
                keep_key,
                validity: None,
            }),
        }
    }
    Ok(actions)
}

/// Whether a leaf's key is newer than its certificate and, both readable, does not match it: a
/// re-key writes the key first, so a crash in between leaves exactly this. Only such pairs are
/// parsed; a broken file is left for `verify` to name.
/// CAs are left to `rotate --ca`, which reads its own stages.
fn interrupted_rekey(vault: &Vault, item: &Item<'_>) -> bool {
    if matches!(item.entry.kind, Kind::Ca(_)) {
        return false;
    }
    let [cert, key] = [Part::Cert, Part::Key].map(|p| vault.store().pki_path(&item.file(p)));
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (modified(&cert), modified(&key)) {
        (Some(c), Some(k)) if k > c => {}
        _ => return false,
    }
    let read = |rel: String| {
        vault
            .store()
            .read_pki(&rel)
            .ok()
            .flatten()
            .map(zeroize::Zeroizing::new)
    };
    let (Some(cert), Some(key)) = (read(item.file(Part::Cert)), read(item.file(Part::Key))) else {
        return false;
    };
    let public = match item.entry.kind {
        Kind::KeyPair => inspection::pem_public_keys(&cert)
            .ok()
            .map(|k| k[0].clone()),
        _ => inspection::pem_certs(&cert)
            .ok()
            .and_then(|c| inspection::facts(&c[0]).ok())
            .map(|f| f.spki),
    };
    matches!((public, inspection::key_spki(&key)), (Some(p), Ok(k)) if p != k)
}

/// Carries out `actions` in order of dependency; returns the files written, relative to `pki/`.
pub fn apply(
    vault: &Vault,
    config: &Config,
    actions: &[Action<'_>],
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let (cas, rest): (Vec<&Action<'_>>, Vec<&Action<'_>>) = actions
        .iter()
        .partition(|a| matches!(a.item.entry.kind, Kind::Ca(_)));
    let mut written: Vec<String> = cas
        .par_iter()
        .map(|a| apply_one(vault, config, a, None, now))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let authorities = load_authorities(vault, &rest)?;
    let bar = crate::progress::bar(rest.len(), "issuing");
    let leaves = rest
        .par_iter()
        .map(|a| {
            let done = apply_one(vault, config, a, Some(&authorities), now);
            bar.inc();
            done
        })
        .collect::<Result<Vec<_>>>()?;
    written.extend(leaves.concat());
    Ok(written)
}

/// The CAs that sign the leaves among `actions`, read from disk.
fn load_authorities(vault: &Vault, actions: &[&Action<'_>]) -> Result<HashMap<CaName, Authority>> {
    let mut needed: Vec<CaName> = actions
        .iter()
        .filter_map(|a| match a.item.entry.kind {
            Kind::Leaf { ca, .. } => Some(ca),
            _ => None,
        })
        .collect();
    needed.sort_by_key(|c| c.dir());
    needed.dedup();
    needed
        .into_iter()
        .map(|name| Ok((name, load_authority(vault, name)?)))
        .collect()
}

/// The CA `name`, from `pki/` or decrypted from `secrets/`, checked before it signs.
pub fn load_authority(vault: &Vault, name: CaName) -> Result<Authority> {
    read_authority(vault, name, false)
}

/// The CA `name` as [`load_authority`] reads it, but also when it has expired: the CA a
/// rotation replaces.
pub fn load_outgoing_authority(vault: &Vault, name: CaName) -> Result<Authority> {
    read_authority(vault, name, true)
}

fn read_authority(vault: &Vault, name: CaName, allow_expired: bool) -> Result<Authority> {
    let item = Item {
        entry: catalogue::ca_entry(name),
        node: None,
    };
    let cert = read_required(vault, &item.file(Part::Cert))?;
    let key = load_key(vault, &item.file(Part::Key))?;
    let chain = vault.read(&catalogue::cross_file(name))?;
    let chain = chain
        .as_deref()
        .map(String::as_str)
        .unwrap_or_default()
        .to_string();
    check_authority(vault, name, &cert, &key, allow_expired)?;
    Authority::new(&cert, key, chain)
        .map_err(|m| Error::file(&vault.store().pki_path(&item.file(Part::Cert)), m))
}

/// Refuses to sign with a CA whose key does not match its certificate or (unless
/// `allow_expired`, for rotating it away) that has expired.
fn check_authority(
    vault: &Vault,
    name: CaName,
    cert: &str,
    key: &rcgen::KeyPair,
    allow_expired: bool,
) -> Result<()> {
    use rcgen::PublicKeyData;
    let item = Item {
        entry: catalogue::ca_entry(name),
        node: None,
    };
    let path = |part| vault.store().pki_path(&item.file(part));
    let facts = inspection::pem_certs(cert)
        .and_then(|certs| inspection::facts(&certs[0]))
        .map_err(|m| Error::file(&path(Part::Cert), m))?;
    if key.subject_public_key_info() != facts.spki {
        return Err(Error::file(
            &path(Part::Key),
            format!(
                "does not match the CA certificate {}",
                item.file(Part::Cert)
            ),
        ));
    }
    if !allow_expired && facts.not_after <= issuing::now() {
        return Err(Error::usage(
            format!(
                "the {} CA ({}) has expired",
                name.dir(),
                item.file(Part::Cert)
            ),
            Some(format!("rotate it: kpki rotate --ca {}", name.dir())),
        ));
    }
    Ok(())
}

/// A file of the PKI that must exist, in plaintext or encrypted.
fn read_required(vault: &Vault, rel: &str) -> Result<zeroize::Zeroizing<String>> {
    vault
        .read(rel)?
        .ok_or_else(|| Error::file(&vault.store().pki_path(rel), "is missing"))
}

/// The private key `pki/REL`.
pub fn load_key(vault: &Vault, rel: &str) -> Result<rcgen::KeyPair> {
    let pem = read_required(vault, rel)?;
    issuing::parse_key(&pem).map_err(|m| Error::file(&vault.store().pki_path(rel), m))
}

/// Carries out one action; returns the files it wrote.
fn apply_one(
    vault: &Vault,
    config: &Config,
    action: &Action<'_>,
    authorities: Option<&HashMap<CaName, Authority>>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let item = action.item;
    let algorithm = match item.entry.kind {
        Kind::KeyPair => issuing::service_account_algorithm(config.keys.algorithm),
        _ => config.keys.algorithm,
    };
    let mut written = Vec::new();
    let key = key_for(
        vault,
        &item.file(Part::Key),
        action.keep_key,
        algorithm,
        &mut written,
    )?;
    let subject = item.subject(config);
    let public = match item.entry.kind {
        Kind::Ca(_) => {
            let validity = action.validity.unwrap_or(config.keys.ca_validity);
            issuing::self_signed_ca(&subject, &key, now, validity)?
        }
        Kind::KeyPair => key.public_key_pem(),
        Kind::Leaf { ca, usage } => {
            let authority = authorities
                .and_then(|a| a.get(&ca))
                .expect("authorities are loaded for every leaf");
            let validity = action.validity.unwrap_or(config.keys.leaf_validity);
            issuing::sign_leaf(&subject, usage, &key, authority, now, validity)?
        }
    };
    let cert_file = item.file(Part::Cert);
    vault
        .store()
        .write_pki(&cert_file, public.as_bytes(), false)?;
    written.push(cert_file);
    Ok(written)
}

/// The key at `pki/KEY_FILE`: the existing one if `keep`, else a new one, written at once (before
/// its certificate, so a crash in between leaves a key that the next run reuses).
fn key_for(
    vault: &Vault,
    key_file: &str,
    keep: bool,
    algorithm: crate::config::Algorithm,
    written: &mut Vec<String>,
) -> Result<rcgen::KeyPair> {
    if keep {
        return load_key(vault, key_file);
    }
    let key = issuing::generate_key(algorithm)?;
    vault
        .store()
        .write_pki(key_file, issuing::key_pem(&key).as_bytes(), true)?;
    written.push(key_file.to_string());
    Ok(key)
}

/// Issues the extra client certificate `pki/users/NAME.pem` under the Kubernetes CA.
pub fn issue_user(
    vault: &Vault,
    config: &Config,
    subject: &Subject,
    keep_key: bool,
    validity: Option<Span>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let authority = load_authority(vault, CaName::Kubernetes)?;
    let name = &subject.common_name;
    let key_file = catalogue::user_file(name, Part::Key);
    if keep_key && !vault.exists(&key_file) {
        return Err(missing_key(vault, &key_file));
    }
    let mut written = Vec::new();
    let key = key_for(
        vault,
        &key_file,
        keep_key,
        config.keys.algorithm,
        &mut written,
    )?;
    let validity = validity.unwrap_or(config.keys.leaf_validity);
    let pem = issuing::sign_leaf(subject, Usage::Client, &key, &authority, now, validity)?;
    let cert_file = catalogue::user_file(name, Part::Cert);
    vault.store().write_pki(&cert_file, pem.as_bytes(), false)?;
    written.push(cert_file);
    Ok(written)
}

/// What `issue` must do: reissue `items`, keeping their keys if asked (which must then exist).
pub fn issue<'c>(
    vault: &Vault,
    items: Vec<Item<'c>>,
    keep_key: bool,
    validity: Option<Span>,
) -> Result<Vec<Action<'c>>> {
    items
        .into_iter()
        .map(|item| {
            let key_file = item.file(Part::Key);
            if keep_key && !vault.exists(&key_file) {
                return Err(missing_key(vault, &key_file));
            }
            Ok(Action {
                item,
                keep_key,
                validity,
            })
        })
        .collect()
}

fn missing_key(vault: &Vault, key_file: &str) -> Error {
    Error::usage(
        format!(
            "{}: no key to keep",
            vault.store().pki_path(key_file).display()
        ),
        Some("drop --keep-key to issue a new key".into()),
    )
}
