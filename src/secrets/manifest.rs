//! The committed manifest, `secrets/manifest.toml`: per encrypted file, a fingerprint of the
//! public material it holds and the recipients it is encrypted to. age output is never the same
//! twice, so this (not the ciphertext) decides whether a file must be encrypted again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::{self, Store};

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

/// Every encrypted file, by its path relative to `pki/` (and, with `.age`, to `secrets/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub files: BTreeMap<String, Entry>,
}

impl Manifest {
    /// The manifest on disk; empty when there is none yet.
    pub fn load(store: &Store) -> Result<Manifest> {
        let path = store.secrets_path(FILE);
        match store::read_optional(&path)? {
            None => Ok(Manifest::default()),
            Some(text) => toml::from_str(&text).map_err(|e| {
                Error::file(&path, format!("is not a kpki manifest ({})", e.message()))
            }),
        }
    }

    /// Whether a manifest exists on disk, i.e. secrets were written before.
    pub fn exists(store: &Store) -> bool {
        store.secrets_path(FILE).exists()
    }

    /// The manifest as written to disk.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).expect("a manifest always serializes");
        format!("{HEADER}{body}")
    }
}

/// `sha256:HEX` of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
