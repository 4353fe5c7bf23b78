//! `kpki verify`: every check of the PKI and its secrets, as one line per problem.

use std::os::unix::fs::PermissionsExt;

use rayon::prelude::*;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{Facts, drift, facts, key_spki, pem_certs, pem_public_keys, signed_by};
use crate::catalogue::{self, CaName, Item, Kind, Part};
use crate::config::Config;
use crate::error::Result;
use crate::secrets::{self, Recipients, SealPlan, Vault, seal};

/// Every problem found, one line each; empty when the PKI is sound.
pub fn verify(
    vault: &Vault,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Result<Vec<String>> {
    let now = crate::issuing::now();
    let items = catalogue::items(config);
    let mut problems: Vec<String> = items
        .par_iter()
        .map(|item| check_item(vault, config, item, now))
        .collect::<Result<Vec<_>>>()?
        .concat();
    for user in secrets::users(vault.store())? {
        let files = [Part::Cert, Part::Key].map(|p| catalogue::user_file(&user, p));
        problems.extend(check_leaf_files(vault, &files, CaName::Kubernetes, now)?.0);
    }
    problems.extend(check_secrets(vault, config, recipients, plan));
    problems.extend(tracked_plaintext(vault));
    Ok(problems)
}

/// A file's content, or a problem line when it is missing.
fn need(
    vault: &Vault,
    rel: &str,
    problems: &mut Vec<String>,
) -> Result<Option<zeroize::Zeroizing<String>>> {
    let text = vault.read(rel)?;
    if text.is_none() {
        problems.push(format!("pki/{rel}: missing (and no copy in secrets/)"));
    }
    Ok(text)
}

fn check_item(
    vault: &Vault,
    config: &Config,
    item: &Item<'_>,
    now: OffsetDateTime,
) -> Result<Vec<String>> {
    let [cert, key] = [Part::Cert, Part::Key].map(|p| item.file(p));
    match item.entry.kind {
        Kind::Leaf { ca, .. } => {
            let (mut problems, leaf) = check_leaf_files(vault, &[cert.clone(), key], ca, now)?;
            let current = current_ca(vault, ca)?;
            if let Some(why) = leaf.and_then(|leaf| drift(item, config, &leaf, current.as_ref())) {
                problems.push(format!("pki/{cert}: {why}"));
            }
            Ok(problems)
        }
        Kind::Ca(_) => check_ca(vault, item, now),
        Kind::KeyPair => {
            let mut problems = Vec::new();
            let Some((public, private)) = pair(vault, &cert, &key, &mut problems)? else {
                return Ok(problems);
            };
            let first = pem_public_keys(&public).map(|keys| keys[0].clone());
            match (first, key_spki(&private)) {
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
fn current_ca(vault: &Vault, ca: CaName) -> Result<Option<Facts>> {
    let rel = Item {
        entry: catalogue::ca_entry(ca),
        node: None,
    }
    .file(Part::Cert);
    Ok(vault
        .read(&rel)?
        .and_then(|text| pem_certs(&text).ok())
        .and_then(|certs| facts(&certs[0]).ok()))
}

/// The texts of a public file and its private key, with the key's mode checked; `None` (and the
/// problems) when either is missing.
fn pair(
    vault: &Vault,
    public: &str,
    key: &str,
    problems: &mut Vec<String>,
) -> Result<Option<(Zeroizing<String>, Zeroizing<String>)>> {
    let (text, private) = (need(vault, public, problems)?, need(vault, key, problems)?);
    key_mode(vault, key, problems);
    Ok(text.zip(private))
}

fn check_ca(vault: &Vault, item: &Item<'_>, now: OffsetDateTime) -> Result<Vec<String>> {
    let [cert, key] = [Part::Cert, Part::Key].map(|p| item.file(p));
    let mut problems = Vec::new();
    let Some((text, private)) = pair(vault, &cert, &key, &mut problems)? else {
        return Ok(problems);
    };
    let certs = match pem_certs(&text) {
        Ok(c) => c,
        Err(e) => return Ok(vec![format!("pki/{cert}: {e}")]),
    };
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
                if i == 0 && key_spki(&private).ok() != Some(f.spki.clone()) {
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
            super::status::rfc3339(f.not_after)
        ));
    } else if f.not_before > now {
        problems.push(format!(
            "pki/{at}: not valid before {}",
            super::status::rfc3339(f.not_before)
        ));
    }
}

/// Checks a leaf and its key under `ca`; returns the problems and the leaf's facts.
fn check_leaf_files(
    vault: &Vault,
    [cert, key]: &[String; 2],
    ca: CaName,
    now: OffsetDateTime,
) -> Result<(Vec<String>, Option<Facts>)> {
    let mut problems = Vec::new();
    let ca_rel = Item {
        entry: catalogue::ca_entry(ca),
        node: None,
    }
    .file(Part::Cert);
    let (Some((text, private)), Some(bundle)) =
        (pair(vault, cert, key, &mut problems)?, vault.read(&ca_rel)?)
    else {
        return Ok((problems, None));
    };
    let (certs, cas) = match (pem_certs(&text), pem_certs(&bundle)) {
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
    if key_spki(&private).ok() != Some(leaf.spki.clone()) {
        problems.push(format!(
            "pki/{key}: does not match the certificate pki/{cert}"
        ));
    }
    Ok((problems, Some(leaf)))
}

/// A plaintext key must be 0600.
fn key_mode(vault: &Vault, rel: &str, problems: &mut Vec<String>) {
    if let Ok(meta) = std::fs::metadata(vault.store().pki_path(rel)) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            problems.push(format!(
                "pki/{rel}: mode {mode:04o}, but private keys must be 0600"
            ));
        }
    }
}

/// Stale copies, recipients that differ from the rules, and Nix files that are not current.
fn check_secrets(
    vault: &Vault,
    config: &Config,
    recipients: &Recipients,
    plan: &SealPlan<'_>,
) -> Vec<String> {
    let store = vault.store();
    let mut problems: Vec<String> = plan
        .stale_files()
        .map(|s| {
            format!(
                "secrets/{}.age: out of date with pki/ and the config (run kpki init)",
                s.rel
            )
        })
        .collect();
    problems.extend(
        plan.sealed
            .par_iter()
            .zip(&plan.entries)
            .filter_map(|(s, entry)| {
                let path = store.secret_path(&s.rel);
                let bytes = std::fs::read(&path).ok()?;
                let shown = format!("secrets/{}.age", s.rel);
                let mut have = match seal::header_stanzas(&bytes) {
                    Ok(h) => h,
                    Err(e) => return Some(format!("{shown}: {e}")),
                };
                let mut want = seal::expected_stanzas(&entry.recipients);
                have.sort();
                want.sort();
                if have == want {
                    return None;
                }
                let to_nodes =
                    have.iter().any(|(kind, _)| kind.starts_with("ssh-")) && s.readers.is_empty();
                Some(
                    if to_nodes
                        && s.rel.contains("ca-")
                        && s.content == secrets::Content::PrivateKey
                    {
                        format!("{shown}: a CA key is encrypted to a node")
                    } else {
                        format!("{shown}: encrypted to other recipients than secrets.nix lists")
                    },
                )
            })
            .collect::<Vec<_>>(),
    );
    problems.extend(
        plan.orphans(store).into_iter().map(|rel| {
            format!("secrets/{rel}: no longer in the config (a removed node?); delete it")
        }),
    );
    let outdated = secrets::outdated_files(store, config, recipients, plan).unwrap_or_default();
    problems.extend(
        outdated
            .into_iter()
            .map(|name| format!("secrets/{name}: not current (run kpki init)")),
    );
    problems
}

/// Plaintext PKI files that git tracks. Nothing to report outside a git work tree.
fn tracked_plaintext(vault: &Vault) -> Vec<String> {
    let dir = vault.store().pki_dir();
    let Ok(out) = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["ls-files", "-z", "--full-name", "."])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|f| f.ends_with(".pem") || f.ends_with(".agekey") || f.ends_with(".kubeconfig"))
        .map(|f| {
            let what = if f.ends_with(".pem") && !f.ends_with("-key.pem") { "plaintext file" } else { "plaintext key" };
            format!("{f}: {what} is tracked by git (git rm --cached it; secrets/ holds the encrypted copy)")
        })
        .collect()
}
