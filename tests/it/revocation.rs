//! Removing nodes and revoking certificates: `kpki rotate --prune` and `kpki revoke`, checked
//! by a real etcd (which enforces the CRL), openssl (which reads it) and the age CLI (which
//! shows who can still decrypt what).

use std::path::Path;

use crate::etcd::{CRL, Client, Etcd, Version};
use crate::harness::{
    Cluster, DEFAULT_CONFIG, edit_manifest, eventually, fixture, resign, run, run_ok, s,
};
use crate::secrets::{age_decrypt, config_with_keys, host_key};

/// `config` without the `[[node]]` named `name`.
pub fn without_node(config: &str, name: &str) -> String {
    let mut parts = config.split("[[node]]");
    let head = parts.next().unwrap_or_default().to_string();
    parts
        .filter(|block| !block.contains(&format!("name = \"{name}\"")))
        .fold(head, |acc, block| acc + "[[node]]" + block)
}

/// The input format of a CRL file for openssl: DER for `crl.der`, PEM otherwise.
fn inform(crl: &Path) -> &'static str {
    match crl.extension().and_then(|e| e.to_str()) {
        Some("der") => "DER",
        _ => "PEM",
    }
}

/// `config` with node `name` holding the control-plane and worker roles, not etcd.
pub fn without_etcd(config: &str, name: &str) -> String {
    let at = config.find(&format!("name = \"{name}\"")).unwrap();
    let roles = at + config[at..].find("roles = ").unwrap();
    let end = roles + config[roles..].find('\n').unwrap();
    format!(
        "{}roles = [\"control-plane\", \"worker\"]{}",
        &config[..roles],
        &config[end..]
    )
}

/// The serial numbers a CRL lists, as openssl prints them (uppercase hex).
fn crl_serials(crl: &Path) -> Vec<String> {
    let form = inform(crl);
    run_ok(
        "openssl",
        &["crl", "-inform", form, "-in", s(crl), "-noout", "-text"],
    )
    .lines()
    .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
    .map(String::from)
    .collect()
}

