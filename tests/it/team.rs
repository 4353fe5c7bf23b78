//! The committed manifest is the anchor: two admins sharing one repository, agenix (here: the
//! age CLI doing what agenix does) editing `secrets/`, and the day-2 states of a growing cluster.
//! Every check of content uses the age CLI, openssl or git, not kpki's own reading.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::harness::{Cluster, age_seal, commit_all, fixture, git, manifest_entry, run, run_ok, s};
use crate::secrets::{admin_recipient, config_with_keys};

fn admin() -> String {
    s(&fixture("admin-identity.txt")).to_string()
}

/// `git add -A && git commit`.
fn commit(cluster: &Cluster, message: &str) {
    git(cluster, &["add", "-A"]);
    git(
        cluster,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            message,
        ],
    );
}

/// What `git status` lists as changed.
fn changed(cluster: &Cluster) -> BTreeSet<String> {
    git(cluster, &["status", "--porcelain"])
        .lines()
        .map(|l| l[3..].to_string())
        .collect()
}

/// The bytes of every file under `secrets/`.
fn secrets(cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    cluster
        .snapshot()
        .into_iter()
        .filter(|(p, _)| p.starts_with("secrets/"))
        .map(|(p, (bytes, ..))| (p, bytes))
        .collect()
}

/// Decrypts `secrets/REL.age` with the age CLI and the test admin identity.
fn decrypt(cluster: &Cluster, rel: &str) -> Vec<u8> {
    let file = cluster.path().join(format!("secrets/{rel}.age"));
    let out = run("age", &["-d", "-i", &admin(), s(&file)]);
    assert!(
        out.status.success(),
        "{rel}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Admin A's repository (with plaintext) pushed to a bare repository, and admin B's fresh clone.
fn two_admins() -> (Cluster, Cluster, tempfile::TempDir) {
    let a = Cluster::initialized(&config_with_keys());
    commit_all(&a);
    let bare = tempfile::tempdir().unwrap();
    run_ok("git", &["init", "-q", "--bare", s(bare.path())]);
    git(&a, &["remote", "add", "origin", s(bare.path())]);
    git(&a, &["push", "-q", "origin", "HEAD:main"]);
    git(&a, &["branch", "-q", "--set-upstream-to=origin/main"]);
    let b = Cluster::new();
    run_ok(
        "git",
        &["clone", "-q", "-b", "main", s(bare.path()), s(b.path())],
    );
    (a, b, bare)
}

#[test]
fn a_stale_cache_never_overwrites_what_a_teammate_committed() {
    let (a, b, _bare) = two_admins();
    // B, from a fresh clone: a new kubelet certificate and the start of an etcd CA rotation.
    b.kpki(&["issue", "kubelet", "node-02", "-i", &admin()])
        .success();
    b.kpki(&["rotate", "--ca", "etcd", "-i", &admin()])
        .success();
    commit(&b, "B: kubelet and etcd rotation");
    git(&b, &["push", "-q", "origin", "HEAD:main"]);
    let b_secrets = secrets(&b);
    let b_ca_key = decrypt(&b, "etcd/ca-key.pem");
    let b_kubelet = decrypt(&b, "node-02/kubelet.pem");

    git(&a, &["pull", "-q", "--ff-only"]);
    let pulled = a.snapshot();
    // Without an identity, A's stale plaintext cannot be refreshed: every writer refuses;
    // status reads the committed record instead and says it decrypted nothing.
    for args in [&["init"][..], &["rotate"], &["issue", "admin"]] {
        let line = a.kpki(args).fails_with(2);
        assert!(line.contains("no identity"), "{args:?}: {line}");
        assert!(pulled == a.snapshot(), "{args:?} changed files");
    }
    let status = a.kpki(&["status"]);
    assert_ne!(status.code(), Some(2), "{}", status.stderr());
    assert!(
        status.stdout().contains("no identity"),
        "{}",
        status.stdout()
    );
    assert!(pulled == a.snapshot(), "status changed files");
    // With one, status reads the committed state: B's rotation, not an interrupted one.
    let status = a.kpki(&["status", "-i", &admin()]);
    assert_eq!(status.code(), Some(1));
    let text = status.stdout();
    assert!(text.contains("the etcd CA is being rotated"), "{text}");
    assert!(text.contains("behind secrets/"), "{text}");
    // init refreshes the cache and seals nothing: B's CA key and kubelet survive.
    let out = a.kpki(&["init", "-i", &admin()]).success().stdout();
    assert!(out.contains("refreshed pki/etcd/ca-key.pem"), "{out}");
    assert_eq!(secrets(&a), b_secrets, "A's init changed secrets/");
    assert!(changed(&a).is_empty(), "{:?}", changed(&a));
    assert_eq!(std::fs::read(a.pki("etcd/ca-key.pem")).unwrap(), b_ca_key);
    assert_eq!(
        std::fs::read(a.pki("node-02/kubelet.pem")).unwrap(),
        b_kubelet
    );
    // A finishes B's rotation; B pulls with its now stale cache and verifies.
    a.kpki(&["rotate", "--ca", "etcd", "--finish", "--no-live-check"])
        .success();
    commit(&a, "A: finish the etcd rotation");
    git(&a, &["push", "-q", "origin", "HEAD:main"]);
    git(&b, &["pull", "-q", "--ff-only"]);
    let verify = b.kpki(&["verify", "-i", &admin()]);
    assert_eq!(
        verify.code(),
        Some(0),
        "{}{}",
        verify.stdout(),
        verify.stderr()
    );
    // Two admins at work raise no alarm: the signer is the same Kubernetes CA, and each
    // clone's generation only went up (B's pin is of its own writes; A's commit is newer).
    let status = b.kpki(&["status", "-i", &admin()]);
    assert_eq!(status.code(), Some(0), "{}", status.stderr());
    for alarm in [
        "signature",
        "older than generation",
        "moved on",
        "first use",
    ] {
        assert!(!status.stderr().contains(alarm), "{}", status.stderr());
    }
    let generation = |c: &Cluster| {
        let text = std::fs::read_to_string(c.path().join("secrets/manifest.toml")).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("generation = "))
            .unwrap();
        line["generation = ".len()..].parse::<u64>().unwrap()
    };
    let pinned = std::fs::read_to_string(b.pki(".kpki/trust")).unwrap();
    let b_generation: u64 = pinned
        .lines()
        .find_map(|l| l.strip_prefix("generation "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(generation(&b) > b_generation, "{pinned}");
    // openssl: A's and B's kubelets verify under the one etcd CA that is left.
    let ca = b.path().join("etcd-ca.pem");
    std::fs::write(&ca, decrypt(&b, "etcd/ca.pem")).unwrap();
    let peer = b.path().join("peer.pem");
    std::fs::write(&peer, decrypt(&b, "node-01/etcd-peer.pem")).unwrap();
    run_ok("openssl", &["verify", "-CAfile", s(&ca), s(&peer)]);
}

#[test]
fn unsealed_changes_and_a_newer_commit_are_a_conflict() {
    let (a, b, _bare) = two_admins();
    b.kpki(&["issue", "kubelet", "node-01", "-i", &admin()])
        .success();
    commit(&b, "B: kubelet");
    git(&b, &["push", "-q", "origin", "HEAD:main"]);
    // A edits its plaintext by hand, then pulls B's work.
    std::fs::copy(a.pki("node-02/kubelet.pem"), a.pki("node-03/kubelet.pem")).unwrap();
    git(&a, &["pull", "-q", "--ff-only"]);
    let before = a.snapshot();
    let run = a.kpki(&["init", "-i", &admin()]);
    let stderr = run.stderr();
    let line = run.fails_with(2);
    assert!(line.contains("pki/node-03/kubelet.pem"), "{line}");
    assert!(line.contains("moved on"), "{line}");
    assert!(stderr.contains("remove those files"), "{stderr}");
    assert!(before == a.snapshot(), "a refused init changed files");
}

/// The agenix rules, by file name: recipients and whether the file stays armored.
fn rules(cluster: &Cluster) -> Vec<(String, Vec<String>, bool)> {
    let file = cluster.path().join("secrets/secrets.nix");
    let json = run_ok(
        "nix-instantiate",
        &[
            "--eval",
            "--strict",
            "--json",
            "-E",
            &format!("import {}", s(&file)),
        ],
    );
    let rules: Value = serde_json::from_str(&json).unwrap();
    rules
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, rule)| {
            let keys = rule["publicKeys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect();
            (name.clone(), keys, rule["armor"].as_bool() == Some(true))
        })
        .collect()
}

/// What `agenix -r` does: decrypt each file and encrypt it again to its rule's recipients,
/// armored only where the rule says so (here: `binary` forces binary output).
fn agenix_rekey(cluster: &Cluster, binary: bool) {
    for (name, keys, armor) in rules(cluster) {
        let rel = name.strip_suffix(".age").unwrap();
        let plain = cluster.path().join("plain.tmp");
        std::fs::write(&plain, decrypt(cluster, rel)).unwrap();
        let mut args = Vec::new();
        if armor && !binary {
            args.push("-a".to_string());
        }
        for k in keys {
            args.extend(["-r".into(), k]);
        }
        let out = cluster.path().join("secrets").join(&name);
        args.extend(["-o".into(), s(&out).into(), s(&plain).into()]);
        run_ok("age", &args.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::remove_file(&plain).unwrap();
    }
}

#[test]
fn every_rule_keeps_the_files_armored_and_a_rekey_changes_nothing() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    let rules = rules(&cluster);
    assert!(rules.len() > 50);
    assert!(
        rules.iter().all(|(_, _, armor)| *armor),
        "a rule without armor = true"
    );
    for binary in [false, true] {
        agenix_rekey(&cluster, binary);
        let rekeyed = secrets(&cluster);
        let status = cluster.kpki(&["status"]);
        assert_eq!(status.code(), Some(0), "{}", status.stdout());
        let verify = cluster.kpki(&["verify", "-i", &admin()]);
        assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
        let out = cluster.kpki(&["init", "-i", &admin()]).success().stdout();
        assert!(out.contains("nothing to do"), "{out}");
        assert_eq!(secrets(&cluster), rekeyed, "kpki rewrote agenix's files");
    }
}

/// Encrypts `text` into `secrets/REL.age` to the recipients the manifest lists for it, or to
/// `recipients` when given.
fn reseal(cluster: &Cluster, rel: &str, text: &[u8], recipients: Option<Vec<String>>) {
    let plain = cluster.path().join("plain.tmp");
    std::fs::write(&plain, text).unwrap();
    let recipients = recipients.unwrap_or_else(|| manifest_entry(cluster, rel).0);
    age_seal(cluster, rel, &plain, &recipients);
    std::fs::remove_file(&plain).unwrap();
}

/// A fresh age X25519 recipient nobody in the cluster holds.
fn stranger() -> String {
    let out = run_ok("age-keygen", &[]);
    out.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string()
}

/// `verify -i` must find `needle`; `status` must not call the cluster healthy; `init -i`
/// must repair it from the trusted plaintext, after which `verify -i` passes and the file
/// decrypts (age CLI) to the plaintext again.
fn found_and_repaired(cluster: &Cluster, rel: &str, needle: &str) {
    let verify = cluster.kpki(&["verify", "-i", &admin()]);
    assert_eq!(verify.code(), Some(1), "{rel}: verify passed");
    assert!(
        verify.stdout().contains(needle),
        "{needle:?} not in {}",
        verify.stdout()
    );
    let status = cluster.kpki(&["status", "-i", &admin()]);
    assert_eq!(status.code(), Some(1), "{rel}: {}", status.stdout());
    assert!(
        status.stdout().contains("stale-secret"),
        "{}",
        status.stdout()
    );
    let out = cluster.kpki(&["init", "-i", &admin()]).success().stdout();
    assert!(
        out.contains(&format!("encrypted secrets/{rel}.age")),
        "{out}"
    );
    let verify = cluster.kpki(&["verify", "-i", &admin()]);
    assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
    assert_eq!(
        decrypt(cluster, rel),
        std::fs::read(cluster.pki(rel)).unwrap()
    );
}

#[test]
fn an_edited_file_is_found_and_repaired() {
    let cluster = Cluster::initialized(&config_with_keys());
    let other = std::fs::read(cluster.pki("node-02/kubelet.pem")).unwrap();
    reseal(&cluster, "node-01/kubelet.pem", &other, None);
    found_and_repaired(
        &cluster,
        "node-01/kubelet.pem",
        "secrets/node-01/kubelet.pem.age: does not hold what the manifest records",
    );
}

#[test]
fn a_foreign_ca_appended_to_a_ca_file_is_found_and_repaired() {
    let cluster = Cluster::initialized(&config_with_keys());
    let dir = cluster.path();
    let (evil, evil_key) = (dir.join("evil.pem"), dir.join("evil-key.pem"));
    crate::harness::openssl_self_signed(&evil, &evil_key, "/CN=kubernetes-ca", 30, &[]);
    let mut bundle = std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap();
    bundle.extend(std::fs::read(dir.join("evil.pem")).unwrap());
    reseal(&cluster, "kubernetes/ca.pem", &bundle, None);
    found_and_repaired(
        &cluster,
        "kubernetes/ca.pem",
        "secrets/kubernetes/ca.pem.age: does not hold what the manifest records",
    );
}

#[test]
fn an_extra_recipient_on_a_ca_key_is_found_and_repaired() {
    let cluster = Cluster::initialized(&config_with_keys());
    let key = std::fs::read(cluster.pki("etcd/ca-key.pem")).unwrap();
    reseal(
        &cluster,
        "etcd/ca-key.pem",
        &key,
        Some(vec![admin_recipient(), stranger()]),
    );
    // Without an identity, the header alone gives it away: two X25519 stanzas, one due.
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(1));
    assert!(
        verify
            .stdout()
            .contains("secrets/etcd/ca-key.pem.age: encrypted to other recipients")
    );
    found_and_repaired(&cluster, "etcd/ca-key.pem", "encrypted to other recipients");
}

#[test]
fn an_admin_locked_out_of_a_file_is_found_and_repaired() {
    let cluster = Cluster::initialized(&config_with_keys());
    let rel = "node-02/kubelet-key.pem";
    let (mut recipients, _) = manifest_entry(&cluster, rel);
    recipients[0] = stranger();
    let key = std::fs::read(cluster.pki(rel)).unwrap();
    reseal(&cluster, rel, &key, Some(recipients));
    // The header looks right (one X25519 stanza, the node's tag): only decrypting tells.
    let status = cluster.kpki(&["status"]);
    assert!(
        status.stdout().contains("not decrypted to check them"),
        "{}",
        status.stdout()
    );
    found_and_repaired(&cluster, rel, "cannot decrypt it");
}

#[test]
fn a_new_node_is_missing_until_rotate_creates_it() {
    let cluster = Cluster::initialized(&config_with_keys());
    let grown = format!(
        "{}\n[[node]]\nname = \"node-05\"\naddresses = [\"2001:db8::5\"]\nroles = [\"worker\"]\n",
        config_with_keys()
    );
    cluster.write_config(&grown);
    let status = cluster.kpki(&["status", "--json"]);
    assert_eq!(status.code(), Some(1));
    let report: Value = serde_json::from_str(&status.stdout()).unwrap();
    let missing: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "missing")
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(missing, ["node-05/kubelet", "node-05/kubelet-serving"]);
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(1));
    assert!(
        verify.stdout().contains("pki/node-05/kubelet.pem: missing"),
        "{}",
        verify.stdout()
    );
    let before = cluster.snapshot();
    let plan = cluster.kpki(&["rotate", "--dry-run"]).success().stdout();
    assert!(plan.contains("renew node-05/kubelet (missing"), "{plan}");
    assert!(before == cluster.snapshot(), "a dry run changed files");
    cluster.kpki(&["rotate"]).success();
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));
    let ca = cluster.pki("kubernetes/ca.pem");
    run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            s(&ca),
            s(&cluster.pki("node-05/kubelet.pem")),
        ],
    );
}

