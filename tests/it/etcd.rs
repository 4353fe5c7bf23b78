//! A real three-member etcd cluster over IPv6 with mutual TLS, one network namespace per node,
//! using the certificates of `kpki init`. etcd checks each peer certificate's IP SANs against
//! the address the peer connects from, so a wrong SAN breaks the cluster here.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, DEFAULT_CONFIG, s};
use crate::netns::Hosts;

const NODES: [&str; 3] = ["node-01", "node-02", "node-03"];
const ADDRESSES: [&str; 3] = ["2001:db8::1", "2001:db8::2", "2001:db8::3"];

/// Running etcd members; killed on drop, before their hosts are removed.
pub struct Etcd {
    members: Vec<Child>,
    pub hosts: Hosts,
    data: tempfile::TempDir,
}

impl Etcd {
    /// Starts one member per node with the node's certificates from `pki`.
    pub fn start(pki: &Path) -> Etcd {
        let hosts = Hosts::new(&ADDRESSES);
        let data = tempfile::tempdir().unwrap();
        let mut etcd = Etcd {
            members: Vec::new(),
            hosts,
            data,
        };
        for i in 0..NODES.len() {
            let child = etcd.spawn(i, pki);
            etcd.members.push(child);
        }
        etcd
    }

    fn spawn(&self, i: usize, pki: &Path) -> Child {
        let (node, addr) = (NODES[i], ADDRESSES[i]);
        let file = |rel: &str| pki.join(node).join(rel).display().to_string();
        let ca = pki.join("etcd/ca.pem").display().to_string();
        let initial: Vec<String> = NODES
            .iter()
            .zip(ADDRESSES)
            .map(|(n, a)| format!("{n}=https://[{a}]:2380"))
            .collect();
        let log = std::fs::File::create(self.data.path().join(format!("{node}.log"))).unwrap();
        self.hosts
            .command(i, "etcd")
            .args(["--name", node, "--data-dir"])
            .arg(self.data.path().join(node))
            .args(["--listen-client-urls", &format!("https://[{addr}]:2379")])
            .args(["--advertise-client-urls", &format!("https://[{addr}]:2379")])
            .args(["--listen-peer-urls", &format!("https://[{addr}]:2380")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("https://[{addr}]:2380"),
            ])
            .args([
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "kpki-test"])
            .args([
                "--cert-file",
                &file("etcd-server.pem"),
                "--key-file",
                &file("etcd-server-key.pem"),
            ])
            .args(["--client-cert-auth", "--trusted-ca-file", &ca])
            .args([
                "--peer-cert-file",
                &file("etcd-peer.pem"),
                "--peer-key-file",
                &file("etcd-peer-key.pem"),
            ])
            .args(["--peer-client-cert-auth", "--peer-trusted-ca-file", &ca])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts")
    }

    /// The members' logs, for failure messages.
    pub fn logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.data.path().join(format!("{n}.log")))
                    .unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(8).collect();
                format!(
                    "--- {n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs etcdctl on host `i` against that host's member, as the client `cert`/`key`.
    pub fn ctl(&self, i: usize, ca: &Path, cert: &Path, key: &Path, args: &[&str]) -> Output {
        self.hosts
            .command(i, "etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("https://[{}]:2379", ADDRESSES[i])])
            .args(["--cacert", s(ca), "--cert", s(cert), "--key", s(key)])
            .args(["--dial-timeout", "2s", "--command-timeout", "4s"])
            .args(args)
            .output()
            .unwrap()
    }

    /// Waits until every member reports healthy through `client`.
    pub fn wait_healthy(&self, client: &Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = client.run(self, 0, &["endpoint", "health", "--cluster"]);
            let healthy = String::from_utf8_lossy(&out.stdout)
                .matches("is healthy")
                .count()
                + String::from_utf8_lossy(&out.stderr)
                    .matches("is healthy")
                    .count();
            if out.status.success() && healthy == NODES.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {out:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for child in &mut self.members {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client identity: CA bundle, certificate and key files.
pub struct Client {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Client {
    /// The client whose files are `pki/STEM.pem` and `pki/STEM-key.pem`, trusting the etcd CA.
    pub fn of(cluster: &Cluster, stem: &str) -> Client {
        Client {
            ca: cluster.pki("etcd/ca.pem"),
            cert: cluster.pki(&format!("{stem}.pem")),
            key: cluster.pki(&format!("{stem}-key.pem")),
        }
    }

    pub fn run(&self, etcd: &Etcd, host: usize, args: &[&str]) -> Output {
        etcd.ctl(host, &self.ca, &self.cert, &self.key, args)
    }
}

#[test]
fn three_member_ipv6_etcd_cluster_with_mutual_tls() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let etcd = Etcd::start(&cluster.pki(""));
    let apiserver = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&apiserver);

    let put = apiserver.run(&etcd, 0, &["put", "/kpki/test", "written-on-node-01"]);
    assert!(put.status.success(), "put: {put:?}\n{}", etcd.logs());
    let get = apiserver.run(&etcd, 2, &["get", "--print-value-only", "/kpki/test"]);
    assert!(get.status.success(), "get: {get:?}");
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "written-on-node-01"
    );

    let members = apiserver.run(&etcd, 1, &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&members.stdout)
            .matches(", started, ")
            .count(),
        3,
        "{members:?}"
    );

    let foreign = Client::of(&cluster, "kubernetes/admin");
    let refused = foreign.run(&etcd, 1, &["put", "/kpki/test", "from-another-ca"]);
    assert!(
        !refused.status.success(),
        "a client of the Kubernetes CA was accepted"
    );
    let get = apiserver.run(&etcd, 1, &["get", "--print-value-only", "/kpki/test"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "written-on-node-01"
    );
}
