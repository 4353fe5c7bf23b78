//! secrets/: each node decrypts exactly its files with the real age CLI, the Nix files evaluate
//! with nix-instantiate, re-runs are churn-free in git, and a fresh clone works from secrets/.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{
    Cluster, DEFAULT_CONFIG, commit_all, fixture, git, run, run_ok, s, verify_under_sealed_ca,
};

/// The public key of fixture `name`, as in the config.
fn public(name: &str) -> String {
    std::fs::read_to_string(fixture(&format!("{name}.pub")))
        .unwrap()
        .trim()
        .to_string()
}

/// The test admin's age recipient.
pub fn admin_recipient() -> String {
    let text = std::fs::read_to_string(fixture("admin-identity.txt")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string()
}

/// The SSH host key file of a test node.
pub fn host_key(node: &str) -> PathBuf {
    match node {
        "node-03" => fixture("node-03_ssh_host_rsa_key"),
        n => fixture(&format!("{n}_ssh_host_ed25519_key")),
    }
}

pub fn host_public(node: &str) -> String {
    let path = host_key(node);
    public(path.file_name().unwrap().to_str().unwrap())
}

/// The default cluster with host keys, the test admin, and a worker-only node-04.
pub fn config_with_keys() -> String {
    let mut config = DEFAULT_CONFIG.replace(
        "admins = []",
        &format!("admins = [\"{}\"]", admin_recipient()),
    );
    for n in ["node-01", "node-02", "node-03"] {
        let at = config.find(&format!("name = \"{n}\"")).unwrap();
        config.insert_str(at, &format!("host_key = \"{}\"\n", host_public(n)));
    }
    config.push_str(&format!(
        "\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\nhost_key = \"{}\"\n",
        host_public("node-04")
    ));
    config
}

/// What a node may read, written out independently of kpki's catalogue.
fn readable_by(node: &str) -> BTreeSet<String> {
    let mut files: Vec<String> = vec!["kubernetes/ca.pem".into()];
    let pair = |stem: &str| [format!("{stem}.pem"), format!("{stem}-key.pem")];
    if node == "node-04" {
        files.extend(pair("kubernetes/kube-proxy"));
        files.extend(pair("node-04/kubelet"));
        files.extend(pair("node-04/kubelet-serving"));
    } else {
        files.extend([
            "etcd/ca.pem".into(),
            "front-proxy/ca.pem".into(),
            "service-account/sa.pem".into(),
        ]);
        files.push("service-account/sa-key.pem".into());
        for stem in [
            "kubernetes/controller-manager",
            "kubernetes/scheduler",
            "kubernetes/apiserver-kubelet-client",
            "kubernetes/kube-proxy",
            "etcd/apiserver-etcd-client",
            "front-proxy/client",
        ] {
            files.extend(pair(stem));
        }
        for stem in [
            "apiserver",
            "etcd-server",
            "etcd-peer",
            "kubelet",
            "kubelet-serving",
        ] {
            files.extend(pair(&format!("{node}/{stem}")));
        }
    }
    files.into_iter().collect()
}

/// Every `.age` file under `secrets/`, relative to it, without `.age`.
fn sealed(cluster: &Cluster) -> Vec<String> {
    cluster
        .snapshot()
        .into_keys()
        .filter_map(|p| {
            p.strip_prefix("secrets/")?
                .strip_suffix(".age")
                .map(String::from)
        })
        .collect()
}

/// Decrypts `secrets/REL.age` with the age CLI.
pub fn age_decrypt(cluster: &Cluster, identity: &Path, rel: &str) -> Option<Vec<u8>> {
    let file = cluster.path().join("secrets").join(format!("{rel}.age"));
    let out = run("age", &["-d", "-i", s(identity), s(&file)]);
    out.status.success().then_some(out.stdout)
}

#[test]
fn each_node_decrypts_exactly_its_files_and_the_admin_everything() {
    let cluster = Cluster::initialized(&config_with_keys());
    let files = sealed(&cluster);
    let mut pems = cluster.pem_files();
    pems.push("kubernetes/admin.kubeconfig".into());
    pems.sort();
    assert_eq!(
        files, pems,
        "secrets/ does not mirror pki/ plus the admin kubeconfig"
    );
    let plaintext = |rel: &str| std::fs::read(cluster.pki(rel)).ok();
    for node in ["node-01", "node-02", "node-03", "node-04"] {
        let expected = readable_by(node);
        for rel in &files {
            let plain = age_decrypt(&cluster, &host_key(node), rel);
            assert_eq!(plain.is_some(), expected.contains(rel), "{node} and {rel}");
            if plain.is_some() {
                assert_eq!(plain, plaintext(rel), "{node}: {rel} differs");
            }
        }
    }
    for rel in &files {
        let plain = age_decrypt(&cluster, &fixture("admin-identity.txt"), rel).expect(rel);
        if let Some(original) = plaintext(rel) {
            assert_eq!(plain, original, "{rel}");
        }
    }
    let armored =
        std::fs::read_to_string(cluster.path().join("secrets/kubernetes/ca.pem.age")).unwrap();
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
}

/// Evaluates a Nix expression to JSON.
fn nix_eval(expr: &str) -> Value {
    serde_json::from_str(&run_ok(
        "nix-instantiate",
        &["--eval", "--strict", "--json", "-E", expr],
    ))
    .unwrap()
}

/// A JSON list of strings.
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// A JSON string field.
fn field(v: &Value, name: &str) -> String {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("{name} in {v}"))
        .to_string()
}

