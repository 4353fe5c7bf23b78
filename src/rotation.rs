//! Keeping the PKI alive: renewing leaves that are due or drifted, and rotating a CA or the
//! service-account key with a trust overlap.
//!
//! A CA rotation has two steps. `start_ca` makes a new CA, publishes `ca.pem` as the bundle
//! new + old, keeps the old key as `ca-previous-key.pem`, and reissues every leaf of that CA
//! under the new one with the new CA cross-signed by the old appended (`ca-cross.pem`), so nodes
//! still trusting only the old CA accept the new leaves during the rolling restart.
//! `finish_ca` drops the old CA, its key and the cross-signed link.

use time::OffsetDateTime;

use crate::catalogue::{self, CaName, Item, Kind, Part, Subject};
use crate::config::{Config, Span};
use crate::error::{Error, Result};
use crate::inspection::status::{Assessed, State};
use crate::inspection::{facts, key_spki, pem_certs, pem_public_keys, signed_by};
use crate::issuing;
use crate::plan::{self, Action};
use crate::secrets::Vault;

/// What to renew.
pub enum Target<'c> {
    Item(Item<'c>),
    /// An extra client, reissued with the subject it has.
    User(Subject),
}

/// One planned renewal and why.
pub struct Renewal<'c> {
    pub target: Target<'c>,
    pub name: String,
    pub reason: String,
}

/// The leaves (and extra users) to renew: missing, expired, drifted, or expiring within
/// `within` of `at`; with `all`, every one.
pub fn renewals<'c>(assessed: Vec<Assessed<'c>>, within: Span, all: bool) -> Vec<Renewal<'c>> {
    assessed
        .into_iter()
        .filter_map(|a| {
            let target = match (a.item, &a.facts) {
                (Some(item), _) if matches!(item.entry.kind, Kind::Leaf { .. }) => {
                    Target::Item(item)
                }
                (None, Some(facts)) => Target::User(facts.subject.clone()),
                _ => return None,
            };
            let row = a.row;
            let due = row
                .residual_seconds
                .is_some_and(|s| s <= within.0.whole_seconds());
            let reason = match row.state {
                State::Missing | State::Drift | State::Expired => {
                    format!("{}: {}", row.state.word(), row.detail.unwrap_or_default())
                }
                _ if due || all => format!("expires {}", row.expires.unwrap_or_default()),
                _ => return None,
            };
            Some(Renewal {
                target,
                name: row.name,
                reason: reason.trim_end_matches(": ").to_string(),
            })
        })
        .collect()
}

/// Carries out `renewals`; returns the files written under `pki/`.
pub fn renew(
    vault: &Vault,
    config: &Config,
    renewals: &[Renewal<'_>],
    keep_key: bool,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let mut actions = Vec::new();
    let mut written = Vec::new();
    for renewal in renewals {
        match &renewal.target {
            Target::Item(item) => actions.push(Action {
                item: *item,
                keep_key: keep_key && vault.exists(&item.file(Part::Key)),
                validity: None,
            }),
            Target::User(subject) => written.extend(plan::issue_user(
                vault, config, subject, keep_key, None, now,
            )?),
        }
    }
    written.extend(plan::apply(vault, config, &actions, now)?);
    Ok(written)
}

fn ca_item(ca: CaName) -> Item<'static> {
    Item {
        entry: catalogue::ca_entry(ca),
        node: None,
    }
}

/// The first PEM block of `text` that ends with `-----END {label}-----`.
fn first_block(text: &str, label: &str) -> String {
    let end = format!("-----END {label}-----");
    match text.find(&end) {
        Some(at) => format!("{}\n", &text[..at + end.len()]),
        None => text.to_string(),
    }
}

/// Where a rotation of a CA stands, read from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Idle,
    /// A start was interrupted before it published the bundle: the previous key still matches
    /// `ca.pem`, and the start can be rolled back and run again.
    StartInterrupted,
    /// The bundle new + old is published.
    Started,
    /// A finish was interrupted after `ca.pem` lost the old CA: run the finish again.
    FinishInterrupted,
}

