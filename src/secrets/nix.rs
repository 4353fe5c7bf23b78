//! The two Nix files: `secrets.nix` (agenix rules, read by the agenix CLI run in `secrets/`) and
//! `kpki.nix` (a NixOS module declaring `age.secrets` for the host it is evaluated on).

use std::fmt::Write;

use std::collections::HashMap;

use super::Sealed;
use crate::catalogue::{self, Item, Part, Scope};
use crate::config::{Config, Role};
use crate::pem::Kind;
use crate::wiring::{FRONT_PROXY_CA, Service, WIRES, Wire};

/// A Nix string literal, written without allocating (the Nix files of a fleet have thousands).
struct Str<'a>(&'a str);

impl std::fmt::Display for Str<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        f.write_char('"')?;
        let mut rest = self.0;
        while let Some(at) = rest.find(['\\', '"', '$']) {
            f.write_str(&rest[..at])?;
            let c = &rest[at..at + 1];
            let escape = c != "$" || rest[at + 1..].starts_with('{');
            if escape {
                f.write_char('\\')?;
            }
            f.write_str(c)?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)?;
        f.write_char('"')
    }
}

/// A Nix string literal.
fn string(s: &str) -> String {
    Str(s).to_string()
}

/// `secrets.nix`: one rule per file that exists; keys are listed once, in `let` bindings.
pub fn secrets_nix(config: &Config, admins: &[String], plan: &super::SealPlan<'_>) -> String {
    let mut out = String::from(
        "# Written by kpki from pki/kpki.toml; do not edit.\n# agenix rules: run `agenix -e FILE` or `agenix -r` inside secrets/; armor = true keeps the files\n# ASCII-armored, as kpki writes them.\nlet\n  admins = [\n",
    );
    for admin in admins {
        let _ = writeln!(out, "    {}", string(admin));
    }
    out.push_str("  ];\n  hosts = {\n");
    for node in &config.nodes {
        if let Some(key) = &node.host_key {
            let key = crate::agefile::canonical(key);
            let _ = writeln!(out, "    {} = {};", Str(&node.name), Str(&key));
        }
    }
    out.push_str("  };\nin\n{\n");
    let existing = plan
        .sealed
        .iter()
        .zip(&plan.standings)
        .filter(|(_, st)| st.due.is_some());
    for (s, _) in existing {
        let hosts: Vec<String> = s
            .readers
            .iter()
            .filter(|n| n.host_key.is_some())
            .map(|n| format!("hosts.{}", Str(&n.name)))
            .collect();
        let keys = if hosts.is_empty() {
            "admins".to_string()
        } else {
            format!("admins ++ [ {} ]", hosts.join(" "))
        };
        let _ = writeln!(
            out,
            "  {} = {{ publicKeys = {keys}; armor = true; }};",
            Str(&format!("{}.age", s.rel))
        );
    }
    out.push_str("}\n");
    out
}

/// The `age.secrets` name of a file on a node: `kpki-DIR-FILE` for cluster-wide files and
/// `kpki-FILE` for the node's own, so a service module reads the same name on every node.
pub fn secret_name(item: &Item<'_>, part: Part) -> String {
    let file = item.file(part);
    let base = file.rsplit('/').next().unwrap_or_default();
    match item.entry().scope {
        Scope::Cluster { dir } => format!("kpki-{dir}-{base}"),
        Scope::Node(_) => format!("kpki-{base}"),
    }
}

/// The `age.secrets` name of a file outside the catalogue's items (the revocation list).
pub fn file_secret_name(rel: &str) -> String {
    format!("kpki-{}", rel.replace('/', "-"))
}

