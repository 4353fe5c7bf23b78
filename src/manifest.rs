//! The committed manifest, `secrets/manifest.toml`: per encrypted file, a fingerprint of the
//! public material it holds and the recipients it is encrypted to. age output is never the same
//! twice, so this (not the ciphertext) decides whether a file must be encrypted again.
//!
//! The manifest is the cluster's authenticated state: its body (everything before the
//! `[signature]` table, byte for byte) is signed by the Kubernetes CA, and carries a generation
//! that every write increases (see `trust`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::inspection::PublicFacts;
use crate::pem::fingerprint;
use crate::store::Store;

/// The manifest's file name under `secrets/`.
pub const FILE: &str = "manifest.toml";

const HEADER: &str = "# Written by kpki: what each file in secrets/ holds (a SHA-256 of its public material, never of\n# a private key) and who can decrypt it. kpki re-encrypts a file only when this changes.\n\n";

/// What one encrypted file holds and who can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// `sha256:HEX` of the certificate or public key the file holds or belongs to.
    pub public: String,
    /// Canonical recipients, admins first.
    pub recipients: Vec<String>,
    /// For a certificate file, what anyone may know of its (first) certificate: expiry and
    /// names can be checked from the signed manifest without decrypting anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<PublicFacts>,
}

/// Every encrypted file, by its path relative to `pki/` (and, with `.age`, to `secrets/`), and
/// the certificates the etcd CA revoked, by serial number (lowercase hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Increased by every write: a clone refuses a state older than one it has verified.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<String, Revocation>,
    /// During a rotation of the etcd CA: the certificates of the old CA that the new CA's
    /// leaves replaced, by serial. Members still trusting the old CA accept them until the
    /// rotation finishes, so revoking a file revokes these too (etcd matches serials only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub superseded: BTreeMap<String, Superseded>,
    /// The certificates each CA's `ca.pem` holds, by CA (`etcd`), newest first (base64 DER).
    /// Public, and signed with the rest: a clone with no identity and no `pki/` (a CI job) can
    /// tell which CA generation a server presents and trusts (`kpki rollout`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cas: BTreeMap<String, Vec<String>>,
}

/// A certificate replaced by a CA rotation that is still trusted until the rotation finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Superseded {
    /// The file it was, relative to `pki/`.
    pub file: String,
    /// When it expires (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
}

/// A revoked certificate, listed on the etcd CA's revocation list until it would have expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The file it was, relative to `pki/` (`node-03/etcd-peer.pem`).
    pub file: String,
    /// Why it was revoked.
    pub reason: Reason,
    /// When kpki revoked it (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub revoked: time::OffsetDateTime,
    /// When it expires (RFC 3339); its entry goes from the list after that.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
}

/// The signature table that ends a signed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// `ecdsa-p256-sha256`, `ecdsa-p384-sha384`, `ed25519` or `rsa-pkcs1-sha256`.
    pub algorithm: String,
    /// The signing Kubernetes CA's certificate (base64 DER).
    pub certificate: String,
    /// The signature over the body (base64).
    pub value: String,
    /// How trust passed from each earlier signer to its successor, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

/// One CA rotation of the signer: the old CA's certificate and the new CA cross-signed by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The earlier signer's certificate (base64 DER).
    pub from: String,
    /// Its successor, cross-signed by it (base64 DER).
    pub to: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tail {
    signature: Signature,
}

/// The line that starts the signature table; the body ends just before it.
const SIGNATURE_TABLE: &str = "\n[signature]\n";

/// The manifest as read from disk.
#[derive(Debug, Default)]
pub struct Loaded {
    pub manifest: Manifest,
    /// The fingerprint of the whole text; `None` when there is no manifest.
    pub fingerprint: Option<String>,
    /// The signed bytes and their signature; `None` when the manifest is unsigned.
    pub signed: Option<(String, Signature)>,
    /// Whether `manifest` came from the parse a writer kept ([`save_parsed`]), not the TOML.
    pub from_cache: bool,
}

/// The parsed manifest a writer keeps in `pki/.kpki/` (git-ignored): at thousands of nodes
/// parsing the TOML is the slowest part of opening a cluster, JSON several times faster. It is
/// bound to the manifest file's stamp (inode, size, mtime, ctime) and fingerprint, so a copy
/// pushed into a clone (`git add -f`) can never stand in for the manifest the clone has.
#[derive(Serialize, Deserialize)]
struct Parsed {
    stamp: String,
    source: String,
    manifest: Manifest,
}

/// The file of [`Parsed`], under the state directory.
const PARSED: &str = "manifest.json";

/// Keeps `manifest`, which `secrets/manifest.toml` (whose fingerprint is `source`) holds, for the
/// next command to read without parsing the TOML.
pub fn save_parsed(store: &Store, manifest: &Manifest, source: &str) -> Result<()> {
    let Some(stamp) = store.stamp(&store.secrets_path(FILE))? else {
        return Ok(());
    };
    let parsed = Parsed {
        stamp: stamp.render(),
        source: source.to_string(),
        manifest: manifest.clone(),
    };
    let json = serde_json::to_vec(&parsed).expect("a manifest serializes");
    store.write_state(PARSED, &json)
}

