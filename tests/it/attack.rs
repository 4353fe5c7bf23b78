//! A pusher with write access to the repository and no private key (the age CLI, openssl and
//! an editor; everything public: the recipients, the certificates) tries to turn the admin's
//! routine commands against the cluster. Each test then runs what the README and kpki's own
//! hints suggest, and checks with openssl that no CA signed anything of the attacker's, no
//! bundle gained the attacker's CA, no revoked serial left the list, and the tampering was
//! named.

use std::path::{Path, PathBuf};

use crate::harness::{
    Cluster, DEFAULT_CONFIG, age_seal, commit_all_as, edit_manifest, manifest_entry,
    openssl_fingerprint, openssl_self_signed, resign, run, run_ok, s, sign_manifest_with,
};

const MANIFEST: &str = "secrets/manifest.toml";

/// A P-256 key of the attacker's, in PKCS#8 PEM, beside the cluster.
fn attacker_key(cluster: &Cluster, name: &str) -> PathBuf {
    let key = cluster.path().with_extension(format!("{name}-key.pem"));
    run_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            s(&key),
        ],
    );
    key
}

/// A self-signed CA of the attacker's: (certificate, key).
fn attacker_ca(cluster: &Cluster, subject: &str) -> (PathBuf, PathBuf) {
    let key = cluster.path().with_extension("evil-ca-key.pem");
    let cert = cluster.path().with_extension("evil-ca.pem");
    let ca = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    openssl_self_signed(&cert, &key, subject, 30, &ca);
    (cert, key)
}

/// The public key of a key or certificate file, as openssl prints it.
fn public_key(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.contains("PRIVATE KEY") {
        true => run_ok("openssl", &["pkey", "-in", s(path), "-pubout"]),
        false => run_ok("openssl", &["x509", "-in", s(path), "-noout", "-pubkey"]),
    }
}

/// Whether openssl verifies `cert` under the CA bundle `ca`.
fn verifies(ca: &Path, cert: &Path) -> bool {
    run("openssl", &["verify", "-CAfile", s(ca), s(cert)])
        .status
        .success()
}

/// Replaces `pki/REL`'s manifest fingerprint with that of `file`, as the pusher's editor does.
fn record_as(cluster: &Cluster, rel: &str, file: &Path) {
    let (_, old) = manifest_entry(cluster, rel);
    let new = openssl_fingerprint(file);
    edit_manifest(cluster, |body| body.replace(&old, &new));
}

/// The admin's clone after pulling the push: its pin kept, its plaintext cache gone (a fresh
/// checkout on the admin's machine, which has run kpki before).
fn pulled_into_a_pinned_clone(cluster: &Cluster) {
    let pin = std::fs::read(cluster.pki(".kpki/trust"));
    cluster.fresh_clone();
    if let Ok(pin) = pin {
        std::fs::create_dir_all(cluster.pki(".kpki")).unwrap();
        std::fs::write(cluster.pki(".kpki/trust"), pin).unwrap();
    }
}

/// The pinned signer's fingerprint (empty without a pin: a kpki that pinned nothing).
fn pinned(cluster: &Cluster) -> String {
    let pin = std::fs::read_to_string(cluster.pki(".kpki/trust")).unwrap_or_default();
    pin.lines()
        .find_map(|l| l.strip_prefix("signer "))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_pushed_key_is_never_certified() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let (key, cert) = ("node-02/etcd-peer-key.pem", "node-02/etcd-peer.pem");
    let evil = attacker_key(&cluster, "evil");
    let (recipients, _) = manifest_entry(&cluster, key);
    age_seal(&cluster, key, &evil, &recipients);
    std::fs::remove_file(cluster.path().join(format!("secrets/{cert}.age"))).unwrap();
    let untouched = cluster.copy();
    // The pusher records its key and drops the certificate from the manifest.
    record_as(&cluster, key, &evil);
    edit_manifest(&cluster, |body| {
        // The entry and its certificate's facts, two tables.
        let table = format!("[files.\"{cert}\"]\n");
        let at = body.find(&table).unwrap();
        let mut end = at + body[at..].find("\n\n").unwrap() + 2;
        if body[end..].starts_with(&format!("[files.\"{cert}\".certificate]")) {
            end += body[end..].find("\n\n").unwrap() + 2;
        }
        format!("{}{}", &body[..at], &body[end..])
    });
    pulled_into_a_pinned_clone(&cluster);
    let line = cluster.kpki(&["init"]).fails_with(2);
    assert!(
        line.contains(MANIFEST) && line.contains("signature"),
        "{line}"
    );
    assert!(!cluster.pki(cert).exists(), "a certificate was issued");

    // With the signed manifest left alone, the pushed key does not match what it vouches for:
    // the certificate is issued for a new key of kpki's.
    pulled_into_a_pinned_clone(&untouched);
    untouched.kpki(&["init"]).success();
    assert_ne!(public_key(&untouched.pki(cert)), public_key(&evil));
    assert!(verifies(
        &sealed_ca(&untouched, "etcd"),
        &untouched.pki(cert)
    ));
}

