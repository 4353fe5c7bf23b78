//! What an adversarial review found, each as a test: PEM content, names and URLs, git's ignore
//! rules, identities, special and oversized files, races, validity past a CA, closed pipes.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};

use crate::harness::{
    Cluster, DEFAULT_CONFIG, commit_all, commit_by_hand, fixture, git, kpki, openssl_self_signed,
    run, run_ok, s,
};
use crate::secrets::config_with_keys;

fn admin() -> String {
    s(&fixture("admin-identity.txt")).to_string()
}

/// Runs `args` on `cluster` and asserts exit 2 with an error naming `needles`, no file changed.
fn refused(cluster: &Cluster, args: &[&str], needles: &[&str]) -> String {
    let before = cluster.snapshot();
    let run = cluster.kpki(args);
    let stderr = run.stderr();
    let line = run.fails_with(2);
    for needle in needles {
        assert!(
            line.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(before == cluster.snapshot(), "{args:?} changed files");
    line
}

#[test]
fn a_private_key_appended_to_a_certificate_file_never_leaves_pki() {
    let cluster = Cluster::initialized(&config_with_keys());
    let mut ca = std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap();
    ca.extend(std::fs::read(cluster.pki("kubernetes/ca-key.pem")).unwrap());
    std::fs::write(cluster.pki("kubernetes/ca.pem"), &ca).unwrap();
    for args in [&["init"][..], &["kubeconfig", "kube-proxy"], &["status"]] {
        let line = refused(
            &cluster,
            args,
            &["pki/kubernetes/ca.pem", "must hold only certificates"],
        );
        assert!(!line.contains("PRIVATE"), "{line}");
    }
    // The same file committed by a teammate, in a fresh clone: refused, never handed out.
    std::fs::write(cluster.pki("kubernetes/ca.pem"), &ca).unwrap();
    commit_by_hand(&cluster, "kubernetes/ca.pem");
    cluster.fresh_clone();
    let run = cluster.kpki(&["kubeconfig", "kube-proxy", "-i", &admin()]);
    assert!(run.stdout().is_empty(), "a kubeconfig was printed");
    let line = run.fails_with(2);
    assert!(line.contains("secrets/kubernetes/ca.pem.age"), "{line}");
    let verify = cluster.kpki(&["verify", "-i", &admin()]);
    assert_eq!(verify.code(), Some(1));
    assert!(
        verify.stdout().contains("secrets/kubernetes/ca.pem.age"),
        "{}",
        verify.stdout()
    );
}

#[test]
fn what_is_sealed_is_re_encoded_from_what_was_parsed() {
    // A CA brought by the user before the first init, written by openssl with CRLF line ends.
    let cluster = Cluster::with_config(&config_with_keys());
    let dir = cluster.pki("etcd");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    openssl_self_signed(
        &cert,
        &key,
        "/CN=etcd-ca",
        3650,
        &["-addext", "basicConstraints=critical,CA:TRUE"],
    );
    for file in [&cert, &key] {
        let text = std::fs::read_to_string(file).unwrap();
        std::fs::write(file, format!("\r\n{}\r\n\r\n", text.replace('\n', "\r\n"))).unwrap();
    }
    cluster.kpki(&["init"]).success();
    let sealed = cluster.path().join("secrets/etcd/ca.pem.age");
    let plain = run_ok("age", &["-d", "-i", &admin(), s(&sealed)]);
    assert!(
        !plain.contains('\r') && plain.starts_with("-----BEGIN CERTIFICATE-----\n"),
        "{plain:?}"
    );
    run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&cert),
            s(&cluster.pki("node-01/etcd-peer.pem")),
        ],
    );
}

