//! The command line, as clap definitions only: help, completions and parsing all come from here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{CaName, Span};

/// Kubernetes PKI for NixOS clusters: CAs and certificates with IPv6 SANs, age-encrypted for
/// exactly the machines that need them, with agenix rules and a NixOS module.
#[derive(Debug, Parser)]
#[command(name = "kpki", version, propagate_version = true)]
#[command(after_help = "Exit status: 0 success, 1 a check found something to act on, 2 an error.")]
pub struct Cli {
    /// The cluster directory (holds pki/ and secrets/).
    #[arg(long, global = true, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// The admin identity that decrypts secrets/ (age identity file or OpenSSH private key);
    /// default: $KPKI_IDENTITY when set and not empty, else pki/admin.agekey and ~/.ssh/id_ed25519.
    #[arg(short = 'i', long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Trust secrets/manifest.toml only if it is signed by this Kubernetes CA key (or one it
    /// handed over to by a rotation): sha256:HEX of its SubjectPublicKeyInfo, as kpki status
    /// shows it. Default: $KPKI_TRUST, else what this clone last verified.
    #[arg(long, global = true, value_name = "FINGERPRINT")]
    pub trust: Option<String>,
    /// Accept a manifest older than one this clone has verified (after dropping your own
    /// unpushed work); revocations are kept all the same.
    #[arg(long, global = true)]
    pub allow_rollback: bool,
    /// Encrypt to recipients the last signed state never had (pki/kpki.toml is not signed):
    /// node names (their host_key), admin recipients as written in secrets.admins, or `all`.
    #[arg(long, global = true, value_name = "WHO", value_delimiter = ',')]
    pub accept_recipients: Vec<String>,
    /// Print nothing but errors, warnings and requested output.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// List every file written (a terminal otherwise gets a summary of long lists).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The identities `kpki kubeconfig` writes.
pub const IDENTITIES: &[&str] = &[
    "admin",
    "controller-manager",
    "scheduler",
    "kube-proxy",
    "kubelet",
    "user",
    "cert",
];

/// `kpki kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// admin, controller-manager, scheduler, kube-proxy, kubelet, user or cert.
    #[arg(value_name = "IDENTITY")]
    pub who: String,
    /// The node (for kubelet), the user (for user) or the declared certificate (for cert).
    pub name: Option<String>,
    /// For `cert`: the node of a per-node certificate.
    pub node: Option<String>,
    /// The API server: a URL or a bare IP address (default: cluster.api_server).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Write the kubeconfig to FILE (mode 0600) instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// `kpki init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Only write pki/kpki.toml (the example cluster), to edit before the first real init.
    #[arg(long)]
    pub config_only: bool,
}

/// `kpki issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// A catalogue profile, `node`, or `client`.
    pub profile: String,
    /// The node, for per-node profiles and `node`.
    pub node: Option<String>,
    /// Keep the existing key instead of generating a new one.
    #[arg(long)]
    pub keep_key: bool,
    /// Validity instead of keys.leaf_validity (e.g. 90d).
    #[arg(long, value_name = "DUR")]
    pub validity: Option<Span>,
    /// With `client`: the user name (certificate CN).
    #[arg(long, value_name = "NAME")]
    pub cn: Option<String>,
    /// With `client`: a group (certificate O); at most two.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
}

/// `kpki status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Evaluate as of this date (YYYY-MM-DD or RFC 3339): what will need renewal by then.
    #[arg(long, value_name = "DATE", value_parser = crate::config::parse_date)]
    pub at: Option<time::OffsetDateTime>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `kpki rotate`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("rotated").args(["ca", "service_account"]))]
pub struct RotateArgs {
    /// Renew what expires within DUR (default: keys.renew_before).
    #[arg(long, value_name = "DUR", conflicts_with_all = ["ca", "service_account", "all"])]
    pub within: Option<Span>,
    /// Renew every leaf.
    #[arg(long, conflicts_with_all = ["ca", "service_account"])]
    pub all: bool,
    /// Print the plan only.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the existing keys of renewed certificates (renewals and the start of a CA
    /// rotation; a finish and the service-account key make no certificate).
    #[arg(long, conflicts_with_all = ["service_account", "finish"])]
    pub keep_key: bool,
    /// Rotate this CA.
    #[arg(long, value_name = "NAME")]
    pub ca: Option<CaName>,
    /// Rotate the service-account signing key.
    #[arg(long)]
    pub service_account: bool,
    /// Finish the rotation started with --ca or --service-account.
    #[arg(long, requires = "rotated")]
    pub finish: bool,
    /// Carry out removals from the config: delete the files of removed nodes and
    /// declarations, revoke their etcd certificates (on etcd/crl.der), and reissue the shared
    /// keys they could read. With --dry-run, print the plan.
    #[arg(long, conflicts_with_all = ["within", "all", "keep_key", "ca", "service_account", "finish"])]
    pub prune: bool,
    /// With --finish: finish although some endpoints could not be reached.
    #[arg(long, requires = "finish")]
    pub force: bool,
    /// With --finish: skip asking the running cluster (kpki rollout) whether every node is
    /// on the new CA.
    #[arg(long, requires = "finish")]
    pub no_live_check: bool,
}

