//! Key generation and signing with rcgen: CAs, leaves, and the service-account key pair.
//!
//! rcgen's defaults are placeholders (validity 1975–4096, a dummy CN, a serial derived from the
//! key), so every parameter of every certificate is set here explicitly.

pub use rcgen::RevocationReason;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::OffsetDateTime;

use crate::catalogue::{CaName, Subject, Usage};
use crate::config::{Algorithm, San, Span};
use crate::error::{Error, Result};

/// How far `not_before` lies in the past, to tolerate clock skew between nodes.
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

/// The OID of `organizationName`, for a second group (rcgen's name map holds one value per type).
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

/// A new private key of `algorithm`.
pub fn generate_key(algorithm: Algorithm) -> Result<KeyPair> {
    let alg = match algorithm {
        Algorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        Algorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        Algorithm::Ed25519 => &rcgen::PKCS_ED25519,
    };
    KeyPair::generate_for(alg).map_err(|e| Error::crypto("generating a key", e))
}

/// The service-account key's algorithm: the apiserver signs tokens with RSA or ECDSA only.
pub fn service_account_algorithm(algorithm: Algorithm) -> Algorithm {
    match algorithm {
        Algorithm::EcdsaP384 => Algorithm::EcdsaP384,
        Algorithm::EcdsaP256 | Algorithm::Ed25519 => Algorithm::EcdsaP256,
    }
}

/// A CA that can sign: its certificate (PEM, possibly a bundle, newest first) and its key.
pub struct Authority {
    name: CaName,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    /// Certificates appended to every leaf it signs: during a rotation, the new CA cross-signed
    /// by the old one, so that peers still trusting only the old CA accept the new leaves.
    chain: String,
}

impl Authority {
    /// The CA `name` from its certificate and key; the first certificate in `cert_pem` is the
    /// signer, valid until `not_after`.
    pub fn new(
        name: CaName,
        cert_pem: &str,
        key: KeyPair,
        chain: String,
        not_after: OffsetDateTime,
    ) -> std::result::Result<Authority, String> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("not a CA certificate kpki can sign with ({e})"))?;
        Ok(Authority {
            name,
            issuer,
            not_after,
            chain,
        })
    }

    /// Which CA this is.
    pub fn name(&self) -> CaName {
        self.name
    }

    /// When its certificate expires: no certificate it signs may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// The validity window of a certificate issued now.
fn window(params: &mut CertificateParams, now: OffsetDateTime, until: OffsetDateTime) {
    params.not_before = now - BACKDATE;
    params.not_after = until;
}

/// A positive 16-byte serial with its top byte in 1..=0x7f, so it encodes in exactly 16 bytes.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|e| Error::crypto("drawing a serial number", e))?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

/// Parameters shared by every certificate kpki signs.
fn base_params(
    subject: &Subject,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    window(&mut params, now, until);
    params.serial_number = Some(random_serial()?);
    params.distinguished_name = distinguished_name(subject)?;
    params.subject_alt_names = subject.sans.iter().map(san_type).collect::<Result<_>>()?;
    Ok(params)
}

/// `O=...` (at most two) then `CN=...`.
fn distinguished_name(subject: &Subject) -> Result<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    match subject.organizations.as_slice() {
        [] => {}
        [one] => dn.push(DnType::OrganizationName, one.as_str()),
        [first, second] => {
            dn.push(DnType::OrganizationName, first.as_str());
            dn.push(
                DnType::CustomDnType(ORGANIZATION_OID.to_vec()),
                second.as_str(),
            );
        }
        more => {
            return Err(Error::usage(
                format!(
                    "{}: {} groups requested, but at most 2 can be encoded",
                    subject.common_name,
                    more.len()
                ),
                Some("issue one certificate per pair of groups, or bind the user with RBAC".into()),
            ));
        }
    }
    if !subject.common_name.is_empty() {
        dn.push(DnType::CommonName, subject.common_name.as_str());
    }
    Ok(dn)
}

fn san_type(san: &San) -> Result<SanType> {
    Ok(match san {
        San::Ip(ip) => SanType::IpAddress(*ip),
        San::Dns(name) => SanType::DnsName(
            name.as_str()
                .try_into()
                .map_err(|e| Error::crypto(format!("encoding SAN {name}"), e))?,
        ),
    })
}

/// A self-signed CA certificate (path length 1, so a cross-signed successor fits below it).
pub fn self_signed_ca(
    subject: &Subject,
    key: &KeyPair,
    now: OffsetDateTime,
    validity: Span,
) -> Result<String> {
    let params = ca_params(subject, now, now + validity.0, 1)?;
    let cert = params
        .self_signed(key)
        .map_err(|e| Error::crypto(format!("signing CA {}", subject.common_name), e))?;
    Ok(cert.pem())
}

/// The parameters of a CA certificate with path length `path_len`.
fn ca_params(
    subject: &Subject,
    now: OffsetDateTime,
    until: OffsetDateTime,
    path_len: u8,
) -> Result<CertificateParams> {
    let mut params = base_params(subject, now, until)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A leaf certificate for `public_key`, signed by `ca`.
pub fn sign_leaf(
    subject: &Subject,
    usage: Usage,
    public_key: &impl PublicKeyData,
    ca: &Authority,
    now: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<String> {
    let mut params = base_params(subject, now, until)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if usage.server() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if usage.client() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    let cert = params
        .signed_by(public_key, &ca.issuer)
        .map_err(|e| Error::crypto(format!("signing {}", subject.common_name), e))?;
    Ok(cert.pem() + &ca.chain)
}

/// The CA certificate of `key` signed by the CA `by` (path length 0): the link by which leaves of
/// a new CA verify up to the old one during a rotation. It expires with `by`.
pub fn cross_signed_ca(
    subject: &Subject,
    key: &KeyPair,
    by: &Authority,
    now: OffsetDateTime,
    validity: Span,
) -> Result<String> {
    let until = (now + validity.0).min(by.not_after);
    let mut params = ca_params(subject, now, until, 0)?;
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(key, &by.issuer)
        .map_err(|e| Error::crypto(format!("cross-signing CA {}", subject.common_name), e))?;
    Ok(cert.pem())
}

/// One entry of a revocation list: a serial number (its bytes) and when it was revoked.
pub struct CrlEntry {
    pub serial: Vec<u8>,
    pub at: OffsetDateTime,
    pub reason: RevocationReason,
}

/// A certificate revocation list (PEM) signed by `ca`: number `number`, issued now, next
/// update by `next_update`.
pub fn revocation_list(
    ca: &Authority,
    number: u64,
    revoked: &[CrlEntry],
    now: OffsetDateTime,
    next_update: OffsetDateTime,
) -> Result<String> {
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: r.at,
                reason_code: Some(r.reason),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let fail = |e: rcgen::Error| Error::crypto(format!("signing the {} CRL", ca.name.dir()), e);
    params
        .signed_by(&ca.issuer)
        .and_then(|crl| crl.pem())
        .map_err(fail)
}
