//! What may be in each kind of file of the PKI, read strictly, and its canonical encoding.
//!
//! Parse, don't pass through: a certificate file holds CERTIFICATE blocks and nothing else, a key
//! file exactly one PKCS#8 private key, a public-key file PUBLIC KEY blocks; no text before,
//! between or after them. What kpki seals, fingerprints and hands out is re-encoded from what it
//! parsed, in the encoding rcgen writes, so a file kpki wrote reads back byte for byte.

use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

/// The most blocks a file may hold: a CA bundle during a rotation holds two, a leaf two.
const MAX_BLOCKS: usize = 8;

/// What a file of the PKI holds, which decides how it is parsed and fingerprinted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// One or more X.509 certificates: a certificate, a chain, or a CA bundle.
    Certificates,
    /// Exactly one PKCS#8 private key.
    PrivateKey,
    /// One or more public keys (the service-account key pair's `sa.pem`).
    PublicKeys,
    /// A kubeconfig made by kpki (only ever sealed, never parsed here).
    Kubeconfig,
    /// One certificate revocation list in PEM (the etcd CA's `crl.pem`).
    Crl,
    /// One certificate revocation list in DER (the etcd CA's `crl.der`, which etcd reads).
    CrlDer,
}

impl FileKind {
    /// The PEM label of its blocks.
    fn label(self) -> &'static str {
        match self {
            FileKind::Certificates => "CERTIFICATE",
            FileKind::PrivateKey => "PRIVATE KEY",
            FileKind::PublicKeys => "PUBLIC KEY",
            FileKind::Kubeconfig => "",
            FileKind::Crl | FileKind::CrlDer => "X509 CRL",
        }
    }

    /// What the file must hold, for errors.
    fn wanted(self) -> &'static str {
        match self {
            FileKind::Certificates => "only certificates",
            FileKind::PrivateKey => "exactly one PKCS#8 private key",
            FileKind::PublicKeys => "only public keys",
            FileKind::Kubeconfig => "a kubeconfig",
            FileKind::Crl => "exactly one revocation list",
            FileKind::CrlDer => "exactly one revocation list in DER",
        }
    }

    /// Its blocks, in words (errors never echo a PEM label that looks like a secret).
    fn noun(self) -> &'static str {
        match self {
            FileKind::Certificates => "certificate",
            FileKind::PrivateKey => "private-key",
            FileKind::PublicKeys => "public-key",
            FileKind::Kubeconfig => "kubeconfig",
            FileKind::Crl | FileKind::CrlDer => "revocation-list",
        }
    }
}

/// A file's content, checked and re-encoded, with its DER blocks (decoded once).
#[derive(Debug)]
pub struct Material {
    pub kind: FileKind,
    /// The canonical text: each block re-encoded as rcgen writes it.
    pub text: Zeroizing<String>,
    /// `sha256:HEX` of its public material: the canonical text of a certificate or public-key
    /// file, the SubjectPublicKeyInfo of a private key (never a hash of the key itself).
    pub fingerprint: String,
    /// The DER of each block, in order; never empty.
    blocks: Vec<Zeroizing<Vec<u8>>>,
}

impl Material {
    /// A file's `bytes` that kpki wrote or checked before and that are unchanged since (the
    /// file's stamp says so), with the fingerprint recorded then: framed, but the DER not
    /// parsed or checked again.
    pub fn recorded(kind: FileKind, bytes: &[u8], fingerprint: String) -> Result<Material, String> {
        let blocks = match kind {
            FileKind::CrlDer => unframed(bytes)?,
            _ => frame(bytes, kind)?,
        };
        let text = match kind {
            FileKind::CrlDer => Zeroizing::new(encode(kind.label(), &blocks[0].der)),
            _ => Zeroizing::new(String::from_utf8_lossy(bytes).into_owned()),
        };
        Ok(Material {
            kind,
            text,
            fingerprint,
            blocks: blocks.into_iter().map(|b| b.der).collect(),
        })
    }

    /// A key kpki just generated, taken from the key pair as it is: parsing its PEM again would
    /// derive the public key twice more (a P-256 multiplication each, ten thousand keys at
    /// 5,000 nodes).
    pub fn of_key(key: &rcgen::KeyPair) -> Material {
        use rcgen::PublicKeyData;
        Material {
            kind: FileKind::PrivateKey,
            text: Zeroizing::new(key.serialize_pem()),
            fingerprint: fingerprint(&key.subject_public_key_info()),
            blocks: vec![Zeroizing::new(key.serialize_der())],
        }
    }

