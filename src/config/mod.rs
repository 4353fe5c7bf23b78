//! `pki/kpki.toml`: its schema, the embedded default, and validation into typed values.
//!
//! The file is parsed into plain serde structs (which reject unknown keys), then every value is
//! checked and converted, so the rest of kpki only ever sees a valid [`Config`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

mod certificate;
pub use certificate::Declared;

/// The default config, the seed's three-node IPv6 cluster. Written verbatim by `kpki init`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// What a node does; decides which catalogue entries it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Etcd,
    Worker,
}

impl Role {
    /// Every role, the default of a node that names none.
    pub const ALL: [Role; 3] = [Role::ControlPlane, Role::Etcd, Role::Worker];

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Etcd => "etcd",
            Role::Worker => "worker",
        }
    }
}

/// The three certificate authorities, named as their directories under `pki/`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum CaName {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl CaName {
    /// The CA's directory under `pki/` and its name on the command line.
    pub const fn dir(self) -> &'static str {
        match self {
            CaName::Kubernetes => "kubernetes",
            CaName::Etcd => "etcd",
            CaName::FrontProxy => "front-proxy",
        }
    }
}

/// What a leaf certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
    ServerAndClient,
}

impl Usage {
    /// Whether the certificate authenticates a server.
    pub fn server(self) -> bool {
        matches!(self, Usage::Server | Usage::ServerAndClient)
    }

    /// Whether the certificate authenticates a client.
    pub fn client(self) -> bool {
        matches!(self, Usage::Client | Usage::ServerAndClient)
    }
}

/// The key algorithm of every CA and certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

/// A span of time written as `30d`, `12h`, `1y` (365 days), `2w`, `90m` or `45s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub time::Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a duration (use e.g. 30d, 12h, 1y)");
        let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = s.split_at(split);
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "y" => 365 * 86_400,
            _ => return Err(bad()),
        };
        if n == 0 || n > 1000 * 365 * 86_400 / seconds {
            return Err(format!(
                "\"{s}\" is out of range (more than zero, at most 1000y)"
            ));
        }
        Ok(Span(time::Duration::seconds(n * seconds)))
    }
}

/// Parses an RFC 3339 timestamp or a `YYYY-MM-DD` date (midnight UTC).
pub fn parse_date(s: &str) -> Result<time::OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &format)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| format!("\"{s}\" is not a date (use YYYY-MM-DD or RFC 3339)"))
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl FromStr for San {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<IpAddr>() {
            Ok(ip) => Ok(San::Ip(ip)),
            Err(_) if is_dns_name(s) => Ok(San::Dns(s.to_ascii_lowercase())),
            Err(_) => Err(format!("\"{s}\" is neither an IP address nor a DNS name")),
        }
    }
}

/// `[cluster]`, validated.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub domain: String,
    /// The service CIDR as written (kube-apiserver's `--service-cluster-ip-range`).
    pub service_cidr: String,
    /// The first address of the service CIDR: the in-cluster `kubernetes` service IP.
    pub service_ip: IpAddr,
    /// The prefix length of `service_cidr`.
    pub service_prefix: u8,
    /// The URL as written, for kubeconfigs.
    pub api_server: String,
    /// The host part of `api_server`, which the apiserver certificate must name.
    pub api_server_host: San,
    /// The port of `api_server` (6443 when it names none).
    pub api_server_port: u16,
    pub api_sans: Vec<San>,
}

/// `[keys]`, validated.
#[derive(Debug, Clone)]
pub struct Keys {
    pub algorithm: Algorithm,
    pub ca_validity: Span,
    pub leaf_validity: Span,
    pub renew_before: Span,
}

/// One `[[node]]`, validated.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub roles: Vec<Role>,
    /// The node's SSH host public key; `None` means its secrets go to the admins only.
    pub host_key: Option<String>,
}

impl Node {
    /// Whether the node has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The whole config, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub cluster: Cluster,
    pub keys: Keys,
    /// Recipients that can decrypt every secret, as written.
    pub admins: Vec<String>,
    /// Whether `pki/` keeps plaintext private keys (`secrets.plaintext_keys`, default true);
    /// without, keys are decrypted into memory when a command needs them and never written.
    pub plaintext_keys: bool,
    pub nodes: Vec<Node>,
    /// Certificates declared with `[[certificate]]`, beyond the catalogue.
    pub certificates: Vec<Declared>,
    /// Where the nodes' TLS servers listen (`[ports]`).
    pub ports: Ports,
    /// `sha256:HEX` of the file's text and kpki's version: what the Nix files are written from
    /// (a new kpki may write them differently).
    pub fingerprint: String,
}

