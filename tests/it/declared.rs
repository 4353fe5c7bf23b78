//! `[[certificate]]`: declared certificates get everything built-in ones get, checked by openssl,
//! rustls-webpki, the age CLI with each node's host key, the NixOS module and kubectl.

use webpki::KeyUsage;

use crate::harness::{Cluster, fixture, run, run_ok, s};
use crate::secrets::config_with_keys;

/// The test cluster plus an etcd-only node-05, a cluster-wide flannel client certificate for
/// the workers, a per-node serving certificate for the workers, and an etcd client certificate
/// for a backup job that only the admins hold.
fn config() -> String {
    let node05 = std::fs::read_to_string(fixture("node-05_ssh_host_ed25519_key.pub")).unwrap();
    format!(
        r#"{}
[[node]]
name = "node-05"
addresses = ["2001:db8::5"]
roles = ["etcd"]
host_key = "{}"

[[certificate]]
name = "flannel"
ca = "kubernetes"
cn = "flannel-client"
organizations = ["system:flannel"]
usages = ["client"]
roles = ["worker"]
owner = "flannel"

[[certificate]]
name = "node-exporter"
ca = "kubernetes"
cn = "node-exporter:{{node}}"
usages = ["server"]
sans = ["metrics.example.org"]
per_node = true
roles = ["worker"]
owner = "node-exporter"
validity = "90d"

[[certificate]]
name = "etcd-backup"
ca = "etcd"
usages = ["client"]
"#,
        config_with_keys(),
        node05.trim()
    )
}

/// openssl's view of a certificate: subject, SANs and usages.
fn text(cluster: &Cluster, rel: &str) -> String {
    run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            s(&cluster.pki(rel)),
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-enddate",
            "-serial",
        ],
    )
}

fn openssl_verify(cluster: &Cluster, ca: &str, leaf: &str, purpose: &str) -> bool {
    let ca = cluster.pki(&format!("{ca}/ca.pem"));
    run(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            s(&ca),
            s(&cluster.pki(leaf)),
        ],
    )
    .status
    .success()
}

/// Whether `node`'s SSH host key decrypts `secrets/REL.age` (age CLI).
fn readable_by(cluster: &Cluster, node: &str, rel: &str) -> bool {
    let key = match node {
        "node-03" => fixture("node-03_ssh_host_rsa_key"),
        n => fixture(&format!("{n}_ssh_host_ed25519_key")),
    };
    let file = cluster.path().join(format!("secrets/{rel}.age"));
    run("age", &["-d", "-i", s(&key), s(&file)])
        .status
        .success()
}

