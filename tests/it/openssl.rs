//! The generated PKI as openssl sees it: chains, purposes, subjects, SANs, key pairs, CA limits.

use std::net::IpAddr;

use crate::harness::{Cluster, DEFAULT_CONFIG, run, run_ok, s};

/// What a leaf must be, written out independently of kpki's catalogue.
struct Expect {
    file: &'static str,
    ca: &'static str,
    subject: String,
    server: bool,
    client: bool,
    sans: Vec<String>,
}

fn leaf(file: &'static str, ca: &'static str, subject: &str, server: bool, client: bool) -> Expect {
    Expect {
        file,
        ca,
        subject: subject.to_string(),
        server,
        client,
        sans: Vec::new(),
    }
}

/// The expected leaves of the default three-node cluster.
fn default_leaves() -> Vec<Expect> {
    let mut v = vec![
        leaf(
            "kubernetes/admin",
            "kubernetes",
            "O=system:masters, CN=kubernetes-admin",
            false,
            true,
        ),
        leaf(
            "kubernetes/controller-manager",
            "kubernetes",
            "CN=system:kube-controller-manager",
            false,
            true,
        ),
        leaf(
            "kubernetes/scheduler",
            "kubernetes",
            "CN=system:kube-scheduler",
            false,
            true,
        ),
        leaf(
            "kubernetes/apiserver-kubelet-client",
            "kubernetes",
            "O=system:masters, CN=kube-apiserver-kubelet-client",
            false,
            true,
        ),
        leaf(
            "kubernetes/kube-proxy",
            "kubernetes",
            "O=system:node-proxier, CN=system:kube-proxy",
            false,
            true,
        ),
        leaf(
            "etcd/apiserver-etcd-client",
            "etcd",
            "CN=kube-apiserver-etcd-client",
            false,
            true,
        ),
        leaf(
            "front-proxy/client",
            "front-proxy",
            "CN=front-proxy-client",
            false,
            true,
        ),
    ];
    for (n, file) in [(1, "node-01"), (2, "node-02"), (3, "node-03")] {
        let addr = format!("IP:2001:db8::{n}");
        let name = format!("DNS:{file}");
        let with =
            |rel: &'static str, ca, subject: String, server, client, sans: Vec<String>| Expect {
                file: rel,
                ca,
                subject,
                server,
                client,
                sans,
            };
        let at =
            |stem: &str| -> &'static str { Box::leak(format!("{file}/{stem}").into_boxed_str()) };
        let mut api: Vec<String> = [
            name.as_str(),
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster",
            "DNS:kubernetes.default.svc.cluster.local",
            "IP:fd00:10:96::1",
            addr.as_str(),
        ]
        .map(String::from)
        .to_vec();
        if n != 1 {
            api.push("IP:2001:db8::1".into()); // the api_server host
        }
        api.extend(["DNS:localhost".into(), "IP:::1".into()]);
        let node_id = format!("O=system:nodes, CN=system:node:{file}");
        v.extend([
            with(
                at("apiserver"),
                "kubernetes",
                "CN=kube-apiserver".into(),
                true,
                false,
                api,
            ),
            with(
                at("etcd-server"),
                "etcd",
                format!("CN={file}"),
                true,
                true,
                vec![
                    name.clone(),
                    "DNS:localhost".into(),
                    addr.clone(),
                    "IP:::1".into(),
                ],
            ),
            with(
                at("etcd-peer"),
                "etcd",
                format!("CN={file}"),
                true,
                true,
                vec![name.clone(), addr.clone()],
            ),
            with(
                at("kubelet"),
                "kubernetes",
                node_id.clone(),
                false,
                true,
                vec![],
            ),
            with(
                at("kubelet-serving"),
                "kubernetes",
                node_id,
                true,
                false,
                vec![name.clone(), addr.clone()],
            ),
        ]);
    }
    v
}