impl Config {
    /// What is valid but probably not meant, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let renew = self.keys.renew_before.0;
        if renew < time::Duration::days(1) {
            warnings.push(format!(
                "keys.renew_before is {} seconds, under a day (units: s, m for minutes, h, d): did you mean 30d?",
                renew.whole_seconds()
            ));
        }
        if let IpAddr::V6(_) = self.cluster.service_ip
            && self.cluster.service_prefix < 108
        {
            warnings.push(format!(
                "cluster.service_cidr {} is larger than /108, the largest IPv6 service range kube-apiserver's default allocator accepts",
                self.cluster.service_cidr
            ));
        }
        for (role, what) in [(Role::ControlPlane, "kube-apiserver"), (Role::Etcd, "etcd")] {
            if !self.nodes.iter().any(|n| n.has(role)) {
                warnings.push(format!(
                    "no node has the {} role: no node gets the certificates to run {what}",
                    role.name()
                ));
            }
        }
        warnings
    }

    /// Validates `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let fail = |message: String| Error::Config {
            file: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| fail(describe_toml_error(&e, text)))?;
        let mut config = raw.validate(text).map_err(fail)?;
        let versioned = format!("kpki {}\n{text}", env!("CARGO_PKG_VERSION"));
        config.fingerprint = crate::pem::fingerprint(versioned.as_bytes());
        Ok(config)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A serde error as `line N: message`, on one line, with any private key it quotes left out.
fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    let mut message = e.message().trim().replace('\n', " ");
    if crate::agefile::looks_private(&message) {
        message = "a private key is written here (it is not repeated); only public keys belong in kpki.toml".into();
    }
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: RawCluster,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    secrets: RawSecrets,
    #[serde(default, rename = "node")]
    nodes: Vec<RawNode>,
    #[serde(default, rename = "certificate")]
    certificates: Vec<toml::Spanned<certificate::RawCertificate>>,
    #[serde(default)]
    ports: RawPorts,
}

/// `[ports]`: where the nodes' TLS servers listen, for `kpki rollout`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPorts {
    etcd_client: Option<u16>,
    etcd_peer: Option<u16>,
    apiserver: Option<u16>,
    kubelet: Option<u16>,
}

/// The ports of the nodes' TLS servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    /// Default: the port of `cluster.api_server`, else 6443.
    pub apiserver: u16,
    pub kubelet: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default = "default_cluster_name")]
    name: String,
    #[serde(default = "default_domain")]
    domain: String,
    service_cidr: String,
    api_server: String,
    #[serde(default)]
    api_sans: Vec<String>,
}

fn default_cluster_name() -> String {
    "kubernetes".into()
}

