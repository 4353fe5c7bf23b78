//! What the `pem` fuzz target feeds untrusted bytes to; the corpus replay test calls it too.

/// Loads `data` every way kpki loads a file from disk: strictly as each kind of PKI file, as
/// PEM certificates (and each one's facts), public keys, a private key, a DER certificate and
/// an age header.
pub fn load(data: &[u8]) {
    for kind in [
        kpki::pem::Kind::Certificates,
        kpki::pem::Kind::PrivateKey,
        kpki::pem::Kind::PublicKeys,
    ] {
        if let Ok(material) = kpki::pem::parse(kind, data) {
            let _ = material.blocks();
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for cert in kpki::inspection::pem_certs(text).unwrap_or_default() {
            let _ = kpki::inspection::facts(&cert);
        }
        let _ = kpki::inspection::pem_public_keys(text);
        let _ = kpki::inspection::key_spki(text);
    }
    let _ = kpki::inspection::facts(data);
    let _ = kpki::agefile::header_stanzas(data);
}
