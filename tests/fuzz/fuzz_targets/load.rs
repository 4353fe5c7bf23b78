//! What the `pem` fuzz target feeds untrusted bytes to; the corpus replay test calls it too.

/// Loads `data` every way kpki loads a file from disk: strictly as each kind of PKI file (and
/// each certificate's facts), as kpki's own file taken on its record, a private key, a DER
/// certificate and an age header.
pub fn load(data: &[u8]) {
    use kpki::pem::{FileKind, Material};
    for kind in [
        FileKind::Certificates,
        FileKind::PrivateKey,
        FileKind::PublicKeys,
        FileKind::Crl,
        FileKind::CrlDer,
    ] {
        for material in [
            kpki::pem::parse(kind, data),
            Material::recorded(kind, data, String::new()),
        ]
        .into_iter()
        .flatten()
        {
            for cert in material.certificates().unwrap_or_default() {
                let _ = kpki::inspection::facts(cert);
            }
            let _ = (
                material.first(),
                material.public_keys(),
                material.file_bytes(),
            );
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kpki::inspection::key_spki(text);
    }
    let _ = kpki::inspection::facts(data);
    let _ = kpki::agefile::header_stanzas(data);
}