#[test]
fn init_says_what_drifted_instead_of_up_to_date() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster.write_config(&config_with_keys().replace("2001:db8::3\"", "2001:db8::33\""));
    let run = cluster.kpki(&["init"]).success();
    let (out, err) = (run.stdout(), run.stderr());
    assert!(!out.contains("up to date"), "{out}");
    assert!(
        err.contains("4 certificates drifted from the config") && err.contains("kpki rotate"),
        "{err}"
    );
    // A change only a CA rotation can apply says so.
    cluster.write_config(&config_with_keys().replace("ecdsa-p256", "ed25519"));
    let status = cluster.kpki(&["status"]).stdout();
    let ca_line = status
        .lines()
        .skip_while(|l| !l.starts_with("etcd/ca "))
        .nth(1)
        .unwrap();
    assert!(ca_line.contains("kpki rotate --ca etcd"), "{status}");
}

#[test]
fn a_lost_config_is_restored_not_replaced() {
    let cluster = Cluster::initialized(&config_with_keys());
    std::fs::remove_file(cluster.pki("kpki.toml")).unwrap();
    let before = cluster.snapshot();
    for args in [
        &["init"][..],
        &["status"],
        &["verify"],
        &["rotate"],
        &["issue", "admin"],
    ] {
        let run = cluster.kpki(args);
        let stderr = run.stderr();
        let line = run.fails_with(2);
        assert!(line.contains("pki/kpki.toml"), "{args:?}: {line}");
        assert!(
            stderr.contains("git checkout pki/kpki.toml"),
            "{args:?}: {stderr}"
        );
        assert!(before == cluster.snapshot(), "{args:?} changed files");
    }
}

