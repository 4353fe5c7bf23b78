//! Reading the PKI back with x509-parser: what a certificate says, whether it still matches the
//! catalogue under today's config (drift), and whether chains and key pairs hold together.

use ::time::OffsetDateTime;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

use crate::catalogue::{Item, Kind, Subject, Usage};
use crate::config::Span;
use crate::config::{Algorithm, Config, San};
use crate::error::Result;
use crate::issuing;

/// What kpki compares of a certificate.
#[derive(Debug, Clone)]
pub struct Facts {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject: Subject,
    pub server: bool,
    pub client: bool,
    pub is_ca: bool,
    pub algorithm: Option<Algorithm>,
    /// The DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
    pub subject_raw: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    /// The serial number, lowercase hex of its bytes as encoded.
    pub serial: String,
}

pub use crate::pem::key_spki;

/// Reads what kpki compares of one DER certificate.
pub fn facts(der: &[u8]) -> Result<Facts, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("is not a valid certificate ({e})"))?;
    let time = |t: ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    let strings = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue<'_>>| -> Vec<String> {
        it.filter_map(|a| a.as_str().ok().map(String::from))
            .collect()
    };
    let eku = cert.extended_key_usage().ok().flatten().map(|e| e.value);
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => {}
        }
    }
    Ok(Facts {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        subject: Subject {
            common_name: strings(&mut cert.subject().iter_common_name()).join(","),
            organizations: strings(&mut cert.subject().iter_organization()),
            sans: sans(&cert),
        },
        server: eku.is_some_and(|e| e.server_auth),
        client: eku.is_some_and(|e| e.client_auth),
        is_ca: cert.is_ca(),
        algorithm: algorithm(cert.public_key()),
        spki: cert.public_key().raw.to_vec(),
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
        subject_key_id,
        authority_key_id,
        serial: hex(cert.raw_serial()),
    })
}

/// A certificate's public facts, as the signed manifest records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicFacts {
    /// Lowercase hex.
    pub serial: String,
    pub issuer: String,
    /// `CN=...` and one `O=...` per group, as the catalogue names them.
    pub subject: String,
    /// `sha256:HEX` of the sorted subject alternative names, one `DNS:`/`IP:` per line.
    pub sans: String,
    /// RFC 3339.
    #[serde(with = "::time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "::time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Its extended key usages: `server`, `client` or `server + client`. This and `key` are
    /// missing from manifests written before kpki recorded them (the next writer adds them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<String>,
    /// Its key algorithm, as `keys.algorithm` names it (`other` for one kpki never makes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Lowercase hex of its authority key identifier, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl PublicFacts {
    /// Whether these facts say all that drift is judged on, so a certificate known to be the
    /// one recorded need not be read to assess it.
    pub fn complete(&self) -> bool {
        self.usage.is_some() && self.key.is_some()
    }
}

/// The public facts the manifest records of the certificate `der`.
pub fn public_facts(der: &[u8]) -> Result<PublicFacts, String> {
    let facts = facts(der)?;
    let issuer = X509Certificate::from_der(der)
        .map(|(_, c)| c.issuer().to_string())
        .unwrap_or_default();
    Ok(PublicFacts {
        serial: facts.serial,
        issuer,
        subject: subject_line(&facts.subject),
        sans: sans_digest(&facts.subject.sans),
        not_before: facts.not_before,
        not_after: facts.not_after,
        usage: Some(usage_text(facts.server, facts.client).to_string()),
        key: Some(algorithm_id(facts.algorithm).to_string()),
        authority: facts.authority_key_id.as_deref().map(hex),
    })
}

/// A subject's names as the manifest records them: `CN=...` and one `O=...` per group, joined
/// by ", ", with `\` and `,` in a value escaped by a backslash (as RFC 4514 does), so a name
/// holding ", " reads back whole ([`subject_names`]).
pub fn subject_line(subject: &Subject) -> String {
    let escape = |v: &str| v.replace('\\', "\\\\").replace(',', "\\,");
    std::iter::once(format!("CN={}", escape(&subject.common_name)))
        .chain(
            subject
                .organizations
                .iter()
                .map(|o| format!("O={}", escape(o))),
        )
        .collect::<Vec<_>>()
        .join(", ")
}

/// The CN and groups of a [`subject_line`].
pub fn subject_names(line: &str) -> (String, Vec<String>) {
    let mut parts = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut().unwrap().extend(chars.next()),
            ',' => {
                chars.next(); // the space after the separator
                parts.push(String::new());
            }
            c => parts.last_mut().unwrap().push(c),
        }
    }
    let mut cn = String::new();
    let mut groups = Vec::new();
    for part in parts {
        if let Some(v) = part.strip_prefix("CN=") {
            cn = v.to_string();
        } else if let Some(v) = part.strip_prefix("O=") {
            groups.push(v.to_string());
        }
    }
    (cn, groups)
}

