//! Revocation: the etcd CA's certificate revocation list and `kpki revoke` (`prune.rs` carries
//! out removals with it).
//!
//! etcd is the one consumer in a Kubernetes cluster that checks a CRL (`--client-crl-file`,
//! `--peer-crl-file`); kube-apiserver and the kubelet have none. So certificates of the etcd CA
//! are revoked, and those of the other CAs are reported with their expiry and the remedy (a CA
//! rotation). The ledger of revoked certificates lives in the manifest, with each one's expiry,
//! so an entry leaves the list once the certificate it names could no longer be used anyway.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::actions::{self, Action, Applied};
use crate::catalogue::{self, CaName, Kind, Part};
use crate::clock::rfc3339;
use crate::config::{Config, Span};
use crate::error::{Error, Result};
use crate::inspection::{self, facts, signed_by};
use crate::issuing::{self, RevocationReason};
use crate::manifest::{Reason, Revocation, Superseded};
use crate::pem;
use crate::state::State;

/// The CA whose certificates can be revoked.
pub const CA: CaName = catalogue::REVOCABLE_CA;

/// How long a CRL is good for, at most (else `keys.ca_validity`, and never past the CA).
const CRL_VALIDITY: time::Duration = time::Duration::days(365);

/// What the CRL in `pki/etcd/crl.der` (or, before it was written, `crl.pem`) says.
#[derive(Debug, Clone)]
pub struct Crl {
    pub number: u64,
    pub next_update: Option<OffsetDateTime>,
    /// The revoked serials, lowercase hex.
    pub serials: BTreeSet<String>,
    /// Whether the current etcd CA (the first certificate of `ca.pem`) signed it.
    pub signed: bool,
}

/// The CRL etcd reads, if there is one; a cluster whose list predates the DER file has only
/// the PEM one until its next writer.
pub fn crl(state: &State) -> Result<Option<Crl>> {
    let mut found = None;
    for rel in catalogue::crl_files() {
        if let Some(material) = state.read(&rel)? {
            found = Some((rel, material));
            break;
        }
    }
    let Some((rel, material)) = found else {
        return Ok(None);
    };
    let bad = |m: String| Error::file(&state.store().pki_path(&rel), m);
    let (_, list) = CertificateRevocationList::from_der(material.first())
        .map_err(|e| bad(format!("is not a revocation list ({e})")))?;
    let ca = current_ca(state)?;
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca).map_err(|e| {
        bad(format!(
            "cannot be checked: the etcd CA does not parse ({e})"
        ))
    })?;
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    Ok(Some(Crl {
        number: list
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        next_update: list.next_update().map(time),
        serials: list
            .iter_revoked_certificates()
            .map(|r| inspection::hex(r.raw_serial()))
            .collect(),
        signed: list.verify_signature(ca.public_key()).is_ok(),
    }))
}

/// The DER of the certificate that signs for the etcd CA today.
fn current_ca(state: &State) -> Result<Vec<u8>> {
    let bundle = state.ca_bundle(CA)?;
    Ok(bundle.first().to_vec())
}

/// The ledger's entries still in force at `now`.
fn in_force(ledger: &BTreeMap<String, Revocation>, now: OffsetDateTime) -> BTreeSet<String> {
    ledger
        .iter()
        .filter(|(_, r)| r.not_after > now)
        .map(|(serial, _)| serial.clone())
        .collect()
}

/// Why the CRL must be signed anew, or `None`: missing while certificates are revoked, its
/// next update within `window` of `at`, not signed by the current etcd CA (a rotation), not
/// listing exactly the revocations in force, or not in both its files alike (the DER file etcd
/// reads is missing in a cluster from before it existed).
pub fn crl_due(state: &State, at: OffsetDateTime, window: Span) -> Result<Option<String>> {
    let ledger = ledger(state)?;
    let Some(crl) = crl(state)? else {
        return Ok((!ledger.is_empty()).then(|| "missing, while certificates are revoked".into()));
    };
    if let Some(why) = forms_differ(state)? {
        return Ok(Some(why));
    }
    Ok(if !crl.signed {
        Some("not signed by the current etcd CA".into())
    } else if crl.serials != in_force(&ledger, at) {
        Some("does not list exactly the revocations the manifest records".into())
    } else {
        crl.next_update
            .filter(|t| *t - at <= window.0)
            .map(|t| format!("its next update is due {}", rfc3339(t)))
    })
}

