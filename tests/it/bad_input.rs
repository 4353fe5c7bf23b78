//! Hostile and broken input beyond the config file: each case gives exit 2 and an error that
//! names what is wrong, changes no file, does not panic and prints nothing secret.

use std::path::Path;

use crate::harness::{Cluster, run_ok, s};
use crate::secrets::config_with_keys;

/// A damage done to an initialized cluster, the command then run, and what its error must say.
struct Case {
    what: &'static str,
    damage: fn(&Cluster),
    args: &'static [&'static str],
    needles: &'static [&'static str],
}

fn write(cluster: &Cluster, rel: &str, bytes: &[u8]) {
    std::fs::write(cluster.pki(rel), bytes).unwrap();
}

fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

fn sealed(cluster: &Cluster, rel: &str) -> std::path::PathBuf {
    cluster.path().join("secrets").join(format!("{rel}.age"))
}

const ADMIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/admin-identity.txt");

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "garbage instead of a CA key",
            damage: |c| {
                write(
                    c,
                    "kubernetes/ca-key.pem",
                    b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
                )
            },
            args: &["issue", "admin"],
            needles: &["pki/kubernetes/ca-key.pem", "not base64"],
        },
        Case {
            what: "a truncated CA key",
            damage: |c| truncate(&c.pki("etcd/ca-key.pem")),
            args: &["issue", "etcd-peer", "node-01"],
            needles: &["pki/etcd/ca-key.pem", "truncated"],
        },
        Case {
            what: "a certificate where a key is expected",
            damage: |c| {
                std::fs::copy(c.pki("kubernetes/ca.pem"), c.pki("kubernetes/ca-key.pem"))
                    .map(|_| ())
                    .unwrap()
            },
            args: &["issue", "scheduler"],
            needles: &[
                "pki/kubernetes/ca-key.pem",
                "must hold exactly one PKCS#8 private key",
            ],
        },
        Case {
            what: "a corrupted CA certificate",
            damage: |c| {
                write(
                    c,
                    "front-proxy/ca.pem",
                    b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                )
            },
            args: &["issue", "front-proxy-client"],
            needles: &["pki/front-proxy/ca.pem"],
        },
        Case {
            what: "a truncated CA certificate",
            damage: |c| truncate(&c.pki("kubernetes/ca.pem")),
            args: &["issue", "kubelet", "node-02"],
            needles: &["pki/kubernetes/ca.pem"],
        },
        Case {
            what: "a CA certificate that does not match its key",
            damage: |c| {
                std::fs::copy(c.pki("etcd/ca-key.pem"), c.pki("kubernetes/ca-key.pem"))
                    .map(|_| ())
                    .unwrap()
            },
            args: &["issue", "admin"],
            needles: &["pki/kubernetes/ca-key.pem", "changed outside kpki"],
        },
        Case {
            what: "a corrupted leaf key kept with --keep-key",
            damage: |c| write(c, "node-01/kubelet-key.pem", b"junk"),
            args: &["issue", "kubelet", "node-01", "--keep-key"],
            needles: &["pki/node-01/kubelet-key.pem", "text outside a PEM block"],
        },
        Case {
            what: "a truncated age file",
            damage: |c| {
                c.fresh_clone();
                truncate(&sealed(c, "kubernetes/ca-key.pem"));
            },
            args: &["issue", "admin", "-i", ADMIN],
            needles: &["secrets/kubernetes/ca-key.pem.age"],
        },
        Case {
            what: "a tampered age file (MAC failure)",
            damage: |c| {
                c.fresh_clone();
                let path = sealed(c, "etcd/ca-key.pem");
                let text = std::fs::read_to_string(&path).unwrap();
                let mut lines: Vec<String> = text.lines().map(String::from).collect();
                let body = &mut lines[3];
                let flipped = if body.starts_with('A') { "B" } else { "A" };
                body.replace_range(0..1, flipped);
                std::fs::write(&path, lines.join("\n") + "\n").unwrap();
            },
            args: &["issue", "apiserver-etcd-client", "-i", ADMIN],
            needles: &["secrets/etcd/ca-key.pem.age"],
        },
        Case {
            what: "the wrong identity",
            damage: Cluster::fresh_clone,
            args: &[
                "issue",
                "admin",
                "-i",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/fixtures/node-01_ssh_host_ed25519_key"
                ),
            ],
            needles: &[
                "secrets/kubernetes/ca-key.pem.age",
                "none of the given identities can decrypt it",
            ],
        },
        Case {
            what: "an identity file that does not exist",
            damage: Cluster::fresh_clone,
            args: &["issue", "admin", "-i", "/nonexistent/identity"],
            needles: &["/nonexistent/identity"],
        },
        Case {
            what: "an identity that is not a key",
            damage: Cluster::fresh_clone,
            args: &[
                "issue",
                "admin",
                "-i",
                concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/README.md"),
            ],
            needles: &[
                "fixtures/README.md",
                "not an age identity file or SSH private key",
            ],
        },
        Case {
            what: "an unknown profile",
            damage: |_| {},
            args: &["issue", "kube-controller"],
            needles: &["unknown profile \"kube-controller\""],
        },
        Case {
            what: "an unknown node",
            damage: |_| {},
            args: &["kubeconfig", "kubelet", "node-99"],
            needles: &["unknown node \"node-99\""],
        },
        Case {
            what: "a node directory that is a symlink out of the cluster",
            damage: |c| {
                let outside = c.path().with_extension("outside");
                run_ok("cp", &["-a", s(&c.pki("node-01")), s(&outside)]);
                std::fs::remove_dir_all(c.pki("node-01")).unwrap();
                std::os::unix::fs::symlink(&outside, c.pki("node-01")).unwrap();
            },
            args: &["issue", "kubelet", "node-01"],
            needles: &["pki/node-01", "is a symbolic link"],
        },
        Case {
            what: "a CA key that is a symlink out of the cluster",
            damage: |c| {
                let outside = c.path().with_extension("key");
                std::fs::rename(c.pki("etcd/ca-key.pem"), &outside).unwrap();
                std::os::unix::fs::symlink(&outside, c.pki("etcd/ca-key.pem")).unwrap();
            },
            args: &["issue", "etcd-server", "node-02"],
            needles: &["pki/etcd/ca-key.pem", "is a symbolic link"],
        },
        Case {
            what: "kpki's own state directory that is a symlink out of the cluster",
            damage: link_state_dir,
            args: &["issue", "kubelet", "node-01"],
            needles: &["pki/.kpki", "is a symbolic link"],
        },
        Case {
            what: "kpki's own state directory that is a symlink, to a reader",
            damage: link_state_dir,
            args: &["status"],
            needles: &["pki/.kpki", "is a symbolic link"],
        },
        Case {
            what: "a pki/.gitignore that would let keys into git",
            damage: |c| write(c, ".gitignore", b"# nothing ignored\n"),
            args: &["issue", "kubelet", "node-03"],
            needles: &["pki/node-03/kubelet-key.pem", "git would not ignore"],
        },
        Case {
            what: "a --dir that is a file",
            damage: |_| {},
            args: &["status", "--dir", "/etc/hostname"],
            needles: &["/etc/hostname"],
        },
        Case {
            what: "a bad --at date",
            damage: |_| {},
            args: &["status", "--at", "next week"],
            needles: &["--at", "\"next week\" is not a date"],
        },
        Case {
            what: "a bad --validity duration (refused by the command line parser)",
            damage: |_| {},
            args: &["issue", "admin", "--validity", "5x"],
            needles: &["--validity", "\"5x\" is not a duration"],
        },
        Case {
            what: "--finish without what to finish",
            damage: |_| {},
            args: &["rotate", "--finish"],
            needles: &["not provided", "--ca", "--service-account"],
        },
        Case {
            what: "--keep-key where no certificate is made",
            damage: |_| {},
            args: &["rotate", "--service-account", "--keep-key"],
            needles: &["--keep-key", "cannot be used with", "--service-account"],
        },
        Case {
            what: "--keep-key with a finish",
            damage: |_| {},
            args: &["rotate", "--ca", "etcd", "--finish", "--keep-key"],
            needles: &["--keep-key", "cannot be used with", "--finish"],
        },
        Case {
            what: "a misspelled flag",
            damage: |_| {},
            args: &["rotate", "--dry-rn"],
            needles: &["unexpected argument '--dry-rn'"],
        },
    ]
}