fn stage(vault: &Vault, ca: CaName) -> Result<Stage> {
    let rel = ca_item(ca).file(Part::Cert);
    let bundle = read(vault, &rel)?;
    let certs = pem_certs(&bundle).map_err(|m| Error::file(&vault.store().pki_path(&rel), m))?;
    if certs.len() > 1 {
        return Ok(Stage::Started);
    }
    let Some(previous) = vault.read(&catalogue::previous_key_file(ca))? else {
        return Ok(Stage::Idle);
    };
    let current = facts(&certs[0]).map_err(|m| Error::file(&vault.store().pki_path(&rel), m))?;
    Ok(match key_spki(&previous) {
        Ok(spki) if spki == current.spki => Stage::StartInterrupted,
        _ => Stage::FinishInterrupted,
    })
}

/// Whether a rotation of `ca` is in progress.
fn rotating(vault: &Vault, ca: CaName) -> Result<bool> {
    Ok(matches!(
        stage(vault, ca)?,
        Stage::Started | Stage::FinishInterrupted
    ))
}

/// A file of the PKI that must exist.
fn read(vault: &Vault, rel: &str) -> Result<zeroize::Zeroizing<String>> {
    vault.read(rel)?.ok_or_else(|| {
        Error::file(
            &vault.store().pki_path(rel),
            "is missing; run kpki init first",
        )
    })
}

/// The rotations in progress, as sentences for `status`.
pub fn in_progress(vault: &Vault) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for ca in catalogue::CAS {
        if !vault.exists(&ca_item(ca).file(Part::Cert)) {
            continue;
        }
        let name = ca.dir();
        match stage(vault, ca)? {
            Stage::Idle => {}
            Stage::StartInterrupted => found.push(format!(
                "starting the rotation of the {name} CA was interrupted: run kpki rotate --ca {name} again"
            )),
            Stage::Started | Stage::FinishInterrupted => found.push(format!(
                "the {name} CA is being rotated: once every node runs with the new certificates, run kpki rotate --ca {name} --finish"
            )),
        }
    }
    if sa_keys(vault)?.is_some_and(|n| n > 1) {
        found.push("the service-account key is being rotated: once every apiserver uses the new key and old tokens have expired, run kpki rotate --service-account --finish".into());
    }
    Ok(found)
}

/// Starts the rotation of `ca`; returns the files written under `pki/`. An interrupted start is
/// rolled back and run again; a started rotation whose leaves are not all reissued yet (the run
/// was interrupted) is completed; a complete one (`sealed`: secrets/ is up to date) is an error.
pub fn start_ca(
    vault: &Vault,
    config: &Config,
    ca: CaName,
    keep_key: bool,
    sealed: bool,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let item = ca_item(ca);
    match stage(vault, ca)? {
        Stage::Idle => {}
        Stage::StartInterrupted => roll_back_start(vault, ca)?,
        Stage::Started => return resume_start(vault, config, ca, keep_key, sealed, now),
        Stage::FinishInterrupted => {
            return Err(Error::usage(
                format!(
                    "finishing the rotation of the {} CA was interrupted",
                    ca.dir()
                ),
                Some(format!(
                    "complete it with kpki rotate --ca {} --finish",
                    ca.dir()
                )),
            ));
        }
    }
    let old_cert = read(vault, &item.file(Part::Cert))?;
    let old_key = read(vault, &item.file(Part::Key))?;
    let old = plan::load_outgoing_authority(vault, ca)?;
    let users = leaves_users(vault, ca)?;
    let key = issuing::generate_key(config.keys.algorithm)?;
    let subject = item.subject(config);
    let new_cert = issuing::self_signed_ca(&subject, &key, now, config.keys.ca_validity)?;
    let cross = issuing::cross_signed_ca(&subject, &key, &old, now, config.keys.ca_validity)?;
    let store = vault.store();
    let new_key = issuing::key_pem(&key);
    let bundle = new_cert + &old_cert;
    let writes = [
        (catalogue::previous_key_file(ca), old_key.as_bytes(), true),
        (catalogue::cross_file(ca), cross.as_bytes(), false),
        (item.file(Part::Key), new_key.as_bytes(), true),
        (item.file(Part::Cert), bundle.as_bytes(), false),
    ];
    let mut written = Vec::new();
    for (rel, bytes, private) in writes {
        store.write_pki(&rel, bytes, private)?;
        written.push(rel);
    }
    let actions: Vec<Action<'_>> = leaves_of(config, ca)
        .map(|item| Action {
            item,
            keep_key,
            validity: None,
        })
        .collect();
    written.extend(plan::apply(vault, config, &actions, now)?);
    for subject in users {
        written.extend(plan::issue_user(
            vault, config, &subject, keep_key, None, now,
        )?);
    }
    Ok(written)
}

