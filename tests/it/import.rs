//! Adopting a PKI made elsewhere: kubeadm's and easyCerts' layouts made with openssl as those
//! tools make them, checked by a real etcd that keeps serving through the switch.

use std::path::{Path, PathBuf};

use crate::etcd::{Client, Etcd, MemberFiles, NODES, while_writing};
use crate::harness::{Cluster, DEFAULT_CONFIG, run_ok, s};

/// A kubeadm PKI for the default cluster's nodes, one directory per node under `DIR/kubeadm`.
pub fn kubeadm_pki(dir: &Path, nodes: &[&str]) -> PathBuf {
    let out = dir.join("kubeadm");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/kubeadm-pki.sh");
    let mut args = vec![script.to_string(), s(&out).to_string()];
    for (i, node) in nodes.iter().enumerate() {
        args.push(format!("{node}=2001:db8::{}", i + 1));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok("bash", &args);
    out
}

/// `kpki import kubeadm` of every node.
fn import_all(cluster: &Cluster, kubeadm: &Path) {
    for node in NODES {
        let dir = kubeadm.join(node);
        cluster
            .kpki(&["import", "kubeadm", s(&dir), "--node", node])
            .success();
    }
}

#[test]
fn a_kubeadm_cluster_is_adopted_while_etcd_keeps_serving() {
    let cluster = Cluster::with_config(DEFAULT_CONFIG);
    let kubeadm = kubeadm_pki(cluster.path(), &NODES);
    let mut etcd = Etcd::start_on(
        NODES
            .iter()
            .map(|n| MemberFiles::kubeadm(&kubeadm.join(n)))
            .collect(),
        crate::harness::require("etcd"),
    );
    let old = Client {
        ca: kubeadm.join("node-01/etcd/ca.crt"),
        cert: kubeadm.join("node-01/apiserver-etcd-client.crt"),
        key: kubeadm.join("node-01/apiserver-etcd-client.key"),
    };
    etcd.wait_healthy(&old);

    import_all(&cluster, &kubeadm);
    for (theirs, ours) in [
        ("ca.crt", "kubernetes/ca.pem"),
        ("etcd/ca.crt", "etcd/ca.pem"),
        ("front-proxy-ca.crt", "front-proxy/ca.pem"),
        ("sa.pub", "service-account/sa.pem"),
    ] {
        assert_eq!(
            std::fs::read(kubeadm.join("node-01").join(theirs)).unwrap(),
            std::fs::read(cluster.pki(ours)).unwrap(),
            "{ours} is not byte for byte kubeadm's {theirs}"
        );
    }
    let out = cluster.kpki(&["rotate"]).success().stdout();
    assert!(out.contains("renew node-01/etcd-peer (drift"), "{out}");
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));

    let endpoints: Vec<String> = (1..=3)
        .map(|i| format!("https://[2001:db8::{i}]:2379"))
        .collect();
    let (written, failures) = while_writing(
        &old,
        &etcd.hosts.ns(0),
        &endpoints.join(","),
        "/adopted/",
        |progress| {
            progress();
            for i in 0..NODES.len() {
                etcd.restart_on(i, &MemberFiles::kpki(&cluster.pki(""), i), None);
                etcd.wait_healthy(&old);
                progress();
            }
        },
    );
    assert!(
        failures.is_empty(),
        "writes failed: {failures:?}\n{}",
        etcd.logs()
    );
    assert!(written > 0);
    let ours = Client::of(&cluster, "etcd/apiserver-etcd-client");
    for (who, client) in [("kubeadm's", &old), ("kpki's", &ours)] {
        let put = client.run(&etcd, 1, &["put", "/adopted/last", who]);
        assert!(put.status.success(), "{who} etcd client: {put:?}");
    }

    // Imported again, nothing changes: kpki keeps what it reissued.
    let before = cluster.committed();
    import_all(&cluster, &kubeadm);
    assert!(
        before == cluster.committed(),
        "a second import changed files"
    );
}

