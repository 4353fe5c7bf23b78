//! `kpki rollout` against real servers in network namespaces: an etcd CA rotation rolled one
//! member at a time (each on its own copy of its files), the gate on `--finish`, and servers
//! that present what kpki never issued or misbehave on purpose.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::etcd::{Client, Etcd, Version};
use crate::harness::{Cluster, DEFAULT_CONFIG, Run, openssl_self_signed, run_ok, s};
use crate::netns::Hosts;

/// kpki run on host `i` of `hosts` (an admin machine on the nodes' network).
pub fn kpki_at(hosts: &Hosts, i: usize, cluster: &Cluster, args: &[&str]) -> Run {
    let mut cmd = hosts.command_at(i, Path::new(env!("CARGO_BIN_EXE_kpki")));
    cmd.env_remove("KPKI_IDENTITY")
        .env("HOME", "/nonexistent")
        .arg("--dir")
        .arg(cluster.path())
        .args(args);
    let what = format!("{cmd:?}");
    Run::from_output(cmd.output().unwrap(), what)
}

/// One field of the etcd rows of a `rollout --json` report, by node, for `endpoint`.
pub fn column(json: &str, cluster: &Cluster, endpoint: &str, field: &str) -> Vec<String> {
    let file = cluster.path().with_extension("rollout.json");
    std::fs::write(&file, json).unwrap();
    let filter = format!(".rows[] | select(.endpoint == \"{endpoint}\") | {field}");
    run_ok("jq", &["-r", &filter, s(&file)])
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_rolling_etcd_ca_rotation_is_reported_exactly_and_gates_its_finish() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let pki = cluster.pki("");
    let mut etcd = Etcd::start_deployed(&pki, Version::V3_4.program());
    let client = Client::of(&cluster, "etcd/apiserver-etcd-client");
    etcd.wait_healthy(&client);
    let rollout = |etcd: &Etcd| kpki_at(&etcd.hosts, 0, &cluster, &["rollout", "--json"]);

    let before = rollout(&etcd);
    assert_eq!(
        before.code(),
        Some(1),
        "the apiservers and kubelets are down"
    );
    let json = before.stdout();
    for endpoint in ["etcd-client", "etcd-peer"] {
        assert_eq!(
            column(&json, &cluster, endpoint, ".verdict"),
            ["current"; 3]
        );
        assert_eq!(column(&json, &cluster, endpoint, ".trusts"), ["current"; 3]);
    }
    assert_eq!(
        column(&json, &cluster, "apiserver", ".verdict"),
        ["refused"; 3]
    );

    cluster.kpki(&["rotate", "--ca", "etcd"]).success();
    etcd.redeploy(0, &pki);
    etcd.wait_healthy(&client);
    let json = rollout(&etcd).stdout();
    for endpoint in ["etcd-client", "etcd-peer"] {
        assert_eq!(
            column(&json, &cluster, endpoint, ".verdict"),
            ["current", "behind", "behind"],
            "{json}"
        );
        assert_eq!(
            column(&json, &cluster, endpoint, ".trusts"),
            ["new-and-old", "old-only", "old-only"]
        );
        assert_eq!(
            column(&json, &cluster, endpoint, ".serves.is"),
            ["current", "old", "old"]
        );
    }
    // A clone with no identity and no pki/ (a CI job) sees the same from the signed manifest.
    let public = cluster.copy();
    public.fresh_clone();
    let identity = public.pki("admin.agekey");
    let admin = run_ok("age-keygen", &["-y", s(&identity)]);
    std::fs::remove_file(&identity).unwrap();
    let config = std::fs::read_to_string(public.pki("kpki.toml")).unwrap();
    public.write_config(&config.replacen(
        "admins = []",
        &format!("admins = [\"{}\"]", admin.trim()),
        1,
    ));
    let seen = kpki_at(&etcd.hosts, 0, &public, &["rollout", "--json"]);
    assert!(public.pem_files().is_empty(), "rollout decrypted into pki/");
    for endpoint in ["etcd-client", "etcd-peer"] {
        for field in [".verdict", ".trusts", ".serves.is"] {
            assert_eq!(
                column(&seen.stdout(), &public, endpoint, field),
                column(&json, &cluster, endpoint, field),
                "{endpoint} {field}: {}",
                seen.stderr()
            );
        }
    }
    let line = kpki_at(
        &etcd.hosts,
        0,
        &cluster,
        &["rotate", "--ca", "etcd", "--finish"],
    )
    .fails_with(2);
    assert!(
        line.contains("node-02 etcd") && line.contains("node-03 etcd") && !line.contains("node-01"),
        "{line}"
    );
    // From where no node answers, finishing needs --force.
    let line = cluster
        .kpki(&["rotate", "--ca", "etcd", "--finish"])
        .fails_with(2);
    assert!(line.contains("did not answer"), "{line}");

    for i in [1, 2] {
        etcd.redeploy(i, &pki);
        etcd.wait_healthy(&client);
    }
    let json = rollout(&etcd).stdout();
    for endpoint in ["etcd-client", "etcd-peer"] {
        assert_eq!(
            column(&json, &cluster, endpoint, ".verdict"),
            ["current"; 3]
        );
        assert_eq!(
            column(&json, &cluster, endpoint, ".trusts"),
            ["new-and-old"; 3]
        );
    }
    let out = kpki_at(
        &etcd.hosts,
        0,
        &cluster,
        &["rotate", "--ca", "etcd", "--finish"],
    )
    .success()
    .stderr();
    assert!(
        out.contains("the running cluster is ready: 6 endpoints"),
        "{out}"
    );
    for i in 0..3 {
        etcd.redeploy(i, &pki);
        etcd.wait_healthy(&client);
    }
    let json = rollout(&etcd).stdout();
    assert_eq!(
        column(&json, &cluster, "etcd-client", ".trusts"),
        ["current"; 3]
    );
    let status = cluster.kpki(&["status"]).stdout();
    assert!(
        status.contains("rollout: 12 endpoints: 6 current"),
        "{status}"
    );
}

