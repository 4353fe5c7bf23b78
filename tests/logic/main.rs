//! The logic of kpki's commands, in process, without root and without other programs: each
//! test makes a cluster with the library (as `kpki init` does, in a temporary directory) and
//! asks the planners what they would do, at dates of its choosing (every planner takes the
//! time as a parameter). The real programs check the output in `tests/it`; here the decisions
//! are checked, fast (`make test-quick`).

use std::collections::BTreeSet;
use std::path::Path;

use clap::Parser;
use time::{Duration, OffsetDateTime};

use kpki::assessment::{Health, assess};
use kpki::catalogue::CaName;
use kpki::cli::{Cli, Command};
use kpki::commands::{self, Context};
use kpki::config::{Config, DEFAULT_CONFIG, Span};
use kpki::report::Report;
use kpki::secrets::{self, Depth, Recipients};
use kpki::state::{Access, Place, State};
use kpki::store::Store;

/// A fixture's public line (`fixtures/NAME.pub`, or the admin identity's public key).
fn public(name: &str) -> String {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    if name == "admin" {
        let text = std::fs::read_to_string(fixtures.join("admin-identity.txt")).unwrap();
        return text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
    }
    let key = format!("{name}_ssh_host_ed25519_key.pub");
    std::fs::read_to_string(fixtures.join(key))
        .unwrap()
        .trim()
        .to_string()
}

/// The default cluster with the test admin, host keys for node-01 and node-02 (node-03 has
/// none), and a worker node-04.
fn config() -> String {
    let mut config = DEFAULT_CONFIG.replace(
        "admins = []",
        &format!("admins = [\"{}\"]", public("admin")),
    );
    for n in ["node-01", "node-02"] {
        let at = config.find(&format!("name = \"{n}\"")).unwrap();
        config.insert_str(at, &format!("host_key = \"{}\"\n", public(n)));
    }
    config
        + &format!(
            "\n[[node]]\nname = \"node-04\"\naddresses = [\"2001:db8::4\"]\nroles = [\"worker\"]\nhost_key = \"{}\"\n",
            public("node-04")
        )
}

