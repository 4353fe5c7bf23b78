//! `kpki rollout`: what the running cluster serves and trusts, asked over TLS from the admin's
//! machine (the nodes have public IPv6 addresses), without any agent and without a client key.
//!
//! For every endpoint the config implies (etcd client and peer on etcd nodes, the apiserver on
//! control-plane nodes, the kubelet on every node) one handshake tells which certificate the
//! server presents (the current one the manifest records, an older one of kpki's CAs, or
//! unknown) and which client CAs it accepts (new and old during a rotation, or one of them).

pub mod probe;

use std::net::SocketAddr;
use std::time::Duration;

use rayon::prelude::*;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::catalogue::{self, CaName, Part};
use crate::config::{Config, Node, Role};
use crate::error::{Error, Result};
use crate::inspection;
use crate::state::State;
use probe::Reached;

/// How many handshakes run at once.
const PARALLEL: usize = 64;

/// A TLS server kpki issues the certificate of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    EtcdClient,
    EtcdPeer,
    Apiserver,
    Kubelet,
}

impl Service {
    const ALL: [Service; 4] = [
        Service::EtcdClient,
        Service::EtcdPeer,
        Service::Apiserver,
        Service::Kubelet,
    ];

    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Service::EtcdClient => "etcd",
            Service::EtcdPeer => "etcd-peer",
            Service::Apiserver => "apiserver",
            Service::Kubelet => "kubelet",
        }
    }

    /// The CA of its serving certificate and of the clients it accepts.
    pub fn ca(self) -> CaName {
        match self {
            Service::EtcdClient | Service::EtcdPeer => CaName::Etcd,
            Service::Apiserver | Service::Kubelet => CaName::Kubernetes,
        }
    }

    /// The file under `pki/` of the certificate it serves on `node`.
    fn leaf(self, node: &str) -> String {
        let profile = match self {
            Service::EtcdClient => "etcd-server",
            Service::EtcdPeer => "etcd-peer",
            Service::Apiserver => "apiserver",
            Service::Kubelet => "kubelet-serving",
        };
        let entry = catalogue::builtin(profile).expect("served certificates are catalogued");
        format!("{node}/{}", entry.file_name(Part::Cert))
    }

    fn runs_on(self, node: &Node) -> bool {
        match self {
            Service::EtcdClient | Service::EtcdPeer => node.has(Role::Etcd),
            Service::Apiserver => node.has(Role::ControlPlane),
            Service::Kubelet => node.has(Role::Worker) || node.has(Role::ControlPlane),
        }
    }

    fn port(self, config: &Config) -> u16 {
        let ports = &config.ports;
        match self {
            Service::EtcdClient => ports.etcd_client,
            Service::EtcdPeer => ports.etcd_peer,
            Service::Apiserver => ports.apiserver,
            Service::Kubelet => ports.kubelet,
        }
    }
}

/// One server to ask.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub node: String,
    pub service: Service,
    pub address: SocketAddr,
}

/// Every endpoint of `nodes` (all when empty), at each node's first address.
pub fn endpoints(config: &Config, nodes: &[String]) -> Result<Vec<Endpoint>> {
    for name in nodes {
        if !config.nodes.iter().any(|n| &n.name == name) {
            return Err(Error::usage(
                format!("{name}: no such node in pki/kpki.toml"),
                None,
            ));
        }
    }
    let chosen = config
        .nodes
        .iter()
        .filter(|n| nodes.is_empty() || nodes.contains(&n.name));
    let mut found = Vec::new();
    for node in chosen {
        let Some(ip) = node.addresses.first() else {
            continue;
        };
        for service in Service::ALL.into_iter().filter(|s| s.runs_on(node)) {
            found.push(Endpoint {
                node: node.name.clone(),
                service,
                address: SocketAddr::new(*ip, service.port(config)),
            });
        }
    }
    Ok(found)
}

