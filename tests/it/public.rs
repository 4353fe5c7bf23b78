//! What a clone without secrets can know: a CI job with no identity and no `pki/` plaintext
//! reads expiry, names and revocations from the signed manifest, and says what it did not check.

use crate::harness::{Cluster, edit_manifest, fixture, resign, run_ok, s};
use crate::secrets::{age_decrypt, config_with_keys};

/// openssl's `notAfter` of the certificate sealed at `secrets/REL.age`, as `YYYY-MM-DD`.
fn sealed_expiry(cluster: &Cluster, rel: &str) -> String {
    let pem = age_decrypt(cluster, &fixture("admin-identity.txt"), rel).unwrap();
    let file = cluster.path().with_extension("leaf.pem");
    std::fs::write(&file, pem).unwrap();
    let date = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            s(&file),
            "-noout",
            "-enddate",
            "-dateopt",
            "iso_8601",
        ],
    );
    date.trim().trim_start_matches("notAfter=")[..10].to_string()
}

#[test]
fn status_without_an_identity_reads_the_signed_record_and_says_what_it_did_not_check() {
    let cluster = Cluster::initialized(&config_with_keys());
    let expiry = sealed_expiry(&cluster, "node-01/kubelet.pem");
    cluster.fresh_clone();
    assert!(cluster.pem_files().is_empty());

    let run = cluster.kpki(&["status"]).success();
    let out = run.stdout();
    let kubelet = out
        .lines()
        .find(|l| l.starts_with("node-01/kubelet "))
        .unwrap();
    assert!(
        kubelet.contains(&expiry) && kubelet.ends_with("ok"),
        "{out}"
    );
    assert!(out.contains("their content unchecked"), "{out}");
    assert!(!out.contains("secrets: up to date"), "{out}");
    assert!(
        out.contains("checked from the signed manifest's record"),
        "{out}"
    );
    assert!(cluster.pem_files().is_empty(), "status decrypted into pki/");

    // A CI job alerting on expiry: --at past the renewal window, then past the expiry.
    let json = cluster.kpki(&["status", "--json", "--at", &format!("{expiry}T00:00:00Z")]);
    assert_eq!(json.code(), Some(1));
    let file = cluster.path().with_extension("status.json");
    std::fs::write(&file, json.stdout()).unwrap();
    let state = run_ok(
        "jq",
        &[
            "-r",
            ".rows[] | select(.name == \"node-01/kubelet\") | .state",
            s(&file),
        ],
    );
    assert_eq!(state.trim(), "renew");
    let later = cluster.kpki(&["status", "--at", "2099-01-01T00:00:00Z"]);
    assert_eq!(later.code(), Some(1));
    assert!(later.stdout().contains("expired"), "{}", later.stdout());

    // A node renumbered in the config: its certificates drift, by the recorded SAN digest.
    let config = std::fs::read_to_string(cluster.pki("kpki.toml")).unwrap();
    cluster.write_config(&config.replacen("2001:db8::1\"", "2001:db8::11\"", 1));
    let drift = cluster.kpki(&["status"]);
    assert_eq!(drift.code(), Some(1));
    let line = drift
        .stdout()
        .lines()
        .find(|l| l.starts_with("node-01/apiserver "))
        .unwrap()
        .to_string();
    assert!(line.ends_with("drift"), "{}", drift.stdout());
}

#[test]
fn facts_that_do_not_match_the_certificate_are_found() {
    let cluster = Cluster::initialized(&config_with_keys());
    // A pusher moves an expiry out: the signature fails, and status says so.
    edit_manifest(&cluster, |body| {
        let at = body.find("not_after = \"").unwrap() + "not_after = \"".len();
        format!("{}2099{}", &body[..at], &body[at + 4..])
    });
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    assert!(status.stderr().contains("signature"), "{}", status.stderr());
    // Signed by an admin (a kpki bug, a hand): verify reads the certificates and finds it.
    resign(&cluster);
    let id = fixture("admin-identity.txt");
    let verify = cluster.kpki(&["verify", "-i", s(&id)]);
    assert_eq!(verify.code(), Some(1), "{}", verify.stdout());
    assert!(
        verify.stdout().contains("secrets/manifest.toml"),
        "{}",
        verify.stdout()
    );
}

/// One line of `openssl x509 -noout -ext NAME` for the certificate at `pem`: the value below
/// the extension's name.
fn openssl_extension(pem: &std::path::Path, name: &str) -> String {
    let out = run_ok("openssl", &["x509", "-in", s(pem), "-noout", "-ext", name]);
    out.lines().nth(1).unwrap_or_default().trim().to_string()
}

/// The value of `key = "..."` in the manifest's facts of `rel`.
fn recorded(cluster: &Cluster, rel: &str, key: &str) -> String {
    let text = std::fs::read_to_string(cluster.path().join("secrets/manifest.toml")).unwrap();
    let table = format!("[files.\"{rel}\".certificate]\n");
    let facts = &text[text.find(&table).unwrap() + table.len()..];
    let facts = &facts[..facts.find("\n\n").unwrap()];
    facts
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
        .unwrap_or_else(|| panic!("{rel}: no {key} in {facts}"))
        .trim_end_matches('"')
        .to_string()
}

#[test]
fn the_recorded_usage_key_and_authority_are_what_openssl_reads() {
    let cluster = Cluster::initialized(&config_with_keys());
    for (rel, usage) in [
        ("node-01/etcd-peer.pem", "server + client"),
        ("node-02/kubelet.pem", "client"),
        ("node-03/kubelet-serving.pem", "server"),
    ] {
        let pem = cluster.pki(rel);
        let eku = openssl_extension(&pem, "extendedKeyUsage");
        let said = eku
            .replace("TLS Web Server Authentication", "server")
            .replace("TLS Web Client Authentication", "client")
            .replace(", ", " + ");
        assert_eq!(recorded(&cluster, rel, "usage"), usage, "{rel}");
        assert_eq!(said, usage, "{rel}: openssl reads {eku}");
        let aki = openssl_extension(&pem, "authorityKeyIdentifier");
        let aki = aki
            .trim_start_matches("keyid:")
            .replace(':', "")
            .to_lowercase();
        assert_eq!(recorded(&cluster, rel, "authority"), aki, "{rel}");
        let text = run_ok("openssl", &["x509", "-in", s(&pem), "-noout", "-text"]);
        assert!(text.contains("ASN1 OID: prime256v1"), "{text}");
        assert_eq!(recorded(&cluster, rel, "key"), "ecdsa-p256", "{rel}");
    }
}

#[test]
fn a_parse_of_the_manifest_kept_elsewhere_is_never_taken_for_it() {
    // Writers keep the manifest parsed in pki/.kpki/ (git-ignored), bound to the manifest
    // file's inode and ctime. A copy of it in another clone (pushed with git add -f, or copied
    // along) names the same manifest text, but not that clone's file.
    let cluster = Cluster::initialized(&config_with_keys());
    let kept = cluster.pki(".kpki/manifest.json");
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(text.contains("\"source\":\"sha256:"), "{text}");
    let forged = text.replace("\"node-02/kubelet.pem\"", "\"node-02/kubelet-x.pem\"");
    assert_ne!(forged, text);
    let copy = cluster.copy();
    std::fs::write(copy.pki(".kpki/manifest.json"), &forged).unwrap();
    copy.kpki(&["verify"]).success();
    let status = copy.kpki(&["status"]).success().stdout();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("node-02/kubelet ") && l.ends_with("ok")),
        "{status}"
    );
}
