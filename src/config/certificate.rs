//! `[[certificate]]`: certificates a cluster needs beyond the catalogue (a CNI's client, an
//! exporter's serving certificate, a backup job's etcd client), declared in `kpki.toml`. Checked
//! here as far as the config alone can say; whether a name collides with one of kpki's own files
//! the catalogue checks.

use serde::Deserialize;

use super::{CaName, Node, Role, San, Span, Usage, is_dns_label};

/// A declared certificate, validated.
#[derive(Debug, Clone)]
pub struct Declared {
    pub name: String,
    /// The line of its `[[certificate]]` in `kpki.toml`, for errors.
    pub line: usize,
    pub ca: CaName,
    /// The common name; `{node}` stands for the node's name in a per-node certificate.
    pub cn: String,
    pub organizations: Vec<String>,
    pub usage: Usage,
    /// Extra SANs (a per-node certificate also names its node and the node's addresses).
    pub sans: Vec<San>,
    pub per_node: bool,
    /// Who receives it: nodes with any of these roles, and these nodes; neither: the admins.
    pub roles: Vec<Role>,
    pub nodes: Vec<String>,
    /// The user that owns the files on a node.
    pub owner: String,
    /// Instead of `keys.leaf_validity`.
    pub validity: Option<Span>,
}

/// Usages as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawUsage {
    Client,
    Server,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    name: String,
    ca: CaName,
    cn: Option<String>,
    #[serde(default)]
    organizations: Vec<String>,
    usages: Vec<RawUsage>,
    #[serde(default)]
    sans: Vec<String>,
    #[serde(default)]
    per_node: bool,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    nodes: Vec<String>,
    owner: Option<String>,
    validity: Option<String>,
}

/// What the config around the declarations says.
pub(super) struct Context<'a> {
    pub nodes: &'a [Node],
    pub ca_validity: Span,
}

impl RawCertificate {
    pub(super) fn validate(self, line: usize, cx: &Context<'_>) -> Result<Declared, String> {
        let at = |field: &str, e: String| {
            format!("line {line}: certificate \"{}\": {field}: {e}", self.name)
        };
        if !is_dns_label(&self.name) || self.name.ends_with("-key") {
            return Err(format!(
                "line {line}: certificate: name {:?} must be a DNS label (lowercase letters, digits, '-') not ending in -key",
                self.name
            ));
        }
        let cn = self.cn.clone().unwrap_or_else(|| self.name.clone());
        if cn.is_empty() || cn.chars().any(char::is_control) || cn.len() > 64 {
            return Err(at(
                "cn",
                format!(
                    "{cn:?} is not a usable common name (1 to 64 characters, no control characters)"
                ),
            ));
        }
        if cn.contains("{node}") && !self.per_node {
            return Err(at("cn", "{node} is only known for per_node = true".into()));
        }
        if self.organizations.len() > 2 {
            return Err(at(
                "organizations",
                format!(
                    "{} given, but a certificate can carry at most 2",
                    self.organizations.len()
                ),
            ));
        }
        if let Some(bad) = self
            .organizations
            .iter()
            .find(|o| o.is_empty() || o.chars().any(char::is_control))
        {
            return Err(at(
                "organizations",
                format!("{bad:?} is not an organization"),
            ));
        }
        let usage = match (
            self.usages.contains(&RawUsage::Server),
            self.usages.contains(&RawUsage::Client),
        ) {
            (true, true) => Usage::ServerAndClient,
            (true, false) => Usage::Server,
            (false, true) => Usage::Client,
            (false, false) => return Err(at("usages", "name client, server or both".into())),
        };
        super::within_certificate(&self.sans).map_err(|e| at("sans", e))?;
        let sans = self
            .sans
            .iter()
            .map(|s| s.parse::<San>().map_err(|e| at("sans", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if usage.server() && sans.is_empty() && !self.per_node {
            return Err(at(
                "sans",
                "a server certificate needs at least one SAN (or per_node = true)".into(),
            ));
        }
        for node in &self.nodes {
            if !cx.nodes.iter().any(|n| n.name == *node) {
                return Err(at(
                    "nodes",
                    format!("{node:?} is not a [[node]] of this config"),
                ));
            }
        }
        let owner = self.owner.clone().unwrap_or_else(|| "root".into());
        if !is_user_name(&owner) {
            return Err(at("owner", format!("{owner:?} is not a user name")));
        }
        let validity = match &self.validity {
            None => None,
            Some(v) => {
                let span = v.parse::<Span>().map_err(|e| at("validity", e))?;
                if span.0 > cx.ca_validity.0 {
                    return Err(at(
                        "validity",
                        format!(
                            "{v:?} is longer than keys.ca_validity: no certificate outlives its CA"
                        ),
                    ));
                }
                Some(span)
            }
        };
        Ok(Declared {
            name: self.name,
            line,
            ca: self.ca,
            cn,
            organizations: self.organizations,
            usage,
            sans,
            per_node: self.per_node,
            roles: self.roles,
            nodes: self.nodes,
            owner,
            validity,
        })
    }
}

/// A Unix user name, as NixOS accepts one.
fn is_user_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

/// Refuses two declarations with one name.
pub(super) fn unique(declared: &[Declared]) -> Result<(), String> {
    for (i, d) in declared.iter().enumerate() {
        if let Some(first) = declared[..i].iter().find(|o| o.name == d.name) {
            return Err(format!(
                "line {}: certificate \"{}\": the name is declared twice (first on line {})",
                d.line, d.name, first.line
            ));
        }
    }
    Ok(())
}