/// Undoes the first steps of an interrupted start: the CA key back to the previous one, the
/// cross-signed link and the kept key gone. No leaf was issued under the new key yet.
fn roll_back_start(vault: &Vault, ca: CaName) -> Result<()> {
    let store = vault.store();
    let previous = read(vault, &catalogue::previous_key_file(ca))?;
    store.write_pki(&ca_item(ca).file(Part::Key), previous.as_bytes(), true)?;
    for rel in [catalogue::cross_file(ca), catalogue::previous_key_file(ca)] {
        store.remove_pki(&rel)?;
        store.remove_secret(&format!("{rel}.age"))?;
    }
    Ok(())
}

/// Reissues the leaves of `ca` that the new CA has not signed yet (nothing, when only the sealing
/// was interrupted: the caller seals), or says the rotation is already under way.
fn resume_start(
    vault: &Vault,
    config: &Config,
    ca: CaName,
    keep_key: bool,
    sealed: bool,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let pending = not_yet_reissued(vault, config, ca)?;
    if pending.is_empty() && sealed {
        return Err(Error::usage(
            format!("a rotation of the {} CA is already in progress", ca.dir()),
            Some(format!(
                "finish it first with kpki rotate --ca {} --finish",
                ca.dir()
            )),
        ));
    }
    let actions: Vec<Action<'_>> = pending
        .into_iter()
        .map(|item| Action {
            item,
            keep_key,
            validity: None,
        })
        .collect();
    plan::apply(vault, config, &actions, now)
}

/// The leaves of `ca` whose certificate the current (first) CA of the bundle did not sign.
fn not_yet_reissued<'c>(vault: &Vault, config: &'c Config, ca: CaName) -> Result<Vec<Item<'c>>> {
    let rel = ca_item(ca).file(Part::Cert);
    let bundle = read(vault, &rel)?;
    let current = pem_certs(&bundle).map_err(|m| Error::file(&vault.store().pki_path(&rel), m))?;
    let mut pending = Vec::new();
    for item in leaves_of(config, ca) {
        let signed = match vault.read(&item.file(Part::Cert))? {
            Some(text) => pem_certs(&text).is_ok_and(|c| signed_by(&c[0], &current[0])),
            None => false,
        };
        if !signed {
            pending.push(item);
        }
    }
    Ok(pending)
}

/// The catalogue leaves `ca` signs.
fn leaves_of(config: &Config, ca: CaName) -> impl Iterator<Item = Item<'_>> {
    catalogue::items(config)
        .into_iter()
        .filter(move |i| matches!(i.entry.kind, Kind::Leaf { ca: c, .. } if c == ca))
}

/// The subjects of the extra users, which the Kubernetes CA signs.
fn leaves_users(vault: &Vault, ca: CaName) -> Result<Vec<Subject>> {
    if ca != CaName::Kubernetes {
        return Ok(Vec::new());
    }
    crate::secrets::users(vault.store())?
        .iter()
        .map(|user| {
            let rel = catalogue::user_file(user, Part::Cert);
            let text = read(vault, &rel)?;
            let bad = |m: String| Error::file(&vault.store().pki_path(&rel), m);
            Ok(facts(&pem_certs(&text).map_err(bad)?[0])
                .map_err(bad)?
                .subject)
        })
        .collect()
}