/// `kpki rollout`.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    /// Only these nodes (default: all).
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long each handshake may take (connecting included).
    #[arg(long, value_name = "DUR", default_value = "5s")]
    pub timeout: Span,
}

/// `kpki revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Certificates as kpki status names them.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write pki/kpki.toml from the embedded default when missing, then create every missing
    /// CA, key and certificate. Never replaces an existing CA or key; a second run changes nothing.
    Init(InitArgs),
    /// (Re)issue one catalogue entry (`kubelet node-02`, `admin`), everything a node holds
    /// (`node node-02`), or an extra client certificate (`client --cn NAME --group G`).
    Issue(IssueArgs),
    /// Print (or write with -o) a kubeconfig with embedded CA, certificate and key for `admin`,
    /// `controller-manager`, `scheduler`, `kube-proxy`, `kubelet NODE`, `user NAME` or a declared
    /// client certificate of the Kubernetes CA (`cert NAME [NODE]`).
    Kubeconfig(KubeconfigArgs),
    /// One row per CA, key pair and certificate: expiry, time left and state (ok, renew, expired,
    /// drift, missing, stale-secret). Exit 1 when any row needs action.
    Status(StatusArgs),
    /// Deep check of chains, key pairs, subjects, SANs, usages, secrets' recipients, the Nix
    /// files, key file modes and git. One line per problem; exit 1 if any.
    Verify,
    /// Renew every leaf that expires within the window or drifted from the config, and
    /// re-encrypt secrets whose recipients changed. With --ca or --service-account: rotate a CA
    /// or the service-account key with a trust overlap (then --finish).
    Rotate(RotateArgs),
    /// Ask every node's etcd, apiserver and kubelet over TLS (no client key needed) which
    /// certificate it serves (current, old or unknown) and which client CAs it accepts; exit 1
    /// when any is behind.
    Rollout(RolloutArgs),
    /// Revoke certificates of the etcd CA (`node-02/etcd-peer`, `etcd/apiserver-etcd-client`):
    /// list them on etcd/crl.der, which etcd checks, and reissue them with new keys. An extra
    /// user (`users/NAME`) is removed instead: the Kubernetes CA has no revocation.
    Revoke(RevokeArgs),
    /// Adopt a PKI made elsewhere, keeping its CAs and every certificate that still fits: the
    /// running cluster notices nothing. Needs pki/kpki.toml with the cluster's nodes.
    Import {
        #[command(subcommand)]
        from: ImportFrom,
    },
    /// Print the script that registers kpki's shell completion, which offers profiles, CA
    /// names and the node and user names of the cluster directory the shell is in
    /// (bash: `source <(kpki completions bash)`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Where `kpki import` takes a PKI from.
#[derive(Debug, Subcommand)]
pub enum ImportFrom {
    /// One control-plane node's /etc/kubernetes/pki, copied here; once per control-plane node.
    Kubeadm {
        /// The copy of /etc/kubernetes/pki.
        #[arg(value_name = "DIR")]
        source: PathBuf,
        /// The node it comes from, as pki/kpki.toml names it.
        #[arg(long, value_name = "NAME")]
        node: String,
    },
    /// One node's easyCerts files in one directory: cfssl's ca.pem and ca-key.pem (from
    /// /var/lib/cfssl) and /var/lib/kubernetes/secrets/*.pem.
    Easycerts {
        /// The directory holding the node's files.
        #[arg(value_name = "DIR")]
        source: PathBuf,
        /// The node it comes from, as pki/kpki.toml names it.
        #[arg(long, value_name = "NAME")]
        node: String,
    },
    /// Any directory: each file mapped to the path under pki/ it becomes
    /// (`--map ca.crt=kubernetes/ca.pem --map ca.key=kubernetes/ca-key.pem`).
    Dir {
        /// The directory holding the files.
        #[arg(value_name = "DIR")]
        source: PathBuf,
        #[arg(long = "map", value_name = "FILE=PATH", required = true, value_parser = parse_map)]
        maps: Vec<(String, String)>,
    },
}

/// `FILE=PATH`.
fn parse_map(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok((from.into(), to.into())),
        _ => Err(format!(
            "{s:?} is not FILE=PATH (e.g. ca.crt=kubernetes/ca.pem)"
        )),
    }
}
