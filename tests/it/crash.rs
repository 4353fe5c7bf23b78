//! Crash safety: kpki is aborted after its Nth file operation, for every N over a whole `init`,
//! an `issue` and a `rotate --ca`; the same command run again completes the job, `kpki verify`
//! passes, no temporary file is left, and no CA is lost or replaced.

use std::os::unix::process::ExitStatusExt;

use crate::harness::{Cluster, fixture, s};
use crate::secrets::admin_recipient;

/// A one-node cluster with the test admin, small enough to crash at every step.
fn config() -> String {
    format!(
        "[cluster]\nservice_cidr = \"fd00:10:96::/112\"\napi_server = \"https://[2001:db8::1]:6443\"\n\
         [secrets]\nadmins = [\"{}\"]\n[[node]]\nname = \"node-01\"\naddresses = [\"2001:db8::1\"]\n",
        admin_recipient()
    )
}

/// The CA files present, by path.
fn cas(cluster: &Cluster) -> Vec<(String, Vec<u8>)> {
    ["kubernetes", "etcd", "front-proxy"]
        .iter()
        .flat_map(|ca| [format!("{ca}/ca.pem"), format!("{ca}/ca-key.pem")])
        .filter_map(|rel| Some((rel.clone(), std::fs::read(cluster.pki(&rel)).ok()?)))
        .collect()
}

/// For N = 1, 2, ...: `prepare` a cluster, run `args` aborting after N file operations, run
/// `args` again, and check the result with `check(cluster, CA files after the crash)`, until a
/// run completes without reaching N.
fn sweep(
    prepare: impl Fn() -> Cluster,
    args: &[&str],
    check: impl Fn(&Cluster, &[(String, Vec<u8>)]),
) -> u64 {
    sweep_then(prepare, args, &[], check)
}

/// [`sweep`], running `then` (when not empty) after the re-run and before `kpki verify`: for a
/// command that leaves work for another (an import leaves drift for `rotate`).
fn sweep_then(
    prepare: impl Fn() -> Cluster,
    args: &[&str],
    then: &[&str],
    check: impl Fn(&Cluster, &[(String, Vec<u8>)]),
) -> u64 {
    let identity = fixture("admin-identity.txt");
    let mut all = args.to_vec();
    all.extend(["-q", "-i", s(&identity)]);
    for n in 1u64.. {
        let cluster = prepare();
        let crashed = cluster.kpki_env(&all, &[("KPKI_FAULT_AFTER", &n.to_string())]);
        if crashed.output.status.success() {
            return n - 1;
        }
        assert_eq!(
            crashed.output.status.signal(),
            Some(6),
            "N={n}: not aborted: {}",
            crashed.stderr()
        );
        let after_crash = cas(&cluster);
        let rerun = cluster.kpki(&all);
        // Aborted after its journal, a rotation's start (or finish) was complete once the next
        // command replayed it: starting (finishing) it again is then refused, as it must be.
        let complete = rerun.stderr().contains("already in progress")
            || rerun.stderr().contains("no rotation of");
        assert!(
            rerun.output.status.success() || complete,
            "N={n}: the re-run failed: {}",
            rerun.stderr()
        );
        if !then.is_empty() {
            cluster.kpki(then).success();
        }
        let verify = cluster.kpki(&["verify", "-i", s(&identity)]);
        assert_eq!(verify.code(), Some(0), "N={n}: {}", verify.stdout());
        let left = cluster.temp_files();
        assert!(left.is_empty(), "N={n}: temporary files left: {left:?}");
        check(&cluster, &after_crash);
    }
    unreachable!()
}

#[test]
fn init_survives_a_crash_at_every_file_operation() {
    let operations = sweep(
        || Cluster::with_config(&config()),
        &["init"],
        |cluster, after_crash| {
            for (rel, bytes) in after_crash {
                let now = std::fs::read(cluster.pki(rel)).unwrap();
                if rel.ends_with("-key.pem") {
                    assert_eq!(&now, bytes, "{rel} was replaced");
                }
            }
        },
    );
    assert!(operations > 60, "only {operations} file operations");
}

#[test]
fn issue_survives_a_crash_at_every_file_operation() {
    let template = Cluster::initialized(&config());
    let before = cas(&template);
    let operations = sweep(
        || template.copy(),
        &["issue", "kubelet", "node-01"],
        |cluster, _| assert_eq!(cas(cluster), before, "a CA changed"),
    );
    assert!(operations >= 8, "only {operations} file operations");
}