/// Finishes the rotation of `ca`: the bundle, every leaf file and the secrets lose the old CA.
pub fn finish_ca(vault: &Vault, config: &Config, ca: CaName) -> Result<Vec<String>> {
    let item = ca_item(ca);
    if !rotating(vault, ca)? {
        return Err(Error::usage(
            format!("no rotation of the {} CA is in progress", ca.dir()),
            Some(format!("start one with kpki rotate --ca {}", ca.dir())),
        ));
    }
    let bundle = read(vault, &item.file(Part::Cert))?;
    let new_ca = pem_certs(&bundle)
        .map_err(|m| Error::file(&vault.store().pki_path(&item.file(Part::Cert)), m))?;
    let mut leaves: Vec<String> = leaves_of(config, ca).map(|i| i.file(Part::Cert)).collect();
    if ca == CaName::Kubernetes {
        leaves.extend(
            crate::secrets::users(vault.store())?
                .iter()
                .map(|u| catalogue::user_file(u, Part::Cert)),
        );
    }
    let mut rewrites = Vec::new();
    for rel in leaves {
        let text = read(vault, &rel)?;
        let certs = pem_certs(&text).map_err(|m| Error::file(&vault.store().pki_path(&rel), m))?;
        if !signed_by(&certs[0], &new_ca[0]) {
            return Err(Error::usage(
                format!("{rel} is not yet issued by the new {} CA", ca.dir()),
                Some("run kpki rotate (or kpki issue) for it first".into()),
            ));
        }
        if certs.len() > 1 {
            rewrites.push((rel, first_block(&text, "CERTIFICATE")));
        }
    }
    rewrites.push((item.file(Part::Cert), first_block(&bundle, "CERTIFICATE")));
    let store = vault.store();
    let mut written = Vec::new();
    for (rel, text) in rewrites {
        store.write_pki(&rel, text.as_bytes(), false)?;
        written.push(rel);
    }
    for rel in [catalogue::cross_file(ca), catalogue::previous_key_file(ca)] {
        store.remove_pki(&rel)?;
        store.remove_secret(&format!("{rel}.age"))?;
    }
    Ok(written)
}

/// The service-account entry.
fn sa_item() -> Item<'static> {
    Item {
        entry: catalogue::entry("service-account").expect("catalogued"),
        node: None,
    }
}

/// How many public keys `sa.pem` holds, if it exists.
fn sa_keys(vault: &Vault) -> Result<Option<usize>> {
    let rel = sa_item().file(Part::Cert);
    match vault.read(&rel)? {
        None => Ok(None),
        Some(text) => Ok(Some(
            pem_public_keys(&text)
                .map_err(|m| Error::file(&vault.store().pki_path(&rel), m))?
                .len(),
        )),
    }
}

/// Starts a service-account key rotation: a new signing key; `sa.pem` holds new + old.
pub fn start_sa(vault: &Vault, config: &Config) -> Result<Vec<String>> {
    let item = sa_item();
    if sa_keys(vault)?.is_some_and(|n| n > 1) {
        return Err(Error::usage(
            "a rotation of the service-account key is already in progress",
            Some("finish it first with kpki rotate --service-account --finish".into()),
        ));
    }
    let old_public = read(vault, &item.file(Part::Cert))?;
    let key = issuing::generate_key(issuing::service_account_algorithm(config.keys.algorithm))?;
    let store = vault.store();
    let public = key.public_key_pem() + &old_public;
    // The key first: interrupted before the bundle, a new start simply runs again.
    store.write_pki(
        &item.file(Part::Key),
        issuing::key_pem(&key).as_bytes(),
        true,
    )?;
    store.write_pki(&item.file(Part::Cert), public.as_bytes(), false)?;
    Ok(vec![item.file(Part::Cert), item.file(Part::Key)])
}

/// Finishes a service-account key rotation: `sa.pem` keeps only the new public key.
pub fn finish_sa(vault: &Vault) -> Result<Vec<String>> {
    let item = sa_item();
    if sa_keys(vault)?.is_none_or(|n| n <= 1) {
        return Err(Error::usage(
            "no rotation of the service-account key is in progress",
            Some("start one with kpki rotate --service-account".into()),
        ));
    }
    let rel = item.file(Part::Cert);
    let text = read(vault, &rel)?;
    vault
        .store()
        .write_pki(&rel, first_block(&text, "PUBLIC KEY").as_bytes(), false)?;
    Ok(vec![rel])
}