/// What a server presents, by the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "is")]
pub enum Serves {
    /// The certificate the manifest records for it.
    Current,
    /// Another certificate of one of kpki's CAs: an older one, not yet replaced.
    Old { serial: String, issuer: String },
    /// A certificate no CA of kpki's issued.
    Unknown { subject: String, issuer: String },
}

/// Which generations of its CA a server accepts clients of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trusts {
    /// Outside a rotation: the one CA.
    Current,
    NewAndOld,
    NewOnly,
    OldOnly,
    /// Neither generation (another CA's clients only).
    Neither,
    /// It asked for no client certificate.
    NotAsked,
}

/// The CA generations of one CA: the current one first, the outgoing one during a rotation.
#[derive(Debug, Clone)]
pub struct Generations {
    /// DER subjects, newest first.
    pub subjects: Vec<Vec<u8>>,
    /// DER certificates, newest first.
    pub certs: Vec<Vec<u8>>,
}

/// The CA generations of `ca`, from its bundle; without an identity to read it, from the
/// certificates the signed manifest records.
pub fn generations(state: &State, ca: CaName) -> Result<Generations> {
    let certs: Vec<Vec<u8>> = match state.ca_bundle(ca) {
        Ok(bundle) => bundle.blocks().iter().map(|b| b.to_vec()).collect(),
        Err(Error::Identity { .. }) => recorded_certificates(state, ca)?,
        Err(e) => return Err(e),
    };
    let subjects = certs
        .iter()
        .filter_map(|der| {
            Some(
                X509Certificate::from_der(der)
                    .ok()?
                    .1
                    .subject()
                    .as_raw()
                    .to_vec(),
            )
        })
        .collect();
    Ok(Generations { subjects, certs })
}

/// The certificates of `ca` as the signed manifest records them.
fn recorded_certificates(state: &State, ca: CaName) -> Result<Vec<Vec<u8>>> {
    use base64::Engine;
    let missing = || Error::Identity {
        message: format!(
            "the {} CA's certificates are neither readable without an identity nor recorded in secrets/manifest.toml (written by an older kpki)",
            ca.dir()
        ),
        hint: Some(
            "pass -i with an admin identity, or have a writer (kpki init) record them".into(),
        ),
    };
    let recorded = state.manifest().cas.get(ca.dir()).ok_or_else(missing)?;
    recorded
        .iter()
        .map(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| missing())
        })
        .collect()
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub node: String,
    pub endpoint: Service,
    pub address: String,
    /// `None` when it could not be asked.
    pub serves: Option<Serves>,
    pub trusts: Option<Trusts>,
    /// `current`, `behind`, `unknown`, `refused`, `timed-out` or `unreachable`.
    pub verdict: &'static str,
    /// Why, for anything but current.
    pub detail: Option<String>,
}

/// Asks every endpoint, `PARALLEL` at a time, each within `timeout`.
pub fn ask(endpoints: &[Endpoint], timeout: Duration) -> Vec<Reached> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(PARALLEL.min(endpoints.len().max(1)))
        .build();
    let run = || {
        endpoints
            .par_iter()
            .map(|e| probe::probe(e.address, timeout))
            .collect()
    };
    match pool {
        Ok(pool) => pool.install(run),
        Err(_) => run(),
    }
}

