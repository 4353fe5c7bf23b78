//! Plan, then apply: compare the catalogue under the config with the PKI, list the steps that
//! bring the two together, and carry them out on the run's [`State`] (CAs first, then the rest
//! in parallel). Nothing reaches the disk until the command commits the state.
//!
//! Planning rejects a state it cannot complete (a CA certificate without its key) before
//! anything is changed.

use std::collections::HashMap;
use std::sync::Mutex;

use rayon::prelude::*;
use time::OffsetDateTime;

use crate::catalogue::{self, CaName, Item, Kind, Part, Target};
use crate::config::{Algorithm, Config, Span};
use crate::error::{Error, InOrder, Result};
use crate::inspection;
use crate::issuing::{self, Authority};
use crate::pem;
use crate::state::State;

/// One planned step: (re)create a target's certificate or public key, with a new key unless
/// `keep_key`.
#[derive(Debug, Clone)]
pub struct Action<'c> {
    pub target: Target<'c>,
    pub keep_key: bool,
    /// Overrides the config's validity; refused if it would outlive the CA.
    pub validity: Option<Span>,
}

impl<'c> Action<'c> {
    /// (Re)issues `item` for the configured validity.
    pub fn item(item: Item<'c>, keep_key: bool) -> Action<'c> {
        Action {
            target: Target::Item(Box::new(item)),
            keep_key,
            validity: None,
        }
    }
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Files changed, relative to `pki/`, sorted.
    pub written: Vec<String>,
    /// Leaves whose validity was cut short at their CA's expiry, as sentences.
    pub capped: Vec<String>,
}

impl Applied {
    pub fn merge(&mut self, other: Applied) {
        self.written.extend(other.written);
        self.capped.extend(other.capped);
    }
}

/// The items whose certificate or key exists nowhere, to be created. A key is kept only with
/// its certificate (or, for the service-account pair, its public key): kpki never certifies a
/// key it holds no certificate for, which could be anyone's. A CA missing either half is an
/// error: kpki never replaces a CA.
pub fn missing<'c>(state: &State, config: &'c Config) -> Result<Vec<Action<'c>>> {
    let items = catalogue::items(config);
    let present = items
        .par_iter()
        .map(|item| {
            Ok((
                state.exists(&item.file(Part::Cert))?,
                state.exists(&item.file(Part::Key))?,
            ))
        })
        .collect::<Vec<_>>()
        .in_order()?;
    let mut actions = Vec::new();
    for (item, present) in items.into_iter().zip(present) {
        match present {
            (true, true) => {}
            (true, false) if matches!(item.entry().kind, Kind::Ca(_)) => {
                return Err(Error::file(
                    &state.store().pki_path(&item.file(Part::Key)),
                    format!(
                        "is missing while {} exists; kpki never replaces a CA",
                        item.file(Part::Cert)
                    ),
                ));
            }
            (false, true) if matches!(item.entry().kind, Kind::Ca(_)) => {
                return Err(Error::file(
                    &state.store().pki_path(&item.file(Part::Cert)),
                    format!(
                        "is missing while {} exists; kpki never certifies a key it holds no certificate for (restore the certificate from git, or delete both to start a new CA)",
                        item.file(Part::Key)
                    ),
                ));
            }
            (false, true) if item.entry().kind == Kind::KeyPair => {
                actions.push(Action::item(item, true))
            }
            _ => actions.push(Action::item(item, false)),
        }
    }
    Ok(actions)
}