/// Checks with openssl that the CRL is signed by the CA certificate `ca`.
fn crl_verifies(crl: &Path, ca: &Path) {
    let form = inform(crl);
    run_ok(
        "openssl",
        &[
            "crl",
            "-inform",
            form,
            "-in",
            s(crl),
            "-noout",
            "-verify",
            "-CAfile",
            s(ca),
        ],
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

/// Waits until a write through member `i` succeeds: the cluster has its quorum.
fn wait_writable(etcd: &Etcd, client: &Client, i: usize, key: &str) {
    eventually(
        60,
        || client.run(etcd, i, &["put", key, "yes"]).status.success(),
        || format!("no quorum through member {i}:\n{}", etcd.logs()),
    );
}

/// Waits until one of `members` logged that it refused a certificate of `serial` as revoked.
fn logged_revoked(etcd: &Etcd, members: &[usize], serial: &str) {
    let needle = format!("serial {} revoked", serial.to_lowercase());
    eventually(
        60,
        || members.iter().any(|&i| etcd.log_of(i).contains(&needle)),
        || format!("no member logged {needle:?}:\n{}", etcd.logs()),
    );
}

/// Deploys `pki` to every member in turn and restarts it, checking after each step that the
/// cluster kept its quorum and every member is healthy (each peer accepted the others).
fn roll(etcd: &mut Etcd, pki: &Path, client: &Client, members: &[usize]) {
    for &i in members {
        etcd.redeploy(i, pki);
        wait_writable(etcd, client, i, &format!("/kpki/roll/{i}"));
    }
}

/// Checks that every member in `members` refuses the client `who` (a revoked certificate) and
/// logs the refusal as a revocation of its serial.
fn refused_everywhere(etcd: &Etcd, who: &Client, members: &[usize], serial: &str) {
    for &i in members {
        let out = who.run(etcd, i, &["get", "/kpki/roll/0"]);
        assert!(
            !out.status.success(),
            "member {i} accepted {}",
            who.cert.display()
        );
    }
    logged_revoked(etcd, members, serial);
    assert!(
        !etcd.full_logs().contains("malformed crl"),
        "a member could not parse the list:\n{}",
        etcd.logs()
    );
}

/// A client made of files kept in `dir` by [`keep`]: `STEM.pem`, `STEM-key.pem`, `etcd/ca.pem`.
fn kept_client(dir: &Path, stem: &str) -> Client {
    Client {
        ca: dir.join("etcd/ca.pem"),
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}-key.pem")),
    }
}

/// `kpki rotate --prune` of node-03 on a live etcd of `version`: every member, each on its own
/// copy of its files, restarts with the DER list `kpki.nix` wires; the cluster keeps its quorum
/// at each step; node-03's certificates and the apiserver's old client are refused, as client
/// and as peer; the new client is accepted everywhere.
fn pruned_node_is_refused(version: Version) {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let pki = cluster.pki("");
    let mut etcd = Etcd::start_deployed(&pki, version.program());
    let apiserver = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&apiserver);
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

    // node-03's member keeps running on its own copy: the files of a node that is gone.
    cluster.write_config(&without_node(DEFAULT_CONFIG, "node-03"));
    let out = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(out.contains("revoke node-03/etcd-peer.pem"), "{out}");
    assert!(!cluster.pki("node-03").exists());
    assert!(!cluster.path().join("secrets/node-03").exists());
    let crl = cluster.pki(CRL);
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

    let apiserver = Client::of(&cluster, "etcd/apiserver-etcd-client");
    roll(&mut etcd, &pki, &apiserver, &[0, 1]);
    // The etcd side first, before any client presents these certificates: node-03's member
    // connects as a peer and is turned away as revoked.
    logged_revoked(&etcd, &[0, 1], &serial(&gone.join("node-03/etcd-peer.pem")));
    let get = apiserver.run(&etcd, 1, &["get", "--print-value-only", "/kpki/roll/0"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "yes",
        "{get:?}"
    );
    for cert in [
        "node-03/etcd-server",
        "node-03/etcd-peer",
        "etcd/apiserver-etcd-client",
    ] {
        let who = kept_client(&gone, cert);
        refused_everywhere(&etcd, &who, &[0, 1], &serial(&who.cert));
    }
}

#[test]
fn a_pruned_node_is_refused_by_etcd_3_4() {
    pruned_node_is_refused(Version::V3_4);
}

#[test]
fn a_pruned_node_is_refused_by_etcd_3_6() {
    pruned_node_is_refused(Version::V3_6);
}

/// `kpki revoke` on a live etcd of `version`, before and during a rotation of the etcd CA.
/// During the rotation the members trust the old CA too, so node-03's peer certificate of the
/// old CA (which node-03 still holds until its next deploy) must be on the list as well: etcd
/// matches serials only. Every member restarts one at a time on its own copy, with the DER list,
/// and the cluster keeps its quorum at every step.
fn revoked_certificates_are_refused(version: Version) {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let pki = cluster.pki("");
    let mut etcd = Etcd::start_deployed(&pki, version.program());
    let client = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&client);
    let all = [0, 1, 2];

    let first = keep(
        &cluster,
        "first",
        &[
            "etcd/ca.pem",
            "node-01/etcd-server.pem",
            "node-01/etcd-server-key.pem",
        ],
    );
    cluster.kpki(&["revoke", "node-01/etcd-server"]).success();
    run_ok(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            s(&cluster.pki(CRL)),
            "-noout",
        ],
    );
    roll(&mut etcd, &pki, &client, &all);
    etcd.wait_healthy(&client);
    let who = kept_client(&first, "node-01/etcd-server");
    refused_everywhere(&etcd, &who, &all, &serial(&who.cert));

    // node-03's peer certificate of the old CA, as node-03 holds it during the rotation.
    let held = keep(
        &cluster,
        "held",
        &[
            "etcd/ca.pem",
            "node-03/etcd-peer.pem",
            "node-03/etcd-peer-key.pem",
        ],
    );
    cluster.kpki(&["rotate", "--ca", "etcd"]).success();
    roll(&mut etcd, &pki, &client, &all);
    let out = cluster
        .kpki(&["revoke", "node-03/etcd-peer"])
        .success()
        .stdout();
    let old = serial(&held.join("node-03/etcd-peer.pem"));
    assert!(
        out.contains(&old.to_lowercase()),
        "the old CA's certificate is not named: {out}"
    );
    let listed = crl_serials(&cluster.pki(CRL));
    assert!(listed.contains(&old), "{listed:?}");
    assert!(
        listed.contains(&serial(&who.cert)),
        "an earlier revocation left the list: {listed:?}"
    );
    roll(&mut etcd, &pki, &client, &all);
    etcd.wait_healthy(&client);
    let who = kept_client(&held, "node-03/etcd-peer");
    refused_everywhere(&etcd, &who, &all, &old);

    cluster
        .kpki(&["rotate", "--ca", "etcd", "--finish", "--no-live-check"])
        .success();
    roll(&mut etcd, &pki, &client, &all);
    etcd.wait_healthy(&client);
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn revoked_certificates_are_refused_by_etcd_3_4() {
    revoked_certificates_are_refused(Version::V3_4);
}

#[test]
fn revoked_certificates_are_refused_by_etcd_3_6() {
    revoked_certificates_are_refused(Version::V3_6);
}