/// Why the DER file etcd reads and the PEM copy do not hold the same list, or `None`.
fn forms_differ(state: &State) -> Result<Option<String>> {
    let [der, pem] = catalogue::crl_files();
    Ok(match (state.read(&der)?, state.read(&pem)?) {
        (None, _) => Some(format!(
            "{der} is missing (etcd 3.5 and later read only a DER list)"
        )),
        (Some(_), None) => Some(format!("{pem} is missing")),
        (Some(d), Some(p)) if d.blocks() != p.blocks() => {
            Some(format!("{der} and {pem} do not hold the same list"))
        }
        _ => None,
    })
}

/// Writes the file of the list that is missing from the one that is there (a cluster from
/// before etcd's DER file has only `crl.pem`): the same signed list, so nothing is signed and
/// etcd gets a list it parses with the next deploy. Returns the file written. Only a list the
/// current etcd CA signed is copied: etcd checks no signature, so a list someone with push
/// access made would otherwise refuse whatever serials they chose (`rotate` signs anew).
pub fn complete_crl(state: &State) -> Result<Option<String>> {
    if !crl(state)?.is_some_and(|c| c.signed) {
        return Ok(None);
    }
    let [der, pem] = catalogue::crl_files();
    Ok(match (state.read(&der)?, state.read(&pem)?) {
        (None, Some(listed)) => {
            state.put(&der, pem::made(catalogue::file_kind(&der), listed.first()));
            Some(der)
        }
        (Some(listed), None) => {
            state.put(&pem, pem::made(catalogue::file_kind(&pem), &*listed.text));
            Some(pem)
        }
        _ => None,
    })
}

