//! Kubeconfig files with embedded CA, client certificate and key, produced by a YAML
//! serializer: no value, however hostile, can add a key to the file.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::catalogue::{self, CaName, Item, Part};
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::state::State;

/// `pki/kubernetes/admin.pem`, whose key and CA the admin kubeconfig embeds.
pub fn admin_item() -> Item<'static> {
    catalogue::admin()
}

/// `pki/kubernetes/ca.pem`, the CA bundle every kubeconfig trusts.
pub fn ca_cert() -> String {
    catalogue::ca_file(CaName::Kubernetes)
}

/// The parts of a kubeconfig.
pub struct Kubeconfig<'a> {
    pub cluster: &'a str,
    pub server: &'a str,
    /// The CA bundle the client trusts (PEM, possibly several certificates).
    pub ca_pem: &'a str,
    pub user: &'a str,
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct File<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    clusters: [Named<'a, ClusterEntry<'a>>; 1],
    users: [Named<'a, UserEntry>; 1],
    contexts: [Named<'a, ContextEntry<'a>>; 1],
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct ClusterEntry<'a> {
    cluster: ClusterData<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterData<'a> {
    certificate_authority_data: String,
    server: &'a str,
}

#[derive(Serialize)]
struct UserEntry {
    user: UserData,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct UserData {
    client_certificate_data: String,
    client_key_data: String,
}

#[derive(Serialize)]
struct ContextEntry<'a> {
    context: ContextData<'a>,
}

#[derive(Serialize)]
struct ContextData<'a> {
    cluster: &'a str,
    user: &'a str,
}

impl Kubeconfig<'_> {
    /// The kubeconfig as YAML.
    pub fn render(&self) -> Zeroizing<String> {
        let b64 = |s: &str| STANDARD.encode(s.as_bytes());
        let context = format!("{}@{}", self.user, self.cluster);
        let file = File {
            api_version: "v1",
            kind: "Config",
            clusters: [Named {
                name: self.cluster,
                value: ClusterEntry {
                    cluster: ClusterData {
                        certificate_authority_data: b64(self.ca_pem),
                        server: self.server,
                    },
                },
            }],
            users: [Named {
                name: self.user,
                value: UserEntry {
                    user: UserData {
                        client_certificate_data: b64(self.cert_pem),
                        client_key_data: b64(self.key_pem),
                    },
                },
            }],
            contexts: [Named {
                name: &context,
                value: ContextEntry {
                    context: ContextData {
                        cluster: self.cluster,
                        user: self.user,
                    },
                },
            }],
            current_context: &context,
        };
        Zeroizing::new(serde_yaml_ng::to_string(&file).expect("a kubeconfig serializes"))
    }
}

/// The API server URL for `--server`: a URL as [`config::api_server_url`] accepts it, or a
/// bare IP address turned into `https://ADDR:6443` (IPv6 bracketed).
/// A bare IPv6 address whose last group reads as a port (`2001:db8::10:6443`) is refused as
/// ambiguous: the brackets say which was meant.
pub fn server_url(input: &str) -> Result<config::ApiServer, String> {
    let url = match input.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => {
            if let Some((address, port)) = port_suffix(input) {
                return Err(format!(
                    "{input:?} is ambiguous: write https://[{address}]:{port} for port {port} of {address}, or https://[{ip}]:6443 for that whole address"
                ));
            }
            format!("https://[{ip}]:{}", config::DEFAULT_API_PORT)
        }
        Ok(std::net::IpAddr::V4(ip)) => format!("https://{ip}:{}", config::DEFAULT_API_PORT),
        Err(_) => input.to_string(),
    };
    config::api_server_url(&url)
}

/// `(ADDRESS, PORT)` when `input` is an IPv6 address followed by `:PORT`.
fn port_suffix(input: &str) -> Option<(std::net::Ipv6Addr, u16)> {
    let (address, port) = input.rsplit_once(':')?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0 && port.len() >= 3)?;
    Some((address.parse().ok()?, port))
}

/// A kubeconfig for the client whose certificate and key are `cert` and `key` under `pki/`.
pub fn client(
    state: &State,
    config: &Config,
    cert: &str,
    key: &str,
    user: &str,
    server: &str,
) -> Result<Zeroizing<String>> {
    let ca = state.ca_bundle(CaName::Kubernetes)?;
    let (cert, key) = (state.require(cert)?, state.require(key)?);
    Ok(Kubeconfig {
        cluster: &config.cluster.name,
        server,
        ca_pem: &ca.text,
        user,
        cert_pem: &cert.text,
        key_pem: &key.text,
    }
    .render())
}

/// The admin kubeconfig for `server`.
pub fn admin(state: &State, config: &Config, server: &str) -> Result<Zeroizing<String>> {
    let admin = admin_item();
    let user = admin.subject(config).common_name;
    client(
        state,
        config,
        &admin.file(Part::Cert),
        &admin.file(Part::Key),
        &user,
        server,
    )
}

/// Refuses a kubeconfig client whose files are missing, pointing at what makes them.
pub fn missing(state: &State, rel: &str, how: &str) -> Result<()> {
    if state.exists(rel)? {
        return Ok(());
    }
    Err(Error::usage(
        format!("pki/{rel} does not exist"),
        Some(how.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_become_urls() {
        assert_eq!(server_url("::1").unwrap().url, "https://[::1]:6443");
        assert!(
            server_url("2001:db8::10:6443")
                .unwrap_err()
                .contains("https://[2001:db8::10]:6443")
        );
        assert_eq!(
            server_url("2001:db8::1").unwrap().url,
            "https://[2001:db8::1]:6443"
        );
        assert_eq!(
            server_url("https://[::1]:7443").unwrap().url,
            "https://[::1]:7443"
        );
        assert!(server_url("https://::1:7443").is_err());
    }

    #[test]
    fn hostile_values_stay_values() {
        let hostile = "x\"\n    insecure-skip-tls-verify: true\n";
        let text = Kubeconfig {
            cluster: hostile,
            server: "https://[::1]:6443",
            ca_pem: "ca",
            user: hostile,
            cert_pem: "cert",
            key_pem: "key",
        }
        .render();
        let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        let cluster = &parsed["clusters"][0];
        assert_eq!(cluster["name"].as_str(), Some(hostile));
        let keys = cluster["cluster"].as_mapping().unwrap();
        assert_eq!(keys.len(), 2, "{}", *text);
        assert_eq!(parsed["apiVersion"].as_str(), Some("v1"));
    }
}