#[test]
fn a_pruned_worker_loses_its_files_and_the_kube_proxy_key() {
    let config = config_with_keys();
    let cluster = Cluster::initialized(&config);
    let old_proxy = std::fs::read(cluster.pki("kubernetes/kube-proxy-key.pem")).unwrap();
    cluster.write_config(&without_node(&config, "node-04"));

    let status = cluster.kpki(&["status"]).finds();
    assert!(status.contains("rotate --prune"), "{status}");
    let found = cluster.kpki(&["verify"]).finds();
    assert!(
        found.contains("secrets/node-04/kubelet.pem.age: no longer in the config"),
        "{found}"
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
        !cluster.pki(CRL).exists() && !cluster.pki("etcd/crl.pem").exists(),
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
    // It says what it did: files deleted; no list changed, so nothing about etcd reading one.
    let out = run.stdout();
    assert!(out.contains("deleted pki/users/bob.pem\n"), "{out}");
    assert!(
        out.contains("deleted secrets/users/bob-key.pem.age\n"),
        "{out}"
    );
    assert!(!out.contains("wrote pki/users"), "{out}");
    assert!(!out.contains("CRL"), "{out}");
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
    assert!(out.contains("sign etcd/crl.der anew"), "{out}");
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

    // A ledger edited by an admin by hand (a live certificate added to it, signed) is found.
    let live = serial(&cluster.pki("node-02/etcd-peer.pem")).to_lowercase();
    edit_manifest(&cluster, |body| {
        format!(
            "{body}[revoked.{live}]\nfile = \"node-02/etcd-peer.pem\"\nreason = \"compromised\"\nrevoked = \"2026-01-01T00:00:00Z\"\nnot_after = \"2099-01-01T00:00:00Z\"\n\n"
        )
    });
    resign(&cluster);
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
    cluster.write_config(&without_etcd(DEFAULT_CONFIG, "node-02"));
    let out = cluster.kpki(&["rotate", "--prune"]).success().stdout();
    assert!(out.contains("the etcd role"), "{out}");
    assert!(
        !out.contains("reissue"),
        "losing etcd opens no shared key: {out}"
    );
    assert!(crl_serials(&cluster.pki(CRL)).contains(&peer));
    assert!(!cluster.pki("node-02/etcd-peer.pem").exists());
    assert!(
        cluster.pki("node-02/kubelet.pem").exists(),
        "node-02 keeps its other files"
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

/// The DER of a PEM CRL, converted by openssl.
fn pem_to_der(crl: &Path) -> Vec<u8> {
    let out = run("openssl", &["crl", "-in", s(crl), "-outform", "DER"]);
    assert!(out.status.success(), "{out:?}");
    out.stdout
}

#[test]
fn etcd_gets_the_list_in_der_and_people_get_the_same_list_in_pem() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    let der = std::fs::read(cluster.pki(CRL)).unwrap();
    assert_eq!(der[0], 0x30, "not DER");
    assert_eq!(pem_to_der(&cluster.pki("etcd/crl.pem")), der);
    // Both are sealed, and what the etcd nodes decrypt is the DER list itself.
    let admin = cluster.pki("admin.agekey");
    assert_eq!(age_decrypt(&cluster, &admin, CRL), Some(der));
    assert!(age_decrypt(&cluster, &admin, "etcd/crl.pem").is_some());
    let ignore = std::fs::read_to_string(cluster.pki(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*.der"), "{ignore}");
}

#[test]
fn a_list_etcd_cannot_parse_is_found_by_verify() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    // What agenix -e or a hand would leave: PEM sealed in place of the DER list.
    let admin = run_ok("age-keygen", &["-y", s(&cluster.pki("admin.agekey"))]);
    std::fs::remove_file(cluster.pki(CRL)).unwrap();
    let sealed = cluster.path().join("secrets").join(format!("{CRL}.age"));
    run_ok(
        "age",
        &[
            "-e",
            "-a",
            "-r",
            admin.trim(),
            "-o",
            s(&sealed),
            s(&cluster.pki("etcd/crl.pem")),
        ],
    );
    let found = cluster.kpki(&["verify"]);
    assert_eq!(found.code(), Some(1), "{}", found.stderr());
    assert!(
        found.stdout().contains(&format!(
            "secrets/{CRL}.age: decrypted, it holds PEM, but it must hold DER: etcd 3.5 and later cannot parse it"
        )),
        "{}",
        found.stdout()
    );
}

/// A cluster whose list predates the DER file, as an older kpki left it: only `crl.pem`, in the
/// manifest (unsigned, no generation) and on disk, no pin, and kpki's `pki/.gitignore` without
/// `*.der`.
fn as_before_the_der_list(cluster: &Cluster) {
    std::fs::remove_file(cluster.pki(CRL)).unwrap();
    std::fs::remove_file(cluster.path().join("secrets").join(format!("{CRL}.age"))).unwrap();
    crate::harness::as_written_by_an_unsigning_kpki(cluster);
    let manifest = cluster.path().join("secrets/manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let table = format!("[files.\"{CRL}\"]\n");
    let at = text.find(&table).unwrap();
    let end = at + text[at..].find("\n\n").unwrap() + 2;
    std::fs::write(&manifest, format!("{}{}", &text[..at], &text[end..])).unwrap();
    let ignore = std::fs::read_to_string(cluster.pki(".gitignore")).unwrap();
    std::fs::write(cluster.pki(".gitignore"), ignore.replace("*.der\n", "")).unwrap();
}

#[test]
fn a_cluster_from_before_the_der_list_moves_over_with_the_next_init_or_rotate() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    as_before_the_der_list(&cluster);
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        status.stdout().contains("etcd/crl.der is missing"),
        "{}",
        status.stdout()
    );
    let listed = crl_serials(&cluster.pki("etcd/crl.pem"));
    let rotated = cluster.copy();

    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(out.contains("pki/etcd/crl.der"), "{out}");
    assert!(out.contains(&format!("secrets/{CRL}.age")), "{out}");
    let der = std::fs::read(cluster.pki(CRL)).unwrap();
    assert_eq!(
        pem_to_der(&cluster.pki("etcd/crl.pem")),
        der,
        "init signed anew instead of completing"
    );
    assert_eq!(crl_serials(&cluster.pki(CRL)), listed);
    let ignore = std::fs::read_to_string(cluster.pki(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*.der"), "{ignore}");
    let wired = crate::nixos::eval(
        &cluster,
        "node-01",
        "{ kpki.wireServices = true; services.etcd.enable = true; }",
    )
    .unwrap();
    assert_eq!(
        wired["etcd"]["ETCD_CLIENT_CRL_FILE"],
        "/run/agenix/kpki-etcd-crl.der"
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));

    let out = rotated.kpki(&["rotate"]).success().stdout();
    assert!(out.contains(&format!("sign {CRL} anew")), "{out}");
    assert_eq!(crl_serials(&rotated.pki(CRL)), listed);
    assert_eq!(rotated.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn a_pushed_superseded_entry_never_revokes_a_certificate_in_use() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["rotate", "--ca", "etcd"]).success();
    // A pusher with no key adds the apiserver's etcd client to the superseded ledger, under
    // node-03's peer certificate, hoping the admin's next revoke takes the apiservers down.
    let live = serial(&cluster.pki("etcd/apiserver-etcd-client.pem")).to_lowercase();
    edit_manifest(&cluster, |body| {
        format!(
            "{body}[superseded.{live}]\nfile = \"node-03/etcd-peer.pem\"\nnot_after = \"2099-01-01T00:00:00Z\"\n\n"
        )
    });
    let line = cluster.kpki(&["revoke", "node-03/etcd-peer"]).fails_with(2);
    assert!(line.contains("secrets/manifest.toml"), "{line}");
    // The same entry signed (an admin's mistake, or a kpki bug) is still never listed.
    resign(&cluster);
    cluster.kpki(&["revoke", "node-03/etcd-peer"]).success();
    let listed = crl_serials(&cluster.pki(CRL));
    assert!(
        !listed.contains(&live.to_uppercase()),
        "a certificate in use was revoked: {listed:?}"
    );
    assert_eq!(
        listed.len(),
        2,
        "node-03's new-CA and old-CA peer certificates: {listed:?}"
    );
}

#[test]
fn a_list_the_etcd_ca_did_not_sign_is_never_copied_to_what_etcd_reads() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    let mut der = std::fs::read(cluster.pki(CRL)).unwrap();
    as_before_the_der_list(&cluster);
    // A pusher's list: the real one with its signature broken (etcd would not notice), sealed
    // and recorded in the manifest as a teammate would.
    *der.last_mut().unwrap() ^= 1;
    let forged = cluster.path().join("forged.der");
    std::fs::write(&forged, &der).unwrap();
    let pem = cluster.pki("etcd/crl.pem");
    run_ok(
        "openssl",
        &["crl", "-inform", "DER", "-in", s(&forged), "-out", s(&pem)],
    );
    crate::harness::commit_by_hand(&cluster, "etcd/crl.pem");
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(
        !cluster.pki(CRL).exists(),
        "init copied an unsigned list: {out}"
    );
    let status = cluster.kpki(&["status"]).stdout();
    assert!(status.contains("etcd/crl.der is missing"), "{status}");
    // rotate signs a list of its own, which verifies under the etcd CA.
    cluster.kpki(&["rotate"]).success();
    crl_verifies(&cluster.pki(CRL), &cluster.pki("etcd/ca.pem"));
}
