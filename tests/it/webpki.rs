//! A second, independent X.509 verifier (rustls-webpki): every server certificate is valid for
//! each of its names and addresses and for nothing else, every client certificate as a client.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use webpki::{ALL_VERIFICATION_ALGS, EndEntityCert, KeyUsage, anchor_from_trusted_cert};

use crate::harness::{Cluster, DEFAULT_CONFIG};

fn cert(cluster: &Cluster, rel: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(cluster.pki(rel)).unwrap()
}

/// Verifies `leaf` under `ca` for `usage`; the error as text.
pub fn verify(cluster: &Cluster, ca: &str, leaf: &str, usage: KeyUsage) -> Result<(), String> {
    let ca = cert(cluster, &format!("{ca}/ca.pem"));
    let anchors = [anchor_from_trusted_cert(&ca).unwrap()];
    let leaf = cert(cluster, &format!("{leaf}.pem"));
    let ee = EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    ee.verify_for_usage(
        ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        UnixTime::now(),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

pub fn valid_for(cluster: &Cluster, leaf: &str, name: &str) -> bool {
    let der = cert(cluster, &format!("{leaf}.pem"));
    let ee = EndEntityCert::try_from(&der).unwrap();
    let name = ServerName::try_from(name).unwrap();
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

#[test]
fn server_certificates_are_valid_for_exactly_their_names() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let servers = [
        (
            "kubernetes",
            "node-02/apiserver",
            vec![
                "node-02",
                "kubernetes.default.svc.cluster.local",
                "fd00:10:96::1",
                "2001:db8::2",
                "2001:db8::1",
                "::1",
                "localhost",
            ],
        ),
        (
            "etcd",
            "node-02/etcd-server",
            vec!["node-02", "2001:db8::2", "::1", "localhost"],
        ),
        ("etcd", "node-02/etcd-peer", vec!["node-02", "2001:db8::2"]),
        (
            "kubernetes",
            "node-02/kubelet-serving",
            vec!["node-02", "2001:db8::2"],
        ),
    ];
    for (ca, leaf, names) in servers {
        verify(&cluster, ca, leaf, KeyUsage::server_auth())
            .unwrap_or_else(|e| panic!("{leaf}: {e}"));
        for name in names {
            assert!(
                valid_for(&cluster, leaf, name),
                "{leaf} is not valid for {name}"
            );
        }
        for name in ["node-03", "2001:db8::3", "example.org"] {
            assert!(
                !valid_for(&cluster, leaf, name),
                "{leaf} is valid for {name}"
            );
        }
    }
    assert!(!valid_for(&cluster, "node-02/etcd-peer", "::1"));
}

#[test]
fn client_certificates_verify_as_clients_only() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    for (ca, leaf) in [
        ("kubernetes", "kubernetes/admin"),
        ("kubernetes", "kubernetes/kube-proxy"),
        ("kubernetes", "node-01/kubelet"),
        ("etcd", "etcd/apiserver-etcd-client"),
        ("etcd", "node-03/etcd-peer"),
        ("front-proxy", "front-proxy/client"),
    ] {
        verify(&cluster, ca, leaf, KeyUsage::client_auth())
            .unwrap_or_else(|e| panic!("{leaf}: {e}"));
    }
    assert!(
        verify(
            &cluster,
            "kubernetes",
            "kubernetes/admin",
            KeyUsage::server_auth()
        )
        .is_err()
    );
    assert!(
        verify(
            &cluster,
            "front-proxy",
            "kubernetes/admin",
            KeyUsage::client_auth()
        )
        .is_err()
    );
}
