//! The floor under kpki's speed: one P-256 keygen + signature with ring alone and one age
//! encryption alone, against what kpki spends per certificate and per sealed file.

use criterion::{Criterion, criterion_group, criterion_main};
use kpki::agefile as seal;
use kpki::catalogue::{CaName, Subject, Usage};
use kpki::config::{Algorithm, San, Span};
use kpki::issuing::{self, Authority};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn subject(cn: &str, sans: Vec<San>) -> Subject {
    Subject {
        common_name: cn.into(),
        organizations: vec![],
        sans,
    }
}

fn certificates(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let tbs = [7u8; 600];
    c.bench_function("ring alone: P-256 keygen + one signature", |b| {
        b.iter(|| {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            key.sign(&rng, &tbs).unwrap()
        })
    });
    let now = issuing::now();
    let year = Span(time::Duration::days(365));
    let ca_key = issuing::generate_key(Algorithm::EcdsaP256).unwrap();
    let ca_pem =
        issuing::self_signed_ca(&subject("kubernetes-ca", vec![]), &ca_key, now, year).unwrap();
    let ca = Authority::new(
        CaName::Kubernetes,
        &ca_pem,
        ca_key,
        String::new(),
        now + year.0,
    )
    .unwrap();
    let leaf = subject(
        "node-02",
        vec![
            San::Dns("node-02".into()),
            San::Ip("2001:db8::2".parse().unwrap()),
        ],
    );
    c.bench_function(
        "kpki: one leaf (keygen + sign + PEM of key and certificate)",
        |b| {
            b.iter(|| {
                let key = issuing::generate_key(Algorithm::EcdsaP256).unwrap();
                let cert =
                    issuing::sign_leaf(&leaf, Usage::Server, &key, &ca, now, now + year.0).unwrap();
                (cert, issuing::key_pem(&key))
            })
        },
    );
}

fn encryption(c: &mut Criterion) {
    let plaintext = [b'k'; 700];
    let identity = age::x25519::Identity::generate();
    let raw = identity.to_public();
    c.bench_function("age alone: X25519, one recipient, binary", |b| {
        b.iter(|| age::encrypt(&raw, &plaintext).unwrap())
    });
    let admin = seal::parse_recipient(&raw.to_string(), "admin").unwrap();
    c.bench_function("kpki: seal one file to the admin (armored)", |b| {
        b.iter(|| seal::encrypt(&plaintext, &[&admin], "bench").unwrap())
    });
    let host = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/node-01_ssh_host_ed25519_key.pub"
    ))
    .unwrap();
    let host = seal::parse_recipient(&host, "host").unwrap();
    c.bench_function(
        "kpki: seal one file to the admin + a node's ssh-ed25519 key",
        |b| b.iter(|| seal::encrypt(&plaintext, &[&admin, &host], "bench").unwrap()),
    );
}

criterion_group!(benches, certificates, encryption);
criterion_main!(benches);
