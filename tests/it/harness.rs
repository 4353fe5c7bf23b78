//! Temp cluster directories, the kpki binary, and the real programs the tests drive.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The default config, as `kpki init` writes it.
pub const DEFAULT_CONFIG: &str = include_str!("../../src/config/default.toml");

/// A temporary cluster directory, removed on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    /// An empty cluster directory.
    pub fn new() -> Cluster {
        Cluster {
            dir: tempfile::Builder::new()
                .prefix("kpki-test-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A cluster directory whose `pki/kpki.toml` is `config`.
    pub fn with_config(config: &str) -> Cluster {
        let c = Cluster::new();
        c.write_config(config);
        c
    }

    /// A cluster on which `kpki init` has run successfully.
    pub fn initialized(config: &str) -> Cluster {
        let c = Cluster::with_config(config);
        c.kpki(&["init"]).success();
        c
    }

    /// A new cluster directory holding a copy of this one.
    pub fn copy(&self) -> Cluster {
        let copy = Cluster::new();
        run_ok(
            "cp",
            &["-a", &format!("{}/.", s(self.path())), s(copy.path())],
        );
        copy
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path under `pki/`.
    pub fn pki(&self, rel: &str) -> PathBuf {
        self.path().join("pki").join(rel)
    }

    /// Replaces `pki/kpki.toml`.
    pub fn write_config(&self, config: &str) {
        std::fs::create_dir_all(self.pki("")).unwrap();
        std::fs::write(self.pki("kpki.toml"), config).unwrap();
    }

    /// Runs kpki on this cluster directory.
    pub fn kpki(&self, args: &[&str]) -> Run {
        self.kpki_env(args, &[])
    }

    /// Runs kpki on this cluster directory with extra environment variables.
    pub fn kpki_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = kpki_command();
        cmd.arg("--dir")
            .arg(self.path())
            .args(args)
            .envs(env.iter().copied());
        Run::of(cmd)
    }

    /// Every file below the cluster directory with its bytes, mode, inode and mtime.
    pub fn snapshot(&self) -> BTreeMap<String, (Vec<u8>, u32, u64, i64)> {
        walkdir::WalkDir::new(self.path())
            .into_iter()
            .map(Result::unwrap)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                let meta = e.metadata().unwrap();
                let rel = e.path().strip_prefix(self.path()).unwrap();
                (
                    rel.display().to_string(),
                    (
                        std::fs::read(e.path()).unwrap(),
                        meta.permissions().mode() & 0o7777,
                        meta.ino(),
                        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                    ),
                )
            })
            .collect()
    }

    /// Deletes every plaintext file under `pki/` but the config, and kpki's local record
    /// (git ignores both): only `secrets/` is left, as in a fresh clone.
    pub fn fresh_clone(&self) {
        for file in self.pem_files() {
            std::fs::remove_file(self.pki(&file)).unwrap();
        }
        let _ = std::fs::remove_dir_all(self.pki(".kpki"));
    }

    /// The snapshot without kpki's local record, which any run may refresh.
    pub fn committed(&self) -> BTreeMap<String, (Vec<u8>, u32, u64, i64)> {
        let mut files = self.snapshot();
        files.retain(|path, _| !path.starts_with("pki/.kpki/"));
        files
    }

    /// Temporary files (`.kpki-*`) left anywhere below the cluster directory.
    pub fn temp_files(&self) -> Vec<String> {
        self.snapshot()
            .into_keys()
            .filter(|p| p.contains(".kpki-"))
            .collect()
    }

    /// The relative paths of every `.pem` file under `pki/`.
    pub fn pem_files(&self) -> Vec<String> {
        self.snapshot()
            .into_keys()
            .filter(|p| p.starts_with("pki/") && p.ends_with(".pem"))
            .map(|p| p["pki/".len()..].to_string())
            .collect()
    }
}

