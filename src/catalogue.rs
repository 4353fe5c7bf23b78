//! The certificate catalogue: every CA, key pair and certificate of the cluster as data.
//!
//! One static table ([`ENTRIES`]) drives every command. Runtime values (node names, addresses,
//! the cluster domain) stay out of it: [`Item`] binds an entry to a node and [`Item::subject`]
//! renders it against the current config, so a renewal always reflects today's config.

use std::net::IpAddr;

pub use crate::config::{CaName, Usage};
use crate::config::{Config, Declared, Node, Role, San, Span};
use crate::pem::FileKind;

/// What kind of material an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A self-signed certificate authority.
    Ca(CaName),
    /// A bare key pair: `NAME.pem` holds the public key (the service-account signing key).
    KeyPair,
    /// A certificate signed by a CA.
    Leaf { ca: CaName, usage: Usage },
}

/// A set of nodes: those with any of `roles`, and those named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection<'a> {
    pub roles: &'a [Role],
    pub nodes: &'a [String],
}

impl Selection<'_> {
    /// The nodes of one role.
    pub const fn role(role: &'static [Role]) -> Selection<'static> {
        Selection {
            roles: role,
            nodes: &[],
        }
    }

    /// Whether `node` is one of them.
    pub fn includes(&self, node: &Node) -> bool {
        self.roles.iter().any(|r| node.has(*r)) || self.nodes.contains(&node.name)
    }
}

/// Where an entry lives and who holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// One file pair for the cluster, in a fixed directory under `pki/`.
    Cluster { dir: &'static str },
    /// One file pair per node of the selection, under `pki/NODE/`.
    Node(Selection<'a>),
}

/// How the certificate's common name is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonName<'a> {
    /// As written; `{node}` stands for the node's name.
    Fixed(&'a str),
    /// The node's name.
    NodeName,
    /// `system:node:NODE`, the kubelet's identity to the apiserver.
    NodeIdentity,
}

/// Organizations (Kubernetes groups), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Groups<'a> {
    Fixed(&'static [&'static str]),
    Declared(&'a [String]),
}

impl Groups<'_> {
    fn to_vec(self) -> Vec<String> {
        match self {
            Groups::Fixed(g) => g.iter().map(|s| s.to_string()).collect(),
            Groups::Declared(g) => g.to_vec(),
        }
    }
}

/// Which subject alternative names the certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanRule<'a> {
    None,
    /// The node name, the in-cluster service names and IP, the node's addresses, the public API
    /// host, `api_sans`, and localhost.
    Apiserver,
    /// The node name, localhost, the node's addresses and `::1`.
    NodeAndLocal,
    /// The node name and the node's addresses.
    Node,
    /// Those declared; for a per-node certificate, after the node name and addresses.
    Declared(&'a [San]),
}

/// Which nodes may read a file (the admins always can).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers<'a> {
    /// Nobody but the admins.
    Admins,
    /// Every node.
    AllNodes,
    /// The nodes of a selection.
    Selected(Selection<'a>),
    /// The node a per-node entry belongs to.
    OwnNode,
}

/// One row of the catalogue: built in, or declared with `[[certificate]]`.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The name on the command line (`kpki issue PROFILE`).
    pub profile: &'a str,
    pub description: &'a str,
    pub scope: Scope<'a>,
    /// File stem: the entry is `STEM.pem` and `STEM-key.pem`.
    pub stem: &'a str,
    pub kind: Kind,
    pub cn: CommonName<'a>,
    pub groups: Groups<'a>,
    pub sans: SanRule<'a>,
    pub cert_readers: Readers<'a>,
    pub key_readers: Readers<'a>,
    /// The user that owns the files on a node (the service that reads them runs as it).
    pub owner: &'a str,
    /// Instead of `keys.leaf_validity`.
    pub validity: Option<Span>,
}

impl<'a> Entry<'a> {
    /// The name of its certificate (or public key) file, or of its key file, in its directory.
    pub fn file_name(&self, part: Part) -> String {
        [self.stem, part.suffix()].concat()
    }

