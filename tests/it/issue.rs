//! `kpki issue` and `kpki kubeconfig`: kubectl reaches a TLS server holding an apiserver
//! certificate with each kind of client, reissues change exactly what they should, and bad
//! requests change nothing.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, DEFAULT_CONFIG, commit_all, git, require, run_ok, s};
use crate::harness::{fixture, verify_under_sealed_ca};
use crate::secrets::config_with_keys;

/// An `openssl s_server` on `[::1]` with node-01's apiserver certificate that requires client
/// certificates of the Kubernetes CA and answers each request with what it saw.
pub struct TestApiServer {
    child: Child,
    port: u16,
}

impl TestApiServer {
    pub fn start(cluster: &Cluster) -> TestApiServer {
        let port = TcpListener::bind("[::1]:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(require("openssl"))
            .args([
                "s_server",
                "-www",
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
            ])
            .arg(cluster.pki("kubernetes/ca.pem"))
            .arg("-cert")
            .arg(cluster.pki("node-01/apiserver.pem"))
            .arg("-key")
            .arg(cluster.pki("node-01/apiserver-key.pem"))
            .args(["-accept", &format!("[::1]:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("::1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TestApiServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("https://[::1]:{}", self.port)
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client subject the server saw when kubectl connected with `kubeconfig`.
pub fn subject_seen(kubeconfig: &std::path::Path) -> String {
    let page = run_ok(
        "kubectl",
        &["--kubeconfig", s(kubeconfig), "get", "--raw", "/"],
    );
    let at = page
        .find("Client certificate")
        .expect("the server saw a client certificate");
    page[at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("Subject: "))
        .unwrap()
        .to_string()
}

#[test]
fn kubectl_authenticates_as_admin_kubelet_and_an_extra_user() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let server = TestApiServer::start(&cluster);
    let url = server.url();
    cluster
        .kpki(&[
            "issue",
            "client",
            "--cn",
            "alice",
            "--group",
            "developers",
            "--group",
            "ops",
        ])
        .success();
    for (args, subject) in [
        (vec!["admin"], "O=system:masters, CN=kubernetes-admin"),
        (
            vec!["kubelet", "node-02"],
            "O=system:nodes, CN=system:node:node-02",
        ),
        (vec!["user", "alice"], "O=developers, O=ops, CN=alice"),
        (vec!["scheduler"], "CN=system:kube-scheduler"),
    ] {
        let file = cluster
            .path()
            .join(format!("{}.kubeconfig", args.join("-")));
        let mut all = vec!["kubeconfig"];
        all.extend(&args);
        all.extend(["--server", &url, "-o", s(&file)]);
        cluster.kpki(&all).success();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{args:?}");
        assert_eq!(subject_seen(&file), subject, "{args:?}");
    }
}

#[test]
fn kubeconfig_servers_are_bracketed_and_printed_to_stdout() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let server_of = |args: &[&str]| {
        let mut all = vec!["kubeconfig", "admin"];
        all.extend(args);
        let text = cluster.kpki(&all).success().stdout();
        let file = cluster.path().join("admin.kubeconfig");
        std::fs::write(&file, text).unwrap();
        run_ok(
            "kubectl",
            &[
                "--kubeconfig",
                s(&file),
                "config",
                "view",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
        )
    };
    assert_eq!(server_of(&[]), "https://[2001:db8::1]:6443");
    assert_eq!(
        server_of(&["--server", "2001:db8::7"]),
        "https://[2001:db8::7]:6443"
    );
    assert_eq!(
        server_of(&["--server", "https://[::1]:7443"]),
        "https://[::1]:7443"
    );
    let line = cluster
        .kpki(&[
            "kubeconfig",
            "admin",
            "--server",
            "https://2001:db8::7:6443",
        ])
        .fails_with(2);
    assert!(
        line.contains("--server") && line.contains("brackets"),
        "{line}"
    );
}

#[test]
fn the_admin_kubeconfig_is_kept_encrypted_for_the_admins() {
    let cluster = Cluster::initialized(&config_with_keys());
    let sealed = cluster
        .path()
        .join("secrets/kubernetes/admin.kubeconfig.age");
    let out = run_ok(
        "age",
        &["-d", "-i", s(&fixture("admin-identity.txt")), s(&sealed)],
    );
    assert!(
        out.contains("server: https://[2001:db8::1]:6443\n"),
        "{out}"
    );
    let node = crate::harness::run(
        "age",
        &[
            "-d",
            "-i",
            s(&fixture("node-01_ssh_host_ed25519_key")),
            s(&sealed),
        ],
    );
    assert!(!node.status.success());
}

/// Serial and public key of a certificate, from openssl.
fn serial_and_key(cluster: &Cluster, rel: &str) -> (String, String) {
    let path = cluster.pki(rel);
    (
        run_ok("openssl", &["x509", "-noout", "-serial", "-in", s(&path)]),
        run_ok("openssl", &["x509", "-noout", "-pubkey", "-in", s(&path)]),
    )
}

fn changed(cluster: &Cluster) -> BTreeSet<String> {
    git(cluster, &["status", "--porcelain"])
        .lines()
        .map(|l| l[3..].to_string())
        .collect()
}

#[test]
fn a_reissued_kubelet_has_a_new_serial_and_key_and_touches_only_its_files() {
    let cluster = Cluster::initialized(&config_with_keys());
    commit_all(&cluster);
    let (serial, key) = serial_and_key(&cluster, "node-02/kubelet.pem");

    cluster.kpki(&["issue", "kubelet", "node-02"]).success();
    let (serial2, key2) = serial_and_key(&cluster, "node-02/kubelet.pem");
    assert_ne!(serial, serial2);
    assert_ne!(key, key2);
    let ca = cluster.pki("kubernetes/ca.pem");
    run_ok(
        "openssl",
        &[
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&ca),
            s(&cluster.pki("node-02/kubelet.pem")),
        ],
    );
    // kpki.nix carries the new fingerprints as node-02's kubelet restart triggers.
    let expected: BTreeSet<String> = [
        "secrets/manifest.toml",
        "secrets/kpki.nix",
        "secrets/node-02/kubelet-key.pem.age",
        "secrets/node-02/kubelet.pem.age",
    ]
    .map(String::from)
    .into();
    assert_eq!(changed(&cluster), expected);

    cluster
        .kpki(&[
            "issue",
            "kubelet",
            "node-02",
            "--keep-key",
            "--validity",
            "90d",
        ])
        .success();
    let (serial3, key3) = serial_and_key(&cluster, "node-02/kubelet.pem");
    assert_ne!(serial2, serial3);
    assert_eq!(key2, key3);
    let expires_within = |days: u64| {
        let cert = cluster.pki("node-02/kubelet.pem");
        let seconds = (days * 86400).to_string();
        !crate::harness::run(
            "openssl",
            &["x509", "-noout", "-checkend", &seconds, "-in", s(&cert)],
        )
        .status
        .success()
    };
    assert!(expires_within(91) && !expires_within(89));
}

#[test]
fn issue_node_reissues_everything_the_node_holds() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let before = cluster.snapshot();
    let out = cluster
        .kpki(&["issue", "node", "node-03"])
        .success()
        .stdout();
    let after = cluster.snapshot();
    let touched: BTreeSet<String> = after
        .iter()
        .filter(|(p, v)| {
            before.get(*p) != Some(v) && p.starts_with("pki/") && !p.starts_with("pki/.kpki/")
        })
        .map(|(p, _)| p.clone())
        .collect();
    let stems = [
        "apiserver",
        "etcd-server",
        "etcd-peer",
        "kubelet",
        "kubelet-serving",
    ];
    let expected: BTreeSet<String> = stems
        .iter()
        .flat_map(|st| {
            [
                format!("pki/node-03/{st}.pem"),
                format!("pki/node-03/{st}-key.pem"),
            ]
        })
        .collect();
    assert_eq!(touched, expected, "{out}");
    for stem in stems {
        let ca = if stem.starts_with("etcd") {
            "etcd"
        } else {
            "kubernetes"
        };
        let ca = cluster.pki(&format!("{ca}/ca.pem"));
        run_ok(
            "openssl",
            &[
                "verify",
                "-CAfile",
                s(&ca),
                s(&cluster.pki(&format!("node-03/{stem}.pem"))),
            ],
        );
    }
}

#[test]
fn a_fresh_clone_issues_with_the_decrypted_ca_key() {
    let cluster = Cluster::initialized(&config_with_keys());
    cluster.fresh_clone();
    let before = cluster.snapshot();
    let line = cluster
        .kpki(&["issue", "etcd-peer", "node-01"])
        .fails_with(2);
    assert!(line.contains("no identity"), "{line}");
    assert!(before == cluster.snapshot());
    cluster
        .kpki(&[
            "issue",
            "etcd-peer",
            "node-01",
            "-i",
            s(&fixture("admin-identity.txt")),
        ])
        .success();
    verify_under_sealed_ca(&cluster, "etcd", "node-01/etcd-peer");
}

#[test]
fn bad_requests_name_what_is_valid_and_change_nothing() {
    let worker = format!(
        "{DEFAULT_CONFIG}\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\n"
    );
    let cluster = Cluster::initialized(&worker);
    let before = cluster.snapshot();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["issue", "kubelett", "node-01"],
            &[
                "unknown profile \"kubelett\"; did you mean \"kubelet\"?",
                "kubelet-serving",
            ],
        ),
        (
            &["issue", "kubelet", "node-09"],
            &["unknown node \"node-09\"", "node-04"],
        ),
        (
            &["issue", "kubelet", "node-4"],
            &["unknown node \"node-4\"; did you mean \"node-04\"?"],
        ),
        (
            &["rotate", "--ca", "etc"],
            &[
                "invalid value 'etc' for '--ca <NAME>'",
                "a similar value exists: 'etcd'",
            ],
        ),
        (
            &["rotate", "--within", "a while"],
            &["'--within <DUR>'", "\"a while\" is not a duration"],
        ),
        (
            &["rotate", "--finish"],
            &["<--ca <NAME>|--service-account>"],
        ),
        (&["issue", "kubelet"], &["kubelet needs a node", "node-01"]),
        (
            &["issue", "apiserver", "node-04"],
            &[
                "node \"node-04\" has no apiserver (it goes to nodes with the role control-plane)",
                "node-01, node-02, node-03",
            ],
        ),
        (&["issue", "admin", "node-01"], &["admin is cluster-wide"]),
        (
            &["issue", "etcd-ca"],
            &["etcd-ca is a CA", "kpki rotate --ca etcd"],
        ),
        (&["issue", "client"], &["needs --cn"]),
        (
            &[
                "issue", "client", "--cn", "x", "--group", "a", "--group", "b", "--group", "c",
            ],
            &["3 groups", "at most 2"],
        ),
        (
            &["issue", "client", "--cn", "../evil"],
            &["--cn", "\"../evil\""],
        ),
        (
            &["issue", "kubelet", "node-01", "--validity", "soon"],
            &["--validity", "\"soon\""],
        ),
        (
            &["issue", "admin", "--cn", "x"],
            &["--cn and --group go with `kpki issue client`"],
        ),
        (
            &["kubeconfig", "root"],
            &["no kubeconfig for \"root\"", "kubelet NODE"],
        ),
        (&["kubeconfig", "kubelet"], &["needs a node"]),
        (
            &["kubeconfig", "user", "nobody"],
            &[
                "users/nobody.pem",
                "does not exist",
                "kpki issue client --cn nobody",
            ],
        ),
    ];
    for (args, needles) in cases {
        let run = cluster.kpki(args);
        let stderr = run.stderr();
        run.fails_with(2);
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in {stderr}"
            );
        }
        assert!(before == cluster.snapshot(), "{args:?} changed files");
    }
    let empty = Cluster::new();
    let line = empty.kpki(&["issue", "admin"]).fails_with(2);
    assert!(
        line.contains("kpki.toml") && line.contains("no config"),
        "{line}"
    );
}