/// Refuses a config in which two different files would get one `age.secrets` name on a host (a
/// per-node declaration `etcd-crl` beside the cluster's `etcd/crl.pem`, say): the module's
/// `listToAttrs` would silently keep one of them.
pub fn check_unique_names(config: &Config) -> Result<(), String> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let crls = catalogue::crl_files().map(|rel| (file_secret_name(&rel), rel));
    let items = catalogue::items(config).into_iter().flat_map(|item| {
        [Part::Cert, Part::Key].map(|part| {
            let file = item.file(part);
            let file = match item.node() {
                Some(_) => format!("NODE/{}", file.rsplit('/').next().unwrap_or_default()),
                None => file,
            };
            (secret_name(&item, part), file)
        })
    });
    for (name, file) in crls.into_iter().chain(items) {
        match seen.insert(name.clone(), file.clone()) {
            Some(other) if other != file => {
                let stem = |f: &str| {
                    let base = f.rsplit('/').next().unwrap_or_default();
                    base.trim_end_matches(".pem")
                        .trim_end_matches("-key")
                        .to_string()
                };
                let declared = config
                    .certificates
                    .iter()
                    .find(|d| d.name == stem(&file) || d.name == stem(&other));
                let at = declared
                    .map(|d| format!("line {}: certificate \"{}\": ", d.line, d.name))
                    .unwrap_or_default();
                return Err(format!(
                    "{at}{other} and {file} would both be age.secrets.\"{name}\" on a node: rename the certificate"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// `kpki.nix`: a NixOS module for every node. For the host it is evaluated on, it declares
/// `age.secrets` for exactly the files that host may read, exposes their paths as `kpki.paths`,
/// and with `kpki.wireServices` sets the TLS options of nixpkgs' etcd and Kubernetes services.
pub fn module_nix(config: &Config, plan: &super::SealPlan<'_>) -> String {
    let mut out = String::from(MODULE_HEAD);
    let _ = writeln!(out, "  apiServer = {};", Str(&config.cluster.api_server));
    let _ = writeln!(
        out,
        "  serviceCidr = {};",
        Str(&config.cluster.service_cidr)
    );
    out.push_str("  etcdMembers = [\n");
    for node in config.nodes.iter().filter(|n| n.has(Role::Etcd)) {
        let _ = writeln!(
            out,
            "    {{ name = {}; host = {}; }}",
            Str(&node.name),
            Str(&url_host(node.addresses[0]))
        );
    }
    out.push_str("  ];\n  nodes = {\n");
    let mut by_node: HashMap<&str, Vec<(&Sealed<'_>, &str)>> = HashMap::new();
    for (s, standing) in plan.sealed.iter().zip(&plan.standings) {
        let Some(due) = &standing.due else { continue };
        for node in &s.readers {
            by_node
                .entry(node.name.as_str())
                .or_default()
                .push((s, due.public.as_str()));
        }
    }
    for node in &config.nodes {
        let roles: Vec<String> = node.roles.iter().map(|r| string(r.name())).collect();
        let addresses: Vec<String> = node
            .addresses
            .iter()
            .map(|a| string(&a.to_string()))
            .collect();
        let _ = writeln!(out, "    {} = {{", Str(&node.name));
        let _ = writeln!(out, "      roles = [ {} ];", roles.join(" "));
        let _ = writeln!(out, "      addresses = [ {} ];", addresses.join(" "));
        out.push_str("      files = {\n");
        for (s, fingerprint) in by_node.get(node.name.as_str()).into_iter().flatten() {
            let mode = match s.kind {
                Kind::PrivateKey | Kind::Kubeconfig => "0400",
                _ => "0444",
            };
            let _ = writeln!(
                out,
                "        {} = secret {} ./{}.age {} {} {};",
                Str(&s.rel),
                Str(&s.name),
                s.rel,
                Str(s.owner),
                Str(mode),
                Str(fingerprint)
            );
        }
        out.push_str("      };\n    };\n");
    }
    out.push_str(MODULE_BODY);
    for service in Service::ALL {
        wiring(&mut out, service);
    }
    out.push_str("  ];\n}\n");
    out
}

/// An address as a URL host: IPv6 bracketed.
fn url_host(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V6(a) => format!("[{a}]"),
        std::net::IpAddr::V4(a) => a.to_string(),
    }
}

/// The start of `kpki.nix`, up to the cluster's data.
const MODULE_HEAD: &str = r#"# Written by kpki from pki/kpki.toml; do not edit.
# NixOS module: import it on every node, with agenix's module. For the host it is evaluated on
# (config.networking.hostName) it declares age.secrets for exactly that host's files, sets
# kpki.paths (pki path -> decrypted path), and with kpki.wireServices = true sets the TLS options
# of nixpkgs' etcd and Kubernetes services (in place of services.kubernetes.easyCerts).
{ config, lib, ... }:
let
  inherit (lib) mkIf mkMerge mkOption mkOverride types;
  cfg = config.kpki;
  k8s = config.services.kubernetes;
  host = config.networking.hostName;
  # Above nixpkgs' own defaults (mkDefault, 1000), below your plain definitions (100).
  wire = mkOverride 900;
  secret = name: file: owner: mode: fingerprint: { inherit name file owner mode fingerprint; };
"#;

/// After the cluster's data: the options and what every host gets.
const MODULE_BODY: &str = r#"  };
  node = nodes.${host} or null;
  files = if node == null then { } else node.files;
  has = role: node != null && builtins.elem role node.roles;
  wired = role: enabled: cfg.wireServices && has role && enabled;
  path = rel: config.age.secrets.${files.${rel}.name}.path;
  own = file: path "${host}/${file}";
  # What a unit reads, by fingerprint (from the manifest): a deploy restarts exactly the units
  # whose files changed.
  changes = rels: map (rel: files.${rel}.fingerprint) rels;
  urlHost = a: if builtins.match ".*:.*" a != null then "[${a}]" else a;
  url = port: a: "https://${urlHost a}:${toString port}";
  address = builtins.head node.addresses;
in
{
  options.kpki = {
    wireServices = mkOption {
      type = types.bool;
      default = false;
      description = "Set the TLS options of nixpkgs' etcd and Kubernetes services on this host from kpki's files, as services.kubernetes.easyCerts would (which must then be off).";
    };
    paths = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      description = "The decrypted path of each kpki file this host receives, by its path under pki/ (\"kubernetes/ca.pem\", \"node-02/kubelet-key.pem\").";
    };
  };

  config = mkMerge [
    {
      age.secrets = builtins.listToAttrs (map (f: {
        inherit (f) name;
        value = { inherit (f) file owner mode; group = f.owner; };
      }) (builtins.attrValues files));
      kpki.paths = builtins.mapAttrs (rel: f: config.age.secrets.${f.name}.path) files;
      assertions = [{
        assertion = !(cfg.wireServices && k8s.easyCerts);
        message = "kpki.wireServices replaces services.kubernetes.easyCerts: set services.kubernetes.easyCerts = false (the kubernetes roles switch it on)";
      }];
    }
    (mkIf (cfg.wireServices && node != null) {
      services.kubernetes.caFile = wire (path "kubernetes/ca.pem");
      # Every component's kubeconfig.server defaults to this (nixpkgs' own default is not a valid
      # URL for an IPv6 address).
      services.kubernetes.apiserverAddress = wire apiServer;
    })
"#;

/// The section of one service: its file options (from [`WIRES`]), the values that are not files,
/// and its restart triggers.
fn wiring(out: &mut String, service: Service) {
    let (role, enabled) = (service.role().name(), service.options());
    let enable = match service {
        Service::Etcd => "config.services.etcd.enable".to_string(),
        _ => format!(
            "k8s.{}.enable",
            enabled.trim_start_matches("services.kubernetes.")
        ),
    };
    let _ = writeln!(out, "    (mkIf (wired {} {enable}) {{", Str(role));
    let _ = writeln!(out, "      {} = {{", service.options());
    let mut read = Vec::new();
    for w in WIRES.iter().filter(|w| w.service == service) {
        let (expr, rel) = file_expr(w);
        let _ = writeln!(out, "        {} = wire ({expr});", w.option);
        if !read.contains(&rel) && (!service.reloads_certificates() || w.profile.ends_with("-ca")) {
            read.push(rel);
        }
    }
    out.push_str(&values(service));
    out.push_str("      };\n");
    if service == Service::Apiserver {
        let ca = catalogue::shared_item(FRONT_PROXY_CA).expect("catalogued");
        read.push(string(&ca.file(Part::Cert)));
    }
    let _ = writeln!(
        out,
        "      systemd.services.{}.restartTriggers = changes [ {} ];",
        service.unit(),
        read.join(" ")
    );
    out.push_str("    })\n");
}

/// The Nix expression of a wired file's path, and its name as a Nix string (for `changes`).
fn file_expr(w: &Wire) -> (String, String) {
    let entry = catalogue::builtin(w.profile).expect("wired profiles are catalogued");
    match entry.scope {
        Scope::Cluster { .. } => {
            let item = Item::new(entry, None).expect("a cluster-wide entry");
            let rel = string(&item.file(w.part));
            (format!("path {rel}"), rel)
        }
        Scope::Node(_) => {
            let file = match w.part {
                Part::Cert => format!("{}.pem", entry.stem),
                Part::Key => format!("{}-key.pem", entry.stem),
            };
            (
                format!("own {}", string(&file)),
                format!("\"${{host}}/{file}\""),
            )
        }
    }
}

/// The options of a service that are not file paths.
fn values(service: Service) -> String {
    let front_proxy_ca = catalogue::shared_item(FRONT_PROXY_CA)
        .expect("catalogued")
        .file(Part::Cert);
    let text = match service {
        Service::Apiserver => concat!(
            "        etcd.servers = wire (map (m: \"https://${m.host}:2379\") etcdMembers);\n",
            "        advertiseAddress = wire address;\n",
            "        bindAddress = wire (if urlHost address != address then \"::\" else \"0.0.0.0\");\n",
            "        serviceClusterIpRange = wire serviceCidr;\n",
            "        # nixpkgs has no option for the front-proxy CA; extraOpts is merged, not replaced.\n",
            "        extraOpts = builtins.concatStringsSep \" \" [\n",
            "          \"--requestheader-client-ca-file=${path \"FRONT_PROXY_CA\"}\"\n",
            "          \"--requestheader-allowed-names=front-proxy-client\"\n",
            "          \"--requestheader-username-headers=X-Remote-User\"\n",
            "          \"--requestheader-group-headers=X-Remote-Group\"\n",
            "          \"--requestheader-extra-headers-prefix=X-Remote-Extra-\"\n",
            "        ];\n",
        ),
        Service::Kubelet => concat!(
            "        # The kubelet's identity is system:node:NODE: its hostname must be the node name.\n",
            "        hostname = wire host;\n",
        ),
        Service::Etcd => concat!(
            "        name = wire host;\n",
            "        clientCertAuth = wire true;\n",
            "        peerClientCertAuth = wire true;\n",
            "        listenClientUrls = wire (map (url 2379) node.addresses ++ [ \"https://[::1]:2379\" ]);\n",
            "        advertiseClientUrls = wire (map (url 2379) node.addresses);\n",
            "        listenPeerUrls = wire (map (url 2380) node.addresses);\n",
            "        initialAdvertisePeerUrls = wire (map (url 2380) node.addresses);\n",
            "        initialCluster = wire (map (m: \"${m.name}=https://${m.host}:2380\") etcdMembers);\n",
            "        # Once a certificate is revoked (kpki revoke, kpki rotate --prune): etcd reads the\n",
            "        # list at every connection, so a new one needs no restart.\n",
            "        extraConf = mkIf (files ? \"CRL_FILE\") {\n",
            "          CLIENT_CRL_FILE = wire (path \"CRL_FILE\");\n",
            "          PEER_CRL_FILE = wire (path \"CRL_FILE\");\n",
            "        };\n",
        ),
        Service::ControllerManager | Service::Scheduler | Service::Proxy => "",
    };
    text.replace("FRONT_PROXY_CA", &front_proxy_ca)
        .replace("\"CRL_FILE\"", &string(&catalogue::crl_file()))
}