    /// The entry of a `[[certificate]]` declaration.
    pub fn declared(d: &'a Declared) -> Entry<'a> {
        let selection = Selection {
            roles: &d.roles,
            nodes: &d.nodes,
        };
        let readers = match (d.per_node, d.roles.is_empty() && d.nodes.is_empty()) {
            (true, _) => Readers::OwnNode,
            (false, true) => Readers::Admins,
            (false, false) => Readers::Selected(selection),
        };
        Entry {
            profile: &d.name,
            description: "declared in kpki.toml ([[certificate]])",
            scope: match d.per_node {
                true => Scope::Node(selection),
                false => Scope::Cluster { dir: d.ca.dir() },
            },
            stem: &d.name,
            kind: Kind::Leaf {
                ca: d.ca,
                usage: d.usage,
            },
            cn: CommonName::Fixed(&d.cn),
            groups: Groups::Declared(&d.organizations),
            sans: SanRule::Declared(&d.sans),
            cert_readers: readers,
            key_readers: readers,
            owner: &d.owner,
            validity: d.validity,
        }
    }

    /// Whether the entry was declared in the config rather than built in.
    pub fn is_declared(&self) -> bool {
        matches!(self.sans, SanRule::Declared(_))
    }
}

const CP: &[Role] = &[Role::ControlPlane];

/// What every built-in entry has in common.
const BUILT_IN: Entry<'static> = Entry {
    profile: "",
    description: "",
    scope: Scope::Cluster { dir: "" },
    stem: "",
    kind: Kind::KeyPair,
    cn: CommonName::Fixed(""),
    groups: Groups::Fixed(&[]),
    sans: SanRule::None,
    cert_readers: Readers::Admins,
    key_readers: Readers::Admins,
    owner: "root",
    validity: None,
};

/// A cluster-wide client certificate of `ca`, read by the control plane as `kubernetes`.
const fn control_plane_client(
    profile: &'static str,
    description: &'static str,
    dir: &'static str,
    ca: CaName,
    cn: &'static str,
    groups: &'static [&'static str],
) -> Entry<'static> {
    Entry {
        profile,
        description,
        scope: Scope::Cluster { dir },
        stem: profile,
        kind: Kind::Leaf {
            ca,
            usage: Usage::Client,
        },
        cn: CommonName::Fixed(cn),
        groups: Groups::Fixed(groups),
        cert_readers: Readers::Selected(Selection::role(CP)),
        key_readers: Readers::Selected(Selection::role(CP)),
        owner: "kubernetes",
        ..BUILT_IN
    }
}

/// A certificate authority whose certificate `readers` get and whose key stays with the admins.
const fn ca(
    profile: &'static str,
    description: &'static str,
    name: CaName,
    cn: &'static str,
    readers: Readers<'static>,
) -> Entry<'static> {
    Entry {
        profile,
        description,
        scope: Scope::Cluster { dir: name.dir() },
        stem: "ca",
        kind: Kind::Ca(name),
        cn: CommonName::Fixed(cn),
        cert_readers: readers,
        ..BUILT_IN
    }
}

