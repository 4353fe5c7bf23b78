//! A real three-member etcd cluster over IPv6 with mutual TLS, one network namespace per node,
//! using the certificates of `kpki init`. etcd checks each peer certificate's IP SANs against
//! the address the peer connects from, so a wrong SAN breaks the cluster here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, DEFAULT_CONFIG, s, while_running};
use crate::netns::Hosts;

pub const NODES: [&str; 3] = ["node-01", "node-02", "node-03"];
pub const ADDRESSES: [&str; 3] = ["2001:db8::1", "2001:db8::2", "2001:db8::3"];

/// The revocation list etcd reads, under `pki/`: DER, the one form etcd 3.5 and later parse.
pub const CRL: &str = "etcd/crl.der";

/// An etcd server the revocation tests run: Debian's etcd 3.4, or etcd 3.6 (`make k8s`).
#[derive(Debug, Clone, Copy)]
pub enum Version {
    V3_4,
    V3_6,
}

impl Version {
    /// The server program.
    pub fn program(self) -> PathBuf {
        match self {
            Version::V3_4 => crate::harness::require("etcd"),
            Version::V3_6 => crate::kube::programs().join("etcd"),
        }
    }
}

/// The files one member runs on.
pub struct MemberFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub peer_cert: PathBuf,
    pub peer_key: PathBuf,
}

impl MemberFiles {
    /// Node `i`'s files in kpki's layout under `pki`.
    pub fn kpki(pki: &Path, i: usize) -> MemberFiles {
        let file = |rel: &str| pki.join(NODES[i]).join(rel);
        MemberFiles {
            ca: pki.join("etcd/ca.pem"),
            cert: file("etcd-server.pem"),
            key: file("etcd-server-key.pem"),
            peer_cert: file("etcd-peer.pem"),
            peer_key: file("etcd-peer-key.pem"),
        }
    }

    /// The files in kubeadm's layout under `dir` (one node's /etc/kubernetes/pki).
    pub fn kubeadm(dir: &Path) -> MemberFiles {
        let file = |rel: &str| dir.join("etcd").join(rel);
        MemberFiles {
            ca: file("ca.crt"),
            cert: file("server.crt"),
            key: file("server.key"),
            peer_cert: file("peer.crt"),
            peer_key: file("peer.key"),
        }
    }
}

/// Running etcd members; killed on drop, before their hosts are removed.
pub struct Etcd {
    members: Vec<Child>,
    /// The etcd server program.
    program: PathBuf,
    pub hosts: Hosts,
    data: tempfile::TempDir,
}

impl Etcd {
    /// Starts one member per node with the node's certificates from `pki`.
    pub fn start(pki: &Path) -> Etcd {
        Etcd::start_program(pki, crate::harness::require("etcd"))
    }

    /// Starts one member per node of the etcd server `program` on the node's certificates.
    pub fn start_program(pki: &Path, program: PathBuf) -> Etcd {
        let files = (0..NODES.len())
            .map(|i| MemberFiles::kpki(pki, i))
            .collect();
        Etcd::start_on(files, program)
    }

    /// Starts member `i` of `program` on `files[i]`.
    pub fn start_on(files: Vec<MemberFiles>, program: PathBuf) -> Etcd {
        let mut etcd = Etcd::empty(program);
        for (i, files) in files.iter().enumerate() {
            let child = etcd.spawn(i, files, None);
            etcd.members.push(child);
        }
        etcd
    }

    /// Starts one member per node configured only by the environment `envs[i]` (as the etcd
    /// service of a NixOS node is: `ETCD_*` variables).
    pub fn start_with_env(
        envs: &[std::collections::BTreeMap<String, String>],
        program: PathBuf,
    ) -> Etcd {
        let mut etcd = Etcd::empty(program);
        for (i, env) in envs.iter().enumerate() {
            let child = etcd
                .hosts
                .command_at(i, &etcd.program)
                .env_clear()
                .envs(env)
                .stdout(Stdio::null())
                .stderr(etcd.log(i))
                .spawn()
                .expect("etcd starts");
            etcd.members.push(child);
        }
        etcd
    }

    fn empty(program: PathBuf) -> Etcd {
        Etcd {
            members: Vec::new(),
            program,
            hosts: Hosts::new(&ADDRESSES),
            data: tempfile::tempdir().unwrap(),
        }
    }