/// Runs kpki with exactly `args`, without an identity from the environment.
pub fn kpki(args: &[&str]) -> Run {
    let mut cmd = kpki_command();
    cmd.args(args);
    Run::of(cmd)
}

/// The kpki binary, hermetic: no identity from the environment, no ~/.ssh/id_ed25519 of the
/// machine.
pub fn kpki_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kpki"));
    cmd.env_remove("KPKI_IDENTITY").env("HOME", "/nonexistent");
    cmd
}

/// A finished process and assertions on it.
pub struct Run {
    pub output: Output,
    what: String,
}

impl Run {
    /// A process already run, described as `what`.
    pub fn from_output(output: Output, what: String) -> Run {
        Run { output, what }
    }

    fn of(mut cmd: Command) -> Run {
        let what = format!("{cmd:?}");
        let output = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        Run { output, what }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// Asserts exit 0.
    pub fn success(self) -> Run {
        assert!(
            self.output.status.success(),
            "{} failed ({:?}):\n{}\n{}",
            self.what,
            self.code(),
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Asserts that a check found something to act on (exit 1) and returns what it printed.
    pub fn finds(self) -> String {
        assert_eq!(
            self.code(),
            Some(1),
            "{}: expected exit 1:\n{}\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Asserts a failure with exit `code` and returns the error line.
    pub fn fails_with(self, code: i32) -> String {
        assert_eq!(
            self.code(),
            Some(code),
            "{}: expected exit {code}:\n{}\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        );
        // The error line; warnings may come before it.
        let stderr = self.stderr();
        stderr
            .lines()
            .find(|l| l.starts_with("kpki: error:"))
            .or_else(|| stderr.lines().next())
            .unwrap_or_default()
            .to_string()
    }
}

/// The full path of a real program the tests need. A missing one fails the test: in CI nothing
/// may be skipped, and .ci/run installs them all.
pub fn require(program: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{program}` is required by this test; install it (see .ci/run)"))
}

/// Runs a real program and returns its output, whatever its exit status.
pub fn run(program: &str, args: &[&str]) -> Output {
    let path = require(program);
    Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// Runs a real program that must succeed and returns its stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A path as `&str`, for program arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `git` in the cluster directory; its stdout.
pub fn git(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["-C", s(cluster.path())];
    all.extend_from_slice(args);
    run_ok("git", &all)
}

/// A git repository in the cluster directory with everything committed.
pub fn commit_all(cluster: &Cluster) {
    git(cluster, &["init", "-q"]);
    commit_all_as(cluster, "pki");
}

/// Commits everything in the cluster's repository with `message`.
pub fn commit_all_as(cluster: &Cluster, message: &str) {
    git(cluster, &["add", "-A"]);
    git(
        cluster,
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            message,
        ],
    );
}

/// A fixture file (test-only keys).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Verifies `pki/LEAF.pem` with openssl under the CA certificate decrypted from
/// `secrets/CA/ca.pem.age` by the age CLI with the test admin identity.
pub fn verify_under_sealed_ca(cluster: &Cluster, ca: &str, leaf: &str) {
    let sealed = cluster.path().join(format!("secrets/{ca}/ca.pem.age"));
    let ca_pem = run_ok(
        "age",
        &["-d", "-i", s(&fixture("admin-identity.txt")), s(&sealed)],
    );
    let ca_file = cluster.path().join(format!("{ca}-ca-from-secrets.pem"));
    std::fs::write(&ca_file, ca_pem).unwrap();
    let leaf = cluster.pki(&format!("{leaf}.pem"));
    run_ok("openssl", &["verify", "-CAfile", s(&ca_file), s(&leaf)]);
}

/// Runs `args` on two copies of `template`, aborted by the crash switch: once at the last file
/// operation before its journal exists, once right after the journal was written. Returns both
/// copies as the crash left them.
pub fn crash_around_journal(template: &Cluster, args: &[&str]) -> (Cluster, Cluster) {
    let mut before = None;
    for n in 1u64..10_000 {
        let copy = template.copy();
        let run = copy.kpki_env(args, &[("KPKI_FAULT_AFTER", &n.to_string())]);
        assert!(
            !run.output.status.success(),
            "{args:?} finished before a journal was written"
        );
        if copy.pki(".kpki/journal").exists() {
            return (
                before.expect("the journal is not the first operation"),
                copy,
            );
        }
        before = Some(copy);
    }
    unreachable!()
}

/// A self-signed P-256 certificate by openssl, into `cert` with its key (PKCS#8) in `key`;
/// `extra` adds options such as `-addext`.
pub fn openssl_self_signed(cert: &Path, key: &Path, subject: &str, days: u32, extra: &[&str]) {
    let days = days.to_string();
    let mut args = vec![
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        subject,
        "-days",
        &days,
        "-keyout",
        s(key),
        "-out",
        s(cert),
    ];
    args.extend(extra);
    run_ok("openssl", &args);
}

/// The recipients and fingerprint the manifest records for `pki/REL`.
pub fn manifest_entry(cluster: &Cluster, rel: &str) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(cluster.path().join("secrets/manifest.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let entry = &table["files"][rel];
    let recipients = entry["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    (recipients, entry["public"].as_str().unwrap().to_string())
}

/// Encrypts `plaintext` with the age CLI (armored) to `recipients` into `secrets/REL.age`.
pub fn age_seal(cluster: &Cluster, rel: &str, plaintext: &Path, recipients: &[String]) {
    let mut args: Vec<String> = vec!["-a".into()];
    for r in recipients {
        args.extend(["-r".into(), r.clone()]);
    }
    let out = cluster.path().join("secrets").join(format!("{rel}.age"));
    args.extend(["-o".into(), s(&out).into(), s(plaintext).into()]);
    run_ok("age", &args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// SHA-256 by openssl, as `sha256:HEX`: of a certificate file as it is, of a key's public key.
pub fn openssl_fingerprint(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let digest = if text.contains("PRIVATE KEY") {
        let der = cluster_tmp(path, "spki.der");
        run_ok(
            "openssl",
            &[
                "pkey",
                "-in",
                s(path),
                "-pubout",
                "-outform",
                "DER",
                "-out",
                s(&der),
            ],
        );
        run_ok("openssl", &["dgst", "-sha256", "-r", s(&der)])
    } else {
        run_ok("openssl", &["dgst", "-sha256", "-r", s(path)])
    };
    format!("sha256:{}", digest.split_whitespace().next().unwrap())
}

fn cluster_tmp(near: &Path, name: &str) -> PathBuf {
    near.with_file_name(format!(".test-{name}"))
}

/// Commits `pki/REL` as another admin with only the age CLI and an editor would: encrypts it
/// to the recipients the manifest lists for it and puts its fingerprint into the manifest.
pub fn commit_by_hand(cluster: &Cluster, rel: &str) {
    let (recipients, old) = manifest_entry(cluster, rel);
    let plaintext = cluster.pki(rel);
    age_seal(cluster, rel, &plaintext, &recipients);
    let new = openssl_fingerprint(&plaintext);
    let manifest = cluster.path().join("secrets/manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(
        text.matches(&old).count(),
        1,
        "{rel}: fingerprint not unique"
    );
    std::fs::write(&manifest, text.replace(&old, &new)).unwrap();
    if text.contains("\n[signature]\n") {
        resign(cluster);
    }
}

/// Edits the manifest's body (what its signature covers) as someone with an editor would: the
/// signature no longer holds until [`resign`].
pub fn edit_manifest(cluster: &Cluster, edit: impl FnOnce(&str) -> String) {
    let manifest = cluster.path().join("secrets/manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let at = text.find("\n[signature]\n").map_or(text.len(), |at| at + 1);
    let (body, tail) = text.split_at(at);
    std::fs::write(&manifest, format!("{}{tail}", edit(body))).unwrap();
}

/// The manifest and this clone as a kpki from before signed manifests left them: no
/// signature table, no generation, no pin.
pub fn as_written_by_an_unsigning_kpki(cluster: &Cluster) {
    let manifest = cluster.path().join("secrets/manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let at = text.find("\n[signature]\n").unwrap() + 1;
    let body = text[..at].trim_end().to_string() + "\n";
    let body: String = body
        .lines()
        .filter(|l| !l.starts_with("generation = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&manifest, body).unwrap();
    let _ = std::fs::remove_file(cluster.pki(".kpki/trust"));
}

/// Signs the manifest's body again with openssl and the Kubernetes CA key in `pki/`, as an
/// admin who edited it by hand would (kpki's signature is a plain `openssl dgst -sign` over
/// the bytes before the `[signature]` table).
pub fn resign(cluster: &Cluster) {
    sign_manifest_with(cluster, &cluster.pki("kubernetes/ca-key.pem"), None);
}

/// Signs the manifest's body with openssl and `key`; with `cert` (PEM), names that
/// certificate as the signer instead of the one the manifest names.
pub fn sign_manifest_with(cluster: &Cluster, key: &Path, cert: Option<&Path>) {
    let manifest = cluster.path().join("secrets/manifest.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let Some(at) = text.find("\n[signature]\n").map(|at| at + 1) else {
        return; // a kpki that signs nothing: nothing to sign anew
    };
    let (body, tail) = text.split_at(at);
    let body_file = cluster_tmp(&manifest, "body");
    let sig_file = cluster_tmp(&manifest, "sig");
    std::fs::write(&body_file, body).unwrap();
    run_ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-sign",
            s(key),
            "-out",
            s(&sig_file),
            s(&body_file),
        ],
    );
    let base64 = |path: &Path| {
        run_ok("openssl", &["base64", "-A", "-in", s(path)])
            .trim()
            .to_string()
    };
    let sig = base64(&sig_file);
    let cert = cert.map(|pem| {
        let der = cluster_tmp(&manifest, "der");
        run_ok(
            "openssl",
            &["x509", "-in", s(pem), "-outform", "DER", "-out", s(&der)],
        );
        let b64 = base64(&der);
        std::fs::remove_file(der).unwrap();
        b64
    });
    let tail: String = tail
        .lines()
        .map(|l| match (l.split_once(" = "), &cert) {
            (Some(("value", _)), _) => format!("value = \"{sig}\"\n"),
            (Some(("certificate", _)), Some(cert)) => format!("certificate = \"{cert}\"\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&manifest, format!("{body}{tail}")).unwrap();
    for f in [body_file, sig_file] {
        std::fs::remove_file(f).unwrap();
    }
}

/// Runs `steps` while another thread calls `attempt(n)` for n = 1, 2, ... every 100 ms (one
/// request of a client that must keep working). `steps` gets a function that waits until a few
/// more attempts succeeded. Returns how many succeeded and the errors of those that failed.
pub fn while_running(
    attempt: impl Fn(usize) -> Result<(), Vec<String>> + Sync,
    steps: impl FnOnce(&dyn Fn()),
) -> (usize, Vec<String>) {
    let stop = AtomicBool::new(false);
    let succeeded = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match attempt(n) {
                    Ok(()) => {
                        succeeded.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(errors) => failures.lock().unwrap().extend(errors),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        // Stops the client also when a step panics, so the scope can end.
        let _stop = StopOnDrop(&stop);
        let progress = || {
            let from = succeeded.load(Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(60);
            while succeeded.load(Ordering::SeqCst) < from + 3 {
                assert!(Instant::now() < deadline, "requests stalled");
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        steps(&progress);
    });
    (succeeded.into_inner(), failures.into_inner().unwrap())
}

/// Polls `done` every 300 ms until it holds; after `seconds` fails with `why()` (called then, so
/// it can show the logs of that moment).
pub fn eventually(seconds: u64, mut done: impl FnMut() -> bool, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