#[test]
fn secrets_nix_lists_each_files_recipients() {
    let cluster = Cluster::initialized(&config_with_keys());
    let rules = cluster.path().join("secrets/secrets.nix");
    let keys = |rel: &str| nix_eval(&format!("(import {}).\"{rel}.age\".publicKeys", s(&rules)));
    let canonical = |node: &str| {
        let key = host_public(node);
        key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    };
    let admin = admin_recipient();
    assert_eq!(strings(&keys("kubernetes/ca-key.pem")), [admin.as_str()]);
    assert_eq!(strings(&keys("kubernetes/admin.pem")), [admin.as_str()]);
    assert_eq!(
        strings(&keys("node-02/kubelet-key.pem")),
        [admin.clone(), canonical("node-02")]
    );
    assert_eq!(
        strings(&keys("node-03/etcd-peer-key.pem")),
        [admin.clone(), canonical("node-03")]
    );
    assert_eq!(
        strings(&keys("kubernetes/kube-proxy-key.pem")),
        [
            admin.clone(),
            canonical("node-01"),
            canonical("node-02"),
            canonical("node-03"),
            canonical("node-04")
        ]
    );
    assert_eq!(
        strings(&keys("etcd/ca.pem")),
        [
            admin,
            canonical("node-01"),
            canonical("node-02"),
            canonical("node-03")
        ]
    );
    let names = nix_eval(&format!("builtins.attrNames (import {})", s(&rules)));
    let expected: Vec<String> = sealed(&cluster)
        .iter()
        .map(|r| format!("{r}.age"))
        .collect();
    assert_eq!(
        strings(&names).into_iter().collect::<BTreeSet<_>>(),
        expected.into_iter().collect()
    );
}