#[test]
fn declared_certificates_are_issued_sealed_and_delivered_like_built_in_ones() {
    let cluster = Cluster::initialized(&config());
    let flannel = text(&cluster, "kubernetes/flannel.pem");
    assert!(
        flannel.contains("O = system:flannel, CN = flannel-client"),
        "{flannel}"
    );
    assert!(
        flannel.contains("TLS Web Client Authentication") && !flannel.contains("Server"),
        "{flannel}"
    );
    assert!(openssl_verify(
        &cluster,
        "kubernetes",
        "kubernetes/flannel.pem",
        "sslclient"
    ));
    assert!(!openssl_verify(
        &cluster,
        "etcd",
        "kubernetes/flannel.pem",
        "sslclient"
    ));
    let exporter = text(&cluster, "node-02/node-exporter.pem");
    assert!(
        exporter.contains("CN = node-exporter:node-02"),
        "{exporter}"
    );
    assert!(
        exporter.contains("DNS:node-02, IP Address:2001:DB8:0:0:0:0:0:2, DNS:metrics.example.org"),
        "{exporter}"
    );
    assert!(openssl_verify(
        &cluster,
        "kubernetes",
        "node-02/node-exporter.pem",
        "sslserver"
    ));
    for name in ["node-02", "2001:db8::2", "metrics.example.org"] {
        assert!(
            crate::webpki::valid_for(&cluster, "node-02/node-exporter", name),
            "{name}"
        );
    }
    assert!(!crate::webpki::valid_for(
        &cluster,
        "node-02/node-exporter",
        "node-01"
    ));
    crate::webpki::verify(
        &cluster,
        "kubernetes",
        "node-02/node-exporter",
        KeyUsage::server_auth(),
    )
    .unwrap();
    // validity = "90d" holds, not keys.leaf_validity.
    let days = |rel: &str| {
        let end = text(&cluster, rel);
        let date = end
            .lines()
            .find_map(|l| l.strip_prefix("notAfter="))
            .unwrap()
            .to_string();
        let out = run_ok("date", &["-d", &date, "+%s"]);
        (out.trim().parse::<i64>().unwrap()
            - run_ok("date", &["+%s"]).trim().parse::<i64>().unwrap())
            / 86_400
    };
    assert!(
        (88..=90).contains(&days("node-02/node-exporter.pem")),
        "{}",
        days("node-02/node-exporter.pem")
    );
    assert!(
        !cluster.pki("node-05/node-exporter.pem").exists(),
        "an etcd-only node got a worker's certificate"
    );
    assert!(openssl_verify(
        &cluster,
        "etcd",
        "etcd/etcd-backup.pem",
        "sslclient"
    ));

    // Sealed for exactly its readers.
    for (rel, readers) in [
        (
            "kubernetes/flannel-key.pem",
            vec!["node-01", "node-02", "node-03", "node-04"],
        ),
        ("node-04/node-exporter-key.pem", vec!["node-04"]),
        ("etcd/etcd-backup-key.pem", vec![]),
    ] {
        for node in ["node-01", "node-02", "node-03", "node-04", "node-05"] {
            assert_eq!(
                readable_by(&cluster, node, rel),
                readers.contains(&node),
                "{node} and {rel}"
            );
        }
    }

    // Delivered by the NixOS module with their owner.
    let worker = crate::nixos::eval(&cluster, "node-04", "{ }").unwrap();
    let secret = &worker["secrets"]["kpki-kubernetes-flannel-key.pem"];
    assert_eq!(
        (secret["owner"].as_str(), secret["mode"].as_str()),
        (Some("flannel"), Some("0400"))
    );
    let secret = &worker["secrets"]["kpki-node-exporter.pem"];
    assert_eq!(
        (secret["owner"].as_str(), secret["mode"].as_str()),
        (Some("node-exporter"), Some("0444"))
    );
    assert_eq!(
        worker["paths"]["node-04/node-exporter.pem"],
        "/run/agenix/kpki-node-exporter.pem"
    );
    let etcd_only = crate::nixos::eval(&cluster, "node-05", "{ }").unwrap();
    assert!(
        etcd_only["secrets"]
            .get("kpki-kubernetes-flannel.pem")
            .is_none()
    );

    // Listed by status, renewed by rotate --all, reissued under a new CA by rotate --ca.
    let status = cluster.kpki(&["status"]).success().stdout();
    for row in [
        "kubernetes/flannel",
        "node-04/node-exporter",
        "etcd/etcd-backup",
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(row) && l.trim_end().ends_with("ok")),
            "{row}: {status}"
        );
    }
    let serial = |rel: &str| {
        text(&cluster, rel)
            .lines()
            .find(|l| l.starts_with("serial="))
            .unwrap()
            .to_string()
    };
    let before = serial("kubernetes/flannel.pem");
    cluster.kpki(&["rotate", "--all"]).success();
    assert_ne!(serial("kubernetes/flannel.pem"), before);
    let old_ca = std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap();
    cluster.kpki(&["rotate", "--ca", "kubernetes"]).success();
    cluster
        .kpki(&[
            "rotate",
            "--ca",
            "kubernetes",
            "--finish",
            "--no-live-check",
        ])
        .success();
    assert_ne!(
        std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap(),
        old_ca
    );
    for rel in ["kubernetes/flannel.pem", "node-03/node-exporter.pem"] {
        assert!(
            openssl_verify(&cluster, "kubernetes", rel, "any"),
            "{rel} is not under the new CA"
        );
    }
    assert_eq!(
        cluster.kpki(&["verify"]).code(),
        Some(0),
        "{}",
        cluster.kpki(&["verify"]).stdout()
    );
}

#[test]
fn kubectl_authenticates_with_a_declared_client_certificate() {
    let cluster = Cluster::initialized(&config());
    let server = crate::issue::TestApiServer::start(&cluster);
    let file = cluster.path().join("flannel.kubeconfig");
    cluster
        .kpki(&[
            "kubeconfig",
            "cert",
            "flannel",
            "--server",
            &server.url(),
            "-o",
            s(&file),
        ])
        .success();
    assert_eq!(
        crate::issue::subject_seen(&file),
        "O=system:flannel, CN=flannel-client"
    );
    let line = cluster
        .kpki(&["kubeconfig", "cert", "etcd-backup"])
        .fails_with(2);
    assert!(
        line.contains("no declared client certificate of the Kubernetes CA"),
        "{line}"
    );
}