/// The CA bundle `secrets/CA/ca.pem.age`, decrypted by the age CLI with the admin's key.
fn sealed_ca(cluster: &Cluster, ca: &str) -> PathBuf {
    let sealed = cluster.path().join(format!("secrets/{ca}/ca.pem.age"));
    let text = run_ok(
        "age",
        &["-d", "-i", s(&cluster.pki("admin.agekey")), s(&sealed)],
    );
    let out = cluster.path().with_extension(format!("{ca}-ca.pem"));
    std::fs::write(&out, text).unwrap();
    out
}

#[test]
fn a_pushed_user_is_never_renewed() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let dir = cluster.path().with_extension("evil");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("mallory.pem"), dir.join("mallory-key.pem"));
    openssl_self_signed(&cert, &key, "/O=system:masters/CN=mallory", 1, &[]);
    let (admins, _) = manifest_entry(&cluster, "kubernetes/ca-key.pem");
    std::fs::create_dir_all(cluster.path().join("secrets/users")).unwrap();
    let quoted: Vec<String> = admins.iter().map(|a| format!("\"{a}\"")).collect();
    let mut tables = String::new();
    for (rel, file) in [
        ("users/mallory.pem", &cert),
        ("users/mallory-key.pem", &key),
    ] {
        age_seal(&cluster, rel, file, &admins);
        tables += &format!(
            "[files.\"{rel}\"]\npublic = \"{}\"\nrecipients = [{}]\n\n",
            openssl_fingerprint(file),
            quoted.join(", ")
        );
    }
    edit_manifest(&cluster, |body| format!("{body}{tables}"));
    pulled_into_a_pinned_clone(&cluster);
    for args in [&["rotate"][..], &["rotate", "--all"], &["init"]] {
        let line = cluster.kpki(args).fails_with(2);
        assert!(line.contains(MANIFEST), "{args:?}: {line}");
    }
    let renewed = cluster.pki("users/mallory.pem");
    assert!(
        !renewed.exists() || !verifies(&cluster.pki("kubernetes/ca.pem"), &renewed),
        "the Kubernetes CA signed the pusher's subject"
    );
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1));
    assert!(status.stderr().contains(MANIFEST), "{}", status.stderr());
}

#[test]
fn a_replaced_ca_is_refused_by_a_pinned_clone_and_by_the_fingerprint() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let real = pinned(&cluster);
    let ca_before = std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap();
    // The pusher runs kpki itself, with the admins' public key, and pushes its whole secrets/:
    // its own CAs, its own keys, a manifest its own Kubernetes CA signed.
    let (admins, _) = manifest_entry(&cluster, "kubernetes/ca-key.pem");
    let config = DEFAULT_CONFIG.replace("admins = []", &format!("admins = [\"{}\"]", admins[0]));
    let attacker = Cluster::initialized(&config);
    std::fs::remove_dir_all(cluster.path().join("secrets")).unwrap();
    run_ok(
        "cp",
        &["-a", s(&attacker.path().join("secrets")), s(cluster.path())],
    );
    let clone = cluster.copy();
    for args in [&["init"][..], &["rotate"], &["issue", "kubelet", "node-01"]] {
        let line = cluster.kpki(args).fails_with(2);
        assert!(
            line.contains("not by the Kubernetes CA this clone trusts"),
            "{args:?}: {line}"
        );
    }
    assert_eq!(
        std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap(),
        ca_before
    );
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(1), "{}", status.stderr());
    assert!(status.stderr().contains(&real), "{}", status.stderr());
    // Readers that hand out material or verdicts refuse as a writer does: no kubeconfig of
    // theirs, no rollout judged against their CAs.
    for reader in [
        &["kubeconfig", "admin"][..],
        &["rollout", "--timeout", "1s"],
    ] {
        let run = cluster.kpki(reader);
        assert!(
            run.stdout().is_empty(),
            "{reader:?} printed: {}",
            run.stdout()
        );
        let line = run.fails_with(2);
        assert!(
            line.contains("not by the Kubernetes CA this clone trusts"),
            "{reader:?}: {line}"
        );
    }

    // A fresh clone pinned out of band refuses it too; one that is not says whom it trusts.
    clone.fresh_clone();
    let line = clone.kpki(&["init", "--trust", &real]).fails_with(2);
    assert!(line.contains("no cross-signature"), "{line}");
    let env = clone
        .kpki_env(&["init"], &[("KPKI_TRUST", &real)])
        .fails_with(2);
    assert!(env.contains("no cross-signature"), "{env}");
    assert!(!clone.pki("kubernetes/ca.pem").exists());
    let status = clone.kpki(&["status"]);
    assert!(
        status.stderr().contains("on first use"),
        "{}",
        status.stderr()
    );
    assert!(!status.stderr().contains(&real));
}