    /// The file's bytes as kpki writes and seals them: the canonical text, or for a DER file
    /// its one block.
    pub fn file_bytes(&self) -> Zeroizing<Vec<u8>> {
        match self.kind {
            FileKind::CrlDer => self.blocks[0].clone(),
            _ => Zeroizing::new(self.text.as_bytes().to_vec()),
        }
    }

    /// The DER of every block, in order (at least one).
    pub fn blocks(&self) -> &[Zeroizing<Vec<u8>>] {
        &self.blocks
    }

    /// The DER of the first block: a file's own certificate (before its chain or, in a CA
    /// bundle, the newest CA), its key, its list.
    pub fn first(&self) -> &[u8] {
        &self.blocks[0]
    }

    /// The certificates of a certificate file, in order; an error naming what it holds instead.
    pub fn certificates(&self) -> Result<&[Zeroizing<Vec<u8>>], String> {
        match self.kind {
            FileKind::Certificates => Ok(&self.blocks),
            other => Err(format!("holds {} blocks, not certificates", other.noun())),
        }
    }

    /// The public keys of a public-key file (the service-account file may hold two).
    pub fn public_keys(&self) -> Result<&[Zeroizing<Vec<u8>>], String> {
        match self.kind {
            FileKind::PublicKeys => Ok(&self.blocks),
            other => Err(format!("holds {} blocks, not public keys", other.noun())),
        }
    }
}

/// `sha256:HEX` of `bytes`.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    format!("sha256:{}", base16ct::lower::encode_string(digest.as_ref()))
}

/// Parses the bytes of a file of `kind`; the error says what is wrong, for the caller to
/// prefix with the file's name.
pub fn parse(kind: FileKind, bytes: &[u8]) -> Result<Material, String> {
    if kind == FileKind::Kubeconfig {
        return Err("a kubeconfig is not read back".into());
    }
    let blocks = match kind {
        FileKind::CrlDer => unframed(bytes)?,
        _ => frame(bytes, kind)?,
    };
    if matches!(kind, FileKind::PrivateKey | FileKind::Crl) && blocks.len() != 1 {
        return Err(format!(
            "holds {} {} blocks, but it must hold {}",
            blocks.len(),
            kind.noun(),
            kind.wanted()
        ));
    }
    let mut text = Zeroizing::new(String::new());
    let mut spki = None;
    for (i, block) in blocks.iter().enumerate() {
        spki = check_der(kind, &block.der).map_err(|e| match blocks.len() {
            1 => e,
            _ => format!("block {}: {e}", i + 1),
        })?;
        text.push_str(&encode(kind.label(), &block.der));
    }
    let fingerprint = match spki {
        Some(spki) => fingerprint(&spki),
        None => fingerprint(text.as_bytes()),
    };
    Ok(Material {
        kind,
        text,
        fingerprint,
        blocks: blocks.into_iter().map(|b| b.der).collect(),
    })
}

/// Builds the material of a file kpki made itself (a new key, a signed certificate).
pub fn made(kind: FileKind, bytes: impl AsRef<[u8]>) -> Material {
    parse(kind, bytes.as_ref()).unwrap_or_else(|e| panic!("kpki made an invalid {kind:?}: {e}"))
}

/// One block's label and DER.
struct Block {
    label: String,
    der: Zeroizing<Vec<u8>>,
}

/// The one block of a DER file. PEM there is refused by name: etcd 3.5 and later parse only DER,
/// and refuse every client when the list does not parse.
fn unframed(bytes: &[u8]) -> Result<Vec<Block>, String> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(
            "holds PEM, but it must hold DER: etcd 3.5 and later cannot parse it and refuse every client"
                .into(),
        );
    }
    if bytes.is_empty() {
        return Err("is empty; it must hold exactly one revocation list in DER".into());
    }
    Ok(vec![Block {
        label: FileKind::CrlDer.label().to_string(),
        der: Zeroizing::new(bytes.to_vec()),
    }])
}

/// Splits `bytes` into PEM blocks of `kind`'s label, refusing anything else: other labels,
/// headers, text outside the blocks, bad base64.
fn frame(bytes: &[u8], kind: FileKind) -> Result<Vec<Block>, String> {
    frame_labels(bytes, &[kind.label()], kind.noun(), kind.wanted())
}

