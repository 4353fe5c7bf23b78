//! Removing nodes and revoking certificates: `kpki rotate --prune` and `kpki revoke`, checked
//! by a real etcd (which enforces the CRL), openssl (which reads it) and the age CLI (which
//! shows who can still decrypt what).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::etcd::{Client, Etcd};
use crate::harness::{Cluster, DEFAULT_CONFIG, fixture, run, run_ok, s};
use crate::secrets::{age_decrypt, config_with_keys, host_key};

/// `config` without the `[[node]]` named `name`.
pub fn without_node(config: &str, name: &str) -> String {
    let mut parts = config.split("[[node]]");
    let head = parts.next().unwrap_or_default().to_string();
    parts
        .filter(|block| !block.contains(&format!("name = \"{name}\"")))
        .fold(head, |acc, block| acc + "[[node]]" + block)
}

/// The serial numbers a CRL lists, as openssl prints them (uppercase hex).
fn crl_serials(crl: &Path) -> Vec<String> {
    run_ok("openssl", &["crl", "-in", s(crl), "-noout", "-text"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(String::from)
        .collect()
}

/// Checks with openssl that the CRL is signed by the CA certificate `ca`.
fn crl_verifies(crl: &Path, ca: &Path) {
    run_ok(
        "openssl",
        &["crl", "-in", s(crl), "-noout", "-verify", "-CAfile", s(ca)],
    );
}

/// A certificate's serial as openssl prints it.
fn serial(cert: &Path) -> String {
    run_ok("openssl", &["x509", "-in", s(cert), "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

/// Copies `pki/REL` for each of `rels` to `DIR/REL` below the cluster directory.
fn keep(cluster: &Cluster, dir: &str, rels: &[&str]) -> std::path::PathBuf {
    let to = cluster.path().join(dir);
    for rel in rels {
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(cluster.pki(rel), &target).unwrap();
    }
    to
}

#[test]
fn a_pruned_node_is_refused_by_etcd_as_client_and_as_peer() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mut etcd = Etcd::start(&cluster.pki(""));
    let apiserver = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&apiserver);
    // node-03 as it was: its member keeps running on these files after the prune.
    let gone = keep(
        &cluster,
        "gone",
        &[
            "etcd/ca.pem",
            "node-03/etcd-server.pem",
            "node-03/etcd-server-key.pem",
            "node-03/etcd-peer.pem",
            "node-03/etcd-peer-key.pem",
            "etcd/apiserver-etcd-client.pem",
            "etcd/apiserver-etcd-client-key.pem",
        ],
    );
    etcd.restart(2, &gone);
    etcd.wait_healthy(&apiserver);

    cluster.write_config(&without_node(DEFAULT_CONFIG, "node-03"));
    let out = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(out.contains("revoke node-03/etcd-peer.pem"), "{out}");
    assert!(!cluster.pki("node-03").exists());
    assert!(!cluster.path().join("secrets/node-03").exists());
    let crl = cluster.pki("etcd/crl.pem");
    crl_verifies(&crl, &cluster.pki("etcd/ca.pem"));
    let listed = crl_serials(&crl);
    for cert in [
        "node-03/etcd-server.pem",
        "node-03/etcd-peer.pem",
        "etcd/apiserver-etcd-client.pem",
    ] {
        assert!(
            listed.contains(&serial(&gone.join(cert))),
            "{cert} is not on the CRL"
        );
    }

    // The remaining members restart with the CRL, as kpki.nix wires them.
    for i in 0..2 {
        etcd.restart_checking(i, &cluster.pki(""), Some(&crl));
    }
    let apiserver = Client::of(&cluster, "etcd/apiserver-etcd-client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let put = apiserver.run(&etcd, 0, &["put", "/kpki/after-prune", "yes"]);
        if put.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no quorum of node-01 and node-02: {put:?}\n{}",
            etcd.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let get = apiserver.run(
        &etcd,
        1,
        &["get", "--print-value-only", "/kpki/after-prune"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "yes",
        "{get:?}"
    );

    // The client side: node-03's certificates and the old apiserver client are refused.
    let old = |cert: &str| Client {
        ca: gone.join("etcd/ca.pem"),
        cert: gone.join(format!("{cert}.pem")),
        key: gone.join(format!("{cert}-key.pem")),
    };
    for cert in [
        "node-03/etcd-server",
        "node-03/etcd-peer",
        "etcd/apiserver-etcd-client",
    ] {
        for member in 0..2 {
            let refused = old(cert).run(&etcd, member, &["get", "/kpki/after-prune"]);
            assert!(
                !refused.status.success(),
                "{cert} was accepted by member {member}"
            );
        }
    }
    // The etcd side: node-03's member connects as a peer and is turned away as revoked.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(etcd.log_of(0) + &etcd.log_of(1)).contains("revoked") {
        assert!(
            Instant::now() < deadline,
            "no member logged a revoked peer:\n{}",
            etcd.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let logs = etcd.log_of(0) + &etcd.log_of(1);
    let peer = serial(&gone.join("node-03/etcd-peer.pem")).to_lowercase();
    assert!(
        logs.contains(&peer),
        "the refused serial is not node-03's peer certificate:\n{}",
        etcd.logs()
    );
}

#[test]
fn a_pruned_worker_loses_its_files_and_the_kube_proxy_key() {
    let config = config_with_keys();
    let cluster = Cluster::initialized(&config);
    let old_proxy = std::fs::read(cluster.pki("kubernetes/kube-proxy-key.pem")).unwrap();
    cluster.write_config(&without_node(&config, "node-04"));

    let run_status = cluster.kpki(&["status"]);
    assert_eq!(run_status.code(), Some(1), "{}", run_status.stdout());
    assert!(
        run_status.stdout().contains("rotate --prune"),
        "{}",
        run_status.stdout()
    );
    let found = cluster.kpki(&["verify"]);
    assert_eq!(found.code(), Some(1));
    assert!(
        found
            .stdout()
            .contains("secrets/node-04/kubelet.pem.age: no longer in the config"),
        "{}",
        found.stdout()
    );

    let before = cluster.snapshot();
    let plan = cluster
        .kpki(&["rotate", "--prune", "--dry-run"])
        .success()
        .stdout();
    assert!(plan.contains("reissue kubernetes/kube-proxy"), "{plan}");
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    assert!(before == cluster.snapshot(), "the dry run changed files");

    let out = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(
        out.contains("still valid until they expire (the kubernetes CA"),
        "{out}"
    );
    assert!(!cluster.pki("node-04").exists());
    assert!(!cluster.path().join("secrets/node-04").exists());
    assert!(
        !cluster.pki("etcd/crl.pem").exists(),
        "a worker has nothing etcd could refuse"
    );
    let new_proxy = std::fs::read(cluster.pki("kubernetes/kube-proxy-key.pem")).unwrap();
    assert_ne!(new_proxy, old_proxy, "the kube-proxy key was not replaced");
    // Only the remaining workers, not node-04, can decrypt the new key.
    assert!(
        age_decrypt(
            &cluster,
            &host_key("node-04"),
            "kubernetes/kube-proxy-key.pem"
        )
        .is_none()
    );
    assert_eq!(
        age_decrypt(
            &cluster,
            &host_key("node-01"),
            "kubernetes/kube-proxy-key.pem"
        ),
        Some(new_proxy)
    );
    let host = std::fs::read_to_string(fixture("node-04_ssh_host_ed25519_key.pub")).unwrap();
    let host = host.split_whitespace().nth(1).unwrap().to_string();
    for nix in ["secrets.nix", "kpki.nix"] {
        let text = std::fs::read_to_string(cluster.path().join("secrets").join(nix)).unwrap();
        assert!(!text.contains("node-04"), "{nix} still names node-04");
        assert!(
            !text.contains(&host),
            "{nix} still holds node-04's host key"
        );
    }
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));

    // Repeated, a prune changes nothing.
    let settled = cluster.committed();
    let again = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(again.contains("nothing to prune"), "{again}");
    assert!(
        settled == cluster.committed(),
        "a second prune changed files"
    );
}

#[test]
fn revoking_an_etcd_peer_certificate_lists_it_and_reissues_it() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let old = keep(&cluster, "old", &["node-02/etcd-peer.pem", "etcd/ca.pem"]);
    let old_cert = old.join("node-02/etcd-peer.pem");
    let out = cluster
        .kpki(&["revoke", "node-02/etcd-peer"])
        .success()
        .stdout();
    assert!(out.contains("revoked node-02/etcd-peer.pem"), "{out}");
    let crl = cluster.pki("etcd/crl.pem");
    assert_eq!(crl_serials(&crl), [serial(&old_cert)]);
    let new_cert = cluster.pki("node-02/etcd-peer.pem");
    assert_ne!(serial(&new_cert), serial(&old_cert), "not reissued");
    let check = |cert: &Path| {
        run(
            "openssl",
            &[
                "verify",
                "-crl_check",
                "-CRLfile",
                s(&crl),
                "-CAfile",
                s(&cluster.pki("etcd/ca.pem")),
                s(cert),
            ],
        )
    };
    let refused = check(&old_cert);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stdout).contains("revoked")
            || String::from_utf8_lossy(&refused.stderr).contains("revoked"),
        "{refused:?}"
    );
    assert!(
        check(&new_cert).status.success(),
        "the reissued certificate fails the CRL check"
    );

    // A second revocation grows the list and numbers it anew.
    let number = |crl: &Path| {
        run_ok("openssl", &["crl", "-in", s(crl), "-noout", "-crlnumber"])
            .trim()
            .to_string()
    };
    let first = number(&crl);
    cluster
        .kpki(&["revoke", "etcd/apiserver-etcd-client"])
        .success();
    assert_eq!(crl_serials(&crl).len(), 2);
    assert_ne!(number(&crl), first);
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));

    // Certificates nothing would check are refused, with the way to end them.
    let before = cluster.snapshot();
    for (name, needle) in [
        (
            "node-02/kubelet",
            "no Kubernetes component checks revocation",
        ),
        ("etcd-ca", "not a certificate of this cluster"),
        ("etcd/ca", "is a CA"),
        ("node-09/etcd-peer", "not a certificate of this cluster"),
    ] {
        let err = cluster.kpki(&["revoke", name]).fails_with(2);
        assert!(err.contains(needle), "{name}: {err}");
    }
    assert!(
        before == cluster.snapshot(),
        "a refused revoke changed files"
    );
}

