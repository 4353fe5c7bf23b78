//! `kpki status` and `kpki rotate`: expiry, drift, renewal, and service-account rotation, judged
//! by openssl and git.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{Cluster, DEFAULT_CONFIG, commit_all, git, run_ok, s};
use crate::secrets::config_with_keys;

/// `status --json` (with extra args) and its exit code.
fn status(cluster: &Cluster, args: &[&str]) -> (Value, Option<i32>) {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let run = cluster.kpki(&all);
    (serde_json::from_str(&run.stdout()).unwrap(), run.code())
}

/// The state of each row by name.
fn states(report: &Value) -> Vec<(String, String)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn changed(cluster: &Cluster) -> BTreeSet<String> {
    git(cluster, &["status", "--porcelain"])
        .lines()
        .map(|l| l[3..].to_string())
        .collect()
}

/// openssl's verdict on `pki/LEAF.pem` under its CA.
fn verifies(cluster: &Cluster, ca: &str, leaf: &str) -> bool {
    let ca = cluster.pki(&format!("{ca}/ca.pem"));
    let leaf = cluster.pki(&format!("{leaf}.pem"));
    crate::harness::run("openssl", &["verify", "-CAfile", s(&ca), s(&leaf)])
        .status
        .success()
}

/// Every leaf of the default cluster with its CA.
fn leaves(report: &Value) -> Vec<(String, String)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                r["ca"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn a_fresh_pki_is_all_ok_and_status_exits_zero() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let (report, code) = status(&cluster, &[]);
    assert_eq!(code, Some(0));
    assert!(states(&report).iter().all(|(_, st)| st == "ok"), "{report}");
    assert_eq!(states(&report).len(), 4 + 7 + 15);
    let table = cluster.kpki(&["status"]).success().stdout();
    assert!(table.starts_with("CERTIFICATE"), "{table}");
    assert!(
        table.contains("node-02/kubelet-serving") && table.contains("secrets: up to date"),
        "{table}"
    );
}

#[test]
fn past_expiry_every_leaf_expires_and_rotate_renews_exactly_the_leaves() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    let cas: Vec<Vec<u8>> = ["kubernetes", "etcd", "front-proxy"]
        .iter()
        .map(|ca| std::fs::read(cluster.pki(&format!("{ca}/ca.pem"))).unwrap())
        .collect();
    let (report, code) = status(&cluster, &["--at", &later(400)]);
    assert_eq!(code, Some(1));
    for (name, state) in states(&report) {
        let expected = if name.ends_with("/ca") || name == "service-account/sa" {
            "ok"
        } else {
            "expired"
        };
        assert_eq!(state, expected, "{name}");
    }
    let (report_30d, _) = status(&cluster, &["--at", &later(340)]);
    assert!(
        states(&report_30d).iter().any(|(_, st)| st == "renew"),
        "{report_30d}"
    );

    cluster.kpki(&["rotate", "--within", "400d"]).success();
    let (report, code) = status(&cluster, &[]);
    assert_eq!(code, Some(0), "{report}");
    for (leaf, ca) in leaves(&report) {
        assert!(verifies(&cluster, &ca, &leaf), "{leaf}");
    }
    for (ca, before) in ["kubernetes", "etcd", "front-proxy"].iter().zip(cas) {
        assert_eq!(
            std::fs::read(cluster.pki(&format!("{ca}/ca.pem"))).unwrap(),
            before,
            "{ca}"
        );
    }
    let mut expected: BTreeSet<String> = leaves(&report)
        .iter()
        .flat_map(|(leaf, _)| {
            [
                format!("secrets/{leaf}.pem.age"),
                format!("secrets/{leaf}-key.pem.age"),
            ]
        })
        .collect();
    expected.extend(
        [
            "secrets/manifest.toml",
            "secrets/kpki.nix",
            "secrets/kubernetes/admin.kubeconfig.age",
        ]
        .map(String::from),
    );
    assert_eq!(changed(&cluster), expected);

    let before = cluster.snapshot();
    let out = cluster.kpki(&["rotate"]).success().stdout();
    assert!(out.contains("nothing to do"), "{out}");
    assert!(before == cluster.snapshot(), "a no-op rotate changed files");
}

/// A date `days` from now, as YYYY-MM-DD.
fn later(days: i64) -> String {
    let date = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let format = time::macros::format_description!("[year]-[month]-[day]");
    date.format(&format).unwrap()
}

