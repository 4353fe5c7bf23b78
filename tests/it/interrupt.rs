//! Interrupted for real: kpki killed (SIGKILL) at spread-out moments of its biggest commands on
//! a 300-node cluster kept in git. After each kill, `git add -A` stages no private key, a reader
//! reports the leftovers (exit 1) and names the command that clears them, and that command does.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{Cluster, commit_all, git, kpki_command, s};
use crate::import::kubeadm_pki;
use crate::output::nodes;
use crate::secrets::admin_recipient;

/// The fleet: three control-plane/etcd nodes and workers.
const FLEET: usize = 300;

/// How many kills per command at fractions of its whole run.
const FRACTIONS: u32 = 6;

/// Kills during the commit: once `pki/.kpki/tmp/` holds this many files written aside.
const IN_COMMIT: [usize; 3] = [1, 100, 400];

/// Runs kpki with `args` on `cluster` and kills it with SIGKILL once `when` says so.
fn kill_when(cluster: &Cluster, args: &[&str], when: &dyn Fn(&Instant) -> bool) {
    let mut child = kpki_command()
        .arg("--dir")
        .arg(cluster.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !when(&start) {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The staged files holding a private key after `git add -A`.
fn staged_keys(cluster: &Cluster) -> Vec<String> {
    git(cluster, &["add", "-A"]);
    git(cluster, &["diff", "--cached", "--name-only", "-z"])
        .split('\0')
        .filter(|f| !f.is_empty())
        .filter(|f| {
            std::fs::read(cluster.path().join(f))
                .is_ok_and(|bytes| bytes.windows(11).any(|w| w == b"PRIVATE KEY"))
        })
        .map(String::from)
        .collect()
}

/// Whether a kill left files of an unfinished commit in `pki/.kpki/tmp/`.
fn left_temporaries(cluster: &Cluster) -> bool {
    temporaries(&cluster.pki(".kpki/tmp")) > 0
}

/// The files in `temps` and in its worker directories.
fn temporaries(temps: &std::path::Path) -> usize {
    let entries = |dir: &std::path::Path| -> Vec<std::fs::DirEntry> {
        std::fs::read_dir(dir).map_or(Vec::new(), |d| d.flatten().collect())
    };
    entries(temps)
        .iter()
        .map(|e| match e.file_type().is_ok_and(|t| t.is_dir()) {
            true => entries(&e.path()).len(),
            false => 1,
        })
        .sum()
}

/// Checks one interrupted copy: no key staged; a reader either completes a journaled change
/// or says what was left and how to clear it; `init` clears it. Returns whether anything was
/// left.
fn check(cluster: &Cluster, what: &str) -> bool {
    let staged = staged_keys(cluster);
    assert!(
        staged.is_empty(),
        "{what}: git add -A staged private keys: {staged:?}"
    );
    let left = left_temporaries(cluster);
    if left {
        let journaled = cluster.pki(".kpki/journal").exists();
        let status = cluster.kpki(&["status"]);
        let completed = journaled && !left_temporaries(cluster);
        if !completed {
            assert_eq!(status.code(), Some(1), "{what}: {}", status.stderr());
            assert!(
                status
                    .stderr()
                    .contains("interrupted kpki run left temporary files in pki/.kpki/tmp")
                    && status.stderr().contains("run kpki init"),
                "{what}: {}",
                status.stderr()
            );
        }
        cluster.kpki(&["init"]).success();
        assert!(!left_temporaries(cluster), "{what}: init left them");
        assert!(staged_keys(cluster).is_empty(), "{what}: after init");
    }
    // The signing step is part of the commit: whatever the kill left is a manifest this clone
    // trusts, the old one or the new one, never a torn or unsigned one.
    let status = cluster.kpki(&["status"]);
    assert_ne!(status.code(), Some(2), "{what}: {}", status.stderr());
    for problem in [
        "signature",
        "not signed",
        "older than generation",
        "is missing, but",
    ] {
        assert!(
            !status.stderr().contains(problem),
            "{what}: {}",
            status.stderr()
        );
    }
    left
}

/// Kills `args` on copies of `template` at spread-out moments: fractions of a whole run, and
/// moments into its commit. At least one kill must land while temporary files exist; on a busy
/// machine a short commit can slip between the polls, so the sweep is tried up to three times
/// (every kill that lands is checked all the same).
fn sweep(template: &Cluster, args: &[&str]) {
    let interrupted = (0..3).map(|_| sweep_once(template, args)).find(|&n| n > 0);
    assert!(
        interrupted.is_some(),
        "{args:?}: no kill landed while temporary files existed"
    );
}

/// One sweep of [`sweep`]; returns how many kills left temporary files.
fn sweep_once(template: &Cluster, args: &[&str]) -> usize {
    let whole = {
        let copy = template.copy();
        let start = Instant::now();
        copy.kpki(args).success();
        start.elapsed()
    };
    let mut interrupted = 0;
    for k in 1..=FRACTIONS {
        let at = whole * k / (FRACTIONS + 1);
        let copy = template.copy();
        kill_when(&copy, args, &|start| start.elapsed() >= at);
        interrupted += usize::from(check(&copy, &format!("{args:?} killed after {at:?}")));
    }
    for files in IN_COMMIT {
        let copy = template.copy();
        let temps = copy.pki(".kpki/tmp");
        kill_when(&copy, args, &|_| temporaries(&temps) >= files);
        let what = format!("{args:?} killed with {files} files written aside");
        interrupted += usize::from(check(&copy, &what));
    }
    interrupted
}

/// A 300-node cluster, initialized and committed to git.
fn fleet(config: &str) -> Cluster {
    let cluster = Cluster::initialized(config);
    commit_all(&cluster);
    cluster
}

#[test]
fn no_kill_leaves_a_private_key_that_git_stages_rotate_ca_and_issue() {
    let template = fleet(&nodes(FLEET));
    sweep(&template, &["rotate", "--ca", "kubernetes"]);
    sweep(&template, &["issue", "node", "node-010"]);
}

#[test]
fn no_kill_leaves_a_private_key_that_git_stages_init_and_prune() {
    let template = fleet(&nodes(FLEET - 40));
    template.write_config(&nodes(FLEET));
    sweep(&template, &["init"]);
    let template = fleet(&nodes(FLEET));
    template.write_config(&nodes(FLEET - 40));
    sweep(&template, &["rotate", "--prune"]);
}

#[test]
fn no_kill_leaves_a_private_key_that_git_stages_import() {
    // An admin key in the config: a kill before the first commit leaves no generated identity.
    let config = format!(
        "{}[secrets]\nadmins = [\"{}\"]\n",
        nodes(FLEET),
        admin_recipient()
    );
    let template = Cluster::with_config(&config);
    commit_all(&template);
    // kubeadm's files live on the node, outside the cluster repository.
    let node = tempfile::tempdir().unwrap();
    let kubeadm = kubeadm_pki(node.path(), &["node-001", "node-002", "node-003"]);
    let dir = kubeadm.join("node-001");
    sweep(
        &template,
        &["import", "kubeadm", s(&dir), "--node", "node-001"],
    );
}