#[test]
fn kubeconfig_names_and_urls_cannot_escape() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster
        .kpki(&["issue", "client", "--cn", "alice"])
        .success();
    for user in [
        "../kubernetes/ca",
        "../../../other/pki/etcd/ca",
        "alice\n",
        "",
    ] {
        let run = cluster.kpki(&["kubeconfig", "user", user]);
        assert!(run.stdout().is_empty(), "{user:?}: printed a kubeconfig");
        let line = run.fails_with(2);
        assert!(line.contains("is not a user name"), "{user:?}: {line}");
    }
    refused(
        &cluster,
        &[
            "kubeconfig",
            "admin",
            "--server",
            "https://[::1]:6443/\"\n    insecure-skip-tls-verify: true",
        ],
        &["--server", "whitespace, quotes"],
    );
    refused(
        &cluster,
        &["kubeconfig", "admin", "--server", "https://u:p@[::1]"],
        &["user name"],
    );
    refused(
        &cluster,
        &["issue", "client", "--cn", "../kubernetes/ca"],
        &["--cn", "not a user name"],
    );
    // What kubectl reads back is exactly what was asked for.
    let out = cluster.path().join("alice.kubeconfig");
    cluster
        .kpki(&[
            "kubeconfig",
            "user",
            "alice",
            "--server",
            "2001:db8::9",
            "-o",
            s(&out),
        ])
        .success();
    let view = |path: &str| {
        run_ok(
            "kubectl",
            &[
                "config",
                "view",
                "--kubeconfig",
                s(&out),
                "-o",
                &format!("jsonpath={path}"),
            ],
        )
    };
    assert_eq!(
        view("{.clusters[0].cluster.server}"),
        "https://[2001:db8::9]:6443"
    );
    assert_eq!(view("{.users[0].name}"), "alice");
    assert_eq!(view("{.clusters[0].cluster.insecure-skip-tls-verify}"), "");
}

#[test]
fn git_would_have_to_ignore_every_plaintext_file() {
    // A negated pattern and a nested .gitignore, in a git repository and outside one.
    for in_git in [false, true] {
        for (file, rules) in [
            (".gitignore", "*.pem\n!*-key.pem\n*.agekey\n"),
            ("node-01/.gitignore", "!*.pem\n"),
        ] {
            let cluster = Cluster::initialized(&config_with_keys());
            if in_git {
                commit_all(&cluster);
            }
            std::fs::write(cluster.pki(file), rules).unwrap();
            let line = refused(
                &cluster,
                &["issue", "kubelet", "node-01"],
                &["pki/node-01/kubelet", "git would not ignore"],
            );
            assert!(
                line.contains(if file == ".gitignore" {
                    "!*-key.pem"
                } else {
                    "!*.pem"
                }),
                "{line}"
            );
        }
    }
}

#[test]
fn a_plaintext_file_git_tracks_is_never_written() {
    // Ignore rules do not stop `git add -A` from staging a change to a tracked file.
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    git(&cluster, &["add", "-f", "pki/node-01/kubelet-key.pem"]);
    let line = refused(
        &cluster,
        &["issue", "kubelet", "node-01"],
        &["pki/node-01/kubelet-key.pem", "git tracks it"],
    );
    assert!(line.contains("git rm --cached"), "{line}");
    git(
        &cluster,
        &["rm", "-q", "--cached", "pki/node-01/kubelet-key.pem"],
    );
    cluster.kpki(&["issue", "kubelet", "node-01"]).success();
}

#[test]
fn verify_finds_plaintext_keys_tracked_anywhere_in_the_repository() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    let backup = cluster.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    std::fs::copy(
        cluster.pki("etcd/ca-key.pem"),
        backup.join("etcd-ca-key.pem"),
    )
    .unwrap();
    std::fs::copy(
        cluster.pki("kubernetes/ca-key.pem"),
        backup.join("notes.txt"),
    )
    .unwrap();
    git(&cluster, &["add", "backup"]);
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(1));
    let out = verify.stdout();
    for file in ["backup/etcd-ca-key.pem", "backup/notes.txt"] {
        assert!(
            out.contains(&format!("{file}: plaintext key is tracked by git")),
            "{out}"
        );
    }
}

