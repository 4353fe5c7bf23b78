//! The committed manifest, `secrets/manifest.toml`: per encrypted file, a fingerprint of the
//! public material it holds and the recipients it is encrypted to. age output is never the same
//! twice, so this (not the ciphertext) decides whether a file must be encrypted again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pem::fingerprint;
use crate::store::Store;

/// The manifest's file name under `secrets/`.
pub const FILE: &str = "manifest.toml";

const HEADER: &str = "# Written by kpki: what each file in secrets/ holds (a SHA-256 of its public material, never of\n# a private key) and who can decrypt it. kpki re-encrypts a file only when this changes.\n\n";

/// What one encrypted file holds and who can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// `sha256:HEX` of the certificate or public key the file holds or belongs to.
    pub public: String,
    /// Canonical recipients, admins first.
    pub recipients: Vec<String>,
}

/// Every encrypted file, by its path relative to `pki/` (and, with `.age`, to `secrets/`), and
/// the certificates the etcd CA revoked, by serial number (lowercase hex).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub files: BTreeMap<String, Entry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revoked: BTreeMap<String, Revocation>,
    /// During a rotation of the etcd CA: the certificates of the old CA that the new CA's
    /// leaves replaced, by serial. Members still trusting the old CA accept them until the
    /// rotation finishes, so revoking a file revokes these too (etcd matches serials only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub superseded: BTreeMap<String, Superseded>,
}

/// A certificate replaced by a CA rotation that is still trusted until the rotation finishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Superseded {
    /// The file it was, relative to `pki/`.
    pub file: String,
    /// When it expires (RFC 3339).
    pub not_after: String,
}

/// A revoked certificate, listed on the etcd CA's revocation list until it would have expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The file it was, relative to `pki/` (`node-03/etcd-peer.pem`).
    pub file: String,
    /// Why: `removed` (its node or declaration left the config), `superseded` (a shared
    /// certificate a removed node could read, reissued) or `compromised` (`kpki revoke`).
    pub reason: String,
    /// When kpki revoked it (RFC 3339).
    pub revoked: String,
    /// When it expires (RFC 3339); its entry goes from the list after that.
    pub not_after: String,
}

impl Manifest {
    /// The manifest on disk and the fingerprint of its text; empty and `None` when there is
    /// none yet.
    pub fn load(store: &Store) -> Result<(Manifest, Option<String>)> {
        let path = store.secrets_path(FILE);
        match store.read_text(&path)? {
            None => Ok((Manifest::default(), None)),
            Some(text) if has_conflict_markers(&text) => Err(Error::usage(
                format!("{} has unresolved merge conflicts", path.display()),
                Some("keep the side already pushed, whole, then redo your change: see README.md, \"Working as a team\"".into()),
            )),
            Some(text) => {
                let manifest = toml::from_str(&text).map_err(|e| {
                    Error::file(
                        &path,
                        format!("is not a kpki manifest ({})", e.message().trim()),
                    )
                })?;
                Ok((manifest, Some(fingerprint(text.as_bytes()))))
            }
        }
    }

    /// The manifest as written to disk.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a manifest always serializes");
        format!("{HEADER}{body}")
    }
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
