//! The floor under kpki's speed: one P-256 keygen + signature with ring alone and one age
//! encryption alone, against what kpki spends per certificate and per sealed file; and the
//! per-file cost of sealing and writing durably, so that a regression in either shows.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kpki::agefile as seal;
use kpki::catalogue::{CaName, Subject, Usage};
use kpki::config::{Algorithm, San, Span};
use kpki::issuing::{self, Authority};
use kpki::store::Store;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use zeroize::Zeroizing;

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
    let now = kpki::clock::now();
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
                (cert, kpki::pem::Material::of_key(&key))
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

/// Files per transaction in the durable-write bench: the order of a 3-node `init`.
const FILES: usize = 100;

fn durable_writes(c: &mut Criterion) {
    // On the repository's own filesystem (target/), not a tmpfs: fsync costs what users pay.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::new(dir.path());
    let admin = age::x25519::Identity::generate().to_public().to_string();
    let admin = seal::parse_recipient(&admin, "admin").unwrap();
    let plaintext = [b'k'; 700];
    let mut group = c.benchmark_group("kpki: seal + durable write");
    group.throughput(Throughput::Elements(FILES as u64));
    group.bench_function(format!("{FILES} files in one transaction"), |b| {
        b.iter(|| {
            let mut txn = store.transaction();
            for i in 0..FILES {
                let sealed = seal::encrypt(&plaintext, &[&admin], "bench").unwrap();
                let path = store.secret_path(&format!("node-{}/file-{i}.pem", i % 3));
                txn.write(path, Zeroizing::new(sealed), 0o644, 0o755);
            }
            txn.commit(|_| Ok(())).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, certificates, encryption, durable_writes);
criterion_main!(benches);
