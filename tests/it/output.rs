//! What a new user sees: summaries on a terminal, `--quiet`, first steps, config warnings, help
//! and error wording.

use crate::harness::{Cluster, DEFAULT_CONFIG, fixture, require, run, run_ok, s};
use crate::revocation::without_node;

/// A config of `n` nodes: three with every role, the rest workers.
pub fn nodes(n: usize) -> String {
    let mut config = String::from(
        "[cluster]\nservice_cidr = \"fd00:10:96::/112\"\napi_server = \"https://[2001:db8::1]:6443\"\n",
    );
    for i in 1..=n {
        let roles = if i <= 3 {
            "[\"control-plane\", \"etcd\", \"worker\"]"
        } else {
            "[\"worker\"]"
        };
        config.push_str(&format!(
            "[[node]]\nname = \"node-{i:03}\"\naddresses = [\"2001:db8::{i:x}\"]\nroles = {roles}\n"
        ));
    }
    config
}

/// kpki's stdout when run on a terminal (a pseudo-terminal from `script`).
fn on_terminal(cluster: &Cluster, args: &str) -> String {
    let command = format!(
        "{} --dir {} {args}",
        env!("CARGO_BIN_EXE_kpki"),
        s(cluster.path())
    );
    let out = run(s(&require("script")), &["-qec", &command, "/dev/null"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_big_init_is_summarized_on_a_terminal_and_listed_with_v_or_in_a_pipe() {
    let summarized = on_terminal(&Cluster::with_config(&nodes(60)), "init");
    assert!(
        summarized.contains("files of 60 nodes (node-001, node-002, node-003, node-004, node-005, and 55 more) (-v lists them)"),
        "{summarized}"
    );
    assert!(
        !summarized.contains("pki/node-040/kubelet.pem"),
        "{summarized}"
    );
    let listed = on_terminal(&Cluster::with_config(&nodes(60)), "init -v");
    assert!(
        listed.contains("created pki/node-040/kubelet.pem"),
        "{listed}"
    );
    let piped = Cluster::with_config(&nodes(60)).kpki(&["init"]).success();
    assert!(piped.stdout().contains("created pki/node-040/kubelet.pem"));
    assert!(
        piped
            .stderr()
            .contains("60 nodes have no host_key (node-001"),
        "{}",
        piped.stderr()
    );
}

#[test]
fn quiet_keeps_warnings_plans_and_the_identity_notice() {
    let cluster = Cluster::new();
    let run = cluster.kpki(&["init", "-q"]).success();
    assert_eq!(run.stdout(), "");
    assert!(
        run.stderr()
            .contains("created pki/admin.agekey as the admin identity")
    );
    assert!(run.stderr().contains("back it up"));
    cluster.write_config(&format!(
        "{DEFAULT_CONFIG}\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\n"
    ));
    let plan = cluster
        .kpki(&["rotate", "--dry-run", "-q"])
        .success()
        .stdout();
    assert!(plan.contains("renew node-04/kubelet (missing"), "{plan}");
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    let line = cluster.kpki(&["-q", "-v", "status"]).fails_with(2);
    assert!(line.contains("cannot be used with"), "{line}");
}

#[test]
fn a_first_init_says_how_to_start_from_your_own_nodes() {
    let cluster = Cluster::new();
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(
        out.contains("the example cluster (3 nodes at 2001:db8::1..3)"),
        "{out}"
    );
    assert!(out.contains("kpki init --config-only"), "{out}");

    let fresh = Cluster::new();
    let out = fresh.kpki(&["init", "--config-only"]).success().stdout();
    assert!(out.contains("put in your nodes' names"), "{out}");
    assert_eq!(
        fresh.snapshot().into_keys().collect::<Vec<_>>(),
        ["pki/kpki.toml"],
        "--config-only wrote more than the config"
    );
    let again = fresh.kpki(&["init", "--config-only"]).success().stdout();
    assert!(again.contains("exists already"), "{again}");
}

#[test]
fn a_valid_config_that_is_probably_not_meant_gets_warnings() {
    let config = nodes(1)
        .replace(
            "roles = [\"control-plane\", \"etcd\", \"worker\"]",
            "roles = [\"control-plane\", \"worker\"]",
        )
        .replace("fd00:10:96::/112", "fd00:10:96::/64")
        + "[keys]\nrenew_before = \"1m\"\n";
    let run = Cluster::with_config(&config).kpki(&["init"]).success();
    let stderr = run.stderr();
    for needle in [
        "keys.renew_before is 60 seconds, under a day",
        "did you mean 30d?",
        "cluster.service_cidr fd00:10:96::/64 is larger than /108",
        "no node has the etcd role",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    assert!(
        !stderr.contains("no node has the control-plane role"),
        "{stderr}"
    );
}

#[test]
fn help_and_errors_say_what_is_meant() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let help = cluster.kpki(&["issue", "--help"]).success().stdout();
    for needle in [
        "kubelet NODE",
        "node NODE",
        "client --cn NAME",
        "front-proxy-client",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
    let line = cluster
        .kpki(&[
            "kubeconfig",
            "admin",
            "-o",
            "/nonexistent-dir/admin.kubeconfig",
        ])
        .fails_with(2);
    assert!(
        line.contains("/nonexistent-dir/admin.kubeconfig: cannot be written: /nonexistent-dir is not a directory"),
        "{line}"
    );
    assert!(
        !line.contains(".kpki-"),
        "a temporary file is named: {line}"
    );

    // A command line the parser refuses is said like every other error: one line, then a hint.
    for (args, hint) in [
        (
            &["rotate", "--dry-rn"][..],
            "hint: a similar argument exists: '--dry-run'",
        ),
        (
            &["rotate", "--finish"][..],
            "hint: usage: kpki rotate --finish <--ca <NAME>|--service-account> (see --help)",
        ),
    ] {
        let stderr = cluster.kpki(args).stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 2 && lines[0].starts_with("kpki: error: ") && lines[1] == hint,
            "{args:?}: {stderr}"
        );
    }

    // Without a usable identity, the same file is named every time: the first in path order.
    cluster.fresh_clone();
    let wrong = fixture("node-01_ssh_host_ed25519_key");
    let first = cluster.kpki(&["verify", "-i", s(&wrong)]).stderr();
    for _ in 0..4 {
        assert_eq!(cluster.kpki(&["verify", "-i", s(&wrong)]).stderr(), first);
    }

    // Next to leftovers, status never says the secrets are up to date.
    cluster.write_config(&without_node(DEFAULT_CONFIG, "node-03"));
    let status = cluster.kpki(&["status"]).stdout();
    assert!(status.contains("removed: "), "{status}");
    assert!(!status.contains("secrets: up to date"), "{status}");
}

/// What bash completes for `line` (the word being completed is the last, possibly empty), in
/// `dir`, with kpki's registration script sourced as the user would.
fn bash_completes(dir: &std::path::Path, line: &str) -> Vec<String> {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_kpki"))
        .parent()
        .unwrap();
    let script = format!(
        "source <(kpki completions bash)\n\
         COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; COMP_TYPE=9\n\
         read -ra COMP_WORDS <<< \"$COMP_LINE\"\n\
         [[ \"$COMP_LINE\" == *' ' ]] && COMP_WORDS+=('')\n\
         COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n\
         _clap_complete_kpki kpki \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n"
    );
    let path = format!("{}:{}", s(bin), std::env::var("PATH").unwrap());
    // A completion that blocks would hang the user's shell: allow it ten seconds.
    let out = std::process::Command::new(require("timeout"))
        .current_dir(dir)
        .env("PATH", path)
        .args(["10", s(&require("bash")), "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('-') && !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_the_profiles_nodes_users_and_cas_of_the_cluster_directory() {
    let cluster = Cluster::initialized(&nodes(4));
    cluster
        .kpki(&["issue", "client", "--cn", "alice", "--group", "dev"])
        .success();
    let at = cluster.path();
    let nodes = ["node-001", "node-002", "node-003", "node-004"];
    assert_eq!(bash_completes(at, "kpki issue kubelet "), nodes);
    assert_eq!(bash_completes(at, "kpki issue kubelet node-00"), nodes);
    assert_eq!(
        bash_completes(at, "kpki issue kube"),
        ["kube-proxy", "kubelet", "kubelet-serving"]
    );
    assert_eq!(
        bash_completes(at, "kpki rotate --ca "),
        ["kubernetes", "etcd", "front-proxy"]
    );
    assert!(bash_completes(at, "kpki kubeconfig user ").contains(&"alice".to_string()));
    assert_eq!(
        bash_completes(at, "kpki kubeconfig kube"),
        ["kube-proxy", "kubelet"]
    );
    assert_eq!(
        bash_completes(at, "kpki import kubeadm /tmp --node node-004"),
        ["node-004"]
    );
    // A FIFO for a config gives no names and does not block.
    let fifo = tempfile::tempdir().unwrap();
    std::fs::create_dir(fifo.path().join("pki")).unwrap();
    run_ok("mkfifo", &[s(&fifo.path().join("pki/kpki.toml"))]);
    assert!(bash_completes(fifo.path(), "kpki issue kubelet ").is_empty());
    // Outside a cluster directory: no names, and no error in the middle of the command line.
    let elsewhere = tempfile::tempdir().unwrap();
    assert!(bash_completes(elsewhere.path(), "kpki issue kubelet ").is_empty());
    assert_eq!(bash_completes(elsewhere.path(), "kpki iss"), ["issue"]);
}

#[test]
fn init_inside_pki_or_secrets_of_a_cluster_is_refused() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    for inner in ["pki", "secrets"] {
        let before = cluster.snapshot();
        let dir = cluster.path().join(inner);
        let err = crate::harness::kpki(&["--dir", s(&dir), "init"]).fails_with(2);
        assert!(
            err.contains(&format!(
                "is inside the pki/ or secrets/ of the cluster directory {}",
                s(cluster.path())
            )),
            "{err}"
        );
        assert!(before == cluster.snapshot(), "{inner}: files changed");
        assert!(!dir.join("pki").exists(), "a second cluster in {inner}/");
    }
}

#[test]
fn kubeconfig_server_ambiguous_or_outside_every_apiserver_certificate() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let err = cluster
        .kpki(&["kubeconfig", "admin", "--server", "2001:db8::10:6443"])
        .fails_with(2);
    assert!(
        err.contains("is ambiguous: write https://[2001:db8::10]:6443"),
        "{err}"
    );
    let elsewhere = cluster
        .kpki(&[
            "kubeconfig",
            "admin",
            "--server",
            "https://[2001:db8::99]:6443",
        ])
        .success();
    assert!(
        elsewhere
            .stderr()
            .contains("no apiserver certificate is valid for that host"),
        "{}",
        elsewhere.stderr()
    );
    let node = cluster
        .kpki(&["kubeconfig", "admin", "--server", "2001:db8::2"])
        .success();
    assert_eq!(
        node.stderr(),
        "",
        "node-02's address is in its apiserver certificate"
    );
}

#[test]
fn a_misspelled_certificate_gets_a_suggestion() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let err = cluster.kpki(&["revoke", "node-2/etcd-peer"]).fails_with(2);
    assert!(err.contains("did you mean \"node-02/etcd-peer\"?"), "{err}");
}

#[test]
fn a_key_left_readable_is_reported_then_repaired_by_init() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let key = cluster.pki("node-01/kubelet-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    // -q verify prints its problems and nothing else.
    let quiet = cluster.kpki(&["-q", "verify"]);
    assert_eq!(quiet.code(), Some(1));
    assert_eq!(
        quiet.stdout(),
        "pki/node-01/kubelet-key.pem: mode 0644, but private keys must be 0600\n"
    );
    assert_eq!(quiet.stderr(), "");
    let out = cluster.kpki(&["init"]).success().stdout();
    assert!(
        out.contains("repaired pki/node-01/kubelet-key.pem: mode 0644, now 0600"),
        "{out}"
    );
    assert!(!out.contains("nothing to do"), "{out}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(cluster.kpki(&["verify"]).code(), Some(0));
}

#[test]
fn a_validity_within_renew_before_is_warned_about() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let run = cluster
        .kpki(&["issue", "kubelet", "node-02", "--validity", "10d"])
        .success();
    assert!(
        run.stderr()
            .contains("--validity 10 days is within keys.renew_before (30 days)"),
        "{}",
        run.stderr()
    );
    let run = cluster
        .kpki(&["issue", "kubelet", "node-02", "--validity", "90d"])
        .success();
    assert!(!run.stderr().contains("renew_before"), "{}", run.stderr());
}

/// The files a dry run says it would re-encrypt, and those the real run did.
fn resealed(out: &str, verb: &str) -> Vec<String> {
    let mut files: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix(verb))
        .map(String::from)
        .collect();
    files.sort();
    files
}

#[test]
fn a_ca_rotation_dry_run_shows_the_whole_plan_the_real_run_carries_out() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    cluster.kpki(&["revoke", "node-03/etcd-peer"]).success();
    cluster
        .kpki(&["issue", "client", "--cn", "carol"])
        .success();
    for (ca, leaves) in [("etcd", 7), ("kubernetes", 15)] {
        for finish in [false, true] {
            let mut args = vec!["rotate", "--ca", ca];
            if finish {
                args.push("--finish");
            }
            let before = cluster.snapshot();
            let plan = cluster
                .kpki(&[&args[..], &["--dry-run"]].concat())
                .success()
                .stdout();
            assert!(
                before == cluster.snapshot(),
                "{args:?}: the dry run changed files"
            );
            if finish {
                args.push("--no-live-check");
            }
            let done = cluster.kpki(&args).success().stdout();
            assert_eq!(
                resealed(&plan, "re-encrypt "),
                resealed(&done, "encrypted "),
                "{args:?}: the plan and the run differ\n{plan}"
            );
            let steps = if finish {
                "drop the cross-signed link from pki/"
            } else {
                "reissue pki/"
            };
            assert_eq!(plan.matches(steps).count(), leaves, "{args:?}: {plan}");
        }
    }
}

#[test]
fn an_api_server_on_a_node_address_is_noted_once() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let status = cluster.kpki(&["status"]).stdout();
    assert_eq!(
        status
            .matches("cluster.api_server is node-01's own address")
            .count(),
        1,
        "{status}"
    );
    let vip = DEFAULT_CONFIG.replace("https://[2001:db8::1]:6443", "https://[2001:db8::100]:6443");
    let cluster = Cluster::initialized(&vip);
    let status = cluster.kpki(&["status"]).stdout();
    assert!(!status.contains("own address"), "{status}");
}