#[test]
fn init_inside_a_cluster_directory_warns() {
    let cluster = Cluster::initialized(&config_with_keys());
    let nested = cluster.path().join("sub");
    let run = crate::harness::kpki(&["--dir", s(&nested), "init", "-q"]).success();
    assert!(
        run.stderr().contains("is inside the cluster directory"),
        "{}",
        run.stderr()
    );
    assert!(Path::new(&nested).join("pki/kpki.toml").is_file());
}

#[test]
fn hand_edited_or_missing_nix_files_are_reported_and_rewritten() {
    let cluster = Cluster::initialized(&config_with_keys());
    let module = cluster.path().join("secrets/kpki.nix");
    let text = std::fs::read_to_string(&module).unwrap();
    std::fs::write(&module, text.replace("\"0400\"", "\"0444\"")).unwrap();
    std::fs::remove_file(cluster.path().join("secrets/secrets.nix")).unwrap();
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    for file in ["secrets/kpki.nix", "secrets/secrets.nix"] {
        assert!(
            status.stdout().contains(&format!(
                "secrets: {file} is missing or not as kpki writes it"
            )),
            "{}",
            status.stdout()
        );
    }
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(
        out.contains("wrote secrets/kpki.nix") && out.contains("wrote secrets/secrets.nix"),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&module).unwrap(), text);
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));
}