#[test]
fn a_changed_address_drifts_exactly_the_san_bearing_certificates_and_rotate_fixes_them() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    cluster.write_config(&config_with_keys().replace("\"2001:db8::2\"", "\"2001:db8::22\""));
    let (report, code) = status(&cluster, &[]);
    assert_eq!(code, Some(1));
    let drifted: BTreeSet<String> = states(&report)
        .into_iter()
        .filter(|(_, st)| st == "drift")
        .map(|(n, _)| n)
        .collect();
    let expected: BTreeSet<String> = [
        "node-02/apiserver",
        "node-02/etcd-server",
        "node-02/etcd-peer",
        "node-02/kubelet-serving",
    ]
    .map(String::from)
    .into();
    assert_eq!(drifted, expected);
    let plan = cluster.kpki(&["rotate", "--dry-run"]).success().stdout();
    assert!(plan.contains("renew node-02/etcd-peer (drift: SANs differ (missing: IP:2001:db8::22; extra: IP:2001:db8::2))"), "{plan}");

    cluster.kpki(&["rotate"]).success();
    let touched: BTreeSet<String> = changed(&cluster)
        .into_iter()
        .filter_map(|f| {
            f.strip_prefix("secrets/node-02/")
                .and_then(|f| f.strip_suffix(".pem.age"))
                .map(String::from)
        })
        .collect();
    let expected: BTreeSet<String> = ["apiserver", "etcd-server", "etcd-peer", "kubelet-serving"]
        .iter()
        .flat_map(|s| [s.to_string(), format!("{s}-key")])
        .collect();
    assert_eq!(touched, expected);
    let (report, code) = status(&cluster, &[]);
    assert_eq!(code, Some(0), "{report}");
    let sans = run_ok(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            s(&cluster.pki("node-02/etcd-peer.pem")),
        ],
    );
    assert!(sans.contains("2001:DB8:0:0:0:0:0:22"), "{sans}");
}

/// The first public key of a `PUBLIC KEY` file or the public key of a private key, by openssl.
fn first_public_key(cluster: &Cluster, rel: &str) -> String {
    let flag = if rel.ends_with("-key.pem") {
        "-pubout"
    } else {
        "-pubin"
    };
    run_ok("openssl", &["pkey", flag, "-in", s(&cluster.pki(rel))])
}

/// How many public keys a PEM file holds.
fn public_keys(cluster: &Cluster, rel: &str) -> usize {
    std::fs::read_to_string(cluster.pki(rel))
        .unwrap()
        .matches("BEGIN PUBLIC KEY")
        .count()
}