/// A certificate of each node with `role` (a one-role slice), read only by that node.
const fn per_node(
    profile: &'static str,
    description: &'static str,
    role: &'static [Role],
    kind: Kind,
    (cn, groups): (CommonName<'static>, &'static [&'static str]),
    sans: SanRule<'static>,
    owner: &'static str,
) -> Entry<'static> {
    Entry {
        profile,
        description,
        scope: Scope::Node(Selection::role(role)),
        stem: profile,
        kind,
        cn,
        groups: Groups::Fixed(groups),
        sans,
        cert_readers: Readers::OwnNode,
        key_readers: Readers::OwnNode,
        owner,
        ..BUILT_IN
    }
}

const NODE_IDENTITY: (CommonName, &[&str]) = (CommonName::NodeIdentity, &["system:nodes"]);
const NODE_NAME: (CommonName, &[&str]) = (CommonName::NodeName, &[]);

/// Every CA, key pair and certificate, CAs first (an entry's issuer always comes before it).
pub static ENTRIES: &[Entry<'static>] = &[
    ca(
        "kubernetes-ca",
        "Kubernetes CA: signs the apiserver, kubelets and cluster clients",
        CaName::Kubernetes,
        "kubernetes-ca",
        Readers::AllNodes,
    ),
    ca(
        "etcd-ca",
        "etcd CA: signs etcd members and etcd clients",
        CaName::Etcd,
        "etcd-ca",
        Readers::Selected(Selection::role(&[Role::Etcd, Role::ControlPlane])),
    ),
    ca(
        "front-proxy-ca",
        "front-proxy CA: signs the apiserver's aggregation-layer client",
        CaName::FrontProxy,
        "kubernetes-front-proxy-ca",
        Readers::Selected(Selection::role(CP)),
    ),
    Entry {
        profile: "service-account",
        description: "service-account token signing key pair",
        scope: Scope::Cluster {
            dir: "service-account",
        },
        stem: "sa",
        kind: Kind::KeyPair,
        cert_readers: Readers::Selected(Selection::role(CP)),
        key_readers: Readers::Selected(Selection::role(CP)),
        owner: "kubernetes",
        ..BUILT_IN
    },
    Entry {
        cert_readers: Readers::Admins,
        key_readers: Readers::Admins,
        owner: "root",
        ..control_plane_client(
            "admin",
            "cluster administrator (system:masters), for kubectl",
            "kubernetes",
            CaName::Kubernetes,
            "kubernetes-admin",
            &["system:masters"],
        )
    },
    control_plane_client(
        "controller-manager",
        "kube-controller-manager's client certificate",
        "kubernetes",
        CaName::Kubernetes,
        "system:kube-controller-manager",
        &[],
    ),
    control_plane_client(
        "scheduler",
        "kube-scheduler's client certificate",
        "kubernetes",
        CaName::Kubernetes,
        "system:kube-scheduler",
        &[],
    ),
    control_plane_client(
        "apiserver-kubelet-client",
        "the apiserver's client certificate to kubelets",
        "kubernetes",
        CaName::Kubernetes,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    ),
    Entry {
        cert_readers: Readers::Selected(Selection::role(&[Role::Worker])),
        key_readers: Readers::Selected(Selection::role(&[Role::Worker])),
        owner: "root",
        ..control_plane_client(
            "kube-proxy",
            "kube-proxy's client certificate",
            "kubernetes",
            CaName::Kubernetes,
            "system:kube-proxy",
            &["system:node-proxier"],
        )
    },
    control_plane_client(
        "apiserver-etcd-client",
        "the apiserver's client certificate to etcd",
        "etcd",
        CaName::Etcd,
        "kube-apiserver-etcd-client",
        &[],
    ),
    Entry {
        stem: "client",
        ..control_plane_client(
            "front-proxy-client",
            "the apiserver's client certificate to aggregated API servers",
            "front-proxy",
            CaName::FrontProxy,
            "front-proxy-client",
            &[],
        )
    },
    per_node(
        "apiserver",
        "kube-apiserver's serving certificate",
        &[Role::ControlPlane],
        Kind::Leaf {
            ca: CaName::Kubernetes,
            usage: Usage::Server,
        },
        (CommonName::Fixed("kube-apiserver"), &[]),
        SanRule::Apiserver,
        "kubernetes",
    ),
    per_node(
        "etcd-server",
        "etcd's serving certificate for clients",
        &[Role::Etcd],
        Kind::Leaf {
            ca: CaName::Etcd,
            usage: Usage::ServerAndClient,
        },
        NODE_NAME,
        SanRule::NodeAndLocal,
        "etcd",
    ),
    per_node(
        "etcd-peer",
        "etcd's certificate for its peers",
        &[Role::Etcd],
        Kind::Leaf {
            ca: CaName::Etcd,
            usage: Usage::ServerAndClient,
        },
        NODE_NAME,
        SanRule::Node,
        "etcd",
    ),
    per_node(
        "kubelet",
        "the kubelet's client certificate to the apiserver",
        &[Role::Worker],
        Kind::Leaf {
            ca: CaName::Kubernetes,
            usage: Usage::Client,
        },
        NODE_IDENTITY,
        SanRule::None,
        "root",
    ),
    per_node(
        "kubelet-serving",
        "the kubelet's serving certificate",
        &[Role::Worker],
        Kind::Leaf {
            ca: CaName::Kubernetes,
            usage: Usage::Server,
        },
        NODE_IDENTITY,
        SanRule::Node,
        "root",
    ),
];

/// The profiles `kpki issue` takes, for its `--help`: the built-in leaves (those per node
/// marked `NODE`, with the role a node needs), `node` and `client`.
pub fn profiles_help() -> String {
    let mut rows: Vec<(String, String)> = ENTRIES
        .iter()
        .filter(|e| matches!(e.kind, Kind::Leaf { .. }))
        .map(|e| match e.scope {
            Scope::Node(selection) => {
                let roles: Vec<&str> = selection.roles.iter().map(|r| r.name()).collect();
                (
                    format!("{} NODE", e.profile),
                    format!(
                        "{} (nodes with the {} role)",
                        e.description,
                        roles.join("/")
                    ),
                )
            }
            Scope::Cluster { .. } => (e.profile.to_string(), e.description.to_string()),
        })
        .collect();
    rows.push(("node NODE".into(), "everything the node holds".into()));
    rows.push((
        "client --cn NAME".into(),
        "an extra client certificate of the Kubernetes CA (users/NAME)".into(),
    ));
    let width = rows.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    let mut text = String::from("Profiles:\n");
    for (profile, what) in rows {
        text.push_str(&format!("  {profile:<width$}  {what}\n"));
    }
    text.push_str("Certificates declared with [[certificate]] in pki/kpki.toml are profiles too.");
    text
}

/// Every entry under `config`: the built-in ones, then those it declares.
pub fn entries(config: &Config) -> impl Iterator<Item = Entry<'_>> {
    ENTRIES
        .iter()
        .copied()
        .chain(config.certificates.iter().map(Entry::declared))
}

/// The entry named `profile` on the command line, built in or declared.
pub fn entry<'c>(config: &'c Config, profile: &str) -> Option<Entry<'c>> {
    entries(config).find(|e| e.profile == profile)
}

/// The built-in entry named `profile`.
pub fn builtin(profile: &str) -> Option<Entry<'static>> {
    ENTRIES.iter().copied().find(|e| e.profile == profile)
}