/// A and B both change the PKI from the same commit; B pushes first; A pulls with `how`
/// (`merge` or `rebase`) and meets a conflict in the manifest. kpki names it; the README's
/// recipe for that command keeps B's pushed state and lets A redo its change on top.
fn conflict_resolved_by_the_readme_recipe(how: &str, keep: &str) {
    let (a, b, _bare) = two_admins();
    for node in ["node-01", "node-02"] {
        b.kpki(&["issue", "kubelet", node, "-i", &admin()])
            .success();
    }
    commit(&b, "B: kubelets of node-01 and node-02");
    git(&b, &["push", "-q", "origin", "HEAD:main"]);
    let b_kubelet = decrypt(&b, "node-01/kubelet.pem");

    // A reissues node-02's kubelet too: the same lines of the manifest.
    a.kpki(&["issue", "kubelet", "node-02"]).success();
    commit(&a, "A: node-02's kubelet");
    git(&a, &["fetch", "-q", "origin"]);
    let mut pull = vec!["-c", "user.name=t", "-c", "user.email=t@t", how, "-q"];
    if how == "merge" {
        pull.push("--no-edit");
    }
    pull.push("origin/main");
    let pulled = run("git", &[&["-C", s(a.path())][..], &pull].concat());
    assert!(!pulled.status.success(), "{how}: no conflict");
    for args in [&["status"][..], &["init"], &["verify"]] {
        let err = a.kpki(args).fails_with(2);
        assert!(
            err.contains("secrets/manifest.toml has unresolved merge conflicts"),
            "{how} {args:?}: {err}"
        );
    }
    // The recipe: keep the pushed side of secrets/, finish, refresh, redo.
    git(&a, &["checkout", keep, "--", "secrets/"]);
    git(&a, &["add", "secrets/"]);
    let user = [
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "-c",
        "core.editor=true",
    ];
    if how == "merge" {
        git(&a, &[&user[..], &["commit", "-q", "--no-edit"]].concat());
    } else {
        // A's commit held only secrets/: once the pushed side is kept, nothing of it is left.
        let cont = run(
            "git",
            &[&["-C", s(a.path())][..], &user, &["rebase", "--continue"]].concat(),
        );
        if !cont.status.success() {
            git(&a, &["rebase", "--skip"]);
        }
    }
    a.kpki(&["init", "-i", &admin()]).success();
    assert_eq!(
        decrypt(&a, "node-01/kubelet.pem"),
        b_kubelet,
        "{how}: B's change was lost"
    );
    a.kpki(&["issue", "kubelet", "node-02", "-i", &admin()])
        .success();
    assert_eq!(
        decrypt(&a, "node-01/kubelet.pem"),
        b_kubelet,
        "{how}: redo lost B's change"
    );
    assert_eq!(a.kpki(&["verify", "-i", &admin()]).code(), Some(0), "{how}");
}

