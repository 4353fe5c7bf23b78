//! `kpki verify` catches each kind of damage, each in its own cluster. The damage is done with
//! openssl, age and git, not with kpki.

use crate::harness::{
    Cluster, DEFAULT_CONFIG, commit_all, commit_by_hand, fixture, git, run_ok, s,
};
use crate::secrets::config_with_keys;

/// Runs verify and asserts that it found `needle` (and exit 1).
fn finds(cluster: &Cluster, needle: &str) {
    let run = cluster.kpki(&["verify"]);
    let out = run.stdout();
    assert_eq!(
        run.code(),
        Some(1),
        "verify passed although: {needle}\n{out}"
    );
    assert!(
        out.lines().any(|l| l.contains(needle)),
        "{needle:?} not in:\n{out}"
    );
}

fn clean(config: &str) -> Cluster {
    let cluster = Cluster::initialized(config);
    let run = cluster.kpki(&["verify"]);
    assert_eq!(run.code(), Some(0), "{}", run.stdout());
    cluster
}

/// Signs a certificate for `pki/STEM-key.pem` with openssl under `ca`/`ca_key`.
fn openssl_sign(cluster: &Cluster, stem: &str, subject: &str, ext: &str, ca: &str, ca_key: &str) {
    let dir = cluster.path();
    let csr = dir.join("req.csr");
    let extfile = dir.join("ext.cnf");
    std::fs::write(&extfile, ext).unwrap();
    let key = cluster.pki(&format!("{stem}-key.pem"));
    run_ok(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            s(&key),
            "-subj",
            subject,
            "-out",
            s(&csr),
        ],
    );
    let out = cluster.pki(&format!("{stem}.pem"));
    run_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-days",
            "30",
        ]
        .into_iter()
        .chain(["-extfile", s(&extfile), "-out", s(&out)])
        .collect::<Vec<_>>(),
    );
}

#[test]
fn a_certificate_signed_by_another_ca() {
    let cluster = clean(DEFAULT_CONFIG);
    let dir = cluster.path();
    let (ca, ca_key) = (dir.join("other-ca.pem"), dir.join("other-ca-key.pem"));
    crate::harness::openssl_self_signed(&ca, &ca_key, "/CN=kubernetes-ca", 30, &[]);
    openssl_sign(
        &cluster,
        "node-01/kubelet",
        "/O=system:nodes/CN=system:node:node-01",
        "extendedKeyUsage=clientAuth\n",
        s(&ca),
        s(&ca_key),
    );
    commit_by_hand(&cluster, "node-01/kubelet.pem");
    finds(
        &cluster,
        "pki/node-01/kubelet.pem: its signature does not verify under pki/kubernetes/ca.pem",
    );
}

#[test]
fn a_key_that_does_not_match() {
    let cluster = clean(DEFAULT_CONFIG);
    std::fs::copy(
        cluster.pki("node-02/kubelet-key.pem"),
        cluster.pki("node-01/kubelet-key.pem"),
    )
    .unwrap();
    commit_by_hand(&cluster, "node-01/kubelet-key.pem");
    finds(
        &cluster,
        "pki/node-01/kubelet-key.pem: does not match the certificate pki/node-01/kubelet.pem",
    );
}

#[test]
fn a_missing_san() {
    let cluster = clean(DEFAULT_CONFIG);
    let (ca, ca_key) = (
        cluster.pki("kubernetes/ca.pem"),
        cluster.pki("kubernetes/ca-key.pem"),
    );
    openssl_sign(
        &cluster,
        "node-01/kubelet-serving",
        "/O=system:nodes/CN=system:node:node-01",
        "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:node-01\n",
        s(&ca),
        s(&ca_key),
    );
    commit_by_hand(&cluster, "node-01/kubelet-serving.pem");
    finds(
        &cluster,
        "pki/node-01/kubelet-serving.pem: SANs differ (missing: IP:2001:db8::1; extra: none)",
    );
}

#[test]
fn a_key_file_readable_by_others() {
    let cluster = clean(DEFAULT_CONFIG);
    let key = cluster.pki("node-03/etcd-peer-key.pem");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    finds(
        &cluster,
        "pki/node-03/etcd-peer-key.pem: mode 0644, but private keys must be 0600",
    );
}