fn default_domain() -> String {
    "cluster.local".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawKeys {
    algorithm: Algorithm,
    ca_validity: String,
    leaf_validity: String,
    renew_before: String,
}

impl Default for RawKeys {
    fn default() -> Self {
        RawKeys {
            algorithm: Algorithm::EcdsaP256,
            ca_validity: "10y".into(),
            leaf_validity: "1y".into(),
            renew_before: "30d".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default = "keep_plaintext_keys")]
    plaintext_keys: bool,
}

fn keep_plaintext_keys() -> bool {
    true
}

impl Default for RawSecrets {
    fn default() -> Self {
        RawSecrets {
            admins: Vec::new(),
            plaintext_keys: keep_plaintext_keys(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    addresses: Vec<String>,
    roles: Option<Vec<Role>>,
    host_key: Option<String>,
}

impl RawConfig {
    /// `text` is the file, for the line numbers of declarations.
    fn validate(self, text: &str) -> Result<Config, String> {
        let cluster = self.cluster.validate()?;
        let keys = self.keys.validate()?;
        let admins = self.secrets.admins;
        for (i, admin) in admins.iter().enumerate() {
            crate::agefile::check_recipient(admin)
                .map_err(|e| format!("secrets.admins[{i}]: {e}"))?;
        }
        let nodes = validate_nodes(self.nodes, cluster.service_ip)?;
        let cx = certificate::Context {
            nodes: &nodes,
            ca_validity: keys.ca_validity,
        };
        let certificates = self
            .certificates
            .into_iter()
            .map(|spanned| {
                let line = text[..spanned.span().start.min(text.len())]
                    .matches('\n')
                    .count()
                    + 1;
                spanned.into_inner().validate(line, &cx)
            })
            .collect::<Result<Vec<_>, String>>()?;
        certificate::unique(&certificates)?;
        let ports = Ports {
            etcd_client: self.ports.etcd_client.unwrap_or(2379),
            etcd_peer: self.ports.etcd_peer.unwrap_or(2380),
            apiserver: self.ports.apiserver.unwrap_or(cluster.api_server_port),
            kubelet: self.ports.kubelet.unwrap_or(10250),
        };
        Ok(Config {
            cluster,
            keys,
            ports,
            admins,
            plaintext_keys: self.secrets.plaintext_keys,
            nodes,
            certificates,
            fingerprint: String::new(),
        })
    }
}

impl RawCluster {
    fn validate(self) -> Result<Cluster, String> {
        if self.name.is_empty() || !self.name.chars().all(is_name_char) {
            return Err(format!(
                "cluster.name: \"{}\" must be non-empty and use only letters, digits, '.', '_', '-'",
                self.name
            ));
        }
        if !is_dns_name(&self.domain) {
            return Err(format!(
                "cluster.domain: \"{}\" is not a DNS name",
                self.domain
            ));
        }
        let (service_ip, service_prefix) =
            first_address(&self.service_cidr).map_err(|e| format!("cluster.service_cidr: {e}"))?;
        let api =
            api_server_url(&self.api_server).map_err(|e| format!("cluster.api_server: {e}"))?;
        within_certificate(&self.api_sans).map_err(|e| format!("cluster.api_sans: {e}"))?;
        let api_sans = self
            .api_sans
            .iter()
            .enumerate()
            .map(|(i, s)| s.parse().map_err(|e| format!("cluster.api_sans[{i}]: {e}")))
            .collect::<Result<_, String>>()?;
        Ok(Cluster {
            name: self.name,
            domain: self.domain.to_ascii_lowercase(),
            service_ip,
            service_prefix,
            service_cidr: self.service_cidr,
            api_server: api.url,
            api_server_host: api.host,
            api_server_port: api.port.unwrap_or(DEFAULT_API_PORT),
            api_sans,
        })
    }
}

/// The most bytes of names and addresses one certificate may carry: kpki reads certificate
/// files of at most 1 MiB back (`store::PEM_LIMIT`), and a chain holds two certificates, base64
/// grown by a third; 256 KiB of names stays well inside that.
const MAX_SAN_BYTES: usize = 256 << 10;

/// Refuses a list of names that would make a certificate too large for kpki to read back.
fn within_certificate(names: &[String]) -> Result<(), String> {
    // Each entry also costs a few bytes of DER framing.
    let bytes: usize = names.iter().map(|n| n.len() + 4).sum();
    if bytes > MAX_SAN_BYTES {
        return Err(format!(
            "{} entries ({} KiB) would make a certificate larger than kpki reads back; at most {} KiB of names",
            names.len(),
            bytes >> 10,
            MAX_SAN_BYTES >> 10
        ));
    }
    Ok(())
}

impl RawKeys {
    fn validate(self) -> Result<Keys, String> {
        let span = |field: &str, value: &str| {
            value
                .parse::<Span>()
                .map_err(|e| format!("keys.{field}: {e}"))
        };
        let keys = Keys {
            algorithm: self.algorithm,
            ca_validity: span("ca_validity", &self.ca_validity)?,
            leaf_validity: span("leaf_validity", &self.leaf_validity)?,
            renew_before: span("renew_before", &self.renew_before)?,
        };
        if keys.leaf_validity.0 > keys.ca_validity.0 {
            return Err(format!(
                "keys.leaf_validity: \"{}\" is longer than keys.ca_validity \"{}\"",
                self.leaf_validity, self.ca_validity
            ));
        }
        if keys.renew_before.0 >= keys.leaf_validity.0 {
            return Err(format!(
                "keys.renew_before: \"{}\" is not shorter than keys.leaf_validity \"{}\"",
                self.renew_before, self.leaf_validity
            ));
        }
        Ok(keys)
    }
}

/// Names kpki uses as directories under `pki/` and `secrets/`, which no node may take.
pub const RESERVED_NAMES: &[&str] = &[
    "kubernetes",
    "etcd",
    "front-proxy",
    "service-account",
    "users",
];

fn validate_nodes(raw: Vec<RawNode>, service_ip: IpAddr) -> Result<Vec<Node>, String> {
    if raw.is_empty() {
        return Err("node: no [[node]] is configured; at least one is needed".into());
    }
    let mut names = HashSet::new();
    let mut addresses = std::collections::HashMap::new();
    let mut host_keys = std::collections::HashMap::new();
    raw.into_iter()
        .map(|n| {
            let node = n.validate()?;
            let at = |field: &str, e: String| format!("node \"{}\": {field}: {e}", node.name);
            if !names.insert(node.name.clone()) {
                return Err(format!("node \"{}\": the name is used twice", node.name));
            }
            for a in &node.addresses {
                if a.to_canonical() == service_ip.to_canonical() {
                    return Err(at(
                        "addresses",
                        format!("{a} is the kubernetes service IP (the first address of cluster.service_cidr)"),
                    ));
                }
                if let Some(other) = addresses.insert(a.to_canonical(), node.name.clone()) {
                    return Err(at(
                        "addresses",
                        format!("{a} is node \"{other}\"'s address too"),
                    ));
                }
            }
            if let Some(key) = &node.host_key {
                let key = crate::agefile::canonical(key);
                if let Some(other) = host_keys.insert(key, node.name.clone()) {
                    return Err(at(
                        "host_key",
                        format!("the same key as node \"{other}\" (each node must have its own: it could read the other's keys)"),
                    ));
                }
            }
            Ok(node)
        })
        .collect()
}

impl RawNode {
    fn validate(self) -> Result<Node, String> {
        if !is_dns_label(&self.name) {
            return Err(format!(
                "node.name: {:?} is not a DNS label (lowercase letters, digits and '-', at most 63)",
                self.name
            ));
        }
        if RESERVED_NAMES.contains(&self.name.as_str()) {
            return Err(format!(
                "node.name: \"{}\" is reserved: kpki keeps its own files in pki/{}/ (reserved: {})",
                self.name,
                self.name,
                RESERVED_NAMES.join(", ")
            ));
        }
        let at = |field: &str, e: String| format!("node \"{}\": {field}: {e}", self.name);
        within_certificate(&self.addresses).map_err(|e| at("addresses", e))?;
        if self.addresses.is_empty() {
            return Err(at("addresses", "at least one address is needed".into()));
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for a in &self.addresses {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| at("addresses", format!("{a:?} is not an IP address")))?;
            if let Some(why) = unusable_address(ip) {
                return Err(at(
                    "addresses",
                    format!("{ip} is {why}, not a node's address"),
                ));
            }
            if addresses
                .iter()
                .any(|x| x.to_canonical() == ip.to_canonical())
            {
                return Err(at("addresses", format!("{ip} is listed twice")));
            }
            addresses.push(ip);
        }
        let roles = self.roles.clone().unwrap_or_else(|| Role::ALL.to_vec());
        if roles.is_empty() {
            return Err(at("roles", "at least one role is needed".into()));
        }
        if let Some(key) = &self.host_key {
            crate::agefile::check_recipient(key).map_err(|e| at("host_key", e))?;
        }
        Ok(Node {
            addresses,
            roles,
            host_key: self.host_key,
            name: self.name,
        })
    }
}

/// Why an address cannot be a node's: unspecified, loopback, multicast or broadcast.
fn unusable_address(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// The first usable address of a CIDR (network address + 1), as Kubernetes allocates it, and
/// the CIDR's prefix length.
fn first_address(cidr: &str) -> Result<(IpAddr, u8), String> {
    let net: ipnet::IpNet = cidr
        .parse()
        .map_err(|_| format!("\"{cidr}\" is not a CIDR (e.g. fd00:10:96::/112)"))?;
    if net.max_prefix_len() - net.prefix_len() < 2 {
        return Err(format!(
            "\"{cidr}\": the prefix leaves no room for a service"
        ));
    }
    let first = match net.network() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
    };
    Ok((first, net.prefix_len()))
}

/// An API server URL, strictly: `https://HOST[:PORT]` with an optional trailing `/`, where HOST
/// is a DNS name, an IPv4 address or a bracketed IPv6 address; no user name, path, query,
/// fragment, whitespace or quotes.
pub fn api_server_url(url: &str) -> Result<ApiServer, String> {
    let bad = |why: &str| format!("{url:?} {why}");
    if url.chars().any(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '"' | '\'' | '\\' | '`' | '<' | '>' | '{' | '}' | '|' | '^'
            )
    }) {
        return Err(bad(
            "holds whitespace, quotes or other characters a URL cannot",
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(bad(
            "must have no path, query or fragment (https://HOST[:PORT])",
        ));
    }
    if authority.contains('@') {
        return Err(bad("must not carry a user name or password"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            let ip: std::net::Ipv6Addr = host
                .parse()
                .map_err(|_| bad("has an invalid IPv6 address in brackets"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("has text after ']'"))?,
                ),
            };
            (San::Ip(IpAddr::V6(ip)), port)
        }
        None if authority.matches(':').count() > 1 => {
            return Err(bad(
                "has an IPv6 host without brackets (write https://[addr]:port)",
            ));
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.parse::<std::net::Ipv6Addr>().is_ok() {
                return Err(bad("has an IPv6 host without brackets"));
            }
            (
                host.parse::<San>()
                    .map_err(|e| bad(&format!("has a bad host: {e}")))?,
                port,
            )
        }
    };
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with(['+', '0']) => Ok(n),
            _ => Err(bad("has an invalid port")),
        })
        .transpose()?;
    let host_text = match &host {
        San::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        San::Ip(ip) => ip.to_string(),
        San::Dns(name) => name.clone(),
    };
    let url = match port {
        Some(p) => format!("https://{host_text}:{p}"),
        None => format!("https://{host_text}"),
    };
    Ok(ApiServer { url, host, port })
}

/// The port kube-apiserver serves on unless told otherwise.
pub const DEFAULT_API_PORT: u16 = 6443;

/// An API server URL, checked: its canonical form and its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    pub url: String,
    pub host: San,
    pub port: Option<u16>,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// A lowercase DNS label (RFC 1123), the form Kubernetes requires of node names.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS name: dot-separated labels, any case.
fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(&l.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let c = Config::parse(DEFAULT_CONFIG, Path::new("default")).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert!(c.plaintext_keys);
        assert_eq!(c.cluster.service_ip.to_string(), "fd00:10:96::1");
        assert_eq!(
            c.cluster.api_server_host,
            San::Ip("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn spans_and_dates() {
        assert_eq!("30d".parse::<Span>().unwrap().0, time::Duration::days(30));
        assert_eq!("1y".parse::<Span>().unwrap().0, time::Duration::days(365));
        for bad in ["", "d", "10", "5x", "0d", "-1d", "99999y"] {
            assert!(bad.parse::<Span>().is_err(), "{bad}");
        }
        assert!(parse_date("2030-01-02").is_ok());
        assert!(parse_date("2030-01-02T03:04:05Z").is_ok());
        assert!(parse_date("tomorrow").is_err());
    }

    #[test]
    fn api_server_urls_are_strict_and_canonical() {
        let ok = |u: &str| api_server_url(u).unwrap().url;
        assert_eq!(ok("https://API.example.org"), "https://api.example.org");
        assert_eq!(
            ok("https://[2001:DB8:0::1]:6443/"),
            "https://[2001:db8::1]:6443"
        );
        assert_eq!(ok("https://10.0.0.1:443"), "https://10.0.0.1:443");
        for bad in [
            "https://2001:db8::1:6443",
            "http://[::1]:6443",
            "https://[::1]:99999",
            "https://[::1]:0",
            "https://user@[::1]",
            "https://[::1]:6443/path",
            "https://[::1]:6443?x=1",
            "https://[::1]:6443#f",
            "https://[::1]:6443/\"\n  insecure-skip-tls-verify: true",
            "https://[::1] ",
            "https://[::1]x",
            "https://",
        ] {
            assert!(api_server_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            api_server_url("https://[::1]:7443/").unwrap().port,
            Some(7443)
        );
        assert_eq!(api_server_url("https://api.example").unwrap().port, None);
        assert!(
            api_server_url("https://user@[::1]")
                .unwrap_err()
                .contains("user name")
        );
    }

    #[test]
    fn first_addresses() {
        assert_eq!(
            first_address("10.96.0.0/12").unwrap(),
            ("10.96.0.1".parse().unwrap(), 12)
        );
        assert_eq!(
            first_address("fd00::5/64").unwrap(),
            ("fd00::1".parse().unwrap(), 64)
        );
        for bad in [
            "fd00::/128",
            "fd00::/127",
            "fd00::/129",
            "fd00::",
            "fd00::/x",
            "10.0.0.0/31",
        ] {
            assert!(first_address(bad).is_err(), "{bad}");
        }
    }
}