/// The CA entry of `name`.
pub fn ca_entry(name: CaName) -> Entry<'static> {
    ENTRIES
        .iter()
        .copied()
        .find(|e| e.kind == Kind::Ca(name))
        .expect("the catalogue has every CA")
}

/// The item of the CA `name` (its certificate is `DIR/ca.pem`).
pub fn ca_item(name: CaName) -> Item<'static> {
    shared(ca_entry(name))
}

/// The cluster admin's certificate (`kubernetes/admin`).
pub fn admin() -> Item<'static> {
    shared(builtin("admin").expect("the admin is catalogued"))
}

/// The service-account key pair.
pub fn service_account() -> Item<'static> {
    shared(builtin("service-account").expect("the service-account pair is catalogued"))
}

/// The kubelet's client certificate entry, one per worker.
pub fn kubelet() -> Entry<'static> {
    builtin("kubelet").expect("the kubelet is catalogued")
}

/// The certificate file of the CA `name`, relative to `pki/`.
pub fn ca_file(name: CaName) -> String {
    ca_item(name).file(Part::Cert)
}

/// The item of the built-in cluster-wide `profile` (`admin`, `service-account`, ...); `None`
/// for a per-node or unknown one.
pub fn shared_item(profile: &str) -> Option<Item<'static>> {
    builtin(profile).and_then(|e| Item::new(e, None))
}

/// A cluster-wide entry's item, for entries of the static table that are cluster-wide by
/// construction (the CAs; `cas_are_cluster_wide` checks it).
fn shared(entry: Entry<'static>) -> Item<'static> {
    let Scope::Cluster { dir } = entry.scope else {
        panic!(
            "{} is in the catalogue as a cluster-wide entry",
            entry.profile
        )
    };
    Item {
        entry,
        node: None,
        dir,
    }
}

/// File stems kpki uses besides the catalogue's, in each CA's directory: a rotation's
/// cross-signed CA and previous key, and the etcd CA's revocation list.
const RESERVED_STEMS: &[&str] = &["ca-cross", "ca-previous", "crl"];

/// Names the command line gives a meaning of their own (`issue node`, `issue client`).
const RESERVED_PROFILES: &[&str] = &["node", "client", "user", "cert"];

/// Refuses a `[[certificate]]` whose name is taken: by a catalogue entry (as a profile, or as a
/// file in the same directory), by a file kpki keeps next to a CA, or by a word of the command
/// line. Errors name the declaration's line.
pub fn check_declared(config: &Config) -> Result<(), String> {
    for d in &config.certificates {
        let taken = |why: String| {
            format!(
                "line {}: certificate \"{}\": the name is taken: {why}",
                d.line, d.name
            )
        };
        if let Some(e) = builtin(&d.name) {
            return Err(taken(format!(
                "it is the catalogue's {} ({})",
                e.profile, e.description
            )));
        }
        if RESERVED_PROFILES.contains(&d.name.as_str()) {
            return Err(taken(
                "kpki issue and kpki kubeconfig use it as a word".into(),
            ));
        }
        let declared = Entry::declared(d);
        let clash = ENTRIES.iter().find(|e| {
            e.stem == d.name
                && match (e.scope, declared.scope) {
                    (Scope::Cluster { dir }, Scope::Cluster { dir: mine }) => dir == mine,
                    (Scope::Node(_), Scope::Node(_)) => true,
                    _ => false,
                }
        });
        if let Some(e) = clash {
            return Err(taken(format!(
                "the catalogue's {} has the same files",
                e.profile
            )));
        }
        if !d.per_node && RESERVED_STEMS.contains(&d.name.as_str()) {
            return Err(taken(format!(
                "kpki keeps its own {}.pem files beside the CAs",
                d.name
            )));
        }
    }
    Ok(())
}

/// Which of an item's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The certificate (or public key): `NAME.pem`.
    Cert,
    /// The private key: `NAME-key.pem`.
    Key,
}

impl Part {
    /// What follows an entry's stem in the part's file name.
    fn suffix(self) -> &'static str {
        match self {
            Part::Cert => ".pem",
            Part::Key => "-key.pem",
        }
    }
}

/// A catalogue entry bound to a node (for per-node entries): one concrete file pair. Made only
/// by the constructors below, so a per-node entry always has its node.
#[derive(Debug, Clone, Copy)]
pub struct Item<'c> {
    entry: Entry<'c>,
    node: Option<&'c Node>,
    /// The directory under `pki/`: the entry's own, or the node's name.
    dir: &'c str,
}

