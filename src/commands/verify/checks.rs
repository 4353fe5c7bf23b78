//! `kpki verify`: every check of the PKI and its secrets, as one line per problem.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rayon::prelude::*;
use time::OffsetDateTime;

use crate::catalogue::{self, CaName, Item, Kind, Part};
use crate::config::Config;
use crate::error::{Error, InOrder, Result};
use crate::inspection::{Facts, drift, facts, key_spki, signed_by};
use crate::pem::Material;
use crate::secrets::{self, Recipients, SealPlan, Stale};
use crate::state::{Place, State};

/// Every problem found, one line each; empty when the PKI is sound.
pub fn verify(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<Vec<String>> {
    let now = crate::clock::now();
    let items = catalogue::items(config);
    let mut problems: Vec<String> = items
        .par_iter()
        .map(|item| check_item(state, config, item, now))
        .collect::<Vec<_>>()
        .in_order()?
        .concat();
    for user in secrets::users(state)? {
        let files = [Part::Cert, Part::Key].map(|p| catalogue::user_file(&user, p));
        let (found, leaf) = check_leaf_files(state, &files, CaName::Kubernetes, now)?;
        problems.extend(found);
        if let Some(leaf) = leaf.filter(|l| l.subject.common_name != user) {
            problems.push(format!(
                "pki/{}: its CN is {:?}, but the file is named for {user:?}",
                files[0], leaf.subject.common_name
            ));
        }
    }
    problems.extend(check_secrets(state, config, recipients, plan)?);
    problems.extend(check_revocation(state, config, now)?);
    problems.extend(check_cache(state)?);
    problems.extend(tracked_plaintext(state));
    Ok(problems)
}

/// A file's trusted content; a missing or unreadable file is a problem line instead.
fn need(state: &State, rel: &str, problems: &mut Vec<String>) -> Result<Option<Arc<Material>>> {
    match state.read(rel) {
        Ok(Some(text)) => Ok(Some(text)),
        Ok(None) => {
            problems.push(format!("pki/{rel}: missing (and no copy in secrets/)"));
            Ok(None)
        }
        Err(Error::File { path, message }) => {
            problems.push(format!("{}: {message}", shown(state, &path)));
            Ok(None)
        }
        // Only in secrets/, and no identity to decrypt it: not checked (verify says so).
        Err(Error::Identity { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A path relative to the cluster directory.
fn shown(state: &State, path: &std::path::Path) -> String {
    path.strip_prefix(state.store().root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn check_item(
    state: &State,
    config: &Config,
    item: &Item<'_>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let [cert, key] = [Part::Cert, Part::Key].map(|p| item.file(p));
    match item.entry().kind {
        Kind::Leaf { ca, .. } => {
            let (mut problems, leaf) = check_leaf_files(state, &[cert.clone(), key], ca, now)?;
            let current = current_ca(state, ca)?;
            if let Some(why) = leaf.and_then(|leaf| drift(item, config, &leaf, current.as_ref())) {
                problems.push(format!("pki/{cert}: {why}"));
            }
            Ok(problems)
        }
        Kind::Ca(name) => check_ca(state, name, item, now),
        Kind::KeyPair => {
            let mut problems = Vec::new();
            let Some((public, Some(private))) = pair(state, &cert, &key, &mut problems)? else {
                return Ok(problems);
            };
            let first = public.public_keys().map(|keys| keys[0].to_vec());
            match (first, key_spki(&private.text)) {
                (Ok(p), Ok(k)) if p == k => {}
                (Err(e), _) => problems.push(format!("pki/{cert}: {e}")),
                (_, Err(e)) => problems.push(format!("pki/{key}: {e}")),
                _ => problems.push(format!(
                    "pki/{key}: does not match the public key in pki/{cert}"
                )),
            }
            Ok(problems)
        }
    }
}

/// The first certificate of `ca`'s bundle.
fn current_ca(state: &State, ca: CaName) -> Result<Option<Facts>> {
    let rel = catalogue::ca_file(ca);
    Ok(state
        .read(&rel)
        .ok()
        .flatten()
        .and_then(|bundle| facts(bundle.first()).ok()))
}

/// A public file's content and, when it could be read, its private key's.
type Pair = (Arc<Material>, Option<Arc<Material>>);

/// The contents of a public file and of its private key, with the key's mode checked; `None`
/// (and the problems) when the public file is missing, no key when it is missing or cannot be
/// decrypted without an identity (a plugin admin keeps no plaintext key).
fn pair(
    state: &State,
    public: &str,
    key: &str,
    problems: &mut Vec<String>,
) -> Result<Option<Pair>> {
    let (text, private) = (need(state, public, problems)?, need(state, key, problems)?);
    key_mode(state, key, problems);
    Ok(text.map(|t| (t, private)))
}

/// Whether `private` (when it could be read) is the key of `spki`.
fn key_matches(private: Option<&Arc<Material>>, spki: &[u8]) -> bool {
    private.is_none_or(|p| key_spki(&p.text).ok().as_deref() == Some(spki))
}

fn check_ca(
    state: &State,
    name: CaName,
    item: &Item<'_>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let [cert, key] = [Part::Cert, Part::Key].map(|p| item.file(p));
    let mut problems = Vec::new();
    let Some((text, private)) = pair(state, &cert, &key, &mut problems)? else {
        return Ok(problems);
    };
    let certs = match text.certificates() {
        Ok(c) => c,
        Err(e) => return Ok(vec![format!("pki/{cert}: {e}")]),
    };
    if certs.len() > 1 && !state.exists(&catalogue::previous_key_file(name))? {
        problems.push(format!(
            "pki/{cert}: holds {} CA certificates, but no rotation of the {} CA is recorded (no {})",
            certs.len(),
            name.dir(),
            catalogue::previous_key_file(name)
        ));
    }
    for (i, der) in certs.iter().enumerate() {
        let at = if i == 0 {
            cert.clone()
        } else {
            format!("{cert} (certificate {})", i + 1)
        };
        match facts(der) {
            Err(e) => problems.push(format!("pki/{at}: {e}")),
            Ok(f) => {
                if !f.is_ca {
                    problems.push(format!("pki/{at}: not a CA certificate"));
                }
                if !signed_by(der, der) {
                    problems.push(format!("pki/{at}: its self-signature does not verify"));
                }
                validity(&f, now, &at, &mut problems);
                if i == 0 && !key_matches(private.as_ref(), &f.spki) {
                    problems.push(format!(
                        "pki/{key}: does not match the CA certificate pki/{cert}"
                    ));
                }
            }
        }
    }
    Ok(problems)
}

fn validity(f: &Facts, now: OffsetDateTime, at: &str, problems: &mut Vec<String>) {
    if f.not_after <= now {
        problems.push(format!(
            "pki/{at}: expired on {}",
            crate::clock::rfc3339(f.not_after)
        ));
    } else if f.not_before > now {
        problems.push(format!(
            "pki/{at}: not valid before {}",
            crate::clock::rfc3339(f.not_before)
        ));
    }
}

/// Checks a leaf and its key under `ca`; returns the problems and the leaf's facts.
fn check_leaf_files(
    state: &State,
    [cert, key]: &[String; 2],
    ca: CaName,
    now: OffsetDateTime,
) -> Result<(Vec<String>, Option<Facts>)> {
    let mut problems = Vec::new();
    let ca_rel = catalogue::ca_file(ca);
    let pair = pair(state, cert, key, &mut problems)?;
    let bundle = need(state, &ca_rel, &mut Vec::new())?;
    let (Some((text, private)), Some(bundle)) = (pair, bundle) else {
        return Ok((problems, None));
    };
    let (certs, cas) = match (text.certificates(), bundle.certificates()) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(e), _) => return Ok((vec![format!("pki/{cert}: {e}")], None)),
        (_, Err(e)) => return Ok((vec![format!("pki/{ca_rel}: {e}")], None)),
    };
    let leaf = match facts(&certs[0]) {
        Ok(f) => f,
        Err(e) => return Ok((vec![format!("pki/{cert}: {e}")], None)),
    };
    match cas.iter().find(|c| signed_by(&certs[0], c)) {
        None => problems.push(format!(
            "pki/{cert}: its signature does not verify under pki/{ca_rel}"
        )),
        Some(signer) => {
            if facts(signer).map(|s| s.subject_raw) != Ok(leaf.issuer_raw.clone()) {
                problems.push(format!(
                    "pki/{cert}: its issuer name is not the subject of pki/{ca_rel}"
                ));
            }
        }
    }
    for (i, link) in certs.iter().enumerate().skip(1) {
        if !cas.iter().any(|c| signed_by(link, c)) {
            problems.push(format!(
                "pki/{cert}: chain certificate {} does not verify under pki/{ca_rel}",
                i + 1
            ));
        }
    }
    validity(&leaf, now, cert, &mut problems);
    if !key_matches(private.as_ref(), &leaf.spki) {
        problems.push(format!(
            "pki/{key}: does not match the certificate pki/{cert}"
        ));
    }
    Ok((problems, Some(leaf)))
}

/// A plaintext key must be 0600.
fn key_mode(state: &State, rel: &str, problems: &mut Vec<String>) {
    if let Ok(meta) = std::fs::symlink_metadata(state.store().pki_path(rel)) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "pki/{rel}: mode {mode:04o}, but private keys must be 0600"
            ));
        }
    }
}

/// Encrypted files that must be written again (with why), files no config accounts for, and
/// Nix files that are not current.
fn check_secrets(
    state: &State,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<Vec<String>> {
    let mut problems: Vec<String> = plan
        .stale_files()
        .map(|(s, why)| match why {
            Stale::Damaged(why) => format!("secrets/{}.age: {why}", s.rel),
            why => format!("secrets/{}.age: {} (run kpki init)", s.rel, why.describe()),
        })
        .collect();
    problems.extend(plan.leftovers.iter().map(|(rel, _)| {
        format!(
            "secrets/{rel}.age: no longer in the config (a removed node or declaration): kpki rotate --prune removes it"
        )
    }));
    problems.extend(plan.orphans(state, secrets::Depth::All)?.into_iter().map(|rel| {
        format!(
            "secrets/{rel}: in neither the manifest nor the config: kpki rotate --prune deletes it"
        )
    }));
    problems.extend(
        secrets::outdated_files(state, config, recipients, plan, secrets::Depth::All)?
            .into_iter()
            .map(|name| format!("secrets/{name}: not current (run kpki init)")),
    );
    Ok(problems)
}

/// The etcd CA's revocation list: signed by the current CA, listing exactly the revocations the
/// manifest records, not past its next update; and no live certificate revoked.
fn check_revocation(state: &State, config: &Config, now: OffsetDateTime) -> Result<Vec<String>> {
    let rel = catalogue::crl_file();
    let mut problems = Vec::new();
    let zero = crate::config::Span(time::Duration::ZERO);
    match crate::revocation::crl_due(state, now, zero) {
        Ok(Some(why)) => problems.push(format!("etcd/crl: {why} (kpki rotate signs it anew)")),
        Ok(None) => {}
        Err(Error::File { path, message }) => {
            problems.push(format!("{}: {message}", shown(state, &path)))
        }
        Err(e) => return Err(e),
    }
    let revoked = state.revocations();
    for item in catalogue::items(config) {
        if !matches!(item.entry().kind, Kind::Leaf { ca, .. } if ca == crate::revocation::CA) {
            continue;
        }
        let cert = item.file(Part::Cert);
        let Ok(Some(text)) = state.read(&cert) else {
            continue;
        };
        let serial = facts(text.first()).ok().map(|f| f.serial);
        if let Some(serial) = serial.filter(|s| revoked.contains_key(s)) {
            problems.push(format!(
                "pki/{cert}: revoked (serial {serial} is on {rel}): kpki issue {} reissues it",
                item.entry().profile
            ));
        }
    }
    Ok(problems)
}

/// Plaintext in `pki/` that kpki did not write: neither the committed state nor what kpki last
/// synced. A cache that is merely behind (a teammate committed since) is no problem.
fn check_cache(state: &State) -> Result<Vec<String>> {
    Ok(state
        .divergent()?
        .into_iter()
        .filter(|(_, place)| matches!(place, Place::Changed { .. }))
        .map(|(rel, _)| {
            format!(
                "pki/{rel}: changed outside kpki (neither what secrets/ holds nor what kpki last wrote); remove it to use the committed version"
            )
        })
        .collect())
}

/// Plaintext keys and certificates that git tracks anywhere in the repository: by name
/// (`*.pem`, `*.agekey`, `*.kubeconfig`) and by content (a PEM private key or an age
/// identity). Nothing to report outside a git work tree.
fn tracked_plaintext(state: &State) -> Vec<String> {
    let root = state.store().root();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success() || out.status.code() == Some(1))
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let Some(named) = git(&["ls-files", "-z", "--full-name", ":/"]) else {
        return Vec::new();
    };
    let mut found: std::collections::BTreeMap<String, &str> = named
        .split('\0')
        .filter(|f| f.ends_with(".pem") || f.ends_with(".agekey") || f.ends_with(".kubeconfig"))
        .map(|f| {
            let what = if f.ends_with(".pem") && !f.ends_with("-key.pem") {
                "plaintext file"
            } else {
                "plaintext key"
            };
            (f.to_string(), what)
        })
        .collect();
    let pattern = "^(-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----|AGE-SECRET-KEY-1[0-9A-Z]{58})$";
    if let Some(holding) = git(&["grep", "-z", "-l", "-I", "-E", "--full-name", pattern, ":/"]) {
        for f in holding.split('\0').filter(|f| !f.is_empty()) {
            found.entry(f.to_string()).or_insert("plaintext key");
        }
    }
    let state_dir = state.store().pki_dir().join(crate::store::STATE_DIR);
    found
        .into_iter()
        .map(|(f, what)| {
            format!("{f}: {what} is tracked by git (git rm --cached it; secrets/ holds the encrypted copy)")
        })
        .chain(crate::store::tracked(state.store(), &state_dir).into_iter().map(|f| {
            format!("{f}: kpki's local state of this clone is tracked by git, so it reaches every clone (git rm --cached it)")
        }))
        .collect()
}