/// [`frame`] for blocks labelled any of `labels`; `noun` and `wanted` word the errors.
fn frame_labels(
    bytes: &[u8],
    labels: &[&str],
    noun: &str,
    wanted: &str,
) -> Result<Vec<Block>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "is not text (PEM expected)".to_string())?;
    let mut blocks = Vec::new();
    let mut body: Option<(&str, Zeroizing<String>)> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw).trim_end();
        let at = || format!("line {}", n + 1);
        let begun = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"));
        match &mut body {
            None if line.is_empty() => {}
            None if begun.is_some_and(|l| labels.contains(&l)) => {
                let label = labels.iter().find(|l| Some(**l) == begun).expect("matched");
                body = Some((label, Zeroizing::new(String::new())));
            }
            None if begun.is_some() => {
                return Err(format!(
                    "{}: a block of another kind ({:?}), but it must hold {wanted}",
                    at(),
                    begun.unwrap_or_default().to_ascii_lowercase()
                ));
            }
            None => {
                return Err(format!(
                    "{}: text outside a PEM block; it must hold {wanted}",
                    at()
                ));
            }
            Some((label, b)) if line == format!("-----END {label}-----") => {
                let der = decode(noun, b)?;
                if der.is_empty() {
                    return Err(format!("{}: an empty {noun} block", at()));
                }
                blocks.push(Block {
                    label: label.to_string(),
                    der,
                });
                body = None;
            }
            Some((_, b)) => {
                if line.is_empty()
                    || !line
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='))
                {
                    return Err(format!("{}: not base64 inside a {noun} block", at()));
                }
                b.push_str(line);
            }
        }
        if blocks.len() > MAX_BLOCKS {
            return Err(format!("holds more than {MAX_BLOCKS} {noun} blocks"));
        }
    }
    if body.is_some() {
        return Err(format!("a {noun} block is not closed (truncated?)"));
    }
    if blocks.is_empty() {
        return Err(format!("holds no {noun} block; it must hold {wanted}"));
    }
    Ok(blocks)
}

/// A private key in any of the encodings other tools write (PKCS#8; PKCS#1 RSA, as kubeadm and
/// cfssl write; SEC1 EC on P-256 or P-384), as kpki's PKCS#8 PEM, checked.
pub fn adopt_key(bytes: &[u8]) -> Result<Material, String> {
    const LABELS: [&str; 4] = [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
    ];
    let blocks = frame_labels(bytes, &LABELS, "private-key", "exactly one private key")?;
    let [block] = blocks.as_slice() else {
        return Err(format!(
            "holds {} private keys, but a key file holds exactly one",
            blocks.len()
        ));
    };
    let pkcs8: Zeroizing<Vec<u8>> = match block.label.as_str() {
        "PRIVATE KEY" => block.der.clone(),
        "RSA PRIVATE KEY" => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::EncodePrivateKey;
            let key = rsa::RsaPrivateKey::from_pkcs1_der(&block.der)
                .map_err(|e| format!("not a valid PKCS#1 RSA key ({e})"))?;
            let doc = key
                .to_pkcs8_der()
                .map_err(|e| format!("cannot be converted to PKCS#8 ({e})"))?;
            Zeroizing::new(doc.as_bytes().to_vec())
        }
        "EC PRIVATE KEY" => sec1_to_pkcs8(&block.der)?,
        _ => {
            return Err("is encrypted: decrypt it first (openssl pkey -in FILE -out FILE)".into());
        }
    };
    let text = Zeroizing::new(encode(FileKind::PrivateKey.label(), &pkcs8));
    parse(FileKind::PrivateKey, text.as_bytes())
}

/// A SEC1 EC private key on P-256 or P-384, as PKCS#8 DER.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    use p256::pkcs8::EncodePrivateKey;
    let doc = match p256::SecretKey::from_sec1_der(der) {
        Ok(key) => key.to_pkcs8_der(),
        Err(_) => p384::SecretKey::from_sec1_der(der)
            .map_err(|_| "not an EC key on P-256 or P-384 (the curves kpki can use)".to_string())?
            .to_pkcs8_der(),
    }
    .map_err(|e| format!("cannot be converted to PKCS#8 ({e})"))?;
    Ok(Zeroizing::new(doc.as_bytes().to_vec()))
}

/// The DER of one block's base64 body.
fn decode(noun: &str, body: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map(Zeroizing::new)
        .map_err(|_| format!("a {noun} block is not valid base64"))
}