impl<'c> Item<'c> {
    /// `entry` bound to `node`: `None` when a per-node entry has no node or a cluster-wide one
    /// has one. (Whether the node's roles select the entry is the caller's to check.)
    pub fn new(entry: Entry<'c>, node: Option<&'c Node>) -> Option<Item<'c>> {
        let dir = match (entry.scope, node) {
            (Scope::Cluster { dir }, None) => dir,
            (Scope::Node(_), Some(node)) => &node.name,
            _ => return None,
        };
        Some(Item { entry, node, dir })
    }

    /// The catalogue row.
    pub fn entry(&self) -> Entry<'c> {
        self.entry
    }

    /// The node of a per-node item.
    pub fn node(&self) -> Option<&'c Node> {
        self.node
    }

    /// The directory under `pki/`.
    pub fn dir(&self) -> &'c str {
        self.dir
    }

    /// `DIR/STEM`, the item's name in output and errors.
    pub fn name(&self) -> String {
        format!("{}/{}", self.dir(), self.entry.stem)
    }

    /// The path of one part, relative to `pki/`. Joined, not formatted: every command names
    /// every file several times (with `format!`, 8% of a no-op `rotate`'s instructions at
    /// 1,000 nodes).
    pub fn file(&self, part: Part) -> String {
        [self.dir(), "/", self.entry.stem, part.suffix()].concat()
    }

    /// The subject and SANs this item must have under `config`.
    pub fn subject(&self, config: &Config) -> Subject {
        let node_name = self.node.map(|n| n.name.as_str()).unwrap_or_default();
        let common_name = match self.entry.cn {
            CommonName::Fixed(cn) => cn.replace("{node}", node_name),
            CommonName::NodeName => node_name.to_string(),
            CommonName::NodeIdentity => format!("system:node:{node_name}"),
        };
        Subject {
            common_name,
            organizations: self.entry.groups.to_vec(),
            sans: self.sans(config),
        }
    }

    fn sans(&self, config: &Config) -> Vec<San> {
        let Some(node) = self.node else {
            return match self.entry.sans {
                SanRule::Declared(sans) => dedup(sans.to_vec()),
                _ => Vec::new(),
            };
        };
        let dns = |s: &str| San::Dns(s.to_string());
        let addresses = node.addresses.iter().map(|a| San::Ip(*a));
        let localhost = [
            dns("localhost"),
            San::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
        ];
        let sans: Vec<San> = match self.entry.sans {
            SanRule::None => Vec::new(),
            SanRule::Node => std::iter::once(dns(&node.name)).chain(addresses).collect(),
            SanRule::Declared(extra) => std::iter::once(dns(&node.name))
                .chain(addresses)
                .chain(extra.iter().cloned())
                .collect(),
            SanRule::NodeAndLocal => std::iter::once(dns(&node.name))
                .chain([dns("localhost")])
                .chain(addresses)
                .chain([localhost[1].clone()])
                .collect(),
            SanRule::Apiserver => {
                let c = &config.cluster;
                let service = "kubernetes.default.svc";
                [
                    dns(&node.name),
                    dns("kubernetes"),
                    dns("kubernetes.default"),
                    dns(service),
                ]
                .into_iter()
                .chain([
                    dns(&format!("{service}.cluster")),
                    dns(&format!("{service}.{}", c.domain)),
                ])
                .chain([San::Ip(c.service_ip)])
                .chain(addresses)
                .chain([c.api_server_host.clone()])
                .chain(c.api_sans.iter().cloned())
                .chain(localhost)
                .collect()
            }
        };
        dedup(sans)
    }

    /// The nodes, besides the admins, that may read `part` of this item.
    pub fn readers(&self, part: Part, config: &'c Config) -> Vec<&'c Node> {
        let readers = match part {
            Part::Cert => self.entry.cert_readers,
            Part::Key => self.entry.key_readers,
        };
        match readers {
            Readers::Admins => Vec::new(),
            Readers::AllNodes => config.nodes.iter().collect(),
            Readers::Selected(selection) => config
                .nodes
                .iter()
                .filter(|n| selection.includes(n))
                .collect(),
            Readers::OwnNode => self.node.into_iter().collect(),
        }
    }
}

/// The directory under `pki/` of the extra client certificates (`kpki issue client`).
pub const USERS_DIR: &str = "users";

/// What an extra user's certificate is: a client of the Kubernetes CA.
pub const USER_KIND: Kind = Kind::Leaf {
    ca: CaName::Kubernetes,
    usage: Usage::Client,
};

/// An extra user's name in status rows, messages and `kpki revoke` (`users/alice`).
pub fn user_name(user: &str) -> String {
    format!("{USERS_DIR}/{user}")
}

/// What kpki certifies: a catalogue item, or an extra user (whose subject is data, taken from
/// `kpki issue client` or its certificate, not from the config).
#[derive(Debug, Clone)]
pub enum Target<'c> {
    /// A catalogue item.
    Item(Box<Item<'c>>),
    /// An extra client of the Kubernetes CA (`pki/users/NAME.pem`) with this subject.
    User(Subject),
}