/// The kept parse of the manifest file with `stamp` and fingerprint `source`, if one is kept.
fn parsed(store: &Store, stamp: &crate::store::Stamp, source: &str) -> Option<Manifest> {
    let bytes = store
        .read(&store.state_path(PARSED), crate::store::TEXT_LIMIT)
        .ok()??;
    let parsed: Parsed = serde_json::from_slice(&bytes).ok()?;
    (parsed.stamp == stamp.render() && parsed.source == source).then_some(parsed.manifest)
}

/// Why a certificate was revoked; anything else in the manifest is an error, never a default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Its node or declaration left the config.
    Removed,
    /// A shared certificate a removed node could read, reissued.
    Superseded,
    /// `kpki revoke`.
    Compromised,
}

impl Manifest {
    /// The manifest on disk; empty when there is none yet.
    pub fn load(store: &Store) -> Result<Loaded> {
        let path = store.secrets_path(FILE);
        let Some((bytes, stamp)) = store.read_stamped(&path, crate::store::TEXT_LIMIT)? else {
            return Ok(Loaded::default());
        };
        let text = String::from_utf8(bytes).map_err(|_| Error::file(&path, "is not UTF-8 text"))?;
        if has_conflict_markers(&text) {
            return Err(Error::usage(
                format!("{} has unresolved merge conflicts", path.display()),
                Some("keep the side already pushed, whole, then redo your change: see docs/team.md, \"Working as a team\"".into()),
            ));
        }
        let not_a_manifest = |e: toml::de::Error| {
            Error::file(
                &path,
                format!("is not a kpki manifest ({})", e.message().trim()),
            )
        };
        // The signed body is the text up to the signature table: kept by truncating the text,
        // not copied (megabytes at thousands of nodes).
        let signature = match text.find(SIGNATURE_TABLE) {
            Some(at) => {
                let tail: Tail = toml::from_str(&text[at + 1..]).map_err(not_a_manifest)?;
                Some((at + 1, tail.signature))
            }
            None => None,
        };
        let source = fingerprint(text.as_bytes());
        let kept = parsed(store, &stamp, &source);
        let from_cache = kept.is_some();
        let body = &text[..signature.as_ref().map_or(text.len(), |(at, _)| *at)];
        let manifest = match kept {
            Some(manifest) => manifest,
            None => toml::from_str(body).map_err(not_a_manifest)?,
        };
        let signed = signature.map(|(at, signature)| {
            let mut body = text;
            body.truncate(at);
            (body, signature)
        });
        Ok(Loaded {
            manifest,
            fingerprint: Some(source),
            signed,
            from_cache,
        })
    }

    /// The body, the bytes the signature covers: the header, the manifest's tables and a
    /// blank line before the signature table.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a manifest always serializes");
        format!("{HEADER}{body}\n")
    }
}

/// The whole file: `body` (as [`Manifest::render`] made it) followed by its signature.
pub fn signed_text(body: &str, signature: Signature) -> String {
    let tail = toml::to_string(&Tail { signature }).expect("a signature always serializes");
    format!("{body}{tail}")
}

/// Whether `text` holds git's conflict markers (a merge or rebase left it unresolved).
fn has_conflict_markers(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("<<<<<<< ") || l == "=======" || l.starts_with(">>>>>>> "))
}

/// Whether `rel` is a path kpki may use below `pki/` and `secrets/`: `/`-separated names of
/// letters, digits, `.`, `_`, `-`, `@`, none empty or starting with `.`.
pub fn safe_path(rel: &str) -> bool {
    rel.len() <= 512
        && rel.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_reason_is_one_of_three() {
        let entry = |reason: &str| {
            format!(
                "file = \"a/b.pem\"\nreason = \"{reason}\"\nrevoked = \"2026-01-01T00:00:00Z\"\nnot_after = \"2027-01-01T00:00:00Z\"\n"
            )
        };
        for (text, reason) in [
            ("removed", Reason::Removed),
            ("superseded", Reason::Superseded),
            ("compromised", Reason::Compromised),
        ] {
            let r: Revocation = toml::from_str(&entry(text)).unwrap();
            assert_eq!(r.reason, reason);
        }
        assert!(toml::from_str::<Revocation>(&entry("keyCompromise")).is_err());
    }

    #[test]
    fn only_plain_relative_paths_are_safe() {
        for good in [
            "kubernetes/ca.pem",
            "users/bob@example.org.pem",
            "node-01/kubelet-key.pem",
        ] {
            assert!(safe_path(good), "{good}");
        }
        for bad in [
            "../x.pem",
            "a/../b",
            "/etc/passwd",
            ".kpki/cache",
            "a//b",
            "",
            "a/.b",
            "a b",
        ] {
            assert!(!safe_path(bad), "{bad}");
        }
    }
}