/// A listener on host `i` of `hosts` at `address`, port 10250 (the kubelet's).
fn listen_at(hosts: &Hosts, i: usize, address: &str) -> TcpListener {
    let ns = hosts.ns(i);
    let address = format!("[{address}]:10250");
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        TcpListener::bind(address).unwrap()
    })
    .join()
    .unwrap()
}

/// Serves every connection to `listener` with `serve`, on a thread of its own.
fn serve(listener: TcpListener, serve: fn(std::net::TcpStream)) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(stream));
        }
    });
}

#[test]
fn unknown_and_hostile_servers_are_said_as_such_in_bounded_time() {
    // Five workers and the admin's machine, beside the example cluster's nodes.
    const ADDRESSES: [&str; 6] = [
        "2001:db8::a1",
        "2001:db8::a2",
        "2001:db8::a3",
        "2001:db8::a4",
        "2001:db8::a5",
        "2001:db8::a9",
    ];
    let mut config = DEFAULT_CONFIG.to_string();
    for (i, address) in ADDRESSES[..5].iter().enumerate() {
        config += &format!(
            "\n[[node]]\nname = \"worker-{i}\"\naddresses = [\"{address}\"]\nroles = [\"worker\"]\n"
        );
    }
    let cluster = Cluster::initialized(&config);
    let hosts = Hosts::new(&ADDRESSES);
    // Silent: accepts and never answers (a slow loris on the server's side).
    serve(listen_at(&hosts, 0, ADDRESSES[0]), |s| {
        std::thread::sleep(Duration::from_secs(30));
        drop(s);
    });
    // Garbage instead of a ServerHello.
    serve(listen_at(&hosts, 1, ADDRESSES[1]), |mut s| {
        let _ = s.write_all(&[0x16, 0x03, 0x03, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]);
        let _ = s.write_all(&[0xff; 4096]);
    });
    // An endless stream of maximal records.
    serve(listen_at(&hosts, 2, ADDRESSES[2]), |mut s| {
        let mut record = vec![0x16, 0x03, 0x03, 0x40, 0x00];
        record.resize(5 + 0x4000, 0x0b);
        while s.write_all(&record).is_ok() {}
    });
    // A real TLS server with a certificate kpki never issued.
    let (cert, key) = (
        cluster.path().with_extension("other.pem"),
        cluster.path().with_extension("other-key.pem"),
    );
    openssl_self_signed(&cert, &key, "/CN=someone-else", 1, &[]);
    let foreign = tls_server(&hosts, 3, ADDRESSES[3], &cert, &key, &[]);
    // The same certificate followed by a chain of 12 MB (30,000 copies).
    let pem = std::fs::read_to_string(&cert).unwrap();
    let chain = cluster.path().with_extension("huge-chain.pem");
    std::fs::write(&chain, pem.repeat(30_000)).unwrap();
    let huge = tls_server(
        &hosts,
        4,
        ADDRESSES[4],
        &cert,
        &key,
        &["-cert_chain", s(&chain)],
    );

    let nodes = ["worker-0", "worker-1", "worker-2", "worker-3", "worker-4"];
    let start = Instant::now();
    let args = [&["rollout", "--json", "--timeout", "2s"][..], &nodes].concat();
    // GNU time reports kpki's peak memory (`ip netns exec` becomes kpki).
    let mut cmd = hosts.command_at(5, &crate::harness::require("time"));
    cmd.args(["-f", "peak %M KiB"])
        .arg(env!("CARGO_BIN_EXE_kpki"))
        .arg("--dir")
        .arg(cluster.path())
        .args(&args);
    let run = Run::from_output(cmd.output().unwrap(), format!("{cmd:?}"));
    let took = start.elapsed();
    for mut server in [foreign, huge] {
        let _ = server.kill();
        let _ = server.wait();
    }
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    let verdicts = column(&run.stdout(), &cluster, "kubelet", ".verdict");
    assert_eq!(
        verdicts,
        [
            "timed-out",
            "unreachable",
            "unreachable",
            "unknown",
            "unreachable"
        ],
        "{}",
        run.stdout()
    );
    let details = column(&run.stdout(), &cluster, "kubelet", ".detail");
    assert!(details[4].contains("TooLarge"), "{details:?}");
    let stderr = run.stderr();
    let peak: u64 = stderr
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("peak ")?.strip_suffix(" KiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {stderr}"));
    assert!(peak < 64 * 1024, "kpki peaked at {peak} KiB");
}

/// `openssl s_server` on host `i` at `address`, port 10250, serving `cert` (and `extra`
/// arguments), once it listens.
fn tls_server(
    hosts: &Hosts,
    i: usize,
    address: &str,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> std::process::Child {
    let mut server = hosts.command_at(i, &crate::harness::require("openssl"));
    server
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("[{address}]:10250"),
        ])
        .args(["-cert", s(cert), "-key", s(key)])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let server = server.spawn().unwrap();
    let ns = hosts.ns(i);
    let port = format!("[{address}]:10250");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !run_ok("ip", &["netns", "exec", &ns, "ss", "-Htln"]).contains(&port) {
        assert!(Instant::now() < deadline, "openssl s_server on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}