impl Target<'_> {
    /// Its certificate (or public key) file, or its key file, relative to `pki/`.
    pub fn file(&self, part: Part) -> String {
        match self {
            Target::Item(item) => item.file(part),
            Target::User(subject) => user_file(&subject.common_name, part),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Target::Item(item) => item.entry().kind,
            Target::User(_) => USER_KIND,
        }
    }

    pub fn subject(&self, config: &Config) -> Subject {
        match self {
            Target::Item(item) => item.subject(config),
            Target::User(subject) => subject.clone(),
        }
    }

    /// How it is named in messages, as `kpki status` names it.
    pub fn name(&self) -> String {
        match self {
            Target::Item(item) => item.name(),
            Target::User(subject) => user_name(&subject.common_name),
        }
    }

    /// The validity its declaration sets, if any.
    pub fn declared_validity(&self) -> Option<Span> {
        match self {
            Target::Item(item) => item.entry().validity,
            Target::User(_) => None,
        }
    }
}

/// The directories of `pki/` that are no node's: the CAs', the service-account key's, the
/// users'.
pub fn cluster_dirs() -> std::collections::BTreeSet<&'static str> {
    ENTRIES
        .iter()
        .filter_map(|e| match e.scope {
            Scope::Cluster { dir } => Some(dir),
            Scope::Node(_) => None,
        })
        .chain([USERS_DIR])
        .collect()
}

/// Checks the name of an extra client (`kpki issue client --cn NAME`, `kpki kubeconfig user
/// NAME`), which is also its file name under `pki/users/`: letters, digits, `.`, `_`, `-`, `@`,
/// at most 64, not starting with `.` or `-`, not ending in `-key`. No path can be formed from it.
pub fn check_user_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && !name.ends_with("-key")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a user name (letters, digits, '.', '_', '-', '@'; at most 64; not starting with '.' or '-', not ending in -key)"
        ))
    }
}

/// The extra user whose certificate `rel` (under `pki/`) is, if it is one: the inverse of
/// [`user_file`] for the certificate part.
pub fn user_of(rel: &str) -> Option<&str> {
    let name = rel.strip_prefix(USERS_DIR)?.strip_prefix('/')?;
    name.strip_suffix(".pem")
        .filter(|user| check_user_name(user).is_ok())
}

/// The path under `pki/` of an extra client's certificate or key.
pub fn user_file(user: &str, part: Part) -> String {
    match part {
        Part::Cert => format!("{USERS_DIR}/{user}.pem"),
        Part::Key => format!("{USERS_DIR}/{user}-key.pem"),
    }
}

/// During a rotation of `ca`: the new CA certificate cross-signed by the old CA.
pub fn cross_file(ca: CaName) -> String {
    format!("{}/ca-cross.pem", ca.dir())
}

/// During a rotation of `ca`: the old CA's key, deleted when the rotation finishes.
pub fn previous_key_file(ca: CaName) -> String {
    format!("{}/ca-previous-key.pem", ca.dir())
}

/// The etcd CA's certificate revocation list as etcd reads it: DER, the one form etcd 3.5 and
/// later parse (`x509.ParseRevocationList`); 3.4 takes it too. etcd is the one consumer that
/// checks a CRL.
pub fn crl_file() -> String {
    format!("{}/crl.der", CaName::Etcd.dir())
}

/// The same list in PEM, for people and openssl (`openssl crl -in`); no service reads it.
pub fn crl_pem_file() -> String {
    format!("{}/crl.pem", CaName::Etcd.dir())
}

/// Both files of the revocation list, the one etcd reads first.
pub fn crl_files() -> [String; 2] {
    [crl_file(), crl_pem_file()]
}

/// Where the admin kubeconfig is kept, relative to `pki/` (it never exists there in plaintext).
pub const ADMIN_KUBECONFIG: &str = "kubernetes/admin.kubeconfig";

/// The revocation list's owner on the etcd nodes, which read it.
const CRL_OWNER: &str = "etcd";

/// One file kpki manages, as `secrets/` holds it: what it is and who may read it.
pub struct ManagedFile<'c> {
    /// The path under `pki/`; the encrypted copy is `secrets/REL.age`.
    pub rel: String,
    pub kind: FileKind,
    /// Its `age.secrets` name on the nodes that read it.
    pub name: String,
    /// The user that owns it on a node.
    pub owner: &'c str,
    /// The nodes the catalogue gives it to; those with a host key can decrypt it.
    pub readers: Vec<&'c Node>,
}

impl ManagedFile<'_> {
    /// A file for the admins only.
    fn admins_only<'c>(rel: String) -> ManagedFile<'c> {
        ManagedFile {
            name: String::new(),
            kind: file_kind(&rel),
            rel,
            owner: "root",
            readers: Vec::new(),
        }
    }
}