#[test]
fn declarations_that_take_a_name_are_refused_by_line() {
    let base = config_with_keys();
    let lines = base.lines().count();
    for (name, extra, needle) in [
        ("kube-proxy", "", "the catalogue's kube-proxy"),
        ("admin", "", "the catalogue's admin"),
        (
            "apiserver",
            "per_node = true\nroles = [\"control-plane\"]\n",
            "the catalogue's apiserver",
        ),
        (
            "kubelet-serving",
            "per_node = true\nroles = [\"worker\"]\n",
            "the catalogue's kubelet-serving",
        ),
        ("ca-cross", "", "kpki keeps its own ca-cross.pem"),
        ("ca-previous", "", "kpki keeps its own ca-previous.pem"),
        ("client", "", "kpki issue and kpki kubeconfig use it"),
        ("Flannel", "", "must be a DNS label"),
        (
            "etcd-crl",
            "per_node = true\nroles = [\"etcd\"]\n",
            "would both be age.secrets.\"kpki-etcd-crl.pem\"",
        ),
        (
            "kubernetes-admin",
            "per_node = true\nroles = [\"worker\"]\n",
            "kubernetes/admin.pem and NODE/kubernetes-admin.pem would both be age.secrets",
        ),
        ("secret-key", "", "not ending in -key"),
    ] {
        let config = format!(
            "{base}\n[[certificate]]\nname = \"{name}\"\nca = \"kubernetes\"\nusages = [\"client\"]\n{extra}"
        );
        let cluster = Cluster::with_config(&config);
        let before = cluster.snapshot();
        let line = cluster.kpki(&["init"]).fails_with(2);
        assert!(
            line.contains("pki/kpki.toml") && line.contains(needle),
            "{name}: {line}"
        );
        assert!(
            line.contains(&format!("line {}", lines + 2)),
            "{name}: no line: {line}"
        );
        assert!(before == cluster.snapshot(), "{name}: files changed");
    }
    let twice = format!(
        "{base}\n[[certificate]]\nname = \"flannel\"\nca = \"kubernetes\"\nusages = [\"client\"]\n\n[[certificate]]\nname = \"flannel\"\nca = \"etcd\"\nusages = [\"client\"]\n"
    );
    let line = Cluster::with_config(&twice).kpki(&["init"]).fails_with(2);
    assert!(line.contains("declared twice"), "{line}");
    for (extra, needle) in [
        ("usages = [\"server\"]\n", "needs at least one SAN"),
        (
            "usages = [\"client\"]\ncn = \"x-{node}\"\n",
            "{node} is only known",
        ),
        (
            "usages = [\"client\"]\nnodes = [\"node-09\"]\n",
            "\"node-09\" is not a [[node]]",
        ),
        (
            "usages = [\"client\"]\nvalidity = \"11y\"\n",
            "longer than keys.ca_validity",
        ),
        (
            "usages = [\"client\"]\norganizations = [\"a\", \"b\", \"c\"]\n",
            "at most 2",
        ),
        (
            "usages = [\"client\"]\nowner = \"Bad Owner\"\n",
            "is not a user name",
        ),
    ] {
        let config = format!("{base}\n[[certificate]]\nname = \"x\"\nca = \"kubernetes\"\n{extra}");
        let line = Cluster::with_config(&config).kpki(&["init"]).fails_with(2);
        assert!(line.contains(needle), "{extra}: {line}");
    }
}

#[test]
fn a_removed_declaration_is_reported_and_system_masters_on_nodes_is_marked() {
    let cluster = Cluster::initialized(&config());
    cluster.write_config(&config().replace(
        "[[certificate]]\nname = \"flannel\"",
        "[[certificate]]\nname = \"flannel-v2\"",
    ));
    cluster.kpki(&["init", "-q"]).success();
    let status = cluster.kpki(&["status", "--json"]);
    assert_eq!(status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(&status.stdout()).unwrap();
    let leftovers = report["leftovers"].to_string();
    assert!(
        leftovers.contains("kubernetes/flannel.pem")
            && leftovers.contains("kubernetes/flannel-key.pem"),
        "{leftovers}"
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(1));
    let pruned = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(pruned.contains("pki/kubernetes/flannel.pem"), "{pruned}");
    assert!(
        !cluster
            .path()
            .join("secrets/kubernetes/flannel.pem.age")
            .exists()
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
    let masters = format!(
        "{}\n[[certificate]]\nname = \"break-glass\"\nca = \"kubernetes\"\norganizations = [\"system:masters\"]\nusages = [\"client\"]\nnodes = [\"node-04\"]\n",
        config()
    );
    let cluster = Cluster::initialized(&masters);
    let status = cluster.kpki(&["status"]).stdout();
    assert!(
        status
            .contains("kubernetes/break-glass carries system:masters and goes to nodes (node-04)"),
        "{status}"
    );
}

#[test]
fn leftovers_are_named_by_what_they_were() {
    let base = crate::secrets::config_with_keys();
    let exporter = "\n[[certificate]]\nname = \"node-exporter\"\nca = \"kubernetes\"\nusages = [\"server\"]\nper_node = true\nroles = [\"worker\"]\n";
    let cluster = Cluster::initialized(&format!("{base}{exporter}"));
    // The declaration goes, node-04 goes, and node-02 loses the etcd role.
    let config = crate::revocation::without_node(&base, "node-04");
    cluster.write_config(&crate::revocation::without_etcd(&config, "node-02"));
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    let out = status.stdout();
    for line in [
        "removed: node-04's 6 files (the node left the config)",
        "removed: node-exporter.pem, node-exporter-key.pem on node-01..node-03, 3 nodes (the declaration left the config)",
        "removed: etcd-peer.pem, etcd-peer-key.pem, etcd-server.pem, etcd-server-key.pem on node-02 (the node lost the etcd role)",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }
}