#[test]
fn the_nixos_module_declares_exactly_the_hosts_files() {
    let cluster = Cluster::initialized(&config_with_keys());
    let secrets_of =
        |host: &str| crate::nixos::eval(&cluster, host, "{ }").unwrap()["secrets"].clone();
    assert!(secrets_of("elsewhere").as_object().unwrap().is_empty());
    for node in ["node-02", "node-04"] {
        let declared = secrets_of(node);
        let secrets_dir = cluster.path().join("secrets");
        let files: BTreeSet<String> = declared
            .as_object()
            .unwrap()
            .values()
            .map(|v| {
                let file = field(v, "file");
                let rel = file
                    .strip_prefix(s(&secrets_dir))
                    .unwrap()
                    .trim_start_matches('/');
                assert!(Path::new(&file).is_file(), "{file}");
                rel.strip_suffix(".age").unwrap().to_string()
            })
            .collect();
        assert_eq!(files, readable_by(node), "{node}");
    }
    let node02 = secrets_of("node-02");
    let attrs = |name: &str| {
        let v = &node02[name];
        (field(v, "owner"), field(v, "group"), field(v, "mode"))
    };
    let own = |o: &str, m: &str| (o.to_string(), o.to_string(), m.to_string());
    assert_eq!(attrs("kpki-etcd-server-key.pem"), own("etcd", "0400"));
    assert_eq!(attrs("kpki-etcd-peer.pem"), own("etcd", "0444"));
    assert_eq!(attrs("kpki-apiserver-key.pem"), own("kubernetes", "0400"));
    assert_eq!(attrs("kpki-kubelet-key.pem"), own("root", "0400"));
    assert_eq!(attrs("kpki-kubernetes-ca.pem"), own("root", "0444"));
    assert_eq!(
        attrs("kpki-service-account-sa-key.pem"),
        own("kubernetes", "0400")
    );
    assert_eq!(
        attrs("kpki-etcd-apiserver-etcd-client-key.pem"),
        own("kubernetes", "0400")
    );
    assert_eq!(
        attrs("kpki-kubernetes-kube-proxy-key.pem"),
        own("root", "0400")
    );
}

#[test]
fn reruns_are_churn_free_and_a_new_host_key_reseals_only_what_that_host_reads() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    let tracked = git(&cluster, &["ls-files"]);
    assert!(
        !tracked
            .lines()
            .any(|f| f.ends_with(".pem") || f.ends_with("agekey")),
        "{tracked}"
    );
    cluster.kpki(&["init"]).success();
    assert_eq!(git(&cluster, &["status", "--porcelain"]), "");

    let config = config_with_keys().replace(
        &host_public("node-02"),
        &public("node-05_ssh_host_ed25519_key"),
    );
    cluster.write_config(&config);
    // A new host key is a recipient the signed state never had: the admin names it.
    cluster.kpki(&["init"]).fails_with(2);
    cluster
        .kpki(&["init", "--accept-recipients", "node-02"])
        .success();
    let changed: BTreeSet<String> = git(&cluster, &["status", "--porcelain"])
        .lines()
        .map(|l| l[3..].to_string())
        .collect();
    let mut expected: BTreeSet<String> = readable_by("node-02")
        .iter()
        .map(|r| format!("secrets/{r}.age"))
        .collect();
    expected.extend(
        [
            "pki/kpki.toml",
            "secrets/manifest.toml",
            "secrets/secrets.nix",
        ]
        .map(String::from),
    );
    assert_eq!(changed, expected);
    assert!(
        age_decrypt(
            &cluster,
            &fixture("node-05_ssh_host_ed25519_key"),
            "node-02/kubelet-key.pem"
        )
        .is_some()
    );
    assert!(age_decrypt(&cluster, &host_key("node-02"), "node-02/kubelet-key.pem").is_none());
}

#[test]
fn a_fresh_clone_signs_with_the_ca_key_decrypted_from_secrets() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster.fresh_clone();
    let before = cluster.committed();
    let out = cluster.kpki(&["init"]).stdout();
    assert!(out.contains("nothing to do"), "{out}");
    assert!(before == cluster.committed());

    let grown = format!(
        "{}\n[[node]]\nname = \"node-06\"\naddresses = [\"2001:db8::6\"]\nroles = [\"worker\"]\n",
        config_with_keys()
    );
    cluster.write_config(&grown);
    let before = cluster.snapshot();
    let line = cluster.kpki(&["init"]).fails_with(2);
    assert!(line.contains("no identity was given"), "{line}");
    assert!(before == cluster.snapshot(), "a failed init changed files");
    let line = cluster
        .kpki(&["init", "-i", s(&host_key("node-01"))])
        .fails_with(2);
    assert!(
        line.contains("kubernetes/ca") && line.contains("none of the given identities"),
        "{line}"
    );
    assert!(before == cluster.snapshot(), "a failed init changed files");

    cluster
        .kpki(&["init", "-i", s(&fixture("admin-identity.txt"))])
        .success();
    verify_under_sealed_ca(&cluster, "kubernetes", "node-06/kubelet");
    assert!(
        age_decrypt(
            &cluster,
            &fixture("admin-identity.txt"),
            "node-06/kubelet-key.pem"
        )
        .is_some()
    );
}

