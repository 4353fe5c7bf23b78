//! Whom the cluster's state answers to. The repository is shared with people who hold no admin
//! key, so the manifest (which vouches for every file in `secrets/`) is signed by the
//! Kubernetes CA, and each clone pins the signer it trusts and the highest generation it has
//! verified in `pki/.kpki/trust` (git-ignored). A pusher without the CA key cannot sign, so
//! cannot make kpki trust anything it adds; a rollback to an older signed state is refused; a
//! CA rotation moves the pin forward only through the cross-signature the old CA made.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rcgen::{KeyPair, SigningKey};
use std::collections::HashMap;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{Error, Result};
use crate::manifest::{self, Link, Loaded, Manifest, Signature};
use crate::pem::fingerprint;
use crate::store::Store;

/// The pin's name under `pki/.kpki/`.
pub const PIN_FILE: &str = "trust";

const PIN_HEADER: &str = "kpki trust 1";

/// What this clone trusts: the signer's key and the highest generation verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `sha256:HEX` of the signer's SubjectPublicKeyInfo (as kubeadm's CA hashes are).
    pub signer: String,
    pub generation: u64,
}

impl Pin {
    /// The clone's pin, if it has one.
    pub fn load(store: &Store) -> Result<Option<Pin>> {
        let path = store.state_path(PIN_FILE);
        let Some(text) = store.read_text(&path)? else {
            return Ok(None);
        };
        // A pin committed with `git add -f` would reach every fresh clone and pin it to
        // whoever pushed it, without the note a first use shows.
        if !crate::store::tracked(store, &path).is_empty() {
            return Err(Error::file(
                &path,
                "is tracked by git, so whoever can push chooses it: a pin is this clone's own (git rm --cached it, then pin with --trust or KPKI_TRUST)",
            ));
        }
        Pin::parse(&text).map(Some).ok_or_else(|| {
            Error::file(&path, "is damaged (delete it, then pin again with --trust)")
        })
    }

    fn parse(text: &str) -> Option<Pin> {
        let mut lines = text.lines();
        (lines.next()? == PIN_HEADER).then_some(())?;
        let signer = lines.next()?.strip_prefix("signer ")?;
        valid_fingerprint(signer).then_some(())?;
        let generation = lines.next()?.strip_prefix("generation ")?.parse().ok()?;
        Some(Pin {
            signer: signer.to_string(),
            generation,
        })
    }

    /// Records the pin in this clone.
    pub fn save(&self, store: &Store) -> Result<()> {
        let text = format!(
            "{PIN_HEADER}\nsigner {}\ngeneration {}\n",
            self.signer, self.generation
        );
        store.write_state(PIN_FILE, text.as_bytes())
    }
}

/// Records `pin` in this clone, unless it is already there.
pub fn pin(store: &Store, pin: Option<Pin>) -> Result<()> {
    match pin {
        Some(pin) if Pin::load(store)?.as_ref() != Some(&pin) => pin.save(store),
        _ => Ok(()),
    }
}

/// Whether `s` reads `sha256:` and 64 lowercase hex digits.
pub fn valid_fingerprint(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// How this run decides whom to trust.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// A fingerprint given out of band (`--trust`, `KPKI_TRUST`): it replaces the pin.
    pub given: Option<String>,
    /// Accept a generation older than the pin's (`--allow-rollback`).
    pub allow_rollback: bool,
}

/// The outcome of checking the manifest against the pin.
#[derive(Debug, Default)]
pub struct Verdict {
    /// The pin to record: what was verified, or `None` when nothing was (no or an unsigned
    /// manifest in a clone that never pinned).
    pub pin: Option<Pin>,
    /// Things to tell the admin: a first use, an unsigned manifest, a signer that moved on.
    pub notes: Vec<String>,
}

/// Why the manifest cannot be trusted: one line, and what to do.
#[derive(Debug)]
pub struct Problem {
    pub message: String,
    pub hint: String,
}