/// `openssl x509 -text` of a certificate file.
fn text(path: &std::path::Path) -> String {
    run_ok(
        "openssl",
        &[
            "x509",
            "-noout",
            "-text",
            "-nameopt",
            "sep_comma_plus_space",
            "-in",
            s(path),
        ],
    )
}

/// The line after `header` in openssl's text output.
fn after<'t>(text: &'t str, header: &str) -> Option<&'t str> {
    let mut lines = text.lines();
    lines.find(|l| l.trim_start().starts_with(header))?;
    lines.next().map(str::trim)
}

/// openssl's SAN line in canonical form: IPv6 addresses compressed and lowercase.
fn sans(text: &str) -> Vec<String> {
    let Some(line) = after(text, "X509v3 Subject Alternative Name") else {
        return Vec::new();
    };
    line.split(", ")
        .map(|san| match san.strip_prefix("IP Address:") {
            Some(ip) => format!("IP:{}", ip.parse::<IpAddr>().unwrap()),
            None => san.to_string(),
        })
        .collect()
}

fn subject(text: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .unwrap();
    line.trim_start()
        .trim_start_matches("Subject:")
        .trim()
        .replace(" = ", "=")
}

fn verify(cluster: &Cluster, ca: &str, file: &str, purpose: &str) -> std::process::Output {
    let ca = cluster.pki(&format!("{ca}/ca.pem"));
    let leaf = cluster.pki(&format!("{file}.pem"));
    run(
        "openssl",
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            purpose,
            "-CAfile",
            s(&ca),
            s(&leaf),
        ],
    )
}

/// The public key of a certificate and of a private key, as openssl derives them.
fn public_keys(cluster: &Cluster, stem: &str) -> (String, String) {
    let cert = cluster.pki(&format!("{stem}.pem"));
    let key = cluster.pki(&format!("{stem}-key.pem"));
    (
        run_ok("openssl", &["x509", "-noout", "-pubkey", "-in", s(&cert)]),
        run_ok("openssl", &["pkey", "-pubout", "-in", s(&key)]),
    )
}

#[test]
fn every_file_of_the_catalogue_and_nothing_else() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mut expected: Vec<String> = default_leaves()
        .iter()
        .map(|e| e.file.to_string())
        .chain(
            [
                "kubernetes/ca",
                "etcd/ca",
                "front-proxy/ca",
                "service-account/sa",
            ]
            .map(String::from),
        )
        .flat_map(|stem| [format!("{stem}.pem"), format!("{stem}-key.pem")])
        .collect();
    expected.sort();
    assert_eq!(cluster.pem_files(), expected);
}

#[test]
fn leaves_verify_with_their_purpose_subject_and_exact_sans() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    for e in default_leaves() {
        for (wanted, purpose) in [(e.server, "sslserver"), (e.client, "sslclient")] {
            let out = verify(&cluster, e.ca, e.file, purpose);
            let said = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.success(),
                wanted,
                "{} as {purpose}: {said}",
                e.file
            );
        }
        let other_ca = if e.ca == "etcd" { "kubernetes" } else { "etcd" };
        assert!(
            !verify(&cluster, other_ca, e.file, "any").status.success(),
            "{} under {other_ca}",
            e.file
        );
        let t = text(&cluster.pki(&format!("{}.pem", e.file)));
        assert_eq!(subject(&t), e.subject, "{}", e.file);
        assert_eq!(sans(&t), e.sans, "{}", e.file);
        assert_eq!(
            after(&t, "X509v3 Basic Constraints"),
            Some("CA:FALSE"),
            "{}",
            e.file
        );
        assert!(t.contains("X509v3 Authority Key Identifier"), "{}", e.file);
        let (cert_key, key_key) = public_keys(&cluster, e.file);
        assert_eq!(
            cert_key, key_key,
            "{}: key does not match certificate",
            e.file
        );
    }
}