#[test]
fn a_ca_pushed_into_the_bundle_is_refused_even_when_signed_by_it() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let (evil_cert, evil_key) = attacker_ca(&cluster, "/CN=kubernetes-ca");
    let bundle = cluster.pki("kubernetes/ca.pem");
    let before = std::fs::read(&bundle).unwrap();
    // A rotation in appearance, with its files: the pusher's CA as the new one first in the
    // bundle, sealed for every node; the pusher's key as the CA key; the real key, its
    // ciphertext copied, as the previous one; all recorded, and the manifest signed by the
    // pusher's CA.
    let mut pushed = std::fs::read(&evil_cert).unwrap();
    pushed.extend(&before);
    let pushed_file = cluster.path().with_extension("bundle.pem");
    std::fs::write(&pushed_file, &pushed).unwrap();
    let (recipients, _) = manifest_entry(&cluster, "kubernetes/ca.pem");
    age_seal(&cluster, "kubernetes/ca.pem", &pushed_file, &recipients);
    record_as(&cluster, "kubernetes/ca.pem", &pushed_file);
    let (admins, real_key) = manifest_entry(&cluster, "kubernetes/ca-key.pem");
    let sealed = |rel: &str| cluster.path().join(format!("secrets/{rel}.age"));
    std::fs::copy(
        sealed("kubernetes/ca-key.pem"),
        sealed("kubernetes/ca-previous-key.pem"),
    )
    .unwrap();
    age_seal(&cluster, "kubernetes/ca-key.pem", &evil_key, &admins);
    record_as(&cluster, "kubernetes/ca-key.pem", &evil_key);
    let quoted: Vec<String> = admins.iter().map(|a| format!("\"{a}\"")).collect();
    edit_manifest(&cluster, |body| {
        format!(
            "{body}[files.\"kubernetes/ca-previous-key.pem\"]\npublic = \"{real_key}\"\nrecipients = [{}]\n\n",
            quoted.join(", ")
        )
    });
    let unsigned = cluster.copy();
    sign_manifest_with(&cluster, &evil_key, Some(&evil_cert));
    for c in [&cluster, &unsigned] {
        pulled_into_a_pinned_clone(c);
        for args in [
            &["init"][..],
            &["rotate"],
            &["rotate", "--ca", "kubernetes", "--finish"],
        ] {
            let line = c.kpki(args).fails_with(2);
            assert!(line.contains(MANIFEST), "{args:?}: {line}");
        }
        let kept = c.pki("kubernetes/ca.pem");
        assert!(
            !kept.exists() || std::fs::read(&kept).unwrap() == before,
            "the bundle gained the pusher's CA"
        );
    }
}