/// Carries out `actions` in order of dependency on `state`.
pub fn apply(
    state: &State,
    config: &Config,
    actions: &[Action<'_>],
    now: OffsetDateTime,
) -> Result<Applied> {
    let (cas, rest): (Vec<&Action<'_>>, Vec<&Action<'_>>) = actions
        .iter()
        .partition(|a| matches!(a.target.kind(), Kind::Ca(_)));
    let applied = Mutex::new(Applied::default());
    cas.par_iter()
        .try_for_each(|a| apply_one(state, config, a, None, now, &applied))?;
    let authorities = load_authorities(state, &rest)?;
    let bar = crate::progress::bar(rest.len(), "issuing");
    rest.par_iter().try_for_each(|a| {
        apply_one(state, config, a, Some(&authorities), now, &applied)?;
        bar.inc();
        Ok::<_, Error>(())
    })?;
    let mut applied = applied.into_inner().unwrap_or_else(|e| e.into_inner());
    applied.written.sort();
    applied.capped.sort();
    Ok(applied)
}

/// The CAs that sign the leaves among `actions`.
fn load_authorities(state: &State, actions: &[&Action<'_>]) -> Result<HashMap<CaName, Authority>> {
    let mut needed: Vec<CaName> = actions
        .iter()
        .filter_map(|a| match a.target.kind() {
            Kind::Leaf { ca, .. } => Some(ca),
            _ => None,
        })
        .collect();
    needed.sort_by_key(|c| c.dir());
    needed.dedup();
    needed
        .into_iter()
        .map(|name| Ok((name, load_authority(state, name)?)))
        .collect()
}

/// The CA `name`, checked before it signs.
pub fn load_authority(state: &State, name: CaName) -> Result<Authority> {
    read_authority(state, name, false)
}

/// The CA `name` as [`load_authority`] reads it, but also when it has expired: the CA a
/// rotation replaces.
pub fn load_outgoing_authority(state: &State, name: CaName) -> Result<Authority> {
    read_authority(state, name, true)
}

fn read_authority(state: &State, name: CaName, allow_expired: bool) -> Result<Authority> {
    let item = catalogue::ca_item(name);
    let cert = state.ca_bundle(name)?;
    let key = load_key(state, &item.file(Part::Key))?;
    let chain = state
        .read(&catalogue::cross_file(name))?
        .map(|m| m.text.to_string())
        .unwrap_or_default();
    let path = |part| state.store().pki_path(&item.file(part));
    let facts = inspection::facts(cert.first()).map_err(|m| Error::file(&path(Part::Cert), m))?;
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != facts.spki {
        return Err(Error::file(
            &path(Part::Key),
            format!(
                "does not match the CA certificate {}",
                item.file(Part::Cert)
            ),
        ));
    }
    if !allow_expired && facts.not_after <= crate::clock::now() {
        return Err(Error::usage(
            format!(
                "the {} CA ({}) has expired",
                name.dir(),
                item.file(Part::Cert)
            ),
            Some(format!("rotate it: kpki rotate --ca {}", name.dir())),
        ));
    }
    Authority::new(name, &cert.text, key, chain, facts.not_after)
        .map_err(|m| Error::file(&path(Part::Cert), m))
}

/// The private key `pki/REL`.
pub fn load_key(state: &State, rel: &str) -> Result<rcgen::KeyPair> {
    let key = state.require(rel)?;
    pem::parse_key(&key.text).map_err(|m| Error::file(&state.store().pki_path(rel), m))
}

/// Carries out one action.
fn apply_one(
    state: &State,
    config: &Config,
    action: &Action<'_>,
    authorities: Option<&HashMap<CaName, Authority>>,
    now: OffsetDateTime,
    applied: &Mutex<Applied>,
) -> Result<()> {
    let target = &action.target;
    let algorithm = match target.kind() {
        Kind::KeyPair => issuing::service_account_algorithm(config.keys.algorithm),
        _ => config.keys.algorithm,
    };
    let mut done = Applied::default();
    let key = key_for(
        state,
        &target.file(Part::Key),
        action.keep_key,
        algorithm,
        &mut done,
    )?;
    let subject = target.subject(config);
    let public = match target.kind() {
        Kind::Ca(_) => {
            let validity = action.validity.unwrap_or(config.keys.ca_validity);
            issuing::self_signed_ca(&subject, &key, now, validity)?
        }
        Kind::KeyPair => key.public_key_pem(),
        Kind::Leaf { ca, usage } => {
            let authority = authorities
                .and_then(|a| a.get(&ca))
                .expect("authorities are loaded for every leaf");
            let wanted = match (action.validity, target.declared_validity()) {
                (Some(given), _) => Wanted::Given(given),
                (None, declared) => {
                    Wanted::Configured(declared.unwrap_or(config.keys.leaf_validity))
                }
            };
            let until = leaf_expiry(&target.name(), authority, wanted, now, &mut done)?;
            issuing::sign_leaf(&subject, usage, &key, authority, now, until)?
        }
    };
    let cert_file = target.file(Part::Cert);
    state.put(
        &cert_file,
        pem::made(catalogue::file_kind(&cert_file), &public),
    );
    done.written.push(cert_file);
    applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .merge(done);
    Ok(())
}

/// How long a new leaf should be valid.
#[derive(Debug, Clone, Copy)]
enum Wanted {
    /// On the command line (`--validity`): past its CA, refused.
    Given(Span),
    /// By the config: past its CA, cut short.
    Configured(Span),
}

/// When a leaf issued now expires: as `wanted`, but never after its CA. A validity given on the
/// command line past the CA is refused; a configured one is cut short, and `done` says so.
fn leaf_expiry(
    name: &str,
    ca: &Authority,
    wanted: Wanted,
    now: OffsetDateTime,
    done: &mut Applied,
) -> Result<OffsetDateTime> {
    let (Wanted::Given(span) | Wanted::Configured(span)) = wanted;
    if now + span.0 <= ca.not_after() {
        return Ok(now + span.0);
    }
    let ca_expiry = crate::clock::rfc3339(ca.not_after());
    if matches!(wanted, Wanted::Given(_)) {
        return Err(Error::usage(
            format!(
                "--validity: {name} would outlive the {} CA, which expires {ca_expiry}",
                ca.name().dir()
            ),
            Some(format!(
                "give a shorter --validity, or rotate the CA first (kpki rotate --ca {})",
                ca.name().dir()
            )),
        ));
    }
    done.capped.push(format!(
        "{name}: valid only until {ca_expiry}, when the {} CA expires (rotate it: kpki rotate --ca {})",
        ca.name().dir(),
        ca.name().dir()
    ));
    Ok(ca.not_after())
}

/// The key at `pki/KEY_FILE`: the existing one if `keep`, else a new one.
fn key_for(
    state: &State,
    key_file: &str,
    keep: bool,
    algorithm: Algorithm,
    done: &mut Applied,
) -> Result<rcgen::KeyPair> {
    if keep {
        return load_key(state, key_file);
    }
    let key = issuing::generate_key(algorithm)?;
    state.put(key_file, pem::Material::of_key(&key));
    done.written.push(key_file.to_string());
    Ok(key)
}

/// What `issue` must do: reissue `targets`, keeping their keys if asked (which must then
/// exist).
pub fn issue<'c>(
    state: &State,
    targets: Vec<Target<'c>>,
    keep_key: bool,
    validity: Option<Span>,
) -> Result<Vec<Action<'c>>> {
    targets
        .into_iter()
        .map(|target| {
            let key_file = target.file(Part::Key);
            if keep_key && !state.exists(&key_file)? {
                return Err(missing_key(state, &key_file));
            }
            Ok(Action {
                target,
                keep_key,
                validity,
            })
        })
        .collect()
}

fn missing_key(state: &State, key_file: &str) -> Error {
    Error::usage(
        format!(
            "{}: no key to keep",
            state.store().pki_path(key_file).display()
        ),
        Some("drop --keep-key to issue a new key".into()),
    )
}