#[test]
fn ca_rotation_survives_a_crash_at_every_file_operation() {
    let template = Cluster::initialized(&config());
    let old_ca = std::fs::read_to_string(template.pki("etcd/ca.pem")).unwrap();
    let old_key = std::fs::read(template.pki("etcd/ca-key.pem")).unwrap();
    let operations = sweep(
        || template.copy(),
        &["rotate", "--ca", "etcd"],
        |cluster, _| {
            let bundle = std::fs::read_to_string(cluster.pki("etcd/ca.pem")).unwrap();
            assert_eq!(
                bundle.matches("BEGIN CERTIFICATE").count(),
                2,
                "the rotation did not start"
            );
            assert!(
                bundle.ends_with(&old_ca),
                "the old CA was lost from the bundle"
            );
            assert_eq!(
                std::fs::read(cluster.pki("etcd/ca-previous-key.pem")).unwrap(),
                old_key
            );
            assert_eq!(
                crate::harness::kpki(&["--dir", s(cluster.path()), "rotate", "--ca", "etcd"])
                    .code(),
                Some(2),
                "a second start must be refused"
            );
        },
    );
    assert!(operations >= 20, "only {operations} file operations");
}

/// The public keys of `service-account/sa.pem` and the public key of `sa-key.pem`, by openssl.
fn sa_keys(cluster: &Cluster) -> (Vec<String>, String) {
    let text = std::fs::read_to_string(cluster.pki("service-account/sa.pem")).unwrap();
    let keys = text
        .split_inclusive("-----END PUBLIC KEY-----\n")
        .map(String::from)
        .collect();
    let key = cluster.pki("service-account/sa-key.pem");
    let public = crate::harness::run_ok("openssl", &["pkey", "-in", s(&key), "-pubout"]);
    (keys, public)
}

#[test]
fn service_account_rotation_survives_a_crash_at_every_file_operation() {
    let template = Cluster::initialized(&config());
    let (old, _) = sa_keys(&template);
    let operations = sweep(
        || template.copy(),
        &["rotate", "--service-account"],
        |cluster, _| {
            let (keys, signing) = sa_keys(cluster);
            assert_eq!(keys.len(), 2, "the rotation did not start");
            assert_eq!(
                keys[0], signing,
                "sa.pem does not publish the signing key first"
            );
            assert_eq!(keys[1], old[0], "the old public key was lost");
        },
    );
    assert!(operations >= 6, "only {operations} file operations");
    let started = template.copy();
    started
        .kpki(&["rotate", "--service-account", "-q"])
        .success();
    let operations = sweep(
        || started.copy(),
        &["rotate", "--service-account", "--finish", "--no-live-check"],
        |cluster, _| {
            let (keys, signing) = sa_keys(cluster);
            assert_eq!(
                keys,
                [signing],
                "the finish did not keep exactly the signing key"
            );
        },
    );
    assert!(operations >= 4, "only {operations} file operations");
}

#[test]
fn prune_survives_a_crash_at_every_file_operation() {
    let two = format!(
        "{}[[node]]\nname = \"node-02\"\naddresses = [\"2001:db8::2\"]\n",
        config()
    );
    let template = Cluster::initialized(&two);
    let gone = std::fs::read(template.pki("node-02/etcd-peer.pem")).unwrap();
    template.write_config(&config());
    let before = cas(&template);
    let operations = sweep(
        || template.copy(),
        &["rotate", "--prune"],
        |cluster, _| {
            assert_eq!(cas(cluster), before, "a CA changed");
            assert!(!cluster.pki("node-02").exists(), "node-02's files are left");
            let listed = crate::harness::run_ok(
                "openssl",
                &[
                    "crl",
                    "-in",
                    s(&cluster.pki("etcd/crl.pem")),
                    "-noout",
                    "-text",
                ],
            );
            let old = cluster.path().join("gone-peer.pem");
            std::fs::write(&old, &gone).unwrap();
            let serial =
                crate::harness::run_ok("openssl", &["x509", "-in", s(&old), "-noout", "-serial"]);
            let serial = serial.trim().trim_start_matches("serial=");
            assert!(
                listed.contains(serial),
                "node-02's peer certificate is not revoked"
            );
        },
    );
    assert!(operations >= 20, "only {operations} file operations");
}

#[test]
fn import_survives_a_crash_at_every_file_operation() {
    let template = Cluster::with_config(&config());
    let source = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/import/kubeadm-pki.sh");
    crate::harness::run_ok("bash", &[script, s(source.path()), "node-01=2001:db8::1"]);
    let dir = source.path().join("node-01");
    let ca = std::fs::read(dir.join("ca.crt")).unwrap();
    let operations = sweep_then(
        || template.copy(),
        &["import", "kubeadm", s(&dir), "--node", "node-01"],
        &["rotate", "-q", "-i", s(&fixture("admin-identity.txt"))],
        |cluster, _| {
            assert_eq!(std::fs::read(cluster.pki("kubernetes/ca.pem")).unwrap(), ca);
            assert!(cluster.pki("node-01/etcd-peer-key.pem").exists());
        },
    );
    assert!(operations >= 20, "only {operations} file operations");
}