#[test]
fn a_revocation_survives_edits_losses_and_rollbacks_of_the_manifest() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    let crl = cluster.pki("etcd/crl.der");
    let listed = crl_serials(&crl);
    assert_eq!(listed.len(), 1);
    let pristine = cluster.copy();

    // The pusher moves the revocation's expiry into the past, or deletes the manifest.
    edit_manifest(&cluster, |body| {
        let at = body.find("not_after = \"").unwrap() + "not_after = \"".len();
        format!("{}2020-01-01T00:00:00Z{}", &body[..at], &body[at + 20..])
    });
    let line = cluster.kpki(&["rotate"]).fails_with(2);
    assert!(line.contains("signature"), "{line}");
    std::fs::remove_file(cluster.path().join(MANIFEST)).unwrap();
    let line = cluster.kpki(&["rotate"]).fails_with(2);
    assert!(
        line.contains("is missing, but this clone has verified"),
        "{line}"
    );
    assert_eq!(crl_serials(&crl), listed);

    // An admin's own mistake (the ledger emptied and signed): the list still keeps it.
    let signed = pristine.copy();
    edit_manifest(&signed, |body| {
        let at = body.find("[revoked.").unwrap();
        let end = at + body[at..].find("\n\n").unwrap() + 2;
        format!("{}{}", &body[..at], &body[end..])
    });
    resign(&signed);
    signed.kpki(&["rotate"]).success();
    let crl = signed.pki("etcd/crl.der");
    assert_eq!(crl_serials(&crl), listed, "the revocation left the list");
    assert!(verifies_crl(&signed, &crl));
}

#[test]
fn a_reverted_revocation_is_refused_and_allowed_back_only_with_its_revocation() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    crate::harness::commit_all(&cluster);
    cluster.kpki(&["revoke", "node-02/etcd-peer"]).success();
    let listed = crl_serials(&cluster.pki("etcd/crl.der"));
    commit_all_as(&cluster, "revoke node-02/etcd-peer");
    // The pusher reverts the revocation.
    crate::harness::git(&cluster, &["revert", "--no-edit", "HEAD"]);
    for args in [&["rotate"][..], &["init"]] {
        let line = cluster.kpki(args).fails_with(2);
        assert!(
            line.contains("older than generation") && line.contains("rollback"),
            "{args:?}: {line}"
        );
    }
    assert_eq!(cluster.kpki(&["status"]).code(), Some(1));
    // An admin who means it: the state rolls back, the revocation does not, and the revoked
    // certificate the old state holds is reissued.
    let out = cluster
        .kpki(&["rotate", "--allow-rollback"])
        .success()
        .stdout();
    assert!(out.contains("node-02/etcd-peer.pem"), "{out}");
    let crl = cluster.pki("etcd/crl.der");
    assert_eq!(crl_serials(&crl), listed);
    assert!(verifies_crl(&cluster, &crl));
    let peer = serial(&cluster.pki("node-02/etcd-peer.pem"));
    assert!(
        !listed.contains(&peer),
        "node-02 runs on a revoked certificate"
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn trust_is_pinned_on_first_use_or_given_and_a_bad_fingerprint_is_one_line() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let real = pinned(&cluster);
    let status = cluster.kpki(&["status"]).success().stdout();
    assert!(
        status.contains(&format!("signed by the Kubernetes CA {real}")),
        "{status}"
    );
    // openssl: the fingerprint is SHA-256 of the CA's SubjectPublicKeyInfo.
    let der = cluster.path().with_extension("spki.der");
    let pem = public_key(&cluster.pki("kubernetes/ca.pem"));
    let pem_file = cluster.path().with_extension("spki.pem");
    std::fs::write(&pem_file, pem).unwrap();
    run_ok(
        "openssl",
        &[
            "pkey",
            "-pubin",
            "-in",
            s(&pem_file),
            "-outform",
            "DER",
            "-out",
            s(&der),
        ],
    );
    let digest = run_ok("openssl", &["dgst", "-sha256", "-r", s(&der)]);
    assert_eq!(
        format!("sha256:{}", digest.split_whitespace().next().unwrap()),
        real
    );

    cluster.fresh_clone();
    let first = cluster.kpki(&["status"]).stderr();
    assert!(first.contains(&format!("--trust {real}")), "{first}");
    assert!(!cluster.pki(".kpki/trust").exists(), "a reader pinned");
    let other = format!("sha256:{}", "0".repeat(64));
    let line = cluster.kpki(&["init", "--trust", &other]).fails_with(2);
    assert!(line.contains(&other) && line.contains(&real), "{line}");
    assert_eq!(cluster.kpki(&["status", "--trust", &other]).code(), Some(1));
    let bad = cluster.kpki(&["status", "--trust", "abc"]).fails_with(2);
    assert!(bad.contains("--trust abc: not a key fingerprint"), "{bad}");
    cluster.kpki(&["init", "--trust", &real]).success();
    assert_eq!(pinned(&cluster), real);
}