/// The digest of a set of SANs, whatever their order.
pub fn sans_digest(sans: &[San]) -> String {
    let mut lines: Vec<String> = sans.iter().map(san_text).collect();
    lines.sort();
    crate::pem::fingerprint(lines.join("\n").as_bytes())
}

/// Lowercase hex of `bytes` (a `format!` per byte was a sixth of a no-op `rotate`'s
/// instructions at 1,000 nodes, through the fingerprints).
pub fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

fn sans(cert: &X509Certificate<'_>) -> Vec<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
            GeneralName::IPAddress(b) => match b.len() {
                4 => Some(San::Ip(<[u8; 4]>::try_from(*b).ok()?.into())),
                16 => Some(San::Ip(<[u8; 16]>::try_from(*b).ok()?.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn algorithm(spki: &SubjectPublicKeyInfo<'_>) -> Option<Algorithm> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
    };
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_SIG_ED25519 {
        return Some(Algorithm::Ed25519);
    }
    if *oid != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return None;
    }
    let curve = spki.algorithm.parameters.as_ref()?.as_oid().ok()?;
    if curve == OID_EC_P256 {
        Some(Algorithm::EcdsaP256)
    } else if curve == OID_NIST_EC_P384 {
        Some(Algorithm::EcdsaP384)
    } else {
        None
    }
}

/// Whether `der`'s signature verifies with the public key of the certificate `issuer_der`.
pub fn signed_by(der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, cert)), Ok((_, issuer))) = (
        X509Certificate::from_der(der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Why a leaf no longer matches what the catalogue says under `config` and the current CA
/// (`ca`, the first certificate of `ca.pem`), or `None` when it matches.
pub fn drift(item: &Item<'_>, config: &Config, leaf: &Facts, ca: Option<&Facts>) -> Option<String> {
    let Kind::Leaf { usage, .. } = item.entry().kind else {
        return None;
    };
    let want = item.subject(config);
    if leaf.subject.common_name != want.common_name
        || leaf.subject.organizations != want.organizations
    {
        return Some(format!(
            "subject is CN={} O={:?}, the catalogue says CN={} O={:?}",
            leaf.subject.common_name,
            leaf.subject.organizations,
            want.common_name,
            want.organizations
        ));
    }
    let mut have = leaf.subject.sans.clone();
    let mut wanted = want.sans.clone();
    have.sort_by_key(san_text);
    wanted.sort_by_key(san_text);
    if have != wanted {
        let missing: Vec<String> = wanted
            .iter()
            .filter(|s| !have.contains(s))
            .map(san_text)
            .collect();
        let extra: Vec<String> = have
            .iter()
            .filter(|s| !wanted.contains(s))
            .map(san_text)
            .collect();
        return Some(format!(
            "SANs differ (missing: {}; extra: {})",
            list(&missing),
            list(&extra)
        ));
    }
    if (leaf.server, leaf.client) != (usage.server(), usage.client()) {
        return Some(format!(
            "usages are {}, the catalogue says {}",
            usage_text(leaf.server, leaf.client),
            usage_name(usage)
        ));
    }
    if leaf.algorithm != Some(config.keys.algorithm) {
        return Some(format!(
            "key algorithm is {}, the config says {}",
            algorithm_name(leaf.algorithm),
            algorithm_name(Some(config.keys.algorithm))
        ));
    }
    // A leaf without an authority key identifier (some tools omit it) cannot be told apart
    // here; verify checks its signature.
    match ca {
        Some(ca)
            if ca.subject_key_id.is_some()
                && leaf.authority_key_id.is_some()
                && leaf.authority_key_id != ca.subject_key_id =>
        {
            Some("issued by another CA than the current one".into())
        }
        _ => None,
    }
}

/// Why a CA no longer matches the config in a way only a CA rotation can apply (key
/// algorithm, `keys.ca_validity`), or `None`.
pub fn ca_drift(name: &str, ca: &Facts, config: &Config) -> Option<String> {
    // A CA of an algorithm kpki never makes (RSA, from kubeadm or easyCerts) was adopted: it is
    // kept as it is, and signs on until a rotation replaces it with one of kpki's.
    ca.algorithm?;
    let remedy = format!("only a CA rotation applies it: kpki rotate --ca {name}");
    if ca.algorithm != Some(config.keys.algorithm) {
        return Some(format!(
            "key algorithm is {}, the config says {}; {remedy}",
            algorithm_name(ca.algorithm),
            algorithm_name(Some(config.keys.algorithm))
        ));
    }
    let lifetime = ca.not_after - ca.not_before - issuing::BACKDATE;
    if (lifetime - config.keys.ca_validity.0).abs() > ::time::Duration::days(1) {
        return Some(format!(
            "valid for {} days, keys.ca_validity says {}; {remedy}",
            lifetime.whole_days(),
            span_text(config.keys.ca_validity)
        ));
    }
    None
}

/// Why the service-account key's algorithm no longer matches the config, or `None`.
pub fn key_pair_drift(spki: &[u8], config: &Config) -> Option<String> {
    let have = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .ok()
        .and_then(|(_, k)| algorithm(&k));
    // An adopted RSA key pair is kept, as an adopted CA is.
    let have = Some(have?);
    let want = issuing::service_account_algorithm(config.keys.algorithm);
    (have != Some(want)).then(|| {
        format!(
            "key algorithm is {}, the config wants {}; only kpki rotate --service-account applies it",
            algorithm_name(have),
            algorithm_name(Some(want))
        )
    })
}

/// An algorithm as `keys.algorithm` names it, `other` for one kpki never makes.
fn algorithm_id(a: Option<Algorithm>) -> &'static str {
    a.map_or("other", |_| algorithm_name(a))
}

/// Why a leaf the signed manifest records (complete or not) no longer matches the catalogue
/// under `config` and the current CA `ca`: the checks of [`drift`], on the facts recorded.
pub fn recorded_drift(
    item: &Item<'_>,
    config: &Config,
    leaf: &PublicFacts,
    ca: Option<&Facts>,
) -> Option<String> {
    let Kind::Leaf { usage, .. } = item.entry().kind else {
        return None;
    };
    let want = item.subject(config);
    let subject = subject_line(&want);
    if leaf.subject != subject {
        return Some(format!(
            "subject is {}, the catalogue says {subject}",
            leaf.subject
        ));
    }
    if leaf.sans != sans_digest(&want.sans) {
        return Some("SANs differ from the catalogue's (per the manifest's record)".into());
    }
    if let Some(have) = &leaf.usage
        && have != usage_name(usage)
    {
        return Some(format!(
            "usages are {have}, the catalogue says {}",
            usage_name(usage)
        ));
    }
    let wanted = algorithm_id(Some(config.keys.algorithm));
    if let Some(have) = &leaf.key
        && have != wanted
    {
        return Some(format!("key algorithm is {have}, the config says {wanted}"));
    }
    match (
        ca.and_then(|c| c.subject_key_id.as_deref()),
        &leaf.authority,
    ) {
        (Some(ski), Some(aki)) if hex(ski) != *aki => {
            Some("issued by another CA than the current one".into())
        }
        _ => None,
    }
}

fn algorithm_name(a: Option<Algorithm>) -> &'static str {
    match a {
        Some(Algorithm::EcdsaP256) => "ecdsa-p256",
        Some(Algorithm::EcdsaP384) => "ecdsa-p384",
        Some(Algorithm::Ed25519) => "ed25519",
        None => "another algorithm (RSA?)",
    }
}