#[test]
fn a_merge_conflict_is_named_and_the_readme_recipe_keeps_the_pushed_side() {
    conflict_resolved_by_the_readme_recipe("merge", "--theirs");
    conflict_resolved_by_the_readme_recipe("rebase", "--ours");
}

#[test]
fn nix_files_behind_a_changed_config_are_not_called_hand_edited() {
    let cluster = Cluster::initialized(&config_with_keys());
    // node-03 renumbered: its address is in kpki.nix, which kpki wrote and nobody touched.
    let config = config_with_keys().replace("2001:db8::3\"", "2001:db8::33\"");
    cluster.write_config(&config);
    let status = cluster.kpki(&["status"]).stdout();
    assert!(
        status.contains("secrets/kpki.nix is behind pki/kpki.toml"),
        "{status}"
    );
    assert!(!status.contains("edited by hand"), "{status}");
}

#[test]
fn a_cache_file_deleted_by_hand_is_named_by_readers_and_restored_by_writers() {
    let cluster = Cluster::initialized(&config_with_keys());
    let kubelet = cluster.pki("node-02/kubelet.pem");
    let before = std::fs::read(&kubelet).unwrap();
    std::fs::remove_file(&kubelet).unwrap();
    // Without an identity a reader cannot use secrets/: status goes by the signed record, and
    // a command that needs the file names it.
    let status = cluster.kpki(&["status"]).success().stdout();
    assert!(
        status.contains("1 certificates were checked from the signed manifest's record"),
        "{status}"
    );
    let line = cluster
        .kpki(&["kubeconfig", "kubelet", "node-02"])
        .fails_with(2);
    assert!(
        line.contains("pki/node-02/kubelet.pem: secrets/ must be decrypted"),
        "{line}"
    );
    let out = cluster.kpki(&["init", "-i", &admin()]).success().stdout();
    assert!(
        out.contains("restored pki/node-02/kubelet.pem from secrets/"),
        "{out}"
    );
    assert!(!out.contains("nothing to do"), "{out}");
    assert_eq!(std::fs::read(&kubelet).unwrap(), before);
    assert_eq!(cluster.kpki(&["status"]).code(), Some(0));
    let again = cluster.kpki(&["init"]).success().stdout();
    assert!(again.contains("nothing to do"), "{again}");
}
