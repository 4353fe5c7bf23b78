//! What the `kubeconfig` fuzz target feeds untrusted text to; the corpus replay test calls it too.

/// Parses `data` as an API server URL both ways kpki takes one (config and `--server`), and
/// renders a kubeconfig whose every value comes from `data`: parsed back, each value must be
/// exactly what went in, and nothing else may appear in the file.
pub fn render(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = kpki::config::api_server_url(&text);
    let _ = kpki::kubeconfig::server_url(&text);
    let mut parts = text.splitn(4, '\u{0}');
    let cluster = parts.next().unwrap_or_default();
    let user = parts.next().unwrap_or_default();
    let server = parts.next().unwrap_or_default();
    let pem = parts.next().unwrap_or_default();
    let yaml = kpki::kubeconfig::Kubeconfig {
        cluster,
        server,
        ca_pem: pem,
        user,
        cert_pem: pem,
        key_pem: pem,
    }
    .render();
    let parsed: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("a kubeconfig parses");
    assert_eq!(parsed["clusters"][0]["name"].as_str(), Some(cluster));
    assert_eq!(
        parsed["clusters"][0]["cluster"]["server"].as_str(),
        Some(server)
    );
    assert_eq!(parsed["users"][0]["name"].as_str(), Some(user));
    assert_eq!(
        parsed["clusters"][0]["cluster"]
            .as_mapping()
            .map(|m| m.len()),
        Some(2)
    );
    assert_eq!(parsed.as_mapping().map(|m| m.len()), Some(6));
}
