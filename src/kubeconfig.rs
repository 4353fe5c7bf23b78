//! Kubeconfig files with embedded CA, client certificate and key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

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

impl Kubeconfig<'_> {
    /// The kubeconfig as YAML.
    pub fn render(&self) -> String {
        let b64 = |s: &str| STANDARD.encode(s.as_bytes());
        let context = format!("{}@{}", self.user, self.cluster);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"{cluster}\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: \"{server}\"\nusers:\n- name: \"{user}\"\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: \"{context}\"\n  context:\n    cluster: \"{cluster}\"\n    user: \"{user}\"\ncurrent-context: \"{context}\"\n",
            cluster = self.cluster,
            server = self.server,
            user = self.user,
            ca = b64(self.ca_pem),
            cert = b64(self.cert_pem),
            key = b64(self.key_pem),
        )
    }
}

/// The API server URL for `--server`: a URL as given, or a bare IP address turned into
/// `https://ADDR:6443` (IPv6 bracketed).
pub fn server_url(input: &str) -> Result<String, String> {
    let url = match input.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("https://[{ip}]:6443"),
        Ok(std::net::IpAddr::V4(ip)) => format!("https://{ip}:6443"),
        Err(_) => input.to_string(),
    };
    crate::config::url_host(&url).map(|_| url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_become_urls() {
        assert_eq!(server_url("::1").unwrap(), "https://[::1]:6443");
        assert_eq!(
            server_url("2001:db8::1").unwrap(),
            "https://[2001:db8::1]:6443"
        );
        assert_eq!(
            server_url("https://[::1]:7443").unwrap(),
            "https://[::1]:7443"
        );
        assert!(server_url("https://::1:7443").is_err());
    }
}
