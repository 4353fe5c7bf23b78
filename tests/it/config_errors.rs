//! Every invalid config is refused with one line naming the field and value, exit 2, and no
//! file written or changed.

use crate::harness::{Cluster, DEFAULT_CONFIG};

/// The default config with the first occurrence of `from` replaced by `to`.
fn edit(from: &str, to: &str) -> String {
    assert!(
        DEFAULT_CONFIG.contains(from),
        "the default config has no {from:?}"
    );
    DEFAULT_CONFIG.replacen(from, to, 1)
}

/// A test-only age identity: no error may repeat it.
const SECRET: &str = "AGE-SECRET-KEY-1U2H55D9QUSFM9MD0WR9ZTAFVQE9HXTZF7F3R6R8AC6M9J2KWG3MSQ5K4DT";

/// A public key from the fixtures, as one line.
fn fixture_key(name: &str) -> String {
    std::fs::read_to_string(crate::harness::fixture(name))
        .unwrap()
        .trim()
        .to_string()
}

/// The default config with `lines` appended.
fn plus(lines: &str) -> String {
    format!("{DEFAULT_CONFIG}\n{lines}\n")
}

fn cases() -> Vec<(&'static str, String, &'static [&'static str])> {
    let nodes_at = DEFAULT_CONFIG.find("[[node]]").unwrap();
    vec![
        (
            "broken toml",
            edit("[keys]", "[keys"),
            &["kpki.toml: line 11"],
        ),
        (
            "unknown top-level key",
            plus("colour = \"red\""),
            &["unknown field `colour`"],
        ),
        (
            "unknown key in a node",
            edit(
                "addresses = [\"2001:db8::2\"]",
                "adresses = [\"2001:db8::2\"]",
            ),
            &["unknown field `adresses`"],
        ),
        (
            "unknown key in keys",
            edit("renew_before", "renew_after"),
            &["unknown field `renew_after`"],
        ),
        (
            "no cluster section",
            DEFAULT_CONFIG.replacen("[cluster]", "[clusters]", 1),
            &["unknown field `clusters`"],
        ),
        (
            "malformed address",
            edit("2001:db8::2\"", "2001:db8::zz\""),
            &[
                "node \"node-02\": addresses",
                "\"2001:db8::zz\" is not an IP address",
            ],
        ),
        (
            "address twice in a node",
            edit("[\"2001:db8::2\"]", "[\"2001:db8::2\", \"2001:db8:0::2\"]"),
            &["node \"node-02\": addresses", "2001:db8::2 is listed twice"],
        ),
        (
            "address on two nodes",
            edit("2001:db8::3\"", "2001:db8::2\""),
            &[
                "node \"node-03\": addresses",
                "2001:db8::2 is node \"node-02\"'s address too",
            ],
        ),
        (
            "duplicate node name",
            edit("name = \"node-03\"", "name = \"node-02\""),
            &["node \"node-02\": the name is used twice"],
        ),
        (
            "name not a DNS label",
            edit("name = \"node-02\"", "name = \"Node_02\""),
            &["node.name", "\"Node_02\" is not a DNS label"],
        ),
        (
            "name too long",
            edit(
                "name = \"node-02\"",
                &format!("name = \"{}\"", "n".repeat(64)),
            ),
            &["node.name", "is not a DNS label"],
        ),
        (
            "no nodes",
            DEFAULT_CONFIG[..nodes_at].to_string(),
            &["no [[node]] is configured"],
        ),
        (
            "no addresses",
            edit("addresses = [\"2001:db8::2\"]", "addresses = []"),
            &["node \"node-02\": addresses: at least one"],
        ),
        (
            "no roles",
            edit(
                "roles = [\"control-plane\", \"etcd\", \"worker\"]",
                "roles = []",
            ),
            &["node \"node-01\": roles: at least one"],
        ),
        (
            "unknown role",
            edit("\"etcd\", \"worker\"]", "\"etcd\", \"master\"]"),
            &["unknown variant `master`"],
        ),
        (
            "unknown algorithm",
            edit("\"ecdsa-p256\"", "\"rsa-2048\""),
            &["unknown variant `rsa-2048`", "line 12"],
        ),
        (
            "bad duration",
            edit("\"10y\"", "\"ten years\""),
            &["keys.ca_validity", "\"ten years\" is not a duration"],
        ),
        (
            "zero duration",
            edit("\"30d\"", "\"0d\""),
            &["keys.renew_before", "\"0d\""],
        ),
        (
            "leaf outlives ca",
            edit("leaf_validity = \"1y\"", "leaf_validity = \"11y\""),
            &["keys.leaf_validity", "longer than keys.ca_validity"],
        ),
        (
            "renewal window too wide",
            edit("\"30d\"", "\"2y\""),
            &["keys.renew_before", "not shorter than keys.leaf_validity"],
        ),
        (
            "bad service cidr",
            edit("fd00:10:96::/112", "fd00:10:96::"),
            &["cluster.service_cidr", "\"fd00:10:96::\" is not a CIDR"],
        ),
        (
            "service cidr too small",
            edit("fd00:10:96::/112", "fd00:10:96::/128"),
            &["cluster.service_cidr"],
        ),
        (
            "api server without brackets",
            edit("https://[2001:db8::1]:6443", "https://2001:db8::1:6443"),
            &["cluster.api_server", "without brackets"],
        ),
        (
            "api server not https",
            edit("https://[2001:db8::1]:6443", "http://[2001:db8::1]:6443"),
            &["cluster.api_server", "must start with https://"],
        ),
        (
            "api server bad port",
            edit("]:6443", "]:66443"),
            &["cluster.api_server", "invalid port"],
        ),
        (
            "bad api san",
            edit("api_sans = []", "api_sans = [\"bad name!\"]"),
            &["cluster.api_sans[0]", "\"bad name!\""],
        ),
        (
            "api_sans too many for a certificate kpki can read back",
            edit(
                "api_sans = []",
                &format!(
                    "api_sans = [{}]",
                    (0..20_000)
                        .map(|i| format!("\"host-{i:05}.example.org\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            &[
                "cluster.api_sans",
                "20000 entries",
                "larger than kpki reads back",
            ],
        ),
        (
            "bad domain",
            edit("\"cluster.local\"", "\"cluster..local\""),
            &["cluster.domain", "\"cluster..local\""],
        ),
        (
            "bad admin recipient",
            edit("admins = []", "admins = [\"age1notakey\"]"),
            &["secrets.admins[0]", "\"age1notakey\""],
        ),
        (
            "bad host key",
            edit(
                "# host_key = \"ssh-ed25519 AAAA... root@node-01\"",
                "host_key = \"ssh-ed25519 AAAAnope\"",
            ),
            &["node \"node-01\": host_key", "ssh-ed25519 AAAAnope"],
        ),
        (
            "two nodes with one host key",
            edit(
                "# host_key = \"ssh-ed25519 AAAA... root@node-01\"",
                &format!(
                    "host_key = \"{}\"",
                    fixture_key("node-01_ssh_host_ed25519_key.pub")
                ),
            )
            .replacen(
                "name = \"node-02\"",
                &format!(
                    "name = \"node-02\"\nhost_key = \"{}\"",
                    fixture_key("node-01_ssh_host_ed25519_key.pub")
                ),
                1,
            ),
            &[
                "node \"node-02\": host_key",
                "the same key as node \"node-01\"",
            ],
        ),
        (
            "unspecified address",
            edit("2001:db8::2\"", "::\""),
            &[
                "node \"node-02\": addresses",
                ":: is the unspecified address",
            ],
        ),
        (
            "unspecified IPv4 address",
            edit("2001:db8::2\"", "0.0.0.0\""),
            &[
                "node \"node-02\": addresses",
                "0.0.0.0 is the unspecified address",
            ],
        ),
        (
            "multicast address",
            edit("2001:db8::2\"", "ff02::1\""),
            &["ff02::1 is a multicast address"],
        ),
        (
            "broadcast address",
            edit("2001:db8::2\"", "255.255.255.255\""),
            &["255.255.255.255 is the broadcast address"],
        ),
        (
            "loopback address",
            edit("2001:db8::2\"", "::1\""),
            &["::1 is a loopback address"],
        ),
        (
            "IPv4 loopback address",
            edit("2001:db8::2\"", "127.0.0.2\""),
            &["127.0.0.2 is a loopback address"],
        ),
        (
            "the service IP as a node address",
            edit("2001:db8::2\"", "fd00:10:96::1\""),
            &["node \"node-02\": addresses", "kubernetes service IP"],
        ),
        (
            "an IPv4-mapped address of another node",
            edit("[\"2001:db8::2\"]", "[\"2001:db8::2\", \"10.0.0.2\"]").replacen(
                "[\"2001:db8::3\"]",
                "[\"2001:db8::3\", \"::ffff:10.0.0.2\"]",
                1,
            ),
            &[
                "node \"node-03\": addresses",
                "::ffff:10.0.0.2 is node \"node-02\"'s address too",
            ],
        ),
        (
            "a node named like kpki's users directory",
            edit("name = \"node-03\"", "name = \"users\""),
            &["node.name", "\"users\" is reserved"],
        ),
        (
            "a node named like a CA directory",
            edit("name = \"node-03\"", "name = \"etcd\""),
            &["node.name", "\"etcd\" is reserved"],
        ),
        (
            "YAML smuggled into the API server URL",
            edit(
                "api_server = \"https://[2001:db8::1]:6443\"",
                "api_server = \"https://[2001:db8::1]:6443/\\\"\\n    insecure-skip-tls-verify: true\"",
            ),
            &["cluster.api_server", "whitespace, quotes"],
        ),
        (
            "a user name in the API server URL",
            edit(
                "https://[2001:db8::1]:6443",
                "https://user@[2001:db8::1]:6443",
            ),
            &["cluster.api_server", "must not carry a user name"],
        ),
        (
            "a path in the API server URL",
            edit(
                "https://[2001:db8::1]:6443",
                "https://[2001:db8::1]:6443/api",
            ),
            &["cluster.api_server", "no path, query or fragment"],
        ),
        (
            "an age identity pasted as an admin",
            edit("admins = []", &format!("admins = [\"{SECRET}\"]")),
            &["secrets.admins[0]", "this is a private key"],
        ),
        (
            "an age identity pasted as a host key",
            edit(
                "# host_key = \"ssh-ed25519 AAAA... root@node-01\"",
                &format!("host_key = \"{SECRET}\""),
            ),
            &["node \"node-01\": host_key", "this is a private key"],
        ),
        (
            "an identity where a list belongs",
            edit("admins = []", &format!("admins = \"{SECRET}\"")),
            &["a private key is written here"],
        ),
        (
            "a weak RSA host key",
            edit(
                "# host_key = \"ssh-ed25519 AAAA... root@node-01\"",
                &format!("host_key = \"{}\"", fixture_key("weak_rsa1024.pub")),
            ),
            &["node \"node-01\": host_key", "1024 bits is too weak"],
        ),
        (
            "wrong type",
            edit(
                "addresses = [\"2001:db8::2\"]",
                "addresses = \"2001:db8::2\"",
            ),
            &["line", "invalid type"],
        ),
    ]
}

#[test]
fn every_invalid_config_is_refused_and_nothing_is_written() {
    let cases = cases();
    assert!(cases.len() >= 30);
    for (what, config, needles) in cases {
        let cluster = Cluster::with_config(&config);
        let before = cluster.snapshot();
        let run = cluster.kpki(&["init"]);
        let stderr = run.stderr();
        let line = run.fails_with(2);
        assert!(line.starts_with("kpki: error: "), "{what}: {stderr}");
        assert!(
            line.contains("pki/kpki.toml"),
            "{what}: the file is not named: {line}"
        );
        for needle in needles {
            assert!(line.contains(needle), "{what}: {needle:?} not in {line:?}");
        }
        assert!(
            stderr.lines().count() <= 2,
            "{what}: more than an error and a hint: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(
            !stderr.contains("U2H55D9QUSFM9MD0"),
            "{what}: the secret was echoed: {stderr}"
        );
        assert!(before == cluster.snapshot(), "{what}: files changed");
    }
}
