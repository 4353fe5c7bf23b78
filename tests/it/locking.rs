//! Two kpki processes never interleave their writes on one cluster directory. The tests use a
//! handshake, not sleeps: with `KPKI_PAUSE_AFTER_LOCK=FILE` (debug builds), kpki creates FILE
//! once it holds the lock and waits until FILE is removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Cluster, require, s};
use crate::secrets::config_with_keys;

/// A kpki run that stops right after taking the lock, until released.
struct Held {
    child: Child,
    marker: PathBuf,
}

impl Held {
    /// Starts `args` on `cluster`; returns once it holds the lock (or, with `wait == false`, at
    /// once: it may be waiting for the lock).
    fn start(cluster: &Cluster, args: &[&str], name: &str, wait: bool) -> Held {
        let marker = cluster.path().with_extension(format!("{name}.locked"));
        let _ = std::fs::remove_file(&marker);
        let child = Command::new(env!("CARGO_BIN_EXE_kpki"))
            .arg("--dir")
            .arg(cluster.path())
            .args(args)
            .env("HOME", "/nonexistent")
            .env("KPKI_PAUSE_AFTER_LOCK", &marker)
            .env("KPKI_LOCK_TIMEOUT", "60")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let held = Held { child, marker };
        if wait {
            held.wait_locked();
        }
        held
    }

    /// Waits until the run holds the lock.
    fn wait_locked(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.marker.exists() {
            assert!(Instant::now() < deadline, "kpki never took the lock");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn locked(&self) -> bool {
        self.marker.exists()
    }

    /// Lets it go on, and waits for it to succeed.
    fn release(mut self) {
        std::fs::remove_file(&self.marker).unwrap();
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "{stderr}");
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

/// Whether `flock -n` can take the directory's lock right now.
fn lock_is_free(dir: &Path) -> bool {
    Command::new(require("flock"))
        .args(["-n", s(dir), "true"])
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_second_writer_waits_or_stops_with_a_clear_message() {
    let cluster = Cluster::initialized(&config_with_keys());
    let first = Held::start(&cluster, &["issue", "kubelet", "node-01"], "first", true);
    let before = cluster.snapshot();
    let run = cluster.kpki_env(
        &["issue", "kubelet", "node-02"],
        &[("KPKI_LOCK_TIMEOUT", "1")],
    );
    let line = run.fails_with(2);
    assert!(
        line.contains("another kpki is working on this cluster directory"),
        "{line}"
    );
    let reader = cluster.kpki_env(&["status"], &[("KPKI_LOCK_TIMEOUT", "1")]);
    assert_eq!(
        reader.code(),
        Some(2),
        "a reader ran while a writer held the lock"
    );
    assert!(
        before == cluster.snapshot(),
        "files changed while the lock was held"
    );
    // A second writer started now gets the lock only after the first one is done.
    let mut second = Held::start(&cluster, &["issue", "kubelet", "node-02"], "second", false);
    assert!(!second.locked() && !second.exited());
    first.release();
    second.wait_locked();
    second.release();
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
}

#[test]
fn concurrent_writers_take_turns_and_leave_a_consistent_pki() {
    let cluster = Cluster::initialized(&config_with_keys());
    let mut holder = Held::start(&cluster, &["rotate", "--all", "-q"], "rotate", true);
    let before = cluster.snapshot();
    let mut waiting: Vec<Held> = ["node-01", "node-02", "node-03", "node-04"]
        .iter()
        .map(|node| Held::start(&cluster, &["issue", "kubelet", node], node, false))
        .collect();
    assert!(
        waiting.iter().all(|w| !w.locked()),
        "a writer took a held lock"
    );
    assert!(
        before == cluster.snapshot(),
        "files changed while the lock was held"
    );
    assert!(!holder.exited());
    holder.release();
    // One at a time: whoever holds the lock is alone, and everything it writes is whole.
    while !waiting.is_empty() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let at = loop {
            if let Some(at) = waiting.iter().position(Held::locked) {
                break at;
            }
            assert!(Instant::now() < deadline, "no writer got the lock");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(
            waiting.iter().filter(|w| w.locked()).count(),
            1,
            "two writers hold the lock"
        );
        waiting.remove(at).release();
    }
    let verify = cluster.kpki(&["verify"]);
    assert_eq!(verify.code(), Some(0), "{}", verify.stdout());
    let status = cluster.kpki(&["status"]);
    assert_eq!(status.code(), Some(0), "{}", status.stdout());
}

#[test]
fn a_writer_holds_the_lock_while_it_writes() {
    let cluster = Cluster::with_config(&config_with_keys());
    let init = Held::start(&cluster, &["init", "-q"], "init", true);
    assert!(
        !lock_is_free(cluster.path()),
        "the lock was free while init held it"
    );
    init.release();
    assert!(lock_is_free(cluster.path()), "the lock was not released");
    assert!(cluster.pki("kubernetes/ca.pem").is_file());
}