#[test]
fn a_plaintext_key_tracked_by_git() {
    let cluster = clean(DEFAULT_CONFIG);
    commit_all(&cluster);
    git(&cluster, &["add", "-f", "pki/etcd/ca-key.pem"]);
    finds(
        &cluster,
        "pki/etcd/ca-key.pem: plaintext key is tracked by git",
    );
}

/// Re-encrypts `secrets/REL.age` with the age CLI to the test admin plus `extra` SSH keys.
fn age_encrypt(cluster: &Cluster, rel: &str, extra: &[&str]) {
    let admin = std::fs::read_to_string(fixture("admin-identity.txt")).unwrap();
    let admin = admin
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    let mut args = vec!["-a".to_string(), "-r".into(), admin];
    for key in extra {
        args.extend([
            "-R".into(),
            fixture(&format!("{key}.pub")).display().to_string(),
        ]);
    }
    let out = cluster.path().join("secrets").join(format!("{rel}.age"));
    args.extend([
        "-o".into(),
        out.display().to_string(),
        cluster.pki(rel).display().to_string(),
    ]);
    run_ok("age", &args.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn a_secret_encrypted_to_other_recipients_than_secrets_nix() {
    let cluster = clean(&config_with_keys());
    age_encrypt(
        &cluster,
        "node-01/kubelet-key.pem",
        &["node-02_ssh_host_ed25519_key"],
    );
    finds(
        &cluster,
        "secrets/node-01/kubelet-key.pem.age: encrypted to other recipients than secrets.nix lists",
    );
}

#[test]
fn a_ca_key_encrypted_to_a_node() {
    let cluster = clean(&config_with_keys());
    age_encrypt(
        &cluster,
        "etcd/ca-key.pem",
        &["node-01_ssh_host_ed25519_key"],
    );
    finds(
        &cluster,
        "secrets/etcd/ca-key.pem.age: a CA key is encrypted to a node",
    );
}

#[test]
fn a_fresh_clone_verifies_from_secrets_with_an_identity() {
    let cluster = clean(&config_with_keys());
    cluster.fresh_clone();
    let line = cluster.kpki(&["verify"]).fails_with(2);
    assert!(line.contains("no identity"), "{line}");
    let run = cluster.kpki(&["verify", "-i", s(&fixture("admin-identity.txt"))]);
    assert_eq!(run.code(), Some(0), "{}", run.stdout());
}

#[test]
fn a_hand_edited_nix_module() {
    let cluster = clean(DEFAULT_CONFIG);
    let module = cluster.path().join("secrets/kpki.nix");
    let text = std::fs::read_to_string(&module).unwrap();
    std::fs::write(&module, text.replace("\"0400\"", "\"0444\"")).unwrap();
    finds(&cluster, "secrets/kpki.nix: not current (run kpki init)");
}

#[test]
fn plaintext_changed_outside_kpki() {
    let cluster = clean(DEFAULT_CONFIG);
    std::fs::copy(
        cluster.pki("node-02/kubelet.pem"),
        cluster.pki("node-01/kubelet.pem"),
    )
    .unwrap();
    finds(&cluster, "pki/node-01/kubelet.pem: changed outside kpki");
    let before = cluster.snapshot();
    let line = cluster.kpki(&["init"]).fails_with(2);
    assert!(
        line.contains("pki/node-01/kubelet.pem") && line.contains("changed outside kpki"),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "a refused init changed files");
    std::fs::remove_file(cluster.pki("node-01/kubelet.pem")).unwrap();
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn an_identity_that_is_no_admin_gets_one_line() {
    let cluster = clean(DEFAULT_CONFIG);
    let stranger = cluster.path().join("stranger.key");
    run_ok("age-keygen", &["-o", s(&stranger)]);
    let recipient = run_ok("age-keygen", &["-y", s(&stranger)]);
    let run = cluster.kpki(&["verify", "-i", s(&stranger)]);
    assert_eq!(run.code(), Some(1));
    let out = run.stdout();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains(&format!(
            "its recipient {} is not one of the 1 in secrets.admins",
            recipient.trim()
        )),
        "{}",
        lines[0]
    );
}
