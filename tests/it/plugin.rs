//! Admin keys held by an age plugin (as age-plugin-yubikey holds them), with the test plugin
//! `age-plugin-kpkitest` (tests/plugin/): sealing runs it, signing decrypts each CA key through
//! it once per run, no plaintext key is written, and the age CLI reads what kpki wrote.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Cluster, DEFAULT_CONFIG, require, s};

/// A directory holding only the test plugin, and the plugin's log of its runs.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    /// The test plugin, built with the tests (`cargo test` builds examples; a filtered run
    /// builds it here).
    fn new() -> Plugin {
        let debug = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .to_path_buf();
        let built = debug.join("examples/age-plugin-kpkitest");
        if !built.exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--example", "age-plugin-kpkitest"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(status.success(), "the test plugin does not build");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&built, dir.path().join("age-plugin-kpkitest")).unwrap();
        Plugin { dir }
    }

    /// `PATH` with the plugin first.
    fn path(&self) -> String {
        format!(
            "{}:{}",
            s(self.dir.path()),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("runs.log")
    }

    /// How many times the plugin ran `state_machine` since the last call; the log is reset.
    fn runs(&self, state_machine: &str) -> usize {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let _ = std::fs::remove_file(self.log());
        text.lines().filter(|l| *l == state_machine).count()
    }

    /// A new identity file of the plugin, and its recipient.
    fn keygen(&self, to: &Path) -> String {
        let out = Command::new(self.dir.path().join("age-plugin-kpkitest"))
            .arg("--keygen")
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::write(to, &out.stdout).unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("# recipient: "))
            .unwrap()
            .to_string()
    }
}

/// The default cluster with `admin` as its only admin and no plaintext key cache.
fn config(admin: &str) -> String {
    DEFAULT_CONFIG.replace(
        "admins = []",
        &format!("admins = [\"{admin}\"]\nplaintext_keys = false"),
    )
}

/// Runs kpki on `cluster` with the plugin on `PATH` (when given) and logging its runs.
fn kpki(cluster: &Cluster, plugin: Option<&Plugin>, args: &[&str]) -> crate::harness::Run {
    let path = plugin
        .map(Plugin::path)
        .unwrap_or_else(|| std::env::var("PATH").unwrap());
    let log = plugin.map(|p| p.log()).unwrap_or_default();
    cluster.kpki_env(args, &[("PATH", &path), ("KPKI_TEST_PLUGIN_LOG", s(&log))])
}

/// Files below `dir` that hold a private key in plaintext.
fn plaintext_keys(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path()).is_ok_and(|b| b.windows(11).any(|w| w == b"PRIVATE KEY"))
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[test]
fn a_plugin_admin_signs_with_each_ca_key_decrypted_once_and_no_key_on_disk() {
    let plugin = Plugin::new();
    let cluster = Cluster::new();
    let identity = cluster.path().join("admin-token.txt");
    let admin = plugin.keygen(&identity);
    cluster.write_config(&config(&admin));
    let id = s(&identity);

    let out = kpki(&cluster, Some(&plugin), &["init"]).success().stdout();
    assert_eq!(plugin.runs("identity-v1"), 0, "init decrypted something");
    assert_eq!(plaintext_keys(&cluster.pki("")), Vec::<String>::new());
    // Only files that exist are said to be created: the keys were sealed, never written.
    assert!(!out.contains("-key.pem\n"), "{out}");
    let created = cluster.pem_files().len();
    assert!(
        out.contains(&format!("{created} files created in pki/")),
        "{created} files exist: {out}"
    );
    // Reading needs neither the token nor the plugin: verify checks what is public and says
    // what it could not check.
    assert_eq!(kpki(&cluster, None, &["status"]).code(), Some(0));
    let verified = kpki(&cluster, None, &["verify"]);
    assert_eq!(verified.code(), Some(0), "{}", verified.stderr());
    assert!(
        verified
            .stderr()
            .contains("files kept only there (keys among them"),
        "{}",
        verified.stderr()
    );
    assert_eq!(plugin.runs("identity-v1"), 0, "verify decrypted something");

    for (args, touches) in [
        (&["issue", "kubelet", "node-02", "-i", id][..], 1),
        (&["rotate", "--all", "-i", id], 3),
        // The etcd CA key signs the new leaves, the Kubernetes CA key the manifest.
        (&["rotate", "--ca", "etcd", "-i", id], 2),
    ] {
        let run = kpki(&cluster, Some(&plugin), args).success();
        assert!(
            run.stderr().contains("kpki: touch the kpkitest token"),
            "{}",
            run.stderr()
        );
        assert_eq!(
            plugin.runs("identity-v1"),
            touches,
            "{args:?}: one decryption per CA key"
        );
        assert_eq!(
            plaintext_keys(&cluster.pki("")),
            Vec::<String>::new(),
            "{args:?}"
        );
    }
    // The age CLI, with the same plugin, reads what kpki sealed.
    let out = Command::new(require("age"))
        .args(["-d", "-i", id])
        .arg(cluster.path().join("secrets/etcd/ca-key.pem.age"))
        .env("PATH", plugin.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(
        kpki(&cluster, Some(&plugin), &["verify", "-i", id]).code(),
        Some(0)
    );
}

#[test]
fn a_missing_plugin_or_a_refused_decryption_is_one_line_and_writes_nothing() {
    let plugin = Plugin::new();
    let cluster = Cluster::new();
    let identity = cluster.path().join("admin-token.txt");
    let admin = plugin.keygen(&identity);
    cluster.write_config(&config(&admin));
    let before = cluster.snapshot();
    let line = kpki(&cluster, None, &["init"]).fails_with(2);
    assert!(
        line.contains("age-plugin-kpkitest is not on PATH"),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "a failed init wrote");

    kpki(&cluster, Some(&plugin), &["init", "-q"]).success();
    let before = cluster.snapshot();
    let issue = ["issue", "kubelet", "node-02", "-i", s(&identity)];
    let run = cluster.kpki_env(
        &issue,
        &[("PATH", &plugin.path()), ("KPKI_TEST_PLUGIN_REFUSE", "1")],
    );
    let stderr = run.stderr();
    let line = run.fails_with(2);
    assert!(line.contains("the token refused (wrong PIN)"), "{line}");
    assert!(!line.contains('\u{2068}'), "stray isolation marks: {line}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("kpki: error"))
            .count(),
        1
    );
    let line = kpki(&cluster, None, &issue).fails_with(2);
    assert!(
        line.contains("holds an identity of an age plugin, and age-plugin-kpkitest is not on PATH"),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "a failed issue wrote");
}