/// A cluster directory, initialized.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new(config: &str) -> Cluster {
        let cluster = Cluster {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(cluster.dir.path().join("pki")).unwrap();
        cluster.write_config(config);
        cluster.run(&["init"]).unwrap();
        cluster
    }

    fn write_config(&self, config: &str) {
        std::fs::write(self.dir.path().join("pki/kpki.toml"), config).unwrap();
    }

    fn context(&self) -> Context {
        let identity = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/admin-identity.txt");
        Context {
            store: Store::new(self.dir.path()),
            identity: Some(identity),
            trust: kpki::trust::Policy::default(),
            accepted: vec!["all".into()],
        }
    }

    /// Runs `kpki ARGS` in process, as the binary dispatches it; the command's report.
    fn run(&self, args: &[&str]) -> kpki::error::Result<Report> {
        let cli = Cli::try_parse_from(std::iter::once("kpki").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let (ctx, mut report) = (self.context(), Report::default());
        match &cli.command {
            Command::Init(a) => commands::init(&ctx, a, &mut report),
            Command::Issue(a) => commands::issue(&ctx, a, &mut report),
            Command::Rotate(a) => commands::rotate(&ctx, a, &mut report),
            Command::Revoke(a) => commands::revoke(&ctx, a, &mut report),
            Command::Import { from } => commands::import(&ctx, from, &mut report),
            other => panic!("not dispatched here: {other:?}"),
        }?;
        Ok(report)
    }

    /// A copy of this cluster directory (another admin's clone).
    fn copy(&self) -> Cluster {
        let copy = Cluster {
            dir: tempfile::tempdir().unwrap(),
        };
        copy_tree(self.dir.path(), copy.dir.path());
        copy
    }

    /// Takes `other`'s `secrets/` as this clone's (a pull of another admin's commit).
    fn pull(&self, other: &Cluster) {
        let secrets = self.dir.path().join("secrets");
        std::fs::remove_dir_all(&secrets).unwrap();
        copy_tree(&other.dir.path().join("secrets"), &secrets);
    }

    /// Where `pki/REL` stands, as a fresh run sees it.
    fn place(&self, rel: &str) -> Place {
        self.open().2.place(rel).unwrap()
    }

    /// The config, recipients and state, as a command opens them.
    fn open(&self) -> (Config, Recipients, State) {
        let ctx = self.context();
        let path = ctx.store.config_path();
        let config = Config::parse(&std::fs::read_to_string(&path).unwrap(), &path).unwrap();
        let admins = secrets::admins(&ctx.store, &config).unwrap();
        let recipients = Recipients::new(&config, admins.recipients).unwrap();
        let state = State::open(ctx.store, ctx.identity, Access::Read).unwrap();
        (config, recipients, state)
    }
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let target = to.join(entry.path().strip_prefix(from).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The rows of an assessment at `at` whose health is `health`.
fn rows(state: &State, config: &Config, at: OffsetDateTime, health: Health) -> BTreeSet<String> {
    assess(state, config, &Default::default(), at)
        .unwrap()
        .into_iter()
        .filter(|a| a.row.state == health)
        .map(|a| a.row.name)
        .collect()
}

#[test]
fn the_assessment_follows_the_date_it_is_asked_about() {
    let cluster = Cluster::new(&config());
    let (config, _, state) = cluster.open();
    let now = kpki::clock::now();
    let total = assess(&state, &config, &Default::default(), now)
        .unwrap()
        .len();
    assert_eq!(rows(&state, &config, now, Health::Ok).len(), total);
    // Leaves live a year and are renewed 30 days before; CAs live ten years.
    let renew = rows(&state, &config, now + Duration::days(340), Health::Renew);
    let expired = rows(&state, &config, now + Duration::days(366), Health::Expired);
    assert_eq!(renew, expired, "the same leaves, first due, then expired");
    assert!(renew.contains("node-04/kubelet"), "{renew:?}");
    assert!(!renew.iter().any(|r| r.ends_with("/ca")), "{renew:?}");
    let cas = rows(&state, &config, now + Duration::days(3660), Health::Expired);
    assert!(cas.contains("kubernetes/ca"), "{cas:?}");
    // rotate picks exactly the rows due in its window, or all with --all.
    let assessed = assess(
        &state,
        &config,
        &Default::default(),
        now + Duration::days(340),
    )
    .unwrap();
    let picked = kpki::rotation::renewals(assessed, Span(Duration::days(30)), false);
    assert_eq!(picked.len(), renew.len());
    let assessed = assess(&state, &config, &Default::default(), now).unwrap();
    assert!(kpki::rotation::renewals(assessed, Span(Duration::days(30)), false).is_empty());
}

#[test]
fn a_replaced_host_key_makes_exactly_that_nodes_files_stale() {
    let cluster = Cluster::new(&config());
    let (config_before, recipients, state) = cluster.open();
    let plan = secrets::plan(&state, &config_before, &recipients, Depth::All).unwrap();
    assert_eq!(plan.stale_files().count(), 0, "a fresh init is current");
    drop(state);
    let rsa = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/node-03_ssh_host_rsa_key.pub");
    let replaced = std::fs::read_to_string(rsa).unwrap();
    cluster.write_config(&config().replace(&public("node-04"), replaced.trim()));
    let (config, recipients, state) = cluster.open();
    let plan = secrets::plan(&state, &config, &recipients, Depth::All).unwrap();
    let stale: BTreeSet<&str> = plan.stale_files().map(|(s, _)| s.rel.as_str()).collect();
    // node-04 holds its kubelet pairs, kube-proxy's pair and the Kubernetes CA; kube-proxy's
    // and the CA's files go to other workers too, and are encrypted anew for the new key.
    let expected: BTreeSet<&str> = [
        "node-04/kubelet.pem",
        "node-04/kubelet-key.pem",
        "node-04/kubelet-serving.pem",
        "node-04/kubelet-serving-key.pem",
        "kubernetes/kube-proxy.pem",
        "kubernetes/kube-proxy-key.pem",
        "kubernetes/ca.pem",
    ]
    .into();
    assert_eq!(stale, expected);
}

#[test]
fn a_ca_rotation_is_in_progress_until_its_finish() {
    let cluster = Cluster::new(&config());
    cluster.run(&["rotate", "--ca", "etcd"]).unwrap();
    let (config, _, state) = cluster.open();
    assert!(state.rotating(CaName::Etcd).unwrap());
    assert!(!state.rotating(CaName::Kubernetes).unwrap());
    let running = kpki::rotation::in_progress(&state, &config).unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].what, "etcd");
    assert!(running[0].pending.is_empty(), "{:?}", running[0].pending);
    drop(state);
    let refused = cluster.run(&["rotate", "--ca", "etcd"]).err().unwrap();
    assert!(refused.to_string().contains("already"), "{refused}");
    cluster
        .run(&["rotate", "--ca", "etcd", "--finish", "--no-live-check"])
        .unwrap();
    let (config, _, state) = cluster.open();
    assert!(
        kpki::rotation::in_progress(&state, &config)
            .unwrap()
            .is_empty()
    );
    assert_eq!(state.ca_bundle(CaName::Etcd).unwrap().blocks().len(), 1);
}