#[test]
fn an_import_that_fails_a_check_writes_nothing() {
    let cluster = Cluster::with_config(DEFAULT_CONFIG);
    let kubeadm = kubeadm_pki(cluster.path(), &NODES[..2]);
    let node = |n: &str| kubeadm.join(n);
    let copy = |name: &str| {
        let to = cluster.path().join(name);
        run_ok("cp", &["-r", s(&node("node-01")), s(&to)]);
        to
    };
    let mismatched = copy("mismatched");
    std::fs::copy(
        node("node-02").join("apiserver.key"),
        mismatched.join("apiserver.key"),
    )
    .unwrap();
    let foreign = copy("foreign");
    for ext in ["crt", "key"] {
        std::fs::copy(
            foreign.join(format!("etcd/server.{ext}")),
            foreign.join(format!("apiserver.{ext}")),
        )
        .unwrap();
    }
    let truncated = copy("truncated");
    let ca = std::fs::read(truncated.join("ca.crt")).unwrap();
    std::fs::write(truncated.join("ca.crt"), &ca[..ca.len() / 2]).unwrap();
    let before = cluster.snapshot();
    for (dir, needle) in [
        (&mismatched, "apiserver.key: does not match its certificate"),
        (
            &foreign,
            "apiserver.crt: is not signed by the kubernetes CA",
        ),
        (&truncated, "ca.crt: a certificate block is not closed"),
    ] {
        let line = cluster
            .kpki(&["import", "kubeadm", s(dir), "--node", "node-01"])
            .fails_with(2);
        assert!(line.contains(needle), "{line}");
        assert!(
            before == cluster.snapshot(),
            "a refused import wrote: {line}"
        );
    }

    // A second node from another cluster (other CAs) is refused once the first is adopted.
    cluster
        .kpki(&[
            "import",
            "kubeadm",
            s(&node("node-01")),
            "--node",
            "node-01",
        ])
        .success();
    let other = kubeadm_pki(&cluster.path().join("other"), &["node-02"]);
    let before = cluster.snapshot();
    let line = cluster
        .kpki(&[
            "import",
            "kubeadm",
            s(&other.join("node-02")),
            "--node",
            "node-02",
        ])
        .fails_with(2);
    assert!(
        line.contains("another kubernetes CA than the one kpki holds"),
        "{line}"
    );
    assert!(before == cluster.snapshot());
    let line = cluster
        .kpki(&[
            "import",
            "kubeadm",
            s(&node("node-02")),
            "--node",
            "node-09",
        ])
        .fails_with(2);
    assert!(line.contains("--node node-09: no such node"), "{line}");
}

#[test]
fn an_easycerts_node_is_adopted_and_its_one_ca_split_with_overlap() {
    let config = "[cluster]\nservice_cidr = \"fd00:10:96::/112\"\napi_server = \"https://[2001:db8::1]:6443\"\n[[node]]\nname = \"node-01\"\naddresses = [\"2001:db8::1\"]\nroles = [\"control-plane\", \"etcd\", \"worker\"]\n";
    let cluster = Cluster::with_config(config);
    let source = cluster.path().join("easycerts");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/easycerts-pki.sh");
    run_ok("bash", &[script, s(&source), "node-01", "2001:db8::1"]);
    let out = cluster
        .kpki(&["import", "easycerts", s(&source), "--node", "node-01"])
        .success()
        .stdout();
    assert!(
        out.contains("the kubernetes CA is also the etcd and front-proxy CA"),
        "{out}"
    );
    assert!(
        out.contains("not adopted (no catalogue entry takes them): flannel-client"),
        "{out}"
    );
    let ca = std::fs::read(source.join("ca.pem")).unwrap();
    for dir in ["kubernetes", "etcd", "front-proxy"] {
        assert_eq!(
            std::fs::read(cluster.pki(&format!("{dir}/ca.pem"))).unwrap(),
            ca
        );
    }
    // The service-account certificate's public key is what kpki's sa.pem holds.
    let public = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            s(&source.join("service-account.pem")),
            "-noout",
            "-pubkey",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(cluster.pki("service-account/sa.pem")).unwrap(),
        public
    );

    cluster.kpki(&["rotate"]).success();
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
    for step in [
        &["rotate", "--ca", "etcd"][..],
        &["rotate", "--ca", "etcd", "--finish", "--no-live-check"],
    ] {
        cluster.kpki(step).success();
        let verify = cluster.kpki(&["verify"]);
        assert_eq!(
            verify.code(),
            Some(0),
            "after {step:?}: {}",
            verify.stdout()
        );
    }
    assert_eq!(std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap(), ca);
    assert_ne!(
        std::fs::read(cluster.pki("etcd/ca.pem")).unwrap(),
        ca,
        "not split"
    );
    let status = cluster.kpki(&["status"]).stdout();
    assert!(
        status.contains("the kubernetes CA is also the front-proxy CA"),
        "{status}"
    );
}

#[test]
fn files_mapped_by_hand_are_adopted_and_bad_maps_refused() {
    let cluster = Cluster::with_config(DEFAULT_CONFIG);
    let kubeadm = kubeadm_pki(cluster.path(), &NODES[..1]);
    let dir = kubeadm.join("node-01");
    let line = cluster
        .kpki(&[
            "import",
            "dir",
            s(&dir),
            "--map",
            "ca.crt=kubernetes/cert.pem",
        ])
        .fails_with(2);
    assert!(
        line.contains("not a file of this cluster's catalogue"),
        "{line}"
    );
    let out = cluster
        .kpki(&[
            "import",
            "dir",
            s(&dir),
            "--map",
            "ca.crt=kubernetes/ca.pem",
            "--map",
            "ca.key=kubernetes/ca-key.pem",
            "--map",
            "apiserver.crt=node-01/apiserver.pem",
            "--map",
            "apiserver.key=node-01/apiserver-key.pem",
        ])
        .success()
        .stdout();
    assert!(out.contains("adopted pki/node-01/apiserver.pem"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("ca.crt")).unwrap(),
        std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap()
    );
    cluster.kpki(&["init", "-q"]).success();
    cluster.kpki(&["rotate", "-q"]).success();
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}