impl Problem {
    fn new(message: impl Into<String>, hint: impl Into<String>) -> Problem {
        Problem {
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// For a writer: the error that stops it.
    pub fn into_error(self) -> Error {
        Error::usage(self.message, Some(self.hint))
    }
}

const FILE: &str = "secrets/manifest.toml";

/// Checks the manifest as loaded against the pin (or the fingerprint given) and `policy`.
pub fn check(loaded: &Loaded, pin: Option<&Pin>, policy: &Policy) -> Result<Verdict, Problem> {
    let anchor = policy.given.as_deref().or(pin.map(|p| p.signer.as_str()));
    let Some((body, signature)) = &loaded.signed else {
        return unsigned(loaded, pin, anchor);
    };
    let signer = verify_signature(body.as_bytes(), signature)?;
    let generation = loaded.manifest.generation;
    let mut notes = Vec::new();
    match anchor {
        None => notes.push(format!(
            "this clone trusts {FILE} on first use: it is signed by the Kubernetes CA {signer}; compare that with a teammate's kpki status, or pin it with --trust {signer}"
        )),
        Some(trusted) if trusted != signer => {
            linked(trusted, &signer, &signature.links)?;
            notes.push(format!(
                "the Kubernetes CA that signs {FILE} moved on from {trusted} to {signer} by a CA rotation the old CA signed; this clone now trusts the new one"
            ));
        }
        Some(_) => {}
    }
    let pinned = pin.map_or(0, |p| p.generation);
    if generation < pinned {
        if !policy.allow_rollback {
            return Err(Problem::new(
                format!(
                    "{FILE} is generation {generation}, older than generation {pinned}, which this clone has verified: a rollback (git revert or reset, an old branch) would undo changes such as revocations"
                ),
                "pull the newer state; if you dropped your own unpushed work on purpose, run again with --allow-rollback (revocations are kept)",
            ));
        }
        notes.push(format!(
            "--allow-rollback: accepting generation {generation} of {FILE}, older than generation {pinned} verified here"
        ));
    }
    Ok(Verdict {
        pin: Some(Pin {
            signer,
            generation: generation.max(pinned),
        }),
        notes,
    })
}

/// A manifest without a signature: none at all, or one written by a kpki that did not sign.
/// Either is fine only in a clone that never trusted a signed one.
fn unsigned(loaded: &Loaded, pin: Option<&Pin>, anchor: Option<&str>) -> Result<Verdict, Problem> {
    let what = match loaded.fingerprint {
        None => "is missing",
        Some(_) => "is not signed",
    };
    if let Some(pin) = pin {
        return Err(Problem::new(
            format!(
                "{FILE} {what}, but this clone has verified generation {} of it, signed by {}: it was replaced or stripped",
                pin.generation, pin.signer
            ),
            "restore it from git (git log -- secrets/manifest.toml) and look at who changed it; to start a new cluster here instead, delete pki/.kpki/trust",
        ));
    }
    if let (Some(anchor), Some(_)) = (anchor, &loaded.fingerprint) {
        return Err(Problem::new(
            format!("{FILE} is not signed, but --trust {anchor} asks for a signed one"),
            "an admin signs it by running kpki init in a clone that trusts it",
        ));
    }
    let notes = match loaded.fingerprint {
        Some(_) => vec![format!(
            "{FILE} is not signed yet (an older kpki wrote it): the next command that writes signs it with the Kubernetes CA"
        )],
        None => Vec::new(),
    };
    Ok(Verdict { pin: None, notes })
}

/// Verifies the signature over `body` with the certificate it names; returns the signer's
/// fingerprint.
fn verify_signature(body: &[u8], signature: &Signature) -> Result<String, Problem> {
    let bad = |what: &str| {
        Problem::new(
            format!("{FILE}: {what}"),
            "restore it from git (git log -- secrets/manifest.toml) and look at who changed it",
        )
    };
    let cert_der = decode(&signature.certificate)
        .ok_or_else(|| bad("its signer certificate is not base64"))?;
    let cert = parse_ca(&cert_der).map_err(|m| bad(&format!("its signer {m}")))?;
    let value = decode(&signature.value).ok_or_else(|| bad("its signature is not base64"))?;
    let spki = cert.public_key();
    let (algorithm, name) = ring_algorithm(spki)
        .ok_or_else(|| bad("its signer's key type is not one kpki signs with"))?;
    if name != signature.algorithm {
        return Err(bad(
            "its signature algorithm does not match the signer's key",
        ));
    }
    ring::signature::UnparsedPublicKey::new(algorithm, spki.subject_public_key.data.as_ref())
        .verify(body, &value)
        .map_err(|_| {
            bad("its signature does not verify (it was edited after an admin signed it)")
        })?;
    Ok(fingerprint(spki.raw))
}

/// The most links a manifest may carry: one per Kubernetes CA rotation, far more than a
/// cluster sees, and few enough that a padded signature table cannot make every run spin.
const MAX_LINKS: usize = 256;

/// Whether trust passes from the key `trusted` to the key `signer` through `links`, each
/// verified: the successor's certificate signed by the key trusted so far. Each link is
/// parsed once and followed at most once, so the walk is linear in the links.
fn linked(trusted: &str, signer: &str, links: &[Link]) -> Result<(), Problem> {
    if links.len() > MAX_LINKS {
        return Err(Problem::new(
            format!(
                "{FILE} carries {} links, more than the {MAX_LINKS} any cluster needs: it was padded",
                links.len()
            ),
            "do not run kpki on this state: find who changed it (git log -- secrets/)",
        ));
    }
    let mut from: HashMap<String, Vec<&Link>> = HashMap::new();
    for link in links {
        if let Some(fp) = decode(&link.from).as_deref().and_then(key_fingerprint) {
            from.entry(fp).or_default().push(link);
        }
    }
    let mut current = trusted.to_string();
    while current != signer {
        let Some(next) = from
            .remove(&current)
            .and_then(|out| out.into_iter().find_map(|l| step(&current, l)))
        else {
            return Err(Problem::new(
                format!(
                    "{FILE} is signed by {signer}, not by the Kubernetes CA this clone trusts ({trusted}), and no cross-signature of the trusted CA links the two: the CA was replaced, not rotated"
                ),
                "do not run kpki on this state: find who changed it (git log -- secrets/); if the change is genuine, pin the new CA with --trust after comparing its fingerprint out of band",
            ));
        };
        current = next;
    }
    Ok(())
}

/// Where `link` leads from the key `current`, if it starts there and its signature holds.
fn step(current: &str, link: &Link) -> Option<String> {
    let from = decode(&link.from)?;
    let to = decode(&link.to)?;
    let (_, from) = X509Certificate::from_der(&from).ok()?;
    (fingerprint(from.public_key().raw) == current).then_some(())?;
    let to = parse_ca(&to).ok()?;
    to.verify_signature(Some(from.public_key())).ok()?;
    Some(fingerprint(to.public_key().raw))
}

/// A CA certificate's DER, parsed; the error says why it is not one.
fn parse_ca(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("is not a certificate ({e})"))?;
    if !rest.is_empty() || !cert.is_ca() {
        return Err("is not a CA certificate".into());
    }
    Ok(cert)
}

fn decode(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// The fingerprint of the key that made `signature` (not verified: for display).
pub fn signer(signature: Option<&Signature>) -> Option<String> {
    key_fingerprint(&decode(&signature?.certificate)?)
}

/// The fingerprint of a certificate's key, as pins and `--trust` give it.
pub fn key_fingerprint(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
    Some(fingerprint(cert.public_key().raw))
}

/// ring's verification algorithm for a key, and its name in the manifest.
fn ring_algorithm(
    spki: &SubjectPublicKeyInfo<'_>,
) -> Option<(
    &'static dyn ring::signature::VerificationAlgorithm,
    &'static str,
)> {
    use ring::signature as sig;
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ED25519,
    };
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_SIG_ED25519 {
        return Some((&sig::ED25519, "ed25519"));
    }
    if *oid == OID_PKCS1_RSAENCRYPTION {
        return Some((&sig::RSA_PKCS1_2048_8192_SHA256, "rsa-pkcs1-sha256"));
    }
    if *oid != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return None;
    }
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    if curve == OID_EC_P256 {
        Some((&sig::ECDSA_P256_SHA256_ASN1, "ecdsa-p256-sha256"))
    } else if curve == OID_NIST_EC_P384 {
        Some((&sig::ECDSA_P384_SHA384_ASN1, "ecdsa-p384-sha384"))
    } else {
        None
    }
}

