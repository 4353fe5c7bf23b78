//! One TLS handshake with a node's server, without a client key: the certificate chain it
//! presents and the client CAs it names in its CertificateRequest (Go servers such as etcd,
//! kube-apiserver and the kubelet send the subjects of their client CA pool). The handshake
//! is read up to the point where a client certificate would be sent, which kpki never has.
//!
//! Bounded: one deadline for connecting and the whole handshake, rustls' own limits on message
//! sizes, and nothing trusted: the chain is only recorded (the server's possession of the
//! leaf's key is still checked through its handshake signature).

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// What one endpoint said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// It presented a chain (leaf first) and, when it asked for a client certificate, the
    /// subjects (DER) of the CAs it accepts.
    Answered {
        chain: Vec<Vec<u8>>,
        client_cas: Option<Vec<Vec<u8>>>,
    },
    /// Nothing listens (connection refused).
    Refused,
    /// No answer within the deadline.
    TimedOut,
    /// The address cannot be reached, or the server broke the handshake: why.
    Failed(String),
}

/// Records what the server presents; trusts nothing.
#[derive(Debug)]
struct Recorder {
    provider: Arc<CryptoProvider>,
    chain: Mutex<Vec<Vec<u8>>>,
    client_cas: Mutex<Option<Vec<Vec<u8>>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        *lock(&self.chain) = chain;
        Ok(ServerCertVerified::assertion())
    }

    // The server must still prove it holds the key of the certificate it presents.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

impl Recorder {
    fn algorithms(&self) -> &rustls::crypto::WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

/// Hears which client CAs the server names, and offers no certificate.
#[derive(Debug)]
struct Listener(Arc<Recorder>);

impl ResolvesClientCert for Listener {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let subjects = root_hint_subjects.iter().map(|s| s.to_vec()).collect();
        *lock(&self.0.client_cas) = Some(subjects);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Shakes hands with `addr` within `timeout` (connecting included).
pub fn probe(addr: SocketAddr, timeout: Duration) -> Reached {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        provider: provider.clone(),
        chain: Mutex::default(),
        client_cas: Mutex::default(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(recorder.clone())
                .with_client_cert_resolver(Arc::new(Listener(recorder.clone())))
        });
    let config = match config {
        Ok(c) => Arc::new(c),
        Err(e) => return Reached::Failed(e.to_string()),
    };
    let broke = handshake(addr, timeout, config);
    let chain = std::mem::take(&mut *lock(&recorder.chain));
    match broke {
        _ if !chain.is_empty() => Reached::Answered {
            chain,
            client_cas: lock(&recorder.client_cas).take(),
        },
        Some(reached) => reached,
        None => Reached::Failed("the server presented no certificate".into()),
    }
}

/// Runs the handshake as far as the server lets it; returns how it failed, if it did.
fn handshake(addr: SocketAddr, timeout: Duration, config: Arc<ClientConfig>) -> Option<Reached> {
    let deadline = Instant::now() + timeout;
    let mut socket = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return Some(io_failure(&e)),
    };
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = match ClientConnection::new(config, name) {
        Ok(c) => c,
        Err(e) => return Some(Reached::Failed(e.to_string())),
    };
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Some(Reached::TimedOut);
        }
        let _ = socket.set_read_timeout(Some(left));
        let _ = socket.set_write_timeout(Some(left));
        match conn.complete_io(&mut socket) {
            Ok((0, 0)) if conn.wants_read() => return Some(Reached::Failed("closed".into())),
            Ok(_) => {}
            Err(e) => return Some(io_failure(&e)),
        }
    }
    None
}

fn io_failure(e: &std::io::Error) -> Reached {
    match e.kind() {
        ErrorKind::ConnectionRefused => Reached::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Reached::TimedOut,
        _ => Reached::Failed(e.to_string()),
    }
}