/// Moves kpki's state directory `pki/.kpki` out of the cluster and links it back.
fn link_state_dir(c: &Cluster) {
    let outside = c.path().with_extension("state");
    std::fs::rename(c.pki(".kpki"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, c.pki(".kpki")).unwrap();
}

/// One snapshot per run, of the cluster directory and of anything a symlink led out to.
fn state(cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = cluster
        .snapshot()
        .into_iter()
        .map(|(p, (b, ..))| (p, b))
        .collect();
    for outside in [
        cluster.path().with_extension("outside"),
        cluster.path().with_extension("key"),
        cluster.path().with_extension("state"),
    ] {
        for entry in walkdir::WalkDir::new(&outside)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
        {
            all.push((
                entry.path().display().to_string(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    all
}

#[test]
fn every_bad_input_is_refused_by_name_and_changes_nothing() {
    let cases = cases();
    assert!(cases.len() >= 19);
    for case in cases {
        let cluster = Cluster::initialized(&config_with_keys());
        (case.damage)(&cluster);
        let before = state(&cluster);
        let run = cluster.kpki(case.args);
        let (stderr, stdout) = (run.stderr(), run.stdout());
        let line = run.fails_with(2);
        assert!(line.starts_with("kpki: error: "), "{}: {stderr}", case.what);
        for needle in case.needles {
            assert!(
                line.contains(needle),
                "{}: {needle:?} not in {line:?}",
                case.what
            );
        }
        let said = stderr.lines().filter(|l| !l.starts_with("kpki: note: "));
        assert!(said.count() <= 2, "{}: {stderr}", case.what);
        for secret in ["PRIVATE KEY", "AGE-SECRET-KEY", "panicked"] {
            assert!(
                !stderr.contains(secret) && !stdout.contains(secret),
                "{}: printed {secret}",
                case.what
            );
        }
        let after = state(&cluster);
        let changed: Vec<&String> = after
            .iter()
            .filter(|f| !before.contains(f))
            .map(|(p, _)| p)
            .collect();
        assert!(before == after, "{}: files changed: {changed:?}", case.what);
        let _ = std::fs::remove_dir_all(cluster.path().with_extension("outside"));
        let _ = std::fs::remove_file(cluster.path().with_extension("key"));
    }
}

#[test]
fn an_expired_ca_is_not_used_to_sign() {
    let short = config_with_keys()
        .replace("ca_validity = \"10y\"", "ca_validity = \"2s\"")
        .replace("leaf_validity = \"1y\"", "leaf_validity = \"2s\"")
        .replace("renew_before = \"30d\"", "renew_before = \"1s\"");
    let cluster = Cluster::initialized(&short);
    let before = cluster.snapshot();
    // Three seconds later, by kpki's clock (a debug build's test switch).
    let run = cluster.kpki_env(
        &["issue", "kubelet", "node-01"],
        &[("KPKI_CLOCK_OFFSET", "3")],
    );
    let stderr = run.stderr();
    let line = run.fails_with(2);
    assert!(
        line.contains("the kubernetes CA (kubernetes/ca.pem) has expired"),
        "{line}"
    );
    assert!(stderr.contains("kpki rotate --ca kubernetes"), "{stderr}");
    assert!(before == cluster.snapshot());
}

/// A tmpfs mounted at a fresh directory; unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        run_ok(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                s(dir.path()),
            ],
        );
        Tmpfs(dir)
    }
}

impl Tmpfs {
    /// An initialized cluster directory on this tmpfs.
    fn initialized_cluster(&self) -> std::path::PathBuf {
        let dir = self.0.path().join("cluster");
        std::fs::create_dir_all(dir.join("pki")).unwrap();
        std::fs::write(dir.join("pki/kpki.toml"), config_with_keys()).unwrap();
        kpki_in(&dir, &["init", "-q"]).success();
        dir
    }
}

/// kpki on the cluster directory `dir`.
fn kpki_in(dir: &Path, args: &[&str]) -> crate::harness::Run {
    let mut all = vec!["--dir", s(dir)];
    all.extend_from_slice(args);
    crate::harness::kpki(&all)
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_read_only_cluster_directory_is_a_clear_error() {
    let fs = Tmpfs::new("8m");
    let dir = fs.initialized_cluster();
    let kpki = |args: &[&str]| kpki_in(&dir, args);
    run_ok("mount", &["-o", "remount,ro", s(fs.0.path())]);
    let line = kpki(&["issue", "kubelet", "node-02"]).fails_with(2);
    assert!(
        line.contains(s(&dir)) && line.contains("Read-only file system"),
        "{line}"
    );
    // A command that failed claims no file: not one "wrote" line before the error.
    let failed = kpki(&["rotate", "--all"]);
    assert_eq!(failed.code(), Some(2));
    assert_eq!(
        failed.stdout(),
        "",
        "a failed rotate reported success lines"
    );
    assert_eq!(kpki(&["status"]).code(), Some(0), "reading still works");
}

#[test]
fn a_full_disk_stops_a_command_before_it_writes() {
    let fs = Tmpfs::new("2m");
    let dir = fs.initialized_cluster();
    let kpki = |args: &[&str]| kpki_in(&dir, args);
    let filler = fs.0.path().join("filler");
    let free = {
        let out = run_ok("df", &["--output=avail", "-B1", s(fs.0.path())]);
        out.lines().last().unwrap().trim().parse::<u64>().unwrap()
    };
    std::fs::write(&filler, vec![0u8; (free - 48 * 1024) as usize]).unwrap();
    let snapshot = || {
        walkdir::WalkDir::new(&dir)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| (e.path().to_path_buf(), std::fs::read(e.path()).unwrap()))
            .collect::<Vec<_>>()
    };
    let before = snapshot();
    let line = kpki(&["issue", "node", "node-01"]).fails_with(2);
    assert!(
        line.contains("KiB free") && line.contains("nothing was written"),
        "{line}"
    );
    assert!(before == snapshot(), "a full disk left a half-done issue");
    std::fs::remove_file(&filler).unwrap();
    kpki(&["issue", "node", "node-01"]).success();
}