#[test]
fn a_revocation_outlives_a_ledger_that_lost_it() {
    let cluster = Cluster::new(&config());
    cluster
        .run(&["revoke", "etcd/apiserver-etcd-client"])
        .unwrap();
    let (_, _, state) = cluster.open();
    let ledger = state.revocations();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    // A pusher empties the ledger: the last signed list still names the serial.
    state.set_revocations(Default::default());
    let carried = kpki::revocation::ledger(&state).unwrap();
    assert_eq!(
        carried.keys().collect::<Vec<_>>(),
        ledger.keys().collect::<Vec<_>>()
    );
}

#[test]
fn pruning_a_worker_deletes_its_files_and_reissues_what_it_could_read() {
    let cluster = Cluster::new(&config());
    let without = config();
    let at = without.find("\n[[node]]\nname = \"node-04\"").unwrap();
    cluster.write_config(&without[..at]);
    let (config, recipients, state) = cluster.open();
    let seal = secrets::plan(&state, &config, &recipients, Depth::Changed).unwrap();
    let prune = kpki::prune::plan(&state, &config, &seal, kpki::clock::now()).unwrap();
    let deleted: BTreeSet<&str> = prune.deleted.iter().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "node-04/kubelet.pem",
        "node-04/kubelet-key.pem",
        "node-04/kubelet-serving.pem",
        "node-04/kubelet-serving-key.pem",
    ]
    .into();
    assert_eq!(deleted, expected);
    assert!(
        prune.revoked.is_empty(),
        "a worker holds nothing of the etcd CA"
    );
    let reissued: Vec<String> = prune.reissued.iter().map(|i| i.name()).collect();
    assert_eq!(
        reissued,
        ["kubernetes/kube-proxy"],
        "the shared key node-04 could read"
    );
    let outlived: BTreeSet<&str> = prune.outlived.iter().map(|u| u.file.as_str()).collect();
    assert!(outlived.contains("node-04/kubelet.pem"), "{outlived:?}");
    assert_eq!(prune.signing_key, kpki::prune::SigningKey::Untouched);
}

#[test]
fn each_file_is_placed_by_what_pki_secrets_and_the_manifest_hold() {
    let cluster = Cluster::new(&config());
    let rel = "node-04/kubelet.pem";
    assert!(matches!(cluster.place(rel), Place::Plain { .. }));
    // Another admin issues node-04's kubelet certificate anew; this clone pulls it.
    let other = cluster.copy();
    other.run(&["issue", "kubelet", "node-04"]).unwrap();
    cluster.pull(&other);
    assert_eq!(cluster.place(rel), Place::Stale { sealed: true });
    // A hand put another certificate there: not kpki's, and never sealed over the commit.
    let foreign = std::fs::read(cluster.dir.path().join("pki/node-01/kubelet.pem")).unwrap();
    std::fs::write(cluster.dir.path().join("pki").join(rel), foreign).unwrap();
    assert_eq!(cluster.place(rel), Place::Changed { sealed: true });
    std::fs::remove_file(cluster.dir.path().join("pki").join(rel)).unwrap();
    assert_eq!(cluster.place(rel), Place::Sealed);
    assert_eq!(cluster.place("node-09/kubelet.pem"), Place::Absent);
    // The other admin removes node-04: its files here are left over from a removed state.
    let without = config();
    let at = without.find("\n[[node]]\nname = \"node-04\"").unwrap();
    other.write_config(&without[..at]);
    other.run(&["rotate", "--prune"]).unwrap();
    cluster.pull(&other);
    assert_eq!(cluster.place("node-04/kubelet-key.pem"), Place::Removed);
}