    /// Member `i`'s log file, for appending.
    fn log(&self, i: usize) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join(format!("{}.log", NODES[i])))
            .unwrap()
    }

    /// Member `i` on `files`, checking the revocation list `crl` if given.
    fn spawn(&self, i: usize, files: &MemberFiles, crl: Option<&Path>) -> Child {
        let (node, addr) = (NODES[i], ADDRESSES[i]);
        let ca = s(&files.ca);
        let initial: Vec<String> = NODES
            .iter()
            .zip(ADDRESSES)
            .map(|(n, a)| format!("{n}=https://[{a}]:2380"))
            .collect();
        let log = self.log(i);
        self.hosts
            .command_at(i, &self.program)
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
            .args(["--cert-file", s(&files.cert), "--key-file", s(&files.key)])
            .args(["--client-cert-auth", "--trusted-ca-file", ca])
            .args([
                "--peer-cert-file",
                s(&files.peer_cert),
                "--peer-key-file",
                s(&files.peer_key),
            ])
            .args(["--peer-client-cert-auth", "--peer-trusted-ca-file", ca])
            .args(crl.into_iter().flat_map(|crl| {
                ["--client-crl-file", "--peer-crl-file"]
                    .map(|flag| format!("{flag}={}", crl.display()))
            }))
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

    /// Restarts member `i` with the files now on disk (its data is kept).
    pub fn restart(&mut self, i: usize, pki: &Path) {
        self.restart_checking(i, pki, None);
    }

    /// Restarts member `i` with the files of `pki`, checking the revocation list `crl`.
    pub fn restart_checking(&mut self, i: usize, pki: &Path, crl: Option<&Path>) {
        self.restart_on(i, &MemberFiles::kpki(pki, i), crl);
    }

    /// Restarts member `i` on `files`, checking the revocation list `crl`.
    pub fn restart_on(&mut self, i: usize, files: &MemberFiles, crl: Option<&Path>) {
        let old = &mut self.members[i];
        let _ = old.kill();
        let _ = old.wait();
        self.members[i] = self.spawn(i, files, crl);
    }

    /// Starts `program` on every node, each on its own copy of its files from `pki` (as a
    /// deploy puts them on the node), checking the revocation list when the copy has one.
    pub fn start_deployed(pki: &Path, program: PathBuf) -> Etcd {
        let mut etcd = Etcd::empty(program);
        for i in 0..NODES.len() {
            let (files, crl) = etcd.deploy(i, pki);
            let child = etcd.spawn(i, &files, crl.as_deref());
            etcd.members.push(child);
        }
        etcd
    }

    /// Deploys `pki` to node `i` and restarts its member on its new copy: one step of a
    /// rolling restart. The other members keep running on the copies they have.
    pub fn redeploy(&mut self, i: usize, pki: &Path) {
        let (files, crl) = self.deploy(i, pki);
        self.restart_on(i, &files, crl.as_deref());
    }

    /// Node `i`'s own copy of the files its member reads, taken from `pki` now, each replaced
    /// by a rename: the CA bundle, its certificates and the revocation list etcd reads
    /// (`etcd/crl.der`, which `kpki.nix` wires). Returns the member's files and the list.
    pub fn deploy(&self, i: usize, pki: &Path) -> (MemberFiles, Option<PathBuf>) {
        let root = self.data.path().join("deployed").join(NODES[i]);
        let node = NODES[i];
        let rels = [
            "etcd/ca.pem".to_string(),
            CRL.to_string(),
            format!("{node}/etcd-server.pem"),
            format!("{node}/etcd-server-key.pem"),
            format!("{node}/etcd-peer.pem"),
            format!("{node}/etcd-peer-key.pem"),
        ];
        for rel in &rels {
            let (from, to) = (pki.join(rel), root.join(rel));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            if !from.exists() {
                let _ = std::fs::remove_file(&to);
                continue;
            }
            let temp = to.with_extension("deploying");
            std::fs::copy(&from, &temp).unwrap();
            std::fs::rename(&temp, &to).unwrap();
        }
        let crl = root.join(CRL);
        (MemberFiles::kpki(&root, i), crl.exists().then_some(crl))
    }

    /// Member `i`'s whole log.
    pub fn log_of(&self, i: usize) -> String {
        std::fs::read_to_string(self.data.path().join(format!("{}.log", NODES[i])))
            .unwrap_or_default()
    }

    /// Every member's whole log.
    pub fn full_logs(&self) -> String {
        NODES
            .iter()
            .map(|n| {
                std::fs::read_to_string(self.data.path().join(format!("{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
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

    /// Runs etcdctl on host `host` against that host's member.
    pub fn run(&self, etcd: &Etcd, host: usize, args: &[&str]) -> Output {
        let endpoint = format!("https://[{}]:2379", ADDRESSES[host]);
        self.ctl(&etcd.hosts.ns(host), &endpoint, args)
    }

    /// Runs etcdctl in namespace `ns` against `endpoints` (comma-separated).
    pub fn ctl(&self, ns: &str, endpoints: &str, args: &[&str]) -> Output {
        Command::new(crate::harness::require("ip"))
            .args(["netns", "exec", ns])
            .arg(crate::harness::require("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoints])
            .args([
                "--cacert",
                s(&self.ca),
                "--cert",
                s(&self.cert),
                "--key",
                s(&self.key),
            ])
            .args(["--dial-timeout", "2s", "--command-timeout", "4s"])
            .args(args)
            .output()
            .unwrap()
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

/// Runs `steps` while `client` writes a key under `prefix` through `endpoints` from namespace
/// `ns` every 100 ms, retrying a request cut off by a restarting member (as the apiserver
/// does). `steps` gets a function that waits until a few more writes went through. Returns how
/// many writes were acknowledged and the errors of those that failed.
pub fn while_writing(
    client: &Client,
    ns: &str,
    endpoints: &str,
    prefix: &str,
    steps: impl FnOnce(&dyn Fn()),
) -> (usize, Vec<String>) {
    let attempt = |n: usize| {
        let key = format!("{prefix}{n:05}");
        let errors: Vec<String> = (0..3)
            .map_while(|attempt| {
                if attempt > 0 {
                    std::thread::sleep(Duration::from_millis(500));
                }
                let out = client.ctl(ns, endpoints, &["put", &key, "x"]);
                (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
            })
            .collect();
        if errors.len() < 3 {
            Ok(())
        } else {
            Err(errors)
        }
    };
    while_running(attempt, steps)
}

/// Copies a client's files aside, so they outlive a rotation.
pub fn keep_copy(cluster: &Cluster, client: &Client) -> Client {
    let copy = |p: &Path, name: &str| {
        let to = cluster.path().join(name);
        std::fs::copy(p, &to).unwrap();
        to
    };
    Client {
        ca: copy(&client.ca, "old-etcd-ca.pem"),
        cert: copy(&client.cert, "old-client.pem"),
        key: copy(&client.key, "old-client-key.pem"),
    }
}

#[test]
fn etcd_ca_rotation_keeps_every_member_through_rolling_restarts() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let pki = cluster.pki("");
    let mut etcd = Etcd::start(&pki);
    let client = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&client);
    let old_client = keep_copy(&cluster, &client);
    let endpoints: Vec<String> = ADDRESSES
        .iter()
        .map(|a| format!("https://[{a}]:2379"))
        .collect();
    let endpoints = endpoints.join(",");
    let writer_ns = etcd.hosts.ns(0);
    let (written, failures) =
        while_writing(&client, &writer_ns, &endpoints, "/rotation/", |progress| {
            progress();
            for step in [
                ["rotate", "--ca", "etcd"].as_slice(),
                &["rotate", "--ca", "etcd", "--finish", "--no-live-check"],
            ] {
                cluster.kpki(step).success();
                progress();
                for i in 0..NODES.len() {
                    etcd.restart(i, &pki);
                    etcd.wait_healthy(&client);
                    progress();
                }
            }
        });
    assert!(
        failures.is_empty(),
        "writes failed during the rotation: {failures:?}\n{}",
        etcd.logs()
    );
    let rejected = etcd.full_logs();
    for needle in [
        "unknown authority",
        "bad certificate",
        "certificate required",
    ] {
        assert!(
            !rejected.contains(needle),
            "a member rejected a peer or client: {needle}\n{}",
            etcd.logs()
        );
    }
    let keys = client.run(&etcd, 2, &["get", "--prefix", "/rotation/", "--keys-only"]);
    let keys = String::from_utf8_lossy(&keys.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(
        keys, written,
        "every acknowledged write is readable on another member"
    );
    let refused = old_client.run(&etcd, 1, &["put", "/rotation/old", "x"]);
    assert!(
        !refused.status.success(),
        "a client of the old CA was accepted after finish"
    );
    let members = client.run(&etcd, 1, &["member", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&members.stdout)
            .matches(", started, ")
            .count(),
        3
    );
}