#[test]
fn the_generated_identitys_comment_is_not_trusted() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let identity = cluster.pki("admin.agekey");
    let text = std::fs::read_to_string(&identity).unwrap();
    let stranger = run_ok("age-keygen", &[]);
    let other = stranger
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap();
    let forged: String = text
        .lines()
        .map(|l| {
            if l.starts_with("# public key: ") {
                format!("# public key: {other}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&identity, forged + "\n").unwrap();
    let before = cluster.snapshot();
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(out.contains("nothing to do"), "{out}");
    assert!(before == cluster.snapshot());
    let sealed = cluster.path().join("secrets/etcd/ca-key.pem.age");
    run_ok("age", &["-d", "-i", s(&identity), s(&sealed)]);
}

#[test]
fn racing_inits_on_a_new_directory_make_one_consistent_pki() {
    let parent = Cluster::new();
    let dir = parent.path().join("cluster");
    let runs: Vec<_> = (0..25)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_kpki"))
                .args(["--dir", s(&dir), "init", "-q"])
                .env("HOME", "/nonexistent")
                .env("KPKI_LOCK_TIMEOUT", "120")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in runs {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let identity = dir.join("pki/admin.agekey");
    for ca in ["kubernetes", "etcd", "front-proxy"] {
        let public = |args: &[&str]| run_ok("openssl", args);
        let cert = dir.join(format!("pki/{ca}/ca.pem"));
        let key = dir.join(format!("pki/{ca}/ca-key.pem"));
        assert_eq!(
            public(&["x509", "-in", s(&cert), "-noout", "-pubkey"]),
            public(&["pkey", "-in", s(&key), "-pubout"]),
            "{ca}: the CA key does not match its certificate"
        );
        let sealed = dir.join(format!("secrets/{ca}/ca-key.pem.age"));
        assert_eq!(
            run_ok("age", &["-d", "-i", s(&identity), s(&sealed)]),
            std::fs::read_to_string(&key).unwrap()
        );
    }
    let verify = kpki(&["--dir", s(&dir), "verify"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
}

/// Runs kpki with a deadline, so a hang fails the test instead of blocking it.
fn within(cluster: &Cluster, args: &[&str], seconds: u64) -> crate::harness::Run {
    let mut all = vec![
        seconds.to_string(),
        env!("CARGO_BIN_EXE_kpki").to_string(),
        "--dir".into(),
        s(cluster.path()).into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let out = run(
        "timeout",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_ne!(out.status.code(), Some(124), "{args:?} hung");
    crate::harness::Run::from_output(out, format!("{args:?}"))
}

#[test]
fn special_and_oversized_files_are_refused_without_hanging() {
    let cluster = Cluster::initialized(&config_with_keys());
    let fifo = cluster.pki("etcd/ca-key.pem");
    std::fs::remove_file(&fifo).unwrap();
    run_ok("mkfifo", &[s(&fifo)]);
    for args in [
        &["status"][..],
        &["verify"],
        &["init"],
        &["issue", "etcd-peer", "node-01"],
    ] {
        let line = within(&cluster, args, 20).fails_with(2);
        assert!(
            line.contains("pki/etcd/ca-key.pem") && line.contains("FIFO"),
            "{args:?}: {line}"
        );
    }
    std::fs::remove_file(&fifo).unwrap();
    let device = cluster.pki("kubernetes/ca.pem");
    std::fs::remove_file(&device).unwrap();
    run_ok("mknod", &[s(&device), "c", "1", "5"]);
    assert!(
        std::fs::metadata(&device)
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let line = within(&cluster, &["status"], 20).fails_with(2);
    assert!(
        line.contains("pki/kubernetes/ca.pem") && line.contains("device"),
        "{line}"
    );
    std::fs::remove_file(&device).unwrap();
    let sparse = cluster.pki("node-01/kubelet.pem");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let line = within(&cluster, &["verify"], 20).fails_with(2);
    assert!(
        line.contains("pki/node-01/kubelet.pem") && line.contains("larger than"),
        "{line}"
    );
}

#[test]
fn a_users_certificate_must_name_its_user() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster
        .kpki(&["issue", "client", "--cn", "alice", "--group", "dev"])
        .success();
    cluster.kpki(&["issue", "client", "--cn", "bob"]).success();
    for part in ["", "-key"] {
        std::fs::copy(
            cluster.pki(&format!("users/alice{part}.pem")),
            cluster.pki(&format!("users/bob{part}.pem")),
        )
        .unwrap();
        commit_by_hand(&cluster, &format!("users/bob{part}.pem"));
    }
    let status = cluster.kpki(&["status"]).finds();
    assert!(
        status.contains("its CN is \"alice\", but the file is named for \"bob\""),
        "{status}"
    );
    cluster.kpki(&["rotate"]).success();
    let subject = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            s(&cluster.pki("users/bob.pem")),
            "-noout",
            "-subject",
        ],
    );
    assert!(
        subject.contains("CN = bob") && subject.contains("O = dev"),
        "{subject}"
    );
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));
}

#[test]
fn no_leaf_outlives_its_ca() {
    let cluster = Cluster::initialized(&config_with_keys());
    refused(
        &cluster,
        &["issue", "kubelet", "node-02", "--validity", "20y"],
        &["would outlive the kubernetes CA"],
    );
    refused(
        &cluster,
        &["issue", "admin", "--validity", "1000y"],
        &["would outlive the kubernetes CA"],
    );
    refused(
        &cluster,
        &["issue", "client", "--cn", "carol", "--validity", "11y"],
        &["users/carol would outlive the kubernetes CA"],
    );
    // The configured validity is cut short at the CA's expiry, with a warning.
    let short = config_with_keys()
        .replace("ca_validity = \"10y\"", "ca_validity = \"30d\"")
        .replace("leaf_validity = \"1y\"", "leaf_validity = \"30d\"")
        .replace("renew_before = \"30d\"", "renew_before = \"1d\"");
    let cluster = Cluster::initialized(&short);
    // A day later, by kpki's clock (a debug build's test switch).
    let run = cluster
        .kpki_env(
            &["issue", "kubelet", "node-01"],
            &[("KPKI_CLOCK_OFFSET", "86400")],
        )
        .success();
    assert!(
        run.stderr().contains("valid only until")
            && run.stderr().contains("kpki rotate --ca kubernetes"),
        "{}",
        run.stderr()
    );
    let end = |file: &str| {
        run_ok(
            "openssl",
            &["x509", "-in", s(&cluster.pki(file)), "-noout", "-enddate"],
        )
    };
    assert_eq!(end("node-01/kubelet.pem"), end("kubernetes/ca.pem"));
    // Before a certificate was issued it is not yet valid, not ok.
    let status = cluster.kpki(&["status", "--at", "2020-01-01"]);
    assert_eq!(status.code(), Some(1));
    assert!(
        status.stdout().contains("not yet valid"),
        "{}",
        status.stdout()
    );
}

/// Runs kpki with its stdout closed at once, as `| head -0` does; returns its exit code and stderr.
fn with_closed_stdout(args: &[&str], dir: &Cluster) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kpki"))
        .arg("--dir")
        .arg(dir.path())
        .args(args)
        .env("HOME", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (child.wait().unwrap().code(), stderr)
}

#[test]
fn no_panics_on_closed_pipes_huge_timeouts_or_odd_outputs() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    for args in [
        &["verify"][..],
        &["completions", "bash"],
        &["status"],
        &["kubeconfig", "admin"],
    ] {
        let (code, stderr) = with_closed_stdout(args, &cluster);
        assert!(
            matches!(code, Some(0 | 1)),
            "{args:?}: exit {code:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let run = cluster.kpki_env(
        &["status"],
        &[("KPKI_LOCK_TIMEOUT", "18446744073709551615")],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    refused(&cluster, &["kubeconfig", "admin", "-o", "/"], &["/"]);
    // -o onto a link writes through it and leaves the link.
    let target = cluster.path().join("real.kubeconfig");
    std::fs::write(&target, "old").unwrap();
    let link = cluster.path().join("link.kubeconfig");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    cluster
        .kpki(&["kubeconfig", "admin", "-o", s(&link)])
        .success();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let written = std::fs::metadata(&target).unwrap();
    assert_eq!(written.permissions().mode() & 0o777, 0o600);
    assert!(
        std::fs::read_to_string(&target)
            .unwrap()
            .contains("client-key-data")
    );
    refused(
        &cluster,
        &["kubeconfig", "admin", "-o", "/nonexistent-dir/x"],
        &["/nonexistent-dir/x"],
    );
}

#[test]
fn identities_and_keys_get_clear_errors() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster.fresh_clone();
    for (identity, needle) in [
        ("/", "is a directory"),
        ("/nonexistent/id", "no such identity file"),
    ] {
        let run = cluster.kpki(&["issue", "admin", "-i", identity]);
        let stderr = run.stderr();
        run.fails_with(2);
        assert!(stderr.contains(needle), "{stderr}");
        let hint = stderr
            .lines()
            .find_map(|l| l.strip_prefix("hint:"))
            .unwrap_or_default();
        assert!(!hint.trim().is_empty(), "an empty hint: {stderr}");
    }
    // KPKI_IDENTITY set but empty means unset: pki/ has nothing to decrypt for a kubeconfig
    // with the cache gone, so the error is the missing identity, not an empty path.
    let args = ["kubeconfig", "kube-proxy"];
    let run = cluster.kpki_env(&args, &[("KPKI_IDENTITY", "")]);
    let line = run.fails_with(2);
    assert!(line.contains("no identity was given"), "{line}");
    let run = cluster.kpki_env(&args, &[("KPKI_IDENTITY", &admin())]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
}

#[test]
fn a_ca_bundle_without_a_recorded_rotation_is_not_trusted() {
    // A commit that appends a CA to the Kubernetes CA file and vouches for it in the manifest.
    let cluster = Cluster::initialized(&config_with_keys());
    let evil = cluster.path().join("evil.pem");
    let evil_key = cluster.path().join("evil-key.pem");
    openssl_self_signed(&evil, &evil_key, "/CN=kubernetes-ca", 30, &[]);
    let mut bundle = std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap();
    bundle.extend(std::fs::read(&evil).unwrap());
    std::fs::write(cluster.pki("kubernetes/ca.pem"), bundle).unwrap();
    commit_by_hand(&cluster, "kubernetes/ca.pem");
    let needles = [
        "pki/kubernetes/ca.pem",
        "holds 2 CA certificates",
        "no rotation",
    ];
    refused(&cluster, &["kubeconfig", "kube-proxy"], &needles);
    refused(&cluster, &["issue", "kubelet", "node-01"], &needles);
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(1));
    assert!(
        verify
            .stdout()
            .contains("holds 2 CA certificates, but no rotation of the kubernetes CA is recorded"),
        "{}",
        verify.stdout()
    );
}

#[test]
fn an_edit_in_place_with_its_mtime_set_back_is_still_found() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let cert = cluster.pki("node-01/kubelet.pem");
    let reference = cluster.path().with_extension("mtime");
    std::fs::copy(&cert, &reference).unwrap();
    run_ok("touch", &["-r", s(&cert), s(&reference)]);
    // Same size, same inode, same mtime: the last byte of the signature changed (a valid
    // certificate still, re-encoded by openssl in the same PEM layout).
    let text = std::fs::read_to_string(&cert).unwrap();
    let der = cluster.path().with_extension("der");
    run_ok(
        "openssl",
        &["x509", "-in", s(&cert), "-outform", "DER", "-out", s(&der)],
    );
    let mut bytes = std::fs::read(&der).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&der, &bytes).unwrap();
    let edited = run_ok("openssl", &["x509", "-inform", "DER", "-in", s(&der)]);
    assert_eq!(edited.len(), text.len(), "{edited}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cert)
        .and_then(|mut f| std::io::Write::write_all(&mut f, edited.as_bytes()))
        .unwrap();
    run_ok("touch", &["-r", s(&reference), s(&cert)]);
    let found = cluster.kpki(&["verify"]).finds();
    assert!(found.contains("pki/node-01/kubelet.pem"), "{found}");
    // A kubeconfig carries the committed certificate, not the edited one.
    let out = cluster
        .kpki(&["kubeconfig", "kubelet", "node-01"])
        .success()
        .stdout();
    let encoded = |text: &str| {
        std::fs::write(&reference, text).unwrap();
        run_ok("openssl", &["base64", "-A", "-in", s(&reference)])
            .trim()
            .to_string()
    };
    assert!(
        !out.contains(&encoded(&edited)),
        "the edited certificate was used"
    );
    assert!(out.contains(&encoded(&text)), "{out}");
}
