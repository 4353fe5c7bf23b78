//! The two Nix files: `secrets.nix` (agenix rules, read by the agenix CLI run in `secrets/`) and
//! `kpki.nix` (a NixOS module declaring `age.secrets` for the host it is evaluated on).

use std::fmt::Write;

use std::collections::HashMap;

use super::Sealed;
use crate::catalogue::{Item, Part, Scope};
use crate::config::Config;

/// A Nix string literal.
fn string(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace("${", "\\${");
    format!("\"{escaped}\"")
}

/// `secrets.nix`: one rule per file; keys are listed once, in `let` bindings.
pub fn secrets_nix(config: &Config, admins: &[String], sealed: &[Sealed<'_>]) -> String {
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
            let _ = writeln!(out, "    {} = {};", string(&node.name), string(&key));
        }
    }
    out.push_str("  };\nin\n{\n");
    for s in sealed {
        let hosts: Vec<String> = s
            .readers
            .iter()
            .filter(|n| n.host_key.is_some())
            .map(|n| format!("hosts.{}", string(&n.name)))
            .collect();
        let keys = if hosts.is_empty() {
            "admins".to_string()
        } else {
            format!("admins ++ [ {} ]", hosts.join(" "))
        };
        let name = string(&format!("{}.age", s.rel));
        let _ = writeln!(out, "  {name} = {{ publicKeys = {keys}; armor = true; }};");
    }
    out.push_str("}\n");
    out
}

/// The `age.secrets` name of a file on a node: `kpki-DIR-FILE` for cluster-wide files and
/// `kpki-FILE` for the node's own, so a service module reads the same name on every node.
pub fn secret_name(item: &Item<'_>, part: Part) -> String {
    let file = item.file(part);
    let base = file.rsplit('/').next().unwrap_or_default();
    match item.entry.scope {
        Scope::Cluster { dir } => format!("kpki-{dir}-{base}"),
        Scope::Node(_) => format!("kpki-{base}"),
    }
}

/// `kpki.nix`: for the importing host, `age.secrets` for exactly the files it may read.
pub fn module_nix(config: &Config, sealed: &[Sealed<'_>]) -> String {
    let mut out = String::from(concat!(
        "# Written by kpki from pki/kpki.toml; do not edit.\n",
        "# NixOS module: import it on every node. It declares age.secrets for the files of the host it is\n",
        "# evaluated on (config.networking.hostName) and nothing for any other host.\n",
        "{ config, ... }:\n",
        "let\n",
        "  secret = file: owner: mode: { inherit file owner mode; group = owner; };\n",
        "  hosts = {\n",
    ));
    let mut by_node: HashMap<&str, Vec<&Sealed<'_>>> = HashMap::new();
    for s in sealed {
        for node in &s.readers {
            by_node.entry(node.name.as_str()).or_default().push(s);
        }
    }
    for node in &config.nodes {
        let _ = writeln!(out, "    {} = {{", string(&node.name));
        for s in by_node.get(node.name.as_str()).into_iter().flatten() {
            let mode = match s.kind {
                crate::pem::Kind::PrivateKey | crate::pem::Kind::Kubeconfig => "0400",
                _ => "0444",
            };
            let _ = writeln!(
                out,
                "      {} = secret ./{}.age {} {};",
                string(&s.name),
                s.rel,
                string(s.owner),
                string(mode)
            );
        }
        out.push_str("    };\n");
    }
    out.push_str("  };\nin\n{\n  age.secrets = hosts.${config.networking.hostName} or { };\n}\n");
    out
}