/// The generation a write commits: one past the `committed` manifest's and this clone's pin
/// (after `--allow-rollback`, the pin's is the higher).
pub fn next_generation(store: &Store, committed: &Manifest) -> Result<u64> {
    let pinned = Pin::load(store)?.map_or(0, |p| p.generation);
    Ok(committed.generation.max(pinned) + 1)
}

/// The signer's side: the Kubernetes CA (its certificate and key), and the cross-signed
/// certificate that links it to the previous signer during a rotation.
pub struct Signer<'a> {
    pub cert_der: &'a [u8],
    pub key: &'a KeyPair,
    /// The current CA cross-signed by the one before it, if a rotation made one.
    pub cross_der: Option<&'a [u8]>,
}

/// The manifest's full text, signed: `manifest` (whose generation the caller set) with the
/// links of `previous` carried over, plus one when the signer changed.
pub fn sign(
    manifest: &Manifest,
    signer: &Signer<'_>,
    previous: Option<&Signature>,
) -> Result<String> {
    let me = key_fingerprint(signer.cert_der).ok_or_else(|| {
        Error::crypto(
            "signing the manifest",
            "the Kubernetes CA certificate does not parse",
        )
    })?;
    let mut links = previous.map(|p| p.links.clone()).unwrap_or_default();
    if let Some(previous) = previous {
        let before = decode(&previous.certificate).and_then(|d| key_fingerprint(&d));
        if before.as_deref() != Some(me.as_str()) {
            links.push(link_to(previous, signer, &me)?);
        }
    }
    let body = manifest.render();
    let value = signer
        .key
        .sign(body.as_bytes())
        .map_err(|e| Error::crypto("signing the manifest with the Kubernetes CA key", e))?;
    let spki = X509Certificate::from_der(signer.cert_der)
        .map_err(|e| Error::crypto("signing the manifest", e))?
        .1;
    let (_, name) = ring_algorithm(spki.public_key()).ok_or_else(|| {
        Error::crypto(
            "signing the manifest",
            "the Kubernetes CA's key type is not one kpki signs with",
        )
    })?;
    let signature = Signature {
        algorithm: name.to_string(),
        certificate: BASE64.encode(signer.cert_der),
        value: BASE64.encode(value),
        links,
    };
    Ok(manifest::signed_text(&body, signature))
}