#[test]
fn cas_have_path_length_one_and_signing_usages() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    for (ca, cn) in [
        ("kubernetes", "kubernetes-ca"),
        ("etcd", "etcd-ca"),
        ("front-proxy", "kubernetes-front-proxy-ca"),
    ] {
        let path = cluster.pki(&format!("{ca}/ca.pem"));
        let t = text(&path);
        assert_eq!(subject(&t), format!("CN={cn}"));
        assert_eq!(
            after(&t, "X509v3 Basic Constraints: critical"),
            Some("CA:TRUE, pathlen:1")
        );
        let usage = after(&t, "X509v3 Key Usage: critical").unwrap();
        assert!(
            usage.contains("Certificate Sign") && usage.contains("CRL Sign"),
            "{usage}"
        );
        run_ok(
            "openssl",
            &["verify", "-x509_strict", "-CAfile", s(&path), s(&path)],
        );
        let (cert_key, key_key) = public_keys(&cluster, &format!("{ca}/ca"));
        assert_eq!(cert_key, key_key);
    }
}

#[test]
fn serials_validity_and_key_algorithm() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mut serials = std::collections::HashSet::new();
    for e in default_leaves() {
        let path = cluster.pki(&format!("{}.pem", e.file));
        let out = run_ok(
            "openssl",
            &[
                "x509",
                "-noout",
                "-serial",
                "-startdate",
                "-enddate",
                "-dateopt",
                "iso_8601",
                "-in",
                s(&path),
            ],
        );
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        let serial = field("serial=");
        assert_eq!(
            serial.len(),
            32,
            "{}: serial {serial} is not 16 bytes",
            e.file
        );
        assert!(
            u8::from_str_radix(&serial[..2], 16).unwrap() < 0x80,
            "{}: negative serial",
            e.file
        );
        assert!(serials.insert(serial), "{}: repeated serial", e.file);
        let start = parse_openssl_date(&field("notBefore="));
        let end = parse_openssl_date(&field("notAfter="));
        let now = time::OffsetDateTime::now_utc();
        let backdate = now - start;
        assert!(
            backdate > time::Duration::minutes(4) && backdate < time::Duration::minutes(10),
            "{}",
            e.file
        );
        assert_eq!(
            (end - start).whole_minutes(),
            365 * 24 * 60 + 5,
            "{}",
            e.file
        );
        let t = text(&path);
        assert!(t.contains("ASN1 OID: prime256v1"), "{}: not P-256", e.file);
    }
    let sa = sa_key_text(&cluster);
    assert!(sa.contains("prime256v1"), "{sa}");
}

/// openssl's description of the service-account public key.
fn sa_key_text(cluster: &Cluster) -> String {
    let sa = cluster.pki("service-account/sa.pem");
    run_ok(
        "openssl",
        &["pkey", "-pubin", "-noout", "-text", "-in", s(&sa)],
    )
}

fn parse_openssl_date(s: &str) -> time::OffsetDateTime {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::PrimitiveDateTime::parse(s, &format)
        .unwrap()
        .assume_utc()
}

#[test]
fn p384_and_ed25519_clusters_verify() {
    for (algorithm, marker, sa_marker) in [
        ("ecdsa-p384", "secp384r1", "secp384r1"),
        ("ed25519", "ED25519", "prime256v1"),
    ] {
        let config = DEFAULT_CONFIG.replace(
            "algorithm = \"ecdsa-p256\"",
            &format!("algorithm = \"{algorithm}\""),
        );
        let cluster = Cluster::initialized(&config);
        for e in default_leaves() {
            let out = verify(&cluster, e.ca, e.file, "any");
            assert!(out.status.success(), "{algorithm} {}: {:?}", e.file, out);
            let t = text(&cluster.pki(&format!("{}.pem", e.file)));
            assert!(t.contains(marker), "{algorithm} {}", e.file);
        }
        let sa = sa_key_text(&cluster);
        assert!(
            sa.contains(sa_marker),
            "{algorithm}: service-account key: {sa}"
        );
    }
}