/// Signs a new CRL of the revocations in force at `now` (dropping expired ones from the ledger)
/// into `pki/etcd/crl.der` and its PEM copy, numbered one past the current one.
pub fn issue_crl(state: &State, config: &Config, now: OffsetDateTime) -> Result<[String; 2]> {
    let authority = actions::load_authority(state, CA)?;
    let mut ledger = ledger(state)?;
    let live = in_force(&ledger, now);
    ledger.retain(|serial, _| live.contains(serial));
    let number = crl(state).ok().flatten().map_or(0, |c| c.number) + 1;
    let revoked = ledger
        .iter()
        .map(|(serial, r)| {
            Ok(issuing::CrlEntry {
                serial: unhex(serial).ok_or_else(|| damaged_ledger(state, serial))?,
                at: r.revoked,
                reason: reason_code(r.reason),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next_update =
        (now + CRL_VALIDITY.min(config.keys.ca_validity.0)).min(authority.not_after());
    let text = issuing::revocation_list(&authority, number, &revoked, now, next_update)?;
    let [der, pem] = catalogue::crl_files();
    let listed = pem::made(catalogue::file_kind(&pem), &text);
    state.put(&der, pem::made(catalogue::file_kind(&der), listed.first()));
    state.put(&pem, listed);
    state.set_revocations(ledger);
    Ok([der, pem])
}

/// The revocation ledger of this run, with what [`carry_over`] puts back: what a new list names.
pub fn ledger(state: &State) -> Result<BTreeMap<String, Revocation>> {
    let mut ledger = state.revocations();
    if state.exists(&catalogue::ca_file(CA))? {
        carry_over(&mut ledger, state)?;
    }
    Ok(ledger)
}

/// Puts back into `ledger` every revocation of the last valid lists (the committed one and
/// the one cached in `pki/`, each signed by an etcd CA of the bundle) that the ledger lacks: a
/// list only grows by the ledger, and loses an entry only when the ledger says the certificate
/// it names expired. So a lost, rolled back or edited ledger never un-revokes. An entry put
/// back stays until the etcd CA expires (no leaf outlives it).
fn carry_over(ledger: &mut BTreeMap<String, Revocation>, state: &State) -> Result<()> {
    let bundle = state.ca_bundle(CA)?;
    let ca_expiry = facts(bundle.first())
        .map_err(|m| Error::file(&state.store().pki_path(&catalogue::ca_file(CA)), m))?
        .not_after;
    for list in last_lists(state) {
        let Ok((_, list)) = CertificateRevocationList::from_der(&list) else {
            continue;
        };
        let signed = bundle.blocks().iter().any(|ca| {
            x509_parser::certificate::X509Certificate::from_der(ca)
                .is_ok_and(|(_, ca)| list.verify_signature(ca.public_key()).is_ok())
        });
        if !signed {
            continue;
        }
        for entry in list.iter_revoked_certificates() {
            let serial = inspection::hex(entry.raw_serial());
            ledger.entry(serial).or_insert_with(|| Revocation {
                file: "(kept from the last signed revocation list)".into(),
                reason: reason_of_code(entry.reason_code().map(|(_, r)| r.0)),
                revoked: OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                not_after: ca_expiry,
            });
        }
    }
    Ok(())
}

/// The DER of every revocation list at hand: the committed ones and the ones in `pki/`
/// (which may be newer than a rolled-back state), unchecked.
fn last_lists(state: &State) -> Vec<Vec<u8>> {
    let mut lists = Vec::new();
    for rel in catalogue::crl_files() {
        if let Ok(Some(committed)) = state.read(&rel) {
            lists.extend(committed.blocks().iter().map(|b| b.to_vec()));
        }
        let path = state.store().pki_path(&rel);
        if let Ok(Some(bytes)) = state.store().read(&path, crate::store::PEM_LIMIT)
            && let Ok(cached) = pem::parse(catalogue::file_kind(&rel), &bytes)
        {
            lists.extend(cached.blocks().iter().map(|b| b.to_vec()));
        }
    }
    lists
}

/// The ledger's reason for a CRL reason code (RFC 5280 numbering).
fn reason_of_code(code: Option<u8>) -> Reason {
    match code {
        Some(4) => Reason::Superseded,
        Some(5) => Reason::Removed,
        _ => Reason::Compromised,
    }
}

fn damaged_ledger(state: &State, serial: &str) -> Error {
    Error::file(
        &state.store().secrets_path(crate::manifest::FILE),
        format!("revoked.{serial}: not a serial number with RFC 3339 times"),
    )
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 40 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The CRL reason code of a ledger reason.
fn reason_code(reason: Reason) -> RevocationReason {
    match reason {
        Reason::Removed => RevocationReason::CessationOfOperation,
        Reason::Superseded => RevocationReason::Superseded,
        Reason::Compromised => RevocationReason::KeyCompromise,
    }
}

/// A certificate to revoke.
#[derive(Debug, Clone)]
pub struct Revoke {
    pub file: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
    pub reason: Reason,
}

/// A certificate that stays valid until it expires: no consumer of its CA checks revocation.
#[derive(Debug, Clone)]
pub struct Unrevocable {
    pub file: String,
    pub ca: CaName,
    pub not_after: OffsetDateTime,
}

/// The current certificate of `pki/REL` and how it can be ended: revoked (the etcd CA), or
/// only outlived (the other CAs); nothing to do when it has expired or no CA of the cluster
/// signed it.
pub(crate) fn ending(
    state: &State,
    rel: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<Ending> {
    let text = state.require(rel)?;
    let bad = |m: String| Error::file(&state.store().pki_path(rel), m);
    let certs = text.certificates().map_err(bad)?;
    let leaf = facts(&certs[0]).map_err(bad)?;
    if leaf.not_after <= now {
        return Ok(Ending::Expired);
    }
    let etcd = state.ca_bundle(CA)?;
    if etcd.blocks().iter().any(|ca| signed_by(&certs[0], ca)) {
        return Ok(Ending::Revoke(Revoke {
            file: rel.to_string(),
            serial: leaf.serial,
            not_after: leaf.not_after,
            reason,
        }));
    }
    for ca in [CaName::Kubernetes, CaName::FrontProxy] {
        let bundle = state.ca_bundle(ca)?;
        if bundle.blocks().iter().any(|c| signed_by(&certs[0], c)) {
            return Ok(Ending::Outlive(Unrevocable {
                file: rel.to_string(),
                ca,
                not_after: leaf.not_after,
            }));
        }
    }
    Ok(Ending::Expired)
}

/// The certificates of `pki/REL` that an etcd CA rotation in progress superseded and that are
/// still valid: members that still trust the old CA accept them, so they are revoked with it.
/// The ledger is in the manifest, which anyone who can push may edit: it counts only while a
/// rotation is in progress, and never puts a certificate in use (of any file) on the list.
pub(crate) fn superseded_of(
    state: &State,
    config: &Config,
    rel: &str,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<Vec<Revoke>> {
    if !state.rotating(CA)? {
        return Ok(Vec::new());
    }
    let in_use = serials_in_use(state, config)?;
    Ok(state
        .superseded()
        .into_iter()
        .filter(|(serial, s)| s.file == rel && !in_use.contains(serial))
        .filter_map(|(serial, s)| {
            let not_after = Some(s.not_after).filter(|t| *t > now)?;
            Some(Revoke {
                file: rel.to_string(),
                serial,
                not_after,
                reason,
            })
        })
        .collect())
}

/// The certificate files the etcd CA signs.
fn etcd_leaves(config: &Config) -> impl Iterator<Item = String> + '_ {
    catalogue::items(config)
        .into_iter()
        .filter(|i| matches!(i.entry().kind, Kind::Leaf { ca, .. } if ca == CA))
        .map(|i| i.file(Part::Cert))
}

/// The serials of the etcd CA's certificates in use now, in this run's view.
fn serials_in_use(state: &State, config: &Config) -> Result<BTreeSet<String>> {
    let mut serials = BTreeSet::new();
    for rel in etcd_leaves(config) {
        if let Some(m) = state.read(&rel)? {
            let bad = |m: String| Error::file(&state.store().pki_path(&rel), m);
            serials.insert(facts(m.first()).map_err(bad)?.serial);
        }
    }
    Ok(serials)
}

/// Before a rotation of the etcd CA reissues its leaves: records the certificates they replace,
/// which stay trusted until the rotation finishes, so that revoking a file meanwhile revokes
/// them too.
pub fn note_superseded(state: &State, config: &Config, now: OffsetDateTime) -> Result<()> {
    let mut superseded = state.superseded();
    for rel in etcd_leaves(config) {
        if let Ending::Revoke(r) = ending(state, &rel, Reason::Superseded, now)? {
            superseded.insert(
                r.serial,
                Superseded {
                    file: rel,
                    not_after: r.not_after,
                },
            );
        }
    }
    state.set_superseded(superseded);
    Ok(())
}

/// Once a rotation of the etcd CA finished, no member trusts the old CA: nothing is superseded.
pub fn forget_superseded(state: &State) {
    state.set_superseded(BTreeMap::new());
}

pub(crate) enum Ending {
    Revoke(Revoke),
    Outlive(Unrevocable),
    /// Expired, or signed by no CA of the cluster: nothing to end.
    Expired,
}

/// Adds `revoked` to the ledger.
pub(crate) fn record(state: &State, revoked: &[Revoke], now: OffsetDateTime) {
    let mut ledger = state.revocations();
    for r in revoked {
        ledger.insert(
            r.serial.clone(),
            Revocation {
                file: r.file.clone(),
                reason: r.reason,
                revoked: now,
                not_after: r.not_after,
            },
        );
    }
    state.set_revocations(ledger);
}

/// What `kpki revoke` did to one file.
pub enum Revoked {
    /// Put on the CRL and reissued with a new key; during an etcd CA rotation, with the
    /// certificate of the old CA it replaced.
    Reissued(Vec<Revoke>),
    /// An extra user, removed; its certificate stays valid until it expires.
    UserRemoved {
        /// Its files, deleted from `pki/` and `secrets/`.
        deleted: Vec<String>,
        outlived: Option<Unrevocable>,
    },
}

/// Revokes `name` (`node-02/etcd-peer`, `etcd/apiserver-etcd-client`, `users/bob`): a
/// certificate of the etcd CA goes on the CRL and is reissued with a new key; an extra user is
/// removed. Certificates of the other CAs are refused: nothing would check their revocation.
pub fn revoke(
    state: &State,
    config: &Config,
    name: &str,
    now: OffsetDateTime,
) -> Result<(Revoked, Applied)> {
    let name = name.strip_prefix("pki/").unwrap_or(name);
    let name = name.strip_suffix(".pem").unwrap_or(name);
    if let Some(user) = name.strip_prefix(&format!("{}/", catalogue::USERS_DIR)) {
        return remove_user(state, user, now);
    }
    let items = catalogue::items(config);
    let Some(item) = items.iter().find(|i| i.name() == name) else {
        let names: Vec<String> = items.iter().map(|i| i.name()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(Error::usage(
            format!(
                "{name:?} is not a certificate of this cluster{}",
                crate::report::did_you_mean(name, &names)
            ),
            Some("name it as kpki status lists it: node-02/etcd-peer, etcd/apiserver-etcd-client, users/NAME".into()),
        ));
    };
    let refused = |why: String, hint: String| Err(Error::usage(why, Some(hint)));
    match item.entry().kind {
        Kind::Ca(ca) => {
            return refused(
                format!("{name} is a CA: a CA is not revoked but rotated"),
                format!("kpki rotate --ca {}", ca.dir()),
            );
        }
        Kind::KeyPair => {
            return refused(
                format!("{name} is the service-account key pair, which has no certificate"),
                "kpki rotate --service-account replaces it with an overlap".into(),
            );
        }
        Kind::Leaf { ca, .. } if ca != CA => {
            return refused(
                format!(
                    "{name} is signed by the {} CA, and no Kubernetes component checks revocation for it",
                    ca.dir()
                ),
                format!(
                    "reissue it with kpki issue {}{}, and end the old one with kpki rotate --ca {}",
                    item.entry().profile,
                    item.node()
                        .map(|n| format!(" {}", n.name))
                        .unwrap_or_default(),
                    ca.dir()
                ),
            );
        }
        Kind::Leaf { .. } => {}
    }
    let rel = item.file(Part::Cert);
    let Ending::Revoke(revoke) = ending(state, &rel, Reason::Compromised, now)? else {
        return Err(Error::usage(
            format!("{rel} has expired or is not signed by the etcd CA: nothing to revoke"),
            Some(format!("kpki issue {} renews it", item.entry().profile)),
        ));
    };
    let action = Action::item(*item, false);
    let mut applied = actions::apply(state, config, &[action], now)?;
    let mut revoked = vec![revoke];
    revoked.extend(superseded_of(
        state,
        config,
        &rel,
        Reason::Compromised,
        now,
    )?);
    record(state, &revoked, now);
    applied.written.extend(issue_crl(state, config, now)?);
    applied.written.sort();
    Ok((Revoked::Reissued(revoked), applied))
}

/// Removes the extra user `user`: its files go; its certificate stays valid until it expires.
fn remove_user(state: &State, user: &str, now: OffsetDateTime) -> Result<(Revoked, Applied)> {
    catalogue::check_user_name(user).map_err(|m| Error::usage(m, None))?;
    let files = [Part::Cert, Part::Key].map(|p| catalogue::user_file(user, p));
    if !state.exists(&files[0])? {
        return Err(Error::usage(
            format!("there is no user {user:?}"),
            Some("kpki status lists the users under users/".into()),
        ));
    }
    let outlived = match ending(state, &files[0], Reason::Removed, now)? {
        Ending::Outlive(u) => Some(u),
        _ => None,
    };
    for rel in &files {
        state.delete(rel);
    }
    Ok((
        Revoked::UserRemoved {
            deleted: files.to_vec(),
            outlived,
        },
        Applied::default(),
    ))
}