/// kubeadm's names for one control-plane node's files, and kpki's (written out here, apart
/// from kpki's own table).
const KUBEADM: [(&str, &str); 24] = [
    ("ca.crt", "kubernetes/ca.pem"),
    ("ca.key", "kubernetes/ca-key.pem"),
    ("etcd/ca.crt", "etcd/ca.pem"),
    ("etcd/ca.key", "etcd/ca-key.pem"),
    ("front-proxy-ca.crt", "front-proxy/ca.pem"),
    ("front-proxy-ca.key", "front-proxy/ca-key.pem"),
    ("sa.pub", "service-account/sa.pem"),
    ("sa.key", "service-account/sa-key.pem"),
    ("apiserver.crt", "node-01/apiserver.pem"),
    ("apiserver.key", "node-01/apiserver-key.pem"),
    (
        "apiserver-kubelet-client.crt",
        "kubernetes/apiserver-kubelet-client.pem",
    ),
    (
        "apiserver-kubelet-client.key",
        "kubernetes/apiserver-kubelet-client-key.pem",
    ),
    (
        "apiserver-etcd-client.crt",
        "etcd/apiserver-etcd-client.pem",
    ),
    (
        "apiserver-etcd-client.key",
        "etcd/apiserver-etcd-client-key.pem",
    ),
    ("front-proxy-client.crt", "front-proxy/client.pem"),
    ("front-proxy-client.key", "front-proxy/client-key.pem"),
    ("etcd/server.crt", "node-01/etcd-server.pem"),
    ("etcd/server.key", "node-01/etcd-server-key.pem"),
    ("etcd/peer.crt", "node-01/etcd-peer.pem"),
    ("etcd/peer.key", "node-01/etcd-peer-key.pem"),
    ("etcd/healthcheck-client.crt", "-"),
    ("etcd/healthcheck-client.key", "-"),
    ("admin.conf", "-"),
    ("README", "-"),
];

/// A kubeadm directory holding `from`'s files of node-01 under kubeadm's names (and files kpki
/// takes nowhere, as a real one has).
fn kubeadm_dir(from: &Cluster) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etcd")).unwrap();
    for (name, rel) in KUBEADM {
        let source = match rel {
            "-" => from.dir.path().join("pki/kubernetes/admin.pem"),
            rel => from.dir.path().join("pki").join(rel),
        };
        std::fs::copy(source, dir.path().join(name)).unwrap();
    }
    dir
}

#[test]
fn an_import_plans_each_file_by_what_the_cluster_already_holds() {
    let kubeadm = kubeadm_dir(&Cluster::new(&config()));
    let layout = || kpki::importing::Layout::Kubeadm { node: "node-01" };
    // A new cluster directory with only its config: everything of node-01 is adopted.
    let target = Cluster {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::create_dir_all(target.dir.path().join("pki")).unwrap();
    target.write_config(&config());
    let (config, _, state) = target.open();
    let plan = kpki::importing::plan(&state, &config, kubeadm.path(), layout()).unwrap();
    let adopted: BTreeSet<&str> = plan.adopted.keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = KUBEADM
        .iter()
        .map(|(_, rel)| *rel)
        .filter(|rel| *rel != "-")
        .collect();
    assert_eq!(adopted, expected);
    assert!(plan.kept.is_empty() && plan.unchanged.is_empty());
    assert!(
        plan.unused
            .iter()
            .any(|u| u.ends_with("healthcheck-client.crt")),
        "{:?}",
        plan.unused
    );
    drop(state);
    let import = [
        "import",
        "kubeadm",
        kubeadm.path().to_str().unwrap(),
        "--node",
        "node-01",
    ];
    target.run(&import).unwrap();
    // Imported once, the same directory brings nothing new.
    let (config, _, state) = target.open();
    let again = kpki::importing::plan(&state, &config, kubeadm.path(), layout()).unwrap();
    assert!(again.adopted.is_empty(), "{:?}", again.adopted.keys());
    assert_eq!(again.unchanged.len(), expected.len());
    // A CA key where a leaf's key belongs is refused, naming the file.
    std::fs::copy(
        kubeadm.path().join("ca.key"),
        kubeadm.path().join("apiserver.key"),
    )
    .unwrap();
    let refused = kpki::importing::plan(&state, &config, kubeadm.path(), layout())
        .err()
        .unwrap()
        .to_string();
    assert!(refused.contains("apiserver.key"), "{refused}");
}