/// Every file kpki manages under `config`: both files of each item, those of the extra
/// `users`, the rotation files and revocation lists that `exists` says are there, and the admin
/// kubeconfig. Status, verify, sealing, the Nix files and the manifest all go by this list.
pub fn files<'c>(
    config: &'c Config,
    users: &[String],
    exists: impl Fn(&str) -> crate::error::Result<bool>,
) -> crate::error::Result<Vec<ManagedFile<'c>>> {
    let mut files: Vec<ManagedFile<'c>> = items(config)
        .into_iter()
        .flat_map(|item| {
            [Part::Cert, Part::Key].map(|part| ManagedFile {
                kind: file_kind(&item.file(part)),
                rel: item.file(part),
                name: secret_name(&item, part),
                owner: item.entry().owner,
                readers: item.readers(part, config),
            })
        })
        .collect();
    for user in users {
        for part in [Part::Cert, Part::Key] {
            files.push(ManagedFile::admins_only(user_file(user, part)));
        }
    }
    for ca in CAS {
        for rel in [cross_file(ca), previous_key_file(ca)] {
            if exists(&rel)? {
                files.push(ManagedFile::admins_only(rel));
            }
        }
    }
    for crl in crl_files() {
        if exists(&crl)? {
            files.push(ManagedFile {
                kind: file_kind(&crl),
                name: file_secret_name(&crl),
                rel: crl,
                owner: CRL_OWNER,
                readers: config.nodes.iter().filter(|n| n.has(Role::Etcd)).collect(),
            });
        }
    }
    files.push(ManagedFile::admins_only(ADMIN_KUBECONFIG.to_string()));
    Ok(files)
}

/// The `age.secrets` name of a file on a node: `kpki-DIR-FILE` for cluster-wide files and
/// `kpki-FILE` for the node's own, so a service module reads the same name on every node.
pub fn secret_name(item: &Item<'_>, part: Part) -> String {
    let file = item.file(part);
    let base = file.rsplit('/').next().unwrap_or_default();
    match item.entry().scope {
        Scope::Cluster { dir } => ["kpki-", dir, "-", base].concat(),
        Scope::Node(_) => ["kpki-", base].concat(),
    }
}

/// The `age.secrets` name of a file outside the catalogue's items (the revocation list).
pub fn file_secret_name(rel: &str) -> String {
    format!("kpki-{}", rel.replace('/', "-"))
}

/// The kind of `pki/REL`, by the catalogue: `*-key.pem` a private key, the service-account
/// `sa.pem` public keys, the revocation list's two forms, `*.kubeconfig` a kubeconfig, any
/// other `*.pem` certificates.
pub fn file_kind(rel: &str) -> FileKind {
    // Asked for every file of every command (40,000 at 5,000 nodes): the catalogue's few files
    // of their own kind are named once.
    static OWN_KINDS: std::sync::LazyLock<[(String, FileKind); 3]> =
        std::sync::LazyLock::new(|| {
            [
                (service_account().file(Part::Cert), FileKind::PublicKeys),
                (crl_pem_file(), FileKind::Crl),
                (crl_file(), FileKind::CrlDer),
            ]
        });
    if rel.ends_with(".kubeconfig") {
        FileKind::Kubeconfig
    } else if rel.ends_with("-key.pem") {
        FileKind::PrivateKey
    } else {
        OWN_KINDS
            .iter()
            .find(|(file, _)| file == rel)
            .map_or(FileKind::Certificates, |(_, kind)| *kind)
    }
}

/// Whether `rel` is a CA's certificate or key file (`etcd/ca.pem`, `kubernetes/ca-key.pem`).
pub fn is_ca_file(rel: &str) -> bool {
    CAS.iter().any(|ca| {
        [Part::Cert, Part::Key]
            .iter()
            .any(|p| ca_item(*ca).file(*p) == rel)
    })
}

/// The role a node has when it holds the built-in per-node file `STEM.pem` or `STEM-key.pem`
/// (`etcd-peer`: etcd); `None` for any other file.
pub fn role_of_node_file(file: &str) -> Option<Role> {
    let stem = file.strip_suffix(".pem")?;
    let stem = stem.strip_suffix("-key").unwrap_or(stem);
    ENTRIES.iter().find_map(|e| match e.scope {
        Scope::Node(Selection { roles: [role], .. }) if e.stem == stem => Some(*role),
        _ => None,
    })
}

/// Every CA.
pub const CAS: [CaName; 3] = [CaName::Kubernetes, CaName::Etcd, CaName::FrontProxy];

/// The CA whose certificates can be revoked: etcd is the one consumer in a cluster that reads
/// a revocation list.
pub const REVOCABLE_CA: CaName = CaName::Etcd;

/// Keeps the first occurrence of each SAN, in order.
fn dedup(sans: Vec<San>) -> Vec<San> {
    let mut seen = std::collections::HashSet::new();
    sans.into_iter()
        .filter(|s| seen.insert(s.clone()))
        .collect()
}

