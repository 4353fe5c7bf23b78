//! `kpki init`: layout, modes, idempotency, growth, and never replacing a CA or key.

use std::os::unix::fs::PermissionsExt;

use crate::harness::{Cluster, DEFAULT_CONFIG, run_ok, s};

#[test]
fn init_in_an_empty_directory_writes_the_default_config_and_reports() {
    let cluster = Cluster::new();
    let run = cluster.kpki(&["init"]).success();
    assert_eq!(
        std::fs::read_to_string(cluster.pki("kpki.toml")).unwrap(),
        DEFAULT_CONFIG
    );
    let out = run.stdout();
    assert!(out.contains("created pki/kpki.toml"), "{out}");
    assert!(out.contains("created pki/node-02/kubelet-key.pem"), "{out}");
    let ignore = std::fs::read_to_string(cluster.pki(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "*.pem"), "{ignore}");
    assert_eq!(cluster.pem_files().len(), 52);
    assert!(cluster.kpki(&["init", "-q"]).success().stdout().is_empty());
}

#[test]
fn keys_are_0600_in_0700_directories() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for file in cluster.pem_files() {
        let path = cluster.pki(&file);
        if file.ends_with("-key.pem") {
            assert_eq!(mode(&path), 0o600, "{file}");
        }
        assert_eq!(mode(path.parent().unwrap()), 0o700, "{file}");
    }
    let leftovers = cluster.temp_files();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_second_init_changes_no_file() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let before = cluster.snapshot();
    let run = cluster.kpki(&["init"]).success();
    assert!(run.stdout().contains("nothing to do"), "{}", run.stdout());
    assert!(before == cluster.snapshot(), "a second init touched files");
}

#[test]
fn a_new_node_gets_exactly_its_certificates() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let before = cluster.snapshot();
    let grown = format!(
        "{DEFAULT_CONFIG}\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\n"
    );
    cluster.write_config(&grown);
    cluster.kpki(&["init"]).success();
    let after = cluster.snapshot();
    let added: Vec<_> = after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect();
    let files = [
        "kubelet-key.pem",
        "kubelet-serving-key.pem",
        "kubelet-serving.pem",
        "kubelet.pem",
    ];
    let mut expected: Vec<String> = files.iter().map(|f| format!("pki/node-04/{f}")).collect();
    expected.extend(files.iter().map(|f| format!("secrets/node-04/{f}.age")));
    expected.sort();
    assert_eq!(added, expected);
    let rewritten = [
        "pki/kpki.toml",
        "pki/.kpki/cache",
        "pki/.kpki/trust",
        "pki/.kpki/manifest.json",
        "secrets/manifest.toml",
        "secrets/secrets.nix",
        "secrets/kpki.nix",
    ];
    for (path, old) in &before {
        assert_eq!(
            after[path] == *old,
            !rewritten.contains(&path.as_str()),
            "{path}"
        );
    }
}

#[test]
fn a_key_without_its_certificate_is_never_certified() {
    // Whoever left the key (a pusher, a lost file), kpki holds no certificate vouching for it:
    // the leaf is issued for a new key.
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let key = std::fs::read(cluster.pki("node-02/etcd-peer-key.pem")).unwrap();
    let ca = std::fs::read(cluster.pki("etcd/ca.pem")).unwrap();
    std::fs::remove_file(cluster.pki("node-02/etcd-peer.pem")).unwrap();
    std::fs::remove_file(cluster.path().join("secrets/node-02/etcd-peer.pem.age")).unwrap();
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(out.contains("created pki/node-02/etcd-peer.pem"), "{out}");
    assert!(
        out.contains("created pki/node-02/etcd-peer-key.pem"),
        "{out}"
    );
    assert_ne!(
        std::fs::read(cluster.pki("node-02/etcd-peer-key.pem")).unwrap(),
        key
    );
    assert_eq!(std::fs::read(cluster.pki("etcd/ca.pem")).unwrap(), ca);
    crate::harness::run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            crate::harness::s(&cluster.pki("etcd/ca.pem")),
            crate::harness::s(&cluster.pki("node-02/etcd-peer.pem")),
        ],
    );
    // openssl: the certificate holds the new key.
    let key = crate::harness::s(&cluster.pki("node-02/etcd-peer-key.pem")).to_string();
    let cert = crate::harness::s(&cluster.pki("node-02/etcd-peer.pem")).to_string();
    assert_eq!(
        crate::harness::run_ok("openssl", &["pkey", "-in", &key, "-pubout"]),
        crate::harness::run_ok("openssl", &["x509", "-in", &cert, "-noout", "-pubkey"]),
    );
}