#[test]
fn an_openssh_private_key_works_as_the_admin_identity() {
    let config = config_with_keys().replace(&admin_recipient(), &host_public("node-05"));
    let cluster = Cluster::initialized(&config);
    cluster.fresh_clone();
    cluster.write_config(&format!(
        "{config}\n[[node]]\nname = \"node-06\"\naddresses = [\"2001:db8::6\"]\n"
    ));
    cluster
        .kpki(&["init", "-i", s(&host_key("node-05"))])
        .success();
    assert!(cluster.pki("node-06/etcd-peer.pem").is_file());
}

#[test]
fn without_admins_a_generated_identity_decrypts_everything() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let identity = cluster.pki("admin.agekey");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&identity).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    commit_all(&cluster);
    assert!(!git(&cluster, &["ls-files"]).contains("agekey"));
    for rel in ["kubernetes/ca-key.pem", "node-03/etcd-server-key.pem"] {
        assert!(age_decrypt(&cluster, &identity, rel).is_some(), "{rel}");
    }
    std::fs::remove_file(&identity).unwrap();
    let line = cluster.kpki(&["init"]).fails_with(2);
    assert!(
        line.contains("secrets.admins is empty") && line.contains("admin.agekey"),
        "{line}"
    );
}

#[test]
fn the_docs_nix_examples_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for doc in std::fs::read_dir(root.join("docs")).unwrap() {
        readme += &std::fs::read_to_string(doc.unwrap().path()).unwrap();
    }
    let examples: Vec<&str> = readme
        .split("```nix\n")
        .skip(1)
        .map(|rest| &rest[..rest.find("```").unwrap()])
        .collect();
    assert!(examples.len() >= 2, "the docs have no nix examples");
    for example in examples {
        let file = tempfile::Builder::new().suffix(".nix").tempfile().unwrap();
        std::fs::write(file.path(), example).unwrap();
        run_ok("nix-instantiate", &["--parse", s(file.path())]);
    }
}

#[test]
fn encrypted_files_put_there_by_hand_are_found_in_directories_kpki_listed_before() {
    let cluster = Cluster::initialized(&config_with_keys());
    // A writer run long enough after init (by kpki's clock) keeps the listing of every
    // directory of secrets/, so that readers need not list them again.
    cluster
        .kpki_env(&["rotate"], &[("KPKI_CLOCK_OFFSET", "10")])
        .success();
    cluster.kpki(&["status"]).success();
    let secrets = cluster.path().join("secrets");
    std::fs::copy(
        secrets.join("node-01/kubelet.pem.age"),
        secrets.join("node-01/spare.pem.age"),
    )
    .unwrap();
    // The directory's mtime put back: its change time still tells.
    run_ok(
        "touch",
        &[
            "-r",
            s(&secrets.join("node-02")),
            s(&secrets.join("node-01")),
        ],
    );
    std::fs::create_dir(secrets.join("extra")).unwrap();
    std::fs::copy(
        secrets.join("node-02/kubelet.pem.age"),
        secrets.join("extra/other.pem.age"),
    )
    .unwrap();
    let status = cluster.kpki(&["status"]).finds();
    assert!(
        status.contains("secrets: 2 in neither the manifest nor the config")
            && status.contains("extra/other.pem.age, node-01/spare.pem.age"),
        "{status}"
    );
    let verify = cluster.kpki(&["verify"]).finds();
    for rel in ["node-01/spare.pem.age", "extra/other.pem.age"] {
        assert!(
            verify.contains(&format!(
                "secrets/{rel}: in neither the manifest nor the config"
            )),
            "{verify}"
        );
    }
    cluster
        .kpki_env(&["rotate", "--prune"], &[("KPKI_CLOCK_OFFSET", "10")])
        .success();
    assert!(!secrets.join("node-01/spare.pem.age").exists());
    assert!(!secrets.join("extra/other.pem.age").exists());
    cluster.kpki(&["status"]).success();
}