/// A rendered subject: what the certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<San>,
}

/// Every item of the catalogue under `config`, in creation order (issuers first).
pub fn items(config: &Config) -> Vec<Item<'_>> {
    let mut items: Vec<Item<'_>> = entries(config)
        .filter(|e| matches!(e.scope, Scope::Cluster { .. }))
        .filter_map(|entry| Item::new(entry, None))
        .collect();
    for node in &config.nodes {
        items.extend(node_items(config, node));
    }
    items
}

/// The per-node items that `node` holds, by its roles (and, for declared ones, by name).
pub fn node_items<'c>(config: &'c Config, node: &'c Node) -> impl Iterator<Item = Item<'c>> {
    entries(config).filter_map(move |entry| match entry.scope {
        Scope::Node(selection) if selection.includes(node) => Item::new(entry, Some(node)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_catalogue() {
        assert_eq!(file_kind("kubernetes/ca.pem"), FileKind::Certificates);
        assert_eq!(file_kind("kubernetes/ca-key.pem"), FileKind::PrivateKey);
        assert_eq!(file_kind("service-account/sa.pem"), FileKind::PublicKeys);
        assert_eq!(
            file_kind("service-account/sa-key.pem"),
            FileKind::PrivateKey
        );
        assert_eq!(file_kind(ADMIN_KUBECONFIG), FileKind::Kubeconfig);
        assert_eq!(file_kind("etcd/crl.pem"), FileKind::Crl);
        assert_eq!(file_kind("etcd/crl.der"), FileKind::CrlDer);
        assert_eq!(file_kind("users/alice.pem"), FileKind::Certificates);
    }
    use crate::config::DEFAULT_CONFIG;
    use std::collections::HashSet;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(DEFAULT_CONFIG, Path::new("default")).unwrap()
    }

    #[test]
    fn profiles_and_files_are_unique() {
        let profiles: HashSet<_> = ENTRIES.iter().map(|e| e.profile).collect();
        assert_eq!(profiles.len(), ENTRIES.len());
        let config = config();
        let items = items(&config);
        let files: HashSet<_> = items
            .iter()
            .flat_map(|i| [i.file(Part::Cert), i.file(Part::Key)])
            .collect();
        assert_eq!(files.len(), 2 * items.len());
    }

    #[test]
    fn issuers_are_cas_listed_before_their_leaves() {
        for (i, e) in ENTRIES.iter().enumerate() {
            if let Kind::Leaf { ca, .. } = e.kind {
                let at = ENTRIES.iter().position(|c| c.kind == Kind::Ca(ca)).unwrap();
                assert!(at < i, "{} is listed before its CA", e.profile);
            }
        }
    }

    #[test]
    fn server_certificates_have_sans_and_ca_keys_stay_with_admins() {
        for e in ENTRIES {
            match e.kind {
                Kind::Leaf { usage, .. } if usage.server() => {
                    assert_ne!(e.sans, SanRule::None, "{}", e.profile)
                }
                Kind::Ca(_) => assert_eq!(e.key_readers, Readers::Admins),
                _ => {}
            }
        }
    }

    #[test]
    fn every_directory_kpki_uses_is_reserved_from_node_names() {
        use crate::config::RESERVED_NAMES;
        for e in ENTRIES {
            if let Scope::Cluster { dir } = e.scope {
                assert!(RESERVED_NAMES.contains(&dir), "{dir}");
            }
        }
        assert!(RESERVED_NAMES.contains(&USERS_DIR));
    }

    #[test]
    fn user_names_cannot_form_paths() {
        for bad in [
            "../kubernetes/ca",
            "a/b",
            "..",
            ".x",
            "-x",
            "bob-key",
            "",
            "a b",
            "a\nb",
        ] {
            assert!(check_user_name(bad).is_err(), "{bad}");
        }
        for good in ["alice", "bob@example.org", "ci_bot-2"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn cas_are_cluster_wide() {
        for ca in CAS {
            assert!(Item::new(ca_entry(ca), None).is_some(), "{ca:?}");
        }
    }

    #[test]
    fn apiserver_sans_follow_the_config() {
        let config = config();
        let node = config.node("node-02").unwrap();
        let item = Item::new(builtin("apiserver").unwrap(), Some(node)).unwrap();
        let sans: Vec<String> = item
            .subject(&config)
            .sans
            .iter()
            .map(|s| match s {
                San::Dns(d) => d.clone(),
                San::Ip(ip) => ip.to_string(),
            })
            .collect();
        assert_eq!(
            sans,
            [
                "node-02",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster",
                "kubernetes.default.svc.cluster.local",
                "fd00:10:96::1",
                "2001:db8::2",
                "2001:db8::1",
                "localhost",
                "::1"
            ]
        );
    }
}