#[test]
fn service_account_rotation_publishes_both_keys_until_finish() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let old_public = first_public_key(&cluster, "service-account/sa.pem");
    let line = cluster
        .kpki(&["rotate", "--service-account", "--finish", "--no-live-check"])
        .fails_with(2);
    assert!(
        line.contains("no rotation of the service-account key"),
        "{line}"
    );

    cluster.kpki(&["rotate", "--service-account"]).success();
    assert_eq!(public_keys(&cluster, "service-account/sa.pem"), 2);
    let new_public = first_public_key(&cluster, "service-account/sa.pem");
    let from_key = first_public_key(&cluster, "service-account/sa-key.pem");
    assert_eq!(new_public, from_key);
    assert_ne!(new_public, old_public);
    let text = std::fs::read_to_string(cluster.pki("service-account/sa.pem")).unwrap();
    assert!(
        text.ends_with(&old_public),
        "the old public key is not published"
    );
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        status
            .stdout()
            .contains("service-account key is being rotated")
    );
    let line = cluster.kpki(&["rotate", "--service-account"]).fails_with(2);
    assert!(line.contains("already in progress"), "{line}");

    cluster
        .kpki(&["rotate", "--service-account", "--finish", "--no-live-check"])
        .success();
    assert_eq!(public_keys(&cluster, "service-account/sa.pem"), 1);
    let finished = first_public_key(&cluster, "service-account/sa.pem");
    assert_eq!(finished, from_key);
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn ca_rotation_errors_and_the_bundle() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let line = cluster
        .kpki(&["rotate", "--ca", "etcd", "--finish", "--no-live-check"])
        .fails_with(2);
    assert!(
        line.contains("no rotation of the etcd CA is in progress"),
        "{line}"
    );
    let line = cluster.kpki(&["rotate", "--ca", "vault"]).fails_with(2);
    assert!(
        line.contains("invalid value 'vault' for '--ca <NAME>'"),
        "{line}"
    );
    let old_ca = std::fs::read_to_string(cluster.pki("front-proxy/ca.pem")).unwrap();

    cluster.kpki(&["rotate", "--ca", "front-proxy"]).success();
    let bundle = std::fs::read_to_string(cluster.pki("front-proxy/ca.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(bundle.ends_with(&old_ca));
    let leaf = std::fs::read_to_string(cluster.pki("front-proxy/client.pem")).unwrap();
    assert_eq!(
        leaf.matches("BEGIN CERTIFICATE").count(),
        2,
        "the leaf carries the cross-signed CA"
    );
    let old_ca_file = cluster.path().join("old-front-proxy-ca.pem");
    std::fs::write(&old_ca_file, &old_ca).unwrap();
    let leaf_path = cluster.pki("front-proxy/client.pem");
    // A peer that trusts only the old CA accepts the new leaf through the cross-signed link.
    run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&old_ca_file),
            "-untrusted",
            s(&leaf_path),
            s(&leaf_path),
        ],
    );
    assert!(verifies(&cluster, "front-proxy", "front-proxy/client"));
    let status = cluster.kpki(&["status"]).stdout();
    assert!(
        status.contains("the front-proxy CA is being rotated"),
        "{status}"
    );
    assert_eq!(
        cluster.kpki(&["verify"]).code(),
        Some(0),
        "{}",
        cluster.kpki(&["verify"]).stdout()
    );
    let line = cluster
        .kpki(&["rotate", "--ca", "front-proxy"])
        .fails_with(2);
    assert!(line.contains("already in progress"), "{line}");

    cluster
        .kpki(&[
            "rotate",
            "--ca",
            "front-proxy",
            "--finish",
            "--no-live-check",
        ])
        .success();
    let bundle = std::fs::read_to_string(cluster.pki("front-proxy/ca.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(!cluster.pki("front-proxy/ca-previous-key.pem").exists());
    assert!(
        !cluster
            .path()
            .join("secrets/front-proxy/ca-previous-key.pem.age")
            .exists()
    );
    assert!(
        !crate::harness::run(
            "openssl",
            &["verify", "-CAfile", s(&old_ca_file), s(&leaf_path)]
        )
        .status
        .success()
    );
    assert!(verifies(&cluster, "front-proxy", "front-proxy/client"));
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn an_interrupted_ca_rotation_is_either_not_started_or_complete() {
    let template = Cluster::initialized(DEFAULT_CONFIG);
    let bundle = std::fs::read(template.pki("etcd/ca.pem")).unwrap();
    let (before, after) =
        crate::harness::crash_around_journal(&template, &["rotate", "--ca", "etcd"]);
    // Cut before its journal: nothing of the rotation is visible, and it can start again.
    assert_eq!(std::fs::read(before.pki("etcd/ca.pem")).unwrap(), bundle);
    assert!(!before.pki("etcd/ca-previous-key.pem").exists());
    // Only the files written aside are left: a reader reports them, a writer clears them.
    let status = before.kpki(&["status"]);
    assert_eq!(status.code(), Some(1), "{}", status.stdout());
    assert!(
        status.stderr().contains("interrupted kpki run"),
        "{}",
        status.stderr()
    );
    before.kpki(&["rotate", "--ca", "etcd"]).success();
    assert!(!before.kpki(&["status"]).stderr().contains("interrupted"));
    // Cut after it: the next command, even a reader, completes the start.
    let status = after.kpki(&["status"]).stdout();
    assert!(status.contains("the etcd CA is being rotated"), "{status}");
    assert!(after.pki("etcd/ca-previous-key.pem").exists());
    assert!(!after.pki(".kpki/journal").exists());
    assert_eq!(after.kpki(&["verify"]).code(), Some(0));
    assert!(after.temp_files().is_empty() || after.kpki(&["init", "-q"]).code() == Some(0));
}

#[test]
fn secrets_of_a_removed_node_are_reported_until_pruned() {
    let cluster = Cluster::initialized(&config_with_keys());
    let without = config_with_keys();
    let at = without.find("\n[[node]]\nname = \"node-04\"").unwrap();
    cluster.write_config(&without[..at]);
    cluster.kpki(&["init", "-q"]).success();
    let (report, code) = status(&cluster, &[]);
    assert_eq!(code, Some(1));
    let leftovers: Vec<&str> = report["leftovers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        leftovers,
        [
            "node-04/kubelet-key.pem",
            "node-04/kubelet-serving-key.pem",
            "node-04/kubelet-serving.pem",
            "node-04/kubelet.pem"
        ]
    );
    // Until pruned, the node's files stay as committed: the manifest still vouches for them.
    assert!(cluster.pki("node-04/kubelet-key.pem").exists());
    let verify = cluster.kpki(&["verify"]).stdout();
    assert!(
        verify.contains("secrets/node-04/kubelet.pem.age: no longer in the config"),
        "{verify}"
    );
    cluster.kpki(&["rotate", "--prune", "-q"]).success();
    assert_eq!(status(&cluster, &[]).1, Some(0));
}