/// The row for what `endpoint` said, judged against the manifest and the CA generations.
pub fn judge(
    state: &State,
    endpoint: &Endpoint,
    reached: Reached,
    generations: &Generations,
) -> Row {
    let mut row = Row {
        node: endpoint.node.clone(),
        endpoint: endpoint.service,
        address: endpoint.address.to_string(),
        serves: None,
        trusts: None,
        verdict: "unreachable",
        detail: None,
    };
    let (chain, client_cas) = match reached {
        Reached::Answered { chain, client_cas } => (chain, client_cas),
        Reached::Refused => {
            row.verdict = "refused";
            row.detail = Some("nothing listens there".into());
            return row;
        }
        Reached::TimedOut => {
            row.verdict = "timed-out";
            return row;
        }
        Reached::Failed(why) => {
            row.detail = Some(why);
            return row;
        }
    };
    let recorded = state
        .manifest()
        .files
        .get(&endpoint.service.leaf(&endpoint.node))
        .and_then(|e| e.certificate.as_ref());
    let serves = serves(&chain[0], recorded.map(|f| f.serial.as_str()), generations);
    let trusts = trusts(client_cas.as_deref(), generations);
    let rotating = generations.subjects.len() > 1;
    let (verdict, detail) = match (&serves, &trusts) {
        (Serves::Unknown { .. }, _) => ("unknown", Some("serves a certificate kpki never issued")),
        (Serves::Old { .. }, _) => ("behind", Some("serves an older certificate")),
        (_, Trusts::OldOnly | Trusts::Neither) => {
            ("behind", Some("does not accept clients of the current CA"))
        }
        (_, Trusts::NewOnly) if rotating => (
            "current",
            Some("accepts only the new CA's clients (nodes still on old certificates are refused)"),
        ),
        _ => ("current", None),
    };
    row.serves = Some(serves);
    row.trusts = Some(trusts);
    row.verdict = verdict;
    row.detail = detail.map(String::from);
    row
}

/// What the leaf `der` is, by the serial the manifest records and the CA generations.
fn serves(der: &[u8], recorded: Option<&str>, generations: &Generations) -> Serves {
    let Ok((_, leaf)) = X509Certificate::from_der(der) else {
        return Serves::Unknown {
            subject: "(unparsable)".into(),
            issuer: String::new(),
        };
    };
    let serial = inspection::hex(leaf.raw_serial());
    let issued_by_ours = generations
        .certs
        .iter()
        .any(|ca| inspection::signed_by(der, ca));
    match () {
        _ if recorded == Some(serial.as_str()) && issued_by_ours => Serves::Current,
        _ if issued_by_ours => Serves::Old {
            serial,
            issuer: leaf.issuer().to_string(),
        },
        _ => Serves::Unknown {
            subject: leaf.subject().to_string(),
            issuer: leaf.issuer().to_string(),
        },
    }
}

/// Which CA generations the subjects a server named are.
fn trusts(client_cas: Option<&[Vec<u8>]>, generations: &Generations) -> Trusts {
    let Some(named) = client_cas else {
        return Trusts::NotAsked;
    };
    let names = |subject: &Vec<u8>| named.iter().any(|n| same_name(n, subject));
    let new = generations.subjects.first().is_some_and(names);
    let old = generations.subjects.get(1).is_some_and(names);
    match (new, old, generations.subjects.len() > 1) {
        (true, _, false) => Trusts::Current,
        (true, true, true) => Trusts::NewAndOld,
        (true, false, true) => Trusts::NewOnly,
        (false, true, _) => Trusts::OldOnly,
        (false, false, _) => Trusts::Neither,
    }
}

/// Whether a name from a CertificateRequest is `subject` (the DER of a Name): byte for byte,
/// or as its contents without the outer SEQUENCE (trust anchors' form in rustls' types).
fn same_name(named: &[u8], subject: &[u8]) -> bool {
    use x509_parser::asn1_rs::{Any, FromDer};
    named == subject
        || Any::from_der(subject).is_ok_and(|(rest, any)| rest.is_empty() && any.data == named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_ca_matches_with_or_without_its_outer_sequence_and_nothing_else() {
        let name = |cn: &str| {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = dn;
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let (_, parsed) =
                x509_parser::parse_x509_certificate(cert.der()).expect("a certificate");
            parsed.subject().as_raw().to_vec()
        };
        let ca = name("etcd-ca-20261202T000000Z");
        let inner = &ca[2..];
        assert!(same_name(&ca, &ca));
        assert!(same_name(inner, &ca));
        // A name that merely ends the same way, or a prefix of it, is another CA.
        let other = name("xetcd-ca-20261202T000000Z");
        assert!(!same_name(&ca[ca.len() - 20..], &ca));
        assert!(!same_name(&other, &ca));
        assert!(!same_name(&other[2..], &ca));
    }
}