/// The serials a DER list names, by openssl.
fn crl_serials(crl: &Path) -> Vec<String> {
    let text = run_ok(
        "openssl",
        &["crl", "-inform", "DER", "-in", s(crl), "-noout", "-text"],
    );
    let mut serials: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Serial Number: "))
        .map(str::to_string)
        .collect();
    serials.sort();
    serials
}

/// Whether openssl verifies the DER list under the etcd CA bundle.
fn verifies_crl(cluster: &Cluster, crl: &Path) -> bool {
    run(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            s(crl),
            "-noout",
            "-CAfile",
            s(&cluster.pki("etcd/ca.pem")),
        ],
    )
    .status
    .success()
}

fn serial(cert: &Path) -> String {
    run_ok("openssl", &["x509", "-in", s(cert), "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

#[test]
fn an_import_adopts_nothing_a_worker_or_a_leaf_could_smuggle_in() {
    let worker = DEFAULT_CONFIG.to_string()
        + "\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\n";
    let cluster = Cluster::with_config(&worker);
    let kubeadm = crate::import::kubeadm_pki(cluster.path(), &["node-01"]);
    let node = kubeadm.join("node-01");
    let copy = |name: &str| {
        let to = cluster.path().join(name);
        run_ok("cp", &["-r", s(&node), s(&to)]);
        to
    };
    // A compromised worker's files (a worker holds the CA certificates and its own kubelet
    // files) with the CA keys and the service-account key planted among them.
    let from_worker = copy("worker");
    for leaf in [
        "apiserver",
        "apiserver-kubelet-client",
        "apiserver-etcd-client",
    ] {
        for ext in ["crt", "key"] {
            let _ = std::fs::remove_file(from_worker.join(format!("{leaf}.{ext}")));
        }
    }
    for leaf in ["server", "peer", "healthcheck-client"] {
        for ext in ["crt", "key"] {
            let _ = std::fs::remove_file(from_worker.join(format!("etcd/{leaf}.{ext}")));
        }
    }
    // A key whose certificate is withheld; a CA certificate and key in a leaf's place.
    let keyless = copy("keyless");
    std::fs::remove_file(keyless.join("apiserver-kubelet-client.crt")).unwrap();
    let ca_as_leaf = copy("ca-as-leaf");
    for ext in ["crt", "key"] {
        std::fs::copy(
            ca_as_leaf.join(format!("ca.{ext}")),
            ca_as_leaf.join(format!("apiserver.{ext}")),
        )
        .unwrap();
    }
    // A CA that cannot take a rotation's successor below it (path length 0).
    let narrow = copy("narrow");
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-key",
            s(&narrow.join("ca.key")),
            "-subj",
            "/CN=kubernetes",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            s(&narrow.join("ca.crt")),
        ],
    );
    let before = cluster.snapshot();
    for (dir, node, needle) in [
        (&from_worker, "node-04", "not a control-plane node"),
        (&keyless, "node-01", "is a key without its certificate"),
        (&ca_as_leaf, "node-01", "in the place of a leaf"),
        (&narrow, "node-01", "path length 0"),
    ] {
        let line = cluster
            .kpki(&["import", "kubeadm", s(dir), "--node", node])
            .fails_with(2);
        assert!(line.contains(needle), "{needle}: {line}");
        assert!(
            before == cluster.snapshot(),
            "a refused import wrote: {line}"
        );
    }
}

/// Runs kpki, which must refuse (exit 2): its whole stderr, error and hint.
fn refused(cluster: &Cluster, args: &[&str]) -> String {
    let run = cluster.kpki(args);
    assert_eq!(run.code(), Some(2), "{args:?}: {}", run.stderr());
    run.stderr()
}

/// A fresh age key pair: the identity file and its public recipient.
fn age_key(path: &std::path::Path) -> String {
    run_ok("age-keygen", &["-o", s(path)]);
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_recipient_pushed_into_the_config_is_refused_until_the_admin_accepts_it() {
    // The config is not signed: a pusher adds a control-plane node with their own host key.
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let key = cluster.path().with_extension("evil-host");
    let public = age_key(&key);
    let original = std::fs::read_to_string(cluster.pki("kpki.toml")).unwrap();
    let pushed = format!(
        "{original}\n[[node]]\nname = \"evil\"\naddresses = [\"2001:db8::66\"]\nroles = [\"control-plane\"]\nhost_key = \"{public}\"\n"
    );
    cluster.write_config(&pushed);
    let before = cluster.snapshot();
    for routine in [&["init"][..], &["rotate"], &["issue", "admin"]] {
        let line = refused(&cluster, routine);
        assert!(
            line.contains("refusing to encrypt to 1 recipient")
                && line.contains("node evil's host_key")
                && line.contains("--accept-recipients evil")
                && line.contains("git log -p pki/kpki.toml"),
            "{routine:?}: {line}"
        );
        assert!(before == cluster.snapshot(), "{routine:?} wrote: {line}");
    }
    // Nothing was sealed to the pusher: no file of secrets/ opens with their key.
    assert!(crate::secrets::age_decrypt(&cluster, &key, "kubernetes/ca.pem").is_none());
    // Accepting another name does not accept this one.
    cluster
        .kpki(&["init", "--accept-recipients", "node-01"])
        .fails_with(2);
    // The admin who added the node says so, once; the next run has nothing new.
    let run = cluster
        .kpki(&["init", "--accept-recipients", "evil"])
        .success();
    assert!(
        run.stdout()
            .contains("new to the signed state, as accepted: node evil's host_key"),
        "{}",
        run.stdout()
    );
    assert!(crate::secrets::age_decrypt(&cluster, &key, "kubernetes/ca.pem").is_some());
    cluster.kpki(&["init"]).success();
}

#[test]
fn a_replaced_host_key_or_a_pushed_admin_is_refused_by_a_routine_rotate() {
    let original = crate::secrets::config_with_keys();
    let cluster = Cluster::initialized(&original);
    let key = cluster.path().with_extension("mallory");
    let public = age_key(&key);
    // node-02's host key replaced (a reinstall, or a pusher).
    let node02 = crate::secrets::host_public("node-02");
    let replaced = original.replacen(&node02, &public, 1);
    assert_ne!(replaced, original);
    cluster.write_config(&replaced);
    let line = cluster.kpki(&["rotate"]).fails_with(2);
    assert!(line.contains("node node-02's host_key age1"), "{line}");
    // A second admin pushed.
    let admins = original.replacen("admins = [", &format!("admins = [\"{public}\", "), 1);
    assert_ne!(admins, original);
    cluster.write_config(&admins);
    let before = cluster.snapshot();
    let line = refused(&cluster, &["rotate"]);
    assert!(line.contains("secrets.admins age1"), "{line}");
    assert!(
        line.contains(&format!("--accept-recipients {public}")),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "{line}");
    assert!(crate::secrets::age_decrypt(&cluster, &key, "kubernetes/ca-key.pem").is_none());
    cluster
        .kpki(&["rotate", "--accept-recipients", &public])
        .success();
    assert!(crate::secrets::age_decrypt(&cluster, &key, "kubernetes/ca-key.pem").is_some());
}

#[test]
fn a_pin_pushed_into_the_repository_is_refused() {
    // A pin is this clone's own (git-ignored). A pusher who force-adds one decides what every
    // fresh clone trusts, without the note a first use shows.
    let cluster = Cluster::initialized(&crate::secrets::config_with_keys());
    crate::harness::commit_all(&cluster);
    let pin = cluster.pki(".kpki/trust");
    let text = std::fs::read_to_string(&pin).unwrap();
    let signer = text
        .lines()
        .find_map(|l| l.strip_prefix("signer "))
        .unwrap()
        .to_string();
    std::fs::write(
        &pin,
        text.replace(&signer, &format!("sha256:{}", "0".repeat(64))),
    )
    .unwrap();
    crate::harness::git(&cluster, &["add", "-f", "pki/.kpki/trust"]);
    crate::harness::commit_all_as(&cluster, "pin");
    for command in [&["rotate"][..], &["status"]] {
        let line = refused(&cluster, command);
        assert!(
            line.contains("pki/.kpki/trust") && line.contains("tracked by git"),
            "{command:?}: {line}"
        );
    }
    crate::harness::git(&cluster, &["rm", "-q", "--cached", "pki/.kpki/trust"]);
    std::fs::write(&pin, &text).unwrap();
    cluster.kpki(&["status"]).success();
    // verify names any of kpki's local state that git tracks.
    crate::harness::git(&cluster, &["add", "-f", "pki/.kpki/cache"]);
    let found = cluster.kpki(&["verify"]).finds();
    assert!(
        found.contains("pki/.kpki/cache: kpki's local state of this clone is tracked by git"),
        "{found}"
    );
}