#[test]
fn a_ca_certificate_without_its_key_is_never_replaced() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    std::fs::remove_file(cluster.pki("etcd/ca-key.pem")).unwrap();
    std::fs::remove_file(cluster.path().join("secrets/etcd/ca-key.pem.age")).unwrap();
    std::fs::remove_file(cluster.pki("node-01/etcd-server.pem")).unwrap();
    std::fs::remove_file(cluster.path().join("secrets/node-01/etcd-server.pem.age")).unwrap();
    let before = cluster.snapshot();
    let line = cluster.kpki(&["init"]).fails_with(2);
    assert!(
        line.contains("etcd/ca-key.pem") && line.contains("never replaces a CA"),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "a failed init changed files");
}

#[test]
fn init_creates_a_missing_cluster_directory() {
    let cluster = Cluster::new();
    let dir = cluster.path().join("new-cluster");
    crate::harness::kpki(&["--dir", crate::harness::s(&dir), "init", "-q"]).success();
    assert!(dir.join("pki/kubernetes/ca-key.pem").is_file());
}

#[test]
fn an_unwritable_cluster_directory_is_a_one_line_error() {
    let line = crate::harness::kpki(&["--dir", "/proc/kpki", "init"]).fails_with(2);
    assert!(line.contains("/proc/kpki"), "{line}");
}

#[test]
fn modes_do_not_depend_on_the_umask() {
    for umask in ["000", "077"] {
        let cluster = Cluster::new();
        let out = crate::harness::run(
            "sh",
            &[
                "-c",
                &format!("umask {umask} && exec \"$0\" --dir \"$1\" init -q",),
                env!("CARGO_BIN_EXE_kpki"),
                crate::harness::s(cluster.path()),
            ],
        );
        assert!(out.status.success(), "umask {umask}: {out:?}");
        let mode = |rel: &str| {
            std::fs::metadata(cluster.pki(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("kubernetes/ca-key.pem"), 0o600, "umask {umask}");
        assert_eq!(mode("admin.agekey"), 0o600, "umask {umask}");
        assert_eq!(mode("kubernetes/ca.pem"), 0o644, "umask {umask}");
        assert_eq!(mode("node-01"), 0o700, "umask {umask}");
        let secret =
            std::fs::metadata(cluster.path().join("secrets/node-01/kubelet.pem.age")).unwrap();
        assert_eq!(secret.permissions().mode() & 0o777, 0o644, "umask {umask}");
    }
}

#[test]
fn an_interrupted_reissue_is_all_or_nothing() {
    let template = Cluster::initialized(DEFAULT_CONFIG);
    let files = |c: &Cluster| {
        ["node-02/kubelet.pem", "node-02/kubelet-key.pem"].map(|f| std::fs::read(c.pki(f)).unwrap())
    };
    let old = files(&template);
    let (before, after) =
        crate::harness::crash_around_journal(&template, &["issue", "kubelet", "node-02"]);
    assert_eq!(
        files(&before),
        old,
        "cut before its journal, the reissue changed files"
    );
    // Its files written aside are reported by a reader and cleared by the next writer.
    let found = before.kpki(&["verify"]);
    assert_eq!(found.code(), Some(1));
    assert!(
        found.stderr().contains("interrupted kpki run"),
        "{}",
        found.stderr()
    );
    before.kpki(&["init"]).success();
    assert_eq!(files(&before), old);
    assert_eq!(before.kpki(&["verify"]).code(), Some(0));
    // The reader completes the change it finds journaled: a new key with its certificate.
    assert_eq!(after.kpki(&["verify"]).code(), Some(0));
    let new = files(&after);
    assert_ne!(new[1], old[1], "the new key is in place");
    assert_ne!(new[0], old[0], "the new certificate is in place");
}

#[test]
fn a_journaled_change_whose_files_did_not_reach_the_disk_is_undone() {
    let template = Cluster::initialized(DEFAULT_CONFIG);
    let files = |c: &Cluster| {
        ["node-02/kubelet.pem", "node-02/kubelet-key.pem"].map(|f| std::fs::read(c.pki(f)).unwrap())
    };
    let old = files(&template);
    let (_, cut) =
        crate::harness::crash_around_journal(&template, &["issue", "kubelet", "node-02"]);
    // A power cut before the sync: the journal reached the disk, one file written aside did not.
    let journal = std::fs::read_to_string(cut.pki(".kpki/journal")).unwrap();
    let temp = journal
        .lines()
        .find(|l| l.starts_with("R\t") && l.contains("kubelet-key.pem"))
        .and_then(|l| l.split('\t').nth(1))
        .expect("the journal names the new key");
    std::fs::write(cut.path().join(temp), b"").unwrap();
    assert_eq!(cut.kpki(&["verify"]).code(), Some(0));
    assert_eq!(files(&cut), old, "the half-written change was not undone");
    assert!(cut.temp_files().is_empty(), "{:?}", cut.temp_files());
    assert!(!cut.pki(".kpki/journal").exists());
    run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&cut.pki("kubernetes/ca.pem")),
            s(&cut.pki("node-02/kubelet.pem")),
        ],
    );
}