/// Checks that one block's DER is what its label says, with nothing after it; a private key's
/// SubjectPublicKeyInfo, which the check derives (a scalar multiplication), is returned for
/// its fingerprint rather than derived again.
fn check_der(kind: FileKind, der: &[u8]) -> Result<Option<Vec<u8>>, String> {
    match kind {
        FileKind::Certificates => match x509_parser::certificate::X509Certificate::from_der(der) {
            Ok(([], _)) => Ok(None),
            Ok(_) => Err("a certificate with trailing data".into()),
            Err(e) => Err(format!("not a valid certificate ({e})")),
        },
        FileKind::PublicKeys => match x509_parser::x509::SubjectPublicKeyInfo::from_der(der) {
            Ok(([], _)) => Ok(None),
            Ok(_) => Err("a public key with trailing data".into()),
            Err(e) => Err(format!("not a valid public key ({e})")),
        },
        FileKind::PrivateKey => {
            let pem = Zeroizing::new(encode(kind.label(), der));
            key_spki(&pem).map(Some)
        }
        FileKind::Crl | FileKind::CrlDer => {
            match x509_parser::revocation_list::CertificateRevocationList::from_der(der) {
                Ok(([], _)) => Ok(None),
                Ok(_) => Err("a revocation list with trailing data".into()),
                Err(e) => Err(format!("not a valid revocation list ({e})")),
            }
        }
        FileKind::Kubeconfig => Ok(None),
    }
}

/// A block in rcgen's encoding: 64-column base64, LF line endings.
pub fn encode(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der.to_vec()), config)
}

/// The DER SubjectPublicKeyInfo of a PKCS#8 PEM private key.
pub fn key_spki(pem: &str) -> Result<Vec<u8>, String> {
    use rcgen::PublicKeyData;
    Ok(parse_key(pem)?.subject_public_key_info())
}

/// Parses a PKCS#8 PEM private key.
pub fn parse_key(pem: &str) -> Result<rcgen::KeyPair, String> {
    rcgen::KeyPair::from_pem(pem)
        .map_err(|e| format!("not a PKCS#8 private key kpki can use ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_and_cert() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key.serialize_pem(), cert.pem())
    }

    #[test]
    fn a_generated_key_is_the_material_its_pem_parses_to() {
        let key = rcgen::KeyPair::generate().unwrap();
        let parsed = parse(FileKind::PrivateKey, key.serialize_pem().as_bytes()).unwrap();
        let direct = Material::of_key(&key);
        assert_eq!(*direct.text, *parsed.text);
        assert_eq!(direct.fingerprint, parsed.fingerprint);
        assert_eq!(direct.blocks(), parsed.blocks());
        // A second parser (RustCrypto's p256) derives the public key from the PKCS#8 on its
        // own: the fingerprint the manifest records is that key's, not only kpki's view of it.
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let secret = p256::SecretKey::from_pkcs8_pem(&key.serialize_pem()).unwrap();
        let spki = secret.public_key().to_public_key_der().unwrap();
        assert_eq!(direct.fingerprint, fingerprint(spki.as_bytes()));
    }

    #[test]
    fn rcgen_output_is_canonical() {
        let (key, cert) = key_and_cert();
        assert_eq!(
            *parse(FileKind::PrivateKey, key.as_bytes()).unwrap().text,
            key
        );
        let bundle = cert.clone() + &cert;
        let parsed = parse(FileKind::Certificates, bundle.as_bytes()).unwrap();
        assert_eq!(*parsed.text, bundle);
        assert_eq!(parsed.blocks().len(), 2);
        let crlf = cert.replace('\n', "\r\n");
        let again = parse(FileKind::Certificates, crlf.as_bytes()).unwrap();
        assert_eq!(*again.text, cert);
    }

    #[test]
    fn anything_besides_the_blocks_is_refused() {
        let (key, cert) = key_and_cert();
        let cases = [
            (FileKind::Certificates, format!("{cert}{key}")),
            (FileKind::Certificates, format!("hello\n{cert}")),
            (FileKind::Certificates, format!("{cert}trailing\n")),
            (FileKind::Certificates, cert[..cert.len() / 2].to_string()),
            (FileKind::Certificates, String::new()),
            (FileKind::PrivateKey, format!("{key}{key}")),
            (FileKind::PrivateKey, format!("{key}{cert}")),
            (FileKind::PrivateKey, cert.clone()),
            (FileKind::PublicKeys, cert.clone()),
        ];
        for (kind, text) in cases {
            assert!(parse(kind, text.as_bytes()).is_err(), "{kind:?}: {text}");
        }
    }
}