#[test]
fn revoking_a_user_removes_it_and_says_what_stays_valid() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["issue", "client", "--cn", "bob"]).success();
    let run = cluster.kpki(&["revoke", "users/bob"]).success();
    assert!(
        run.stderr().contains("stays valid until"),
        "{}",
        run.stderr()
    );
    assert!(!cluster.pki("users/bob.pem").exists());
    assert!(!cluster.path().join("secrets/users/bob.pem.age").exists());
    assert!(!cluster.kpki(&["status"]).stdout().contains("users/bob"));
}

#[test]
fn the_list_is_signed_anew_when_due_after_a_ca_rotation_and_checked_by_verify() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-01/etcd-server"]).success();
    let crl = cluster.pki("etcd/crl.pem");
    let number = || {
        run_ok("openssl", &["crl", "-in", s(&crl), "-noout", "-crlnumber"])
            .trim()
            .to_string()
    };
    let first = number();
    // Its next update is a year out: due within 400 days, not within the default window.
    let status = cluster.kpki(&["status", "--at", &later(400)]).stdout();
    let row = status.lines().find(|l| l.starts_with("etcd/crl")).unwrap();
    assert!(row.contains("expired") || row.contains("renew"), "{row}");
    cluster.kpki(&["rotate"]).success();
    assert_eq!(
        number(),
        first,
        "a rotate with nothing due signed the list anew"
    );
    let out = cluster
        .kpki(&["rotate", "--within", "400d"])
        .success()
        .stdout();
    assert!(out.contains("sign etcd/crl.pem anew"), "{out}");
    let second = number();
    assert_ne!(second, first);

    // After a rotation of the etcd CA, the list is signed by the new CA.
    cluster.kpki(&["rotate", "--ca", "etcd"]).success();
    assert_ne!(number(), second);
    let new_ca = cluster.path().join("new-etcd-ca.pem");
    let bundle = std::fs::read_to_string(cluster.pki("etcd/ca.pem")).unwrap();
    let first_cert = bundle
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    std::fs::write(&new_ca, first_cert).unwrap();
    crl_verifies(&crl, &new_ca);
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));

    // A ledger edited by hand (a live certificate added to it) is found.
    let live = serial(&cluster.pki("node-02/etcd-peer.pem")).to_lowercase();
    let manifest = cluster.path().join("secrets/manifest.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str(&format!(
        "\n[revoked.{live}]\nfile = \"node-02/etcd-peer.pem\"\nreason = \"compromised\"\nrevoked = \"2026-01-01T00:00:00Z\"\nnot_after = \"2099-01-01T00:00:00Z\"\n"
    ));
    std::fs::write(&manifest, text).unwrap();
    let found = cluster.kpki(&["verify"]);
    assert_eq!(found.code(), Some(1), "{}", found.stdout());
    assert!(
        found
            .stdout()
            .contains("pki/node-02/etcd-peer.pem: revoked"),
        "{}",
        found.stdout()
    );
    assert!(
        found
            .stdout()
            .contains("does not list exactly the revocations"),
        "{}",
        found.stdout()
    );
}

/// The date `days` from now, as `status --at` takes it.
fn later(days: i64) -> String {
    let at = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    format!(
        "{:04}-{:02}-{:02}",
        at.year(),
        u8::from(at.month()),
        at.day()
    )
}

#[test]
fn a_node_that_loses_the_etcd_role_has_its_etcd_certificates_revoked() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let peer = serial(&cluster.pki("node-02/etcd-peer.pem"));
    let config = DEFAULT_CONFIG;
    let at = config.find("name = \"node-02\"").unwrap();
    let roles = at + config[at..].find("roles = ").unwrap();
    let end = roles + config[roles..].find('\n').unwrap();
    let config = format!(
        "{}roles = [\"control-plane\", \"worker\"]{}",
        &config[..roles],
        &config[end..]
    );
    cluster.write_config(&config);
    let out = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(out.contains("the etcd role"), "{out}");
    assert!(
        !out.contains("reissue"),
        "losing etcd opens no shared key: {out}"
    );
    assert!(crl_serials(&cluster.pki("etcd/crl.pem")).contains(&peer));
    assert!(!cluster.pki("node-02/etcd-peer.pem").exists());
    assert!(
        cluster.pki("node-02/kubelet.pem").exists(),
        "node-02 keeps its other files"
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}
