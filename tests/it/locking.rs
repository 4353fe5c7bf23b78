//! Two kpki processes never interleave their writes on one cluster directory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, require, s};
use crate::secrets::config_with_keys;

/// Holds the cluster directory's lock with flock(1) for `seconds`.
fn hold_lock(cluster: &Cluster, seconds: u32) -> std::process::Child {
    let child = Command::new(require("flock"))
        .args([s(cluster.path()), "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child
}

#[test]
fn a_second_writer_waits_or_stops_with_a_clear_message() {
    let cluster = Cluster::initialized(&config_with_keys());
    let mut holder = hold_lock(&cluster, 3);
    let before = cluster.snapshot();
    let run = cluster.kpki_env(
        &["issue", "kubelet", "node-01"],
        &[("KPKI_LOCK_TIMEOUT", "1")],
    );
    let line = run.fails_with(2);
    assert!(
        line.contains("another kpki is working on this cluster directory"),
        "{line}"
    );
    assert!(before == cluster.snapshot());
    let started = Instant::now();
    cluster.kpki(&["issue", "kubelet", "node-01"]).success();
    assert!(
        started.elapsed() > Duration::from_millis(1000),
        "did not wait for the lock"
    );
    holder.wait().unwrap();
}

#[test]
fn concurrent_writers_leave_a_consistent_pki() {
    let cluster = Cluster::initialized(&config_with_keys());
    std::thread::scope(|scope| {
        let runs: Vec<_> = ["node-01", "node-02", "node-03", "node-04"]
            .iter()
            .map(|node| scope.spawn(|| cluster.kpki(&["issue", "kubelet", node]).success()))
            .chain([scope.spawn(|| cluster.kpki(&["rotate", "--all", "-q"]).success())])
            .collect();
        for run in runs {
            run.join().unwrap();
        }
    });
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(0), "{}", status.stdout());
}

#[test]
fn a_writer_holds_the_lock_while_it_writes() {
    let mut config = config_with_keys();
    for i in 5..300 {
        config.push_str(&format!("\n[[node]]\nname = \"w{i}\"\naddresses = [\"2001:db8::1:{i:x}\"]\nroles = [\"worker\"]\n"));
    }
    let cluster = Cluster::with_config(&config);
    let mut init = Command::new(env!("CARGO_BIN_EXE_kpki"))
        .args(["--dir", s(cluster.path()), "init", "-q"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cluster.pki("kubernetes/ca.pem").exists() {
        assert!(Instant::now() < deadline, "init did not start writing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let try_lock = || {
        Command::new(require("flock"))
            .args(["-n", s(cluster.path()), "true"])
            .status()
            .unwrap()
    };
    let during = try_lock();
    assert!(init.wait().unwrap().success());
    assert!(
        !during.success(),
        "the lock was free while init was writing"
    );
    assert!(try_lock().success(), "the lock was not released");
}