fn span_text(span: Span) -> String {
    format!("{} days", span.0.whole_days())
}

/// A SAN as text, for messages and sorting.
pub fn san_text(san: &San) -> String {
    match san {
        San::Dns(d) => format!("DNS:{d}"),
        San::Ip(ip) => format!("IP:{ip}"),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn usage_text(server: bool, client: bool) -> &'static str {
    match (server, client) {
        (true, true) => "server + client",
        (true, false) => "server",
        (false, true) => "client",
        (false, false) => "none",
    }
}

fn usage_name(usage: Usage) -> &'static str {
    usage_text(usage.server(), usage.client())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_line_reads_back_whatever_its_names_hold() {
        let subject = Subject {
            common_name: r"Doe, Jane \ ops".to_string(),
            organizations: vec!["system:masters".into(), "a, b".into(), r"c\".into()],
            sans: Vec::new(),
        };
        let line = subject_line(&subject);
        assert_eq!(
            subject_names(&line),
            (subject.common_name.clone(), subject.organizations.clone())
        );
        assert_eq!(
            subject_line(&Subject {
                common_name: "kubernetes-admin".into(),
                organizations: vec!["system:masters".into()],
                sans: Vec::new(),
            }),
            "CN=kubernetes-admin, O=system:masters"
        );
    }
}