/// The link from the previous signer to this one: the cross-signed certificate, which must
/// carry this signer's key and verify under the previous one.
fn link_to(previous: &Signature, signer: &Signer<'_>, me: &str) -> Result<Link> {
    let candidate = Link {
        from: previous.certificate.clone(),
        to: BASE64.encode(signer.cross_der.unwrap_or_default()),
    };
    let before = decode(&previous.certificate)
        .and_then(|d| key_fingerprint(&d))
        .unwrap_or_default();
    match step(&before, &candidate) {
        Some(next) if next == me => Ok(candidate),
        _ => Err(Error::usage(
            format!(
                "the Kubernetes CA ({me}) is not the one that signed {FILE} ({before}), and that CA did not cross-sign it: kpki carries trust only through a rotation (kpki rotate --ca kubernetes)"
            ),
            Some("restore pki/kubernetes/ from git, or look at who replaced the CA (git log -- secrets/kubernetes)".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_reads_back_and_rejects_garbage() {
        let pin = Pin {
            signer: format!("sha256:{}", "ab".repeat(32)),
            generation: 12,
        };
        let text = format!(
            "{PIN_HEADER}\nsigner {}\ngeneration {}\n",
            pin.signer, pin.generation
        );
        assert_eq!(Pin::parse(&text), Some(pin));
        assert_eq!(
            Pin::parse("kpki trust 1\nsigner sha256:xy\ngeneration 1\n"),
            None
        );
        assert!(!valid_fingerprint("sha256:AB"));
    }

    /// A CA named `cn` with a key of its own, signed by `by` (none: by itself).
    fn ca(cn: &str, by: Option<&(rcgen::Certificate, KeyPair)>) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
        let cert = match by {
            None => params.self_signed(&key).unwrap(),
            Some((issuer_cert, issuer_key)) => {
                let issuer =
                    rcgen::Issuer::from_ca_cert_der(issuer_cert.der(), issuer_key).unwrap();
                params.signed_by(&key, &issuer).unwrap()
            }
        };
        (cert, key)
    }

    fn link(from: &rcgen::Certificate, to: &rcgen::Certificate) -> Link {
        Link {
            from: BASE64.encode(from.der()),
            to: BASE64.encode(to.der()),
        }
    }

    fn fp(cert: &rcgen::Certificate) -> String {
        key_fingerprint(cert.der()).unwrap()
    }

    #[test]
    fn trust_follows_links_forward_in_any_order_and_never_backward() {
        let a = ca("a", None);
        let b = ca("b", Some(&a));
        let c = ca("c", Some(&b));
        let forged = ca("forged", None);
        // Out of order, with a link that leads nowhere and one that claims a step it did not take.
        let links = [
            link(&b.0, &c.0),
            link(&forged.0, &forged.0),
            link(&a.0, &forged.0),
            link(&a.0, &b.0),
        ];
        assert!(linked(&fp(&a.0), &fp(&c.0), &links).is_ok());
        assert!(linked(&fp(&b.0), &fp(&c.0), &links).is_ok());
        assert!(linked(&fp(&c.0), &fp(&a.0), &links).is_err());
        assert!(linked(&fp(&a.0), &fp(&forged.0), &links).is_err());
    }

    #[test]
    fn a_padded_signature_table_is_refused_before_any_parse() {
        let junk = Link {
            from: "AAAA".into(),
            to: "AAAA".into(),
        };
        let links = vec![junk; MAX_LINKS + 1];
        let problem = linked("sha256:a", "sha256:b", &links).unwrap_err();
        assert!(problem.message.contains("padded"), "{}", problem.message);
    }
}
