//! The two Nix files: `secrets.nix` (agenix rules, read by the agenix CLI run in `secrets/`) and
//! `kpki.nix` (a NixOS module declaring `age.secrets` for the host it is evaluated on).

use std::fmt::Write;

use std::collections::HashMap;

use crate::catalogue::ManagedFile;
use crate::catalogue::{self, CaName, Item, Part, Scope};
use crate::config::{Config, Role};
use crate::pem::FileKind;
use crate::wiring::{Service, WIRES, Wire};

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

/// Refuses a config in which two different files would get one `age.secrets` name on a host (a
/// per-node declaration `etcd-crl` beside the cluster's `etcd/crl.pem`, say): the module's
/// `listToAttrs` would silently keep one of them.
pub fn check_unique_names(config: &Config) -> Result<(), String> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let crls = catalogue::crl_files().map(|rel| (catalogue::file_secret_name(&rel), rel));
    let items = catalogue::items(config).into_iter().flat_map(|item| {
        [Part::Cert, Part::Key].map(|part| {
            let file = item.file(part);
            let file = match item.node() {
                Some(_) => format!("NODE/{}", file.rsplit('/').next().unwrap_or_default()),
                None => file,
            };
            (catalogue::secret_name(&item, part), file)
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

/// `kpki.nix`: a NixOS module for every node: kpki's module (`module.nix`, a function of the
/// cluster's data) applied to this cluster's data. For the host it is evaluated on, it declares
/// `age.secrets` for exactly the files that host may read, exposes their paths as `kpki.paths`,
/// and with `kpki.wireServices` sets the TLS options of nixpkgs' etcd and Kubernetes services.
pub fn module_nix(config: &Config, plan: &super::SealPlan<'_>) -> String {
    let mut out = String::from(MODULE_HEAD);
    let _ = writeln!(out, "    apiServer = {};", Str(&config.cluster.api_server));
    let _ = writeln!(
        out,
        "    serviceCidr = {};",
        Str(&config.cluster.service_cidr)
    );
    let ca = catalogue::ca_file;
    let _ = writeln!(out, "    kubernetesCa = {};", Str(&ca(CaName::Kubernetes)));
    let _ = writeln!(out, "    frontProxyCa = {};", Str(&ca(CaName::FrontProxy)));
    let _ = writeln!(out, "    crl = {};", Str(&catalogue::crl_file()));
    out.push_str("    etcdMembers = [\n");
    for node in config.nodes.iter().filter(|n| n.has(Role::Etcd)) {
        let _ = writeln!(
            out,
            "      {{ name = {}; host = {}; }}",
            Str(&node.name),
            Str(&url_host(node.addresses[0]))
        );
    }
    out.push_str("    ];\n");
    nodes(&mut out, config, plan);
    out.push_str("    wiring = {\n");
    for service in Service::ALL {
        wiring(&mut out, service);
    }
    out.push_str("    };\n  };\nin\n(\n");
    out.push_str(MODULE);
    out.push_str(") data\n");
    out
}

/// The data's `nodes`: each node's roles, addresses and files (by pki path: the secret's name,
/// its `.age` file, owner, mode and the fingerprint the manifest records).
fn nodes(out: &mut String, config: &Config, plan: &super::SealPlan<'_>) {
    let mut by_node: HashMap<&str, Vec<(&ManagedFile<'_>, &str)>> = HashMap::new();
    for (s, standing) in plan.sealed.iter().zip(&plan.standings) {
        let Some(due) = &standing.due else { continue };
        for node in &s.readers {
            by_node
                .entry(node.name.as_str())
                .or_default()
                .push((s, due.public.as_str()));
        }
    }
    out.push_str("    nodes = {\n");
    for node in &config.nodes {
        let roles: Vec<String> = node.roles.iter().map(|r| string(r.name())).collect();
        let addresses: Vec<String> = node
            .addresses
            .iter()
            .map(|a| string(&a.to_string()))
            .collect();
        let _ = writeln!(out, "      {} = {{", Str(&node.name));
        let _ = writeln!(out, "        roles = [ {} ];", roles.join(" "));
        let _ = writeln!(out, "        addresses = [ {} ];", addresses.join(" "));
        out.push_str("        files = {\n");
        for (s, fingerprint) in by_node.get(node.name.as_str()).into_iter().flatten() {
            let mode = match s.kind {
                FileKind::PrivateKey | FileKind::Kubeconfig => "0400",
                _ => "0444",
            };
            let _ = writeln!(
                out,
                "          {} = {{ name = {}; file = ./{}.age; owner = {}; mode = {}; fingerprint = {}; }};",
                Str(&s.rel),
                Str(&s.name),
                s.rel,
                Str(s.owner),
                Str(mode),
                Str(fingerprint)
            );
        }
        out.push_str("        };\n      };\n");
    }
    out.push_str("    };\n");
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
# Below: this cluster's data, then kpki's module applied to it.
let
  data = {
"#;

/// kpki's NixOS module, a function of the cluster's data (a real Nix file in the repository).
pub const MODULE: &str = include_str!("module.nix");

/// The data's wiring of one service: its role, option set and unit, the file each of its file
/// options takes (from [`WIRES`]), and the files whose change restarts it.
fn wiring(out: &mut String, service: Service) {
    let options = service.options();
    let name = options.rsplit('.').next().expect("an option path");
    let _ = writeln!(
        out,
        "      {name} = {{ role = {}; options = {}; unit = {};",
        Str(service.role().name()),
        Str(options),
        Str(service.unit())
    );
    out.push_str("        files = [\n");
    let mut restart = Vec::new();
    for w in WIRES.iter().filter(|w| w.service == service) {
        let file = file_ref(w);
        let _ = writeln!(out, "          {{ option = {}; {file} }}", Str(w.option));
        if !restart.contains(&file) && (!service.reloads_certificates() || w.is_ca()) {
            restart.push(file);
        }
    }
    out.push_str("        ];\n");
    if service == Service::Apiserver {
        let ca = catalogue::ca_file(CaName::FrontProxy);
        restart.push(format!("rel = {};", Str(&ca)));
    }
    let restart: Vec<String> = restart.iter().map(|f| format!("{{ {f} }}")).collect();
    let _ = writeln!(
        out,
        "        restart = [ {} ];\n      }};",
        restart.join(" ")
    );
}

/// A wired file as the data names it: `rel = "PKI PATH";` for a cluster-wide file, `own =
/// "FILE";` for one of the host's own directory.
fn file_ref(w: &Wire) -> String {
    let entry = catalogue::builtin(w.profile).expect("wired profiles are catalogued");
    match entry.scope {
        Scope::Cluster { .. } => {
            let item = Item::new(entry, None).expect("a cluster-wide entry");
            format!("rel = {};", Str(&item.file(w.part)))
        }
        Scope::Node(_) => format!("own = {};", Str(&entry.file_name(w.part))),
    }
}
