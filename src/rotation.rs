//! Keeping the PKI alive: renewing leaves that are due or drifted, and rotating a CA or the
//! service-account key with a trust overlap.
//!
//! A CA rotation has two steps. `start_ca` makes a new CA, publishes `ca.pem` as the bundle
//! new + old, keeps the old key as `ca-previous-key.pem`, and reissues every leaf of that CA
//! under the new one with the new CA cross-signed by the old appended (`ca-cross.pem`), so nodes
//! still trusting only the old CA accept the new leaves during the rolling restart.
//! `finish_ca` drops the old CA, its key and the cross-signed link. Each step is one commit, so
//! a crash leaves the rotation either not started or started, never half of it.

use serde::Serialize;
use time::OffsetDateTime;

use crate::actions::{self, Action, Applied};
use crate::assessment::{Assessed, Health, readable};
use crate::catalogue::{self, CaName, Item, Kind, Part, Subject, Target};
use crate::clock::rfc3339;
use crate::config::{Config, Span};
use crate::error::{Error, Result};
use crate::inspection::{facts, signed_by};
use crate::issuing;
use crate::pem::{self, FileKind};
use crate::state::State;

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
            let target = match a.target {
                Target::Item(item) if !matches!(item.entry().kind, Kind::Leaf { .. }) => {
                    return None;
                }
                target => target,
            };
            let row = a.row;
            let due = row
                .residual_seconds
                .is_some_and(|s| s <= within.0.whole_seconds());
            let reason = match row.state {
                Health::Missing | Health::Drift | Health::Expired => {
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

/// Carries out `renewals` on `state`.
pub fn renew(
    state: &State,
    config: &Config,
    renewals: &[Renewal<'_>],
    keep_key: bool,
    now: OffsetDateTime,
) -> Result<Applied> {
    let steps = renewals
        .iter()
        .map(|r| {
            Ok(Action {
                target: r.target.clone(),
                keep_key: keep_key && state.exists(&r.target.file(Part::Key))?,
                validity: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    actions::apply(state, config, &steps, now)
}

/// The first block of a file's canonical text.
fn first_block(material: &pem::Material) -> pem::Material {
    let label = match material.kind {
        FileKind::PublicKeys => "PUBLIC KEY",
        _ => "CERTIFICATE",
    };
    pem::made(material.kind, pem::encode(label, material.first()))
}

/// The certificates of `pki/REL`, which must exist.
fn certs_of(state: &State, rel: &str) -> Result<Vec<Vec<u8>>> {
    let text = state.require(rel)?;
    let certs = text
        .certificates()
        .map_err(|m| Error::file(&state.store().pki_path(rel), m))?;
    Ok(certs.iter().map(|c| c.to_vec()).collect())
}

/// A rotation in progress, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    /// `kubernetes`, `etcd`, `front-proxy` or `service-account`.
    pub what: &'static str,
    /// When it started (the new CA's issue time); `None` for the service-account key.
    pub started: Option<String>,
    /// Leaves not yet issued by the new CA (nothing to finish until this is empty).
    pub pending: Vec<String>,
    /// What to do next.
    pub next: String,
}

impl Rotation {
    /// What is rotated, in words: `the etcd CA`, `the service-account key`.
    pub fn subject(&self) -> String {
        match self.what {
            "service-account" => "the service-account key".into(),
            ca => format!("the {ca} CA"),
        }
    }
}

/// The rotations in progress.
pub fn in_progress(state: &State, config: &Config) -> Result<Vec<Rotation>> {
    let mut found = Vec::new();
    for ca in catalogue::CAS {
        let rel = catalogue::ca_file(ca);
        if !state.exists(&rel)? || !state.rotating(ca)? {
            continue;
        }
        let name = ca.dir();
        let Some(certs) = readable(certs_of(state, &rel))? else {
            // No identity: when it started is on record; what is pending is not.
            let recorded = state.manifest().files.get(&rel);
            let started = recorded
                .and_then(|e| e.certificate.as_ref())
                .map(|f| f.not_before)
                .map(|t| rfc3339(t + issuing::BACKDATE));
            found.push(Rotation {
                what: name,
                started,
                pending: Vec::new(),
                next: "pass -i to see which leaves the new CA has yet to reissue".into(),
            });
            continue;
        };
        let new = &certs[0];
        let started = facts(new)
            .ok()
            .map(|f| rfc3339(f.not_before + issuing::BACKDATE));
        let pending = not_yet_reissued(state, config, ca, new)?;
        let next = if pending.is_empty() {
            format!(
                "deploy, restart every node on the new certificates, wait until kpki rollout says every node is current, then run kpki rotate --ca {name} --finish"
            )
        } else {
            "reissue the pending leaves with kpki rotate, then deploy and finish".to_string()
        };
        found.push(Rotation {
            what: name,
            started,
            pending,
            next,
        });
    }
    // Without an identity the service-account public keys are not read: said by status.
    if readable(sa_keys(state))?.unwrap_or(0) > 1 {
        found.push(Rotation {
            what: "service-account",
            started: None,
            pending: Vec::new(),
            next: "once every apiserver uses the new key and old tokens have expired, run kpki rotate --service-account --finish".into(),
        });
    }
    Ok(found)
}

/// The leaves of `ca` (and, for the Kubernetes CA, the extra users) that the new CA `new` has
/// not signed yet.
fn not_yet_reissued(state: &State, config: &Config, ca: CaName, new: &[u8]) -> Result<Vec<String>> {
    let mut pending = Vec::new();
    for [rel, _] in leaf_files(state, config, ca)? {
        let signed = match state.read(&rel)? {
            Some(m) => signed_by(m.first(), new),
            None => true,
        };
        if !signed {
            pending.push(rel);
        }
    }
    Ok(pending)
}

/// The certificate and key files of what `ca` signs: its catalogue leaves and, for the
/// Kubernetes CA, the extra users.
fn leaf_files(state: &State, config: &Config, ca: CaName) -> Result<Vec<[String; 2]>> {
    let parts = [Part::Cert, Part::Key];
    let mut files: Vec<[String; 2]> = leaves_of(config, ca)
        .map(|i| parts.map(|p| i.file(p)))
        .collect();
    if ca == CaName::Kubernetes {
        let users = crate::secrets::users(state)?;
        files.extend(
            users
                .iter()
                .map(|u| parts.map(|p| catalogue::user_file(u, p))),
        );
    }
    Ok(files)
}

/// What `rotate --ca CA [--finish]` would do, one line per step and file, for `--dry-run`;
/// refused as the rotation itself would be.
pub fn plan_ca(
    state: &State,
    config: &Config,
    ca: CaName,
    finish: bool,
    keep_key: bool,
) -> Result<Vec<String>> {
    let name = ca.dir();
    let leaves = leaf_files(state, config, ca)?;
    let ca_file = catalogue::ca_file(ca);
    let (cross, previous) = (catalogue::cross_file(ca), catalogue::previous_key_file(ca));
    let mut lines = Vec::new();
    let mut resealed = vec![ca_file.clone()];
    if finish {
        if !state.rotating(ca)? {
            return Err(not_rotating(ca));
        }
        let new_ca = certs_of(state, &ca_file)?;
        if let Some(rel) = not_yet_reissued(state, config, ca, &new_ca[0])?.first() {
            return Err(pending(ca, rel));
        }
        lines.push(format!("drop the old {name} CA from pki/{ca_file}"));
        for [rel, _] in &leaves {
            lines.push(format!("drop the cross-signed link from pki/{rel}"));
        }
        lines.push(format!(
            "delete pki/{cross} and pki/{previous}, and their copies in secrets/"
        ));
        resealed.extend(leaves.into_iter().map(|[cert, _]| cert));
    } else {
        if state.rotating(ca)? {
            return Err(in_progress_error(ca));
        }
        lines.push(format!(
            "create a new {name} CA: pki/{ca_file} becomes the bundle new + old, pki/{previous} keeps the old key, pki/{cross} is the new CA cross-signed by the old"
        ));
        let key = if keep_key {
            "its key kept"
        } else {
            "a new key"
        };
        for [rel, _] in &leaves {
            lines.push(format!(
                "reissue pki/{rel} under the new CA, with {key} and the cross-signed link"
            ));
        }
        resealed.extend(leaves.into_iter().flatten());
        resealed.extend([catalogue::ca_item(ca).file(Part::Key), cross, previous]);
        if ca == catalogue::REVOCABLE_CA && state.exists(&catalogue::crl_file())? {
            lines.push(format!(
                "sign {} anew (by the new CA)",
                catalogue::crl_file()
            ));
            resealed.extend(catalogue::crl_files());
        }
    }
    if ca == CaName::Kubernetes {
        resealed.push(catalogue::ADMIN_KUBECONFIG.to_string());
    }
    resealed.sort();
    lines.extend(
        resealed
            .iter()
            .map(|rel| format!("re-encrypt secrets/{rel}.age")),
    );
    Ok(lines)
}

fn not_rotating(ca: CaName) -> Error {
    Error::usage(
        format!("no rotation of the {} CA is in progress", ca.dir()),
        Some(format!("start one with kpki rotate --ca {}", ca.dir())),
    )
}

fn in_progress_error(ca: CaName) -> Error {
    Error::usage(
        format!("a rotation of the {} CA is already in progress", ca.dir()),
        Some(format!(
            "finish it first with kpki rotate --ca {} --finish",
            ca.dir()
        )),
    )
}

fn pending(ca: CaName, rel: &str) -> Error {
    Error::usage(
        format!("{rel} is not yet issued by the new {} CA", ca.dir()),
        Some("run kpki rotate (or kpki issue) for it first".into()),
    )
}

/// Starts the rotation of `ca` on `state`; refused while one is in progress.
pub fn start_ca(
    state: &State,
    config: &Config,
    ca: CaName,
    keep_key: bool,
    now: OffsetDateTime,
) -> Result<Applied> {
    let item = catalogue::ca_item(ca);
    if state.rotating(ca)? {
        return Err(in_progress_error(ca));
    }
    let old_cert = state.require(&item.file(Part::Cert))?;
    let old_key = state.require(&item.file(Part::Key))?;
    let old = actions::load_outgoing_authority(state, ca)?;
    let users = users_of(state, ca)?;
    let key = issuing::generate_key(config.keys.algorithm)?;
    let subject = generation_subject(item.subject(config), now);
    let new_cert = issuing::self_signed_ca(&subject, &key, now, config.keys.ca_validity)?;
    let cross = issuing::cross_signed_ca(&subject, &key, &old, now, config.keys.ca_validity)?;
    let bundle = new_cert + &old_cert.text;
    let writes = [
        (
            catalogue::previous_key_file(ca),
            pem::made(FileKind::PrivateKey, &*old_key.text),
        ),
        (
            catalogue::cross_file(ca),
            pem::made(FileKind::Certificates, &cross),
        ),
        (item.file(Part::Key), pem::Material::of_key(&key)),
        (
            item.file(Part::Cert),
            pem::made(FileKind::Certificates, &bundle),
        ),
    ];
    let mut applied = Applied::default();
    for (rel, material) in writes {
        debug_assert_eq!(material.kind, catalogue::file_kind(&rel));
        state.put(&rel, material);
        applied.written.push(rel);
    }
    let targets = leaves_of(config, ca)
        .map(|item| Target::Item(Box::new(item)))
        .chain(users.into_iter().map(Target::User))
        .collect();
    let steps = actions::issue(state, targets, keep_key, None)?;
    applied.merge(actions::apply(state, config, &steps, now)?);
    applied.written.sort();
    Ok(applied)
}

/// The subject of a CA generation made at `now`: the catalogue's name with the time, so that
/// a server's list of client CAs tells the new CA from the old one (`kpki rollout`).
fn generation_subject(mut subject: Subject, now: OffsetDateTime) -> Subject {
    let stamp = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let at = now.format(&stamp).unwrap_or_default();
    subject.common_name = format!("{}-{at}", subject.common_name);
    subject
}

/// The catalogue leaves `ca` signs.
fn leaves_of(config: &Config, ca: CaName) -> impl Iterator<Item = Item<'_>> {
    catalogue::items(config)
        .into_iter()
        .filter(move |i| matches!(i.entry().kind, Kind::Leaf { ca: c, .. } if c == ca))
}

/// The subjects of the extra users, which the Kubernetes CA signs.
fn users_of(state: &State, ca: CaName) -> Result<Vec<Subject>> {
    if ca != CaName::Kubernetes {
        return Ok(Vec::new());
    }
    crate::secrets::users(state)?
        .iter()
        .map(|user| {
            let rel = catalogue::user_file(user, Part::Cert);
            let bad = |m: String| Error::file(&state.store().pki_path(&rel), m);
            Ok(facts(&certs_of(state, &rel)?[0]).map_err(bad)?.subject)
        })
        .collect()
}

/// What finishing removes besides rewriting files.
pub struct Finished {
    pub applied: Applied,
    /// Files deleted from `pki/` and `secrets/`, relative to `pki/`.
    pub removed: Vec<String>,
}

/// Finishes the rotation of `ca`: the bundle and every leaf file lose the old CA; the old key
/// and the cross-signed link are deleted.
pub fn finish_ca(state: &State, config: &Config, ca: CaName) -> Result<Finished> {
    let item = catalogue::ca_item(ca);
    if !state.rotating(ca)? {
        return Err(not_rotating(ca));
    }
    let new_ca = certs_of(state, &item.file(Part::Cert))?;
    if let Some(rel) = not_yet_reissued(state, config, ca, &new_ca[0])?.first() {
        return Err(pending(ca, rel));
    }
    let mut applied = Applied::default();
    let mut rewrite = vec![item.file(Part::Cert)];
    for [rel, _] in leaf_files(state, config, ca)? {
        if state.exists(&rel)? && certs_of(state, &rel)?.len() > 1 {
            rewrite.push(rel);
        }
    }
    for rel in rewrite {
        let trimmed = first_block(&*state.require(&rel)?);
        state.put(&rel, trimmed);
        applied.written.push(rel);
    }
    let removed = vec![catalogue::cross_file(ca), catalogue::previous_key_file(ca)];
    for rel in &removed {
        state.delete(rel);
    }
    applied.written.sort();
    Ok(Finished { applied, removed })
}

/// The service-account entry.
fn sa_item() -> Item<'static> {
    catalogue::service_account()
}

/// How many public keys `sa.pem` holds (0 when it does not exist).
/// Whether a service-account key rotation is in progress (`sa.pem` holds two keys).
pub fn sa_rotating(state: &State) -> Result<bool> {
    Ok(sa_keys(state)? > 1)
}

fn sa_keys(state: &State) -> Result<usize> {
    Ok(match state.read(&sa_item().file(Part::Cert))? {
        None => 0,
        Some(m) => m.blocks().len(),
    })
}

/// Starts a service-account key rotation: a new signing key; `sa.pem` holds new + old.
pub fn start_sa(state: &State, config: &Config) -> Result<Applied> {
    let item = sa_item();
    if sa_keys(state)? > 1 {
        return Err(Error::usage(
            "a rotation of the service-account key is already in progress",
            Some("finish it first with kpki rotate --service-account --finish".into()),
        ));
    }
    let old_public = state.require(&item.file(Part::Cert))?;
    let key = issuing::generate_key(issuing::service_account_algorithm(config.keys.algorithm))?;
    let public = key.public_key_pem() + &old_public.text;
    state.put(&item.file(Part::Key), pem::Material::of_key(&key));
    state.put(
        &item.file(Part::Cert),
        pem::made(FileKind::PublicKeys, &public),
    );
    Ok(Applied {
        written: vec![item.file(Part::Cert), item.file(Part::Key)],
        capped: Vec::new(),
    })
}

/// Finishes a service-account key rotation: `sa.pem` keeps only the new public key.
pub fn finish_sa(state: &State) -> Result<Applied> {
    let rel = sa_item().file(Part::Cert);
    if sa_keys(state)? <= 1 {
        return Err(Error::usage(
            "no rotation of the service-account key is in progress",
            Some("start one with kpki rotate --service-account".into()),
        ));
    }
    let trimmed = first_block(&*state.require(&rel)?);
    state.put(&rel, trimmed);
    Ok(Applied {
        written: vec![rel],
        capped: Vec::new(),
    })
}
