//! `secrets/kpki.nix` as a NixOS module, evaluated by nix-instantiate with the module system of
//! `tests/nix/lib.nix` (a stand-in of nixpkgs' lib) and the option declarations of
//! `tests/nix/nixos.nix` (nixpkgs' names, types and competing mkDefault values): what each kind
//! of node gets wired, that every option kpki sets exists, the priorities, restart triggers, and
//! a real etcd cluster started from the evaluated `services.etcd` options alone.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::deploy::Deployment;
use crate::etcd::{CRL, Client, Etcd, Version};
use crate::harness::{Cluster, DEFAULT_CONFIG, manifest_entry, run, s};
use crate::secrets::config_with_keys;

/// `tests/nix/`.
fn nix_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nix")
}

/// Evaluates the cluster's `kpki.nix` on `host` with the extra NixOS settings `settings` (a Nix
/// module); the JSON of `tests/nix/eval.nix`, or the error text. With `KPKI_NIXPKGS_LIB` set to
/// a checkout of nixpkgs' `lib`, the real module system evaluates instead of the stand-in.
pub fn eval(cluster: &Cluster, host: &str, settings: &str) -> Result<Value, String> {
    eval_module(
        &format!("{}/secrets/kpki.nix", s(cluster.path())),
        host,
        settings,
    )
}

/// [`eval`] of the module the Nix expression `module` gives.
fn eval_module(module: &str, host: &str, settings: &str) -> Result<Value, String> {
    let lib = match std::env::var("KPKI_NIXPKGS_LIB") {
        Ok(path) if !path.is_empty() => format!("lib = import {path};"),
        _ => String::new(),
    };
    let expr = format!(
        "import {}/eval.nix {{ {lib} module = {module}; hostName = \"{host}\"; settings = {settings}; }}",
        s(&nix_dir()),
    );
    let out = run(
        "nix-instantiate",
        &["--eval", "--strict", "--json", "-E", &expr],
    );
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn ok(cluster: &Cluster, host: &str, settings: &str) -> Value {
    eval(cluster, host, settings).unwrap_or_else(|e| panic!("{host}: {e}"))
}

/// Every component nixpkgs runs on a node with all roles.
const EVERYTHING: &str = "{ kpki.wireServices = true; services.kubernetes = { apiserver.enable = true; controllerManager.enable = true; scheduler.enable = true; kubelet.enable = true; proxy.enable = true; }; services.etcd.enable = true; }";
const WORKER: &str = "{ kpki.wireServices = true; services.kubernetes = { kubelet.enable = true; proxy.enable = true; }; }";
const ETCD: &str = "{ kpki.wireServices = true; services.etcd.enable = true; }";
const CONTROL_PLANE: &str = "{ kpki.wireServices = true; services.kubernetes = { apiserver.enable = true; controllerManager.enable = true; scheduler.enable = true; }; }";

/// A cluster with every kind of node: three with all roles, a worker, an etcd-only and a
/// control-plane-only node.
fn mixed_cluster() -> Cluster {
    let config = format!(
        "{}\n[[node]]\nname = \"node-05\"\naddresses = [\"2001:db8::5\"]\nroles = [\"etcd\"]\n\n[[node]]\nname = \"node-06\"\naddresses = [\"2001:db8::6\"]\nroles = [\"control-plane\"]\n",
        config_with_keys()
    );
    Cluster::initialized(&config)
}

/// The decrypted path agenix gives the secret NAME.
fn agenix(name: &str) -> Value {
    Value::String(format!("/run/agenix/{name}"))
}

#[test]
fn a_full_node_gets_every_option_easycerts_sets() {
    let cluster = mixed_cluster();
    let v = ok(&cluster, "node-02", EVERYTHING);
    assert_eq!(v["assertions"], serde_json::json!([]));
    let a = &v["apiserver"];
    let expect = [
        (&a["clientCaFile"], "kpki-kubernetes-ca.pem"),
        (&a["kubeletClientCaFile"], "kpki-kubernetes-ca.pem"),
        (&a["tlsCertFile"], "kpki-apiserver.pem"),
        (&a["tlsKeyFile"], "kpki-apiserver-key.pem"),
        (
            &a["kubeletClientCertFile"],
            "kpki-kubernetes-apiserver-kubelet-client.pem",
        ),
        (
            &a["kubeletClientKeyFile"],
            "kpki-kubernetes-apiserver-kubelet-client-key.pem",
        ),
        (&a["serviceAccountKeyFile"], "kpki-service-account-sa.pem"),
        (
            &a["serviceAccountSigningKeyFile"],
            "kpki-service-account-sa-key.pem",
        ),
        (&a["proxyClientCertFile"], "kpki-front-proxy-client.pem"),
        (&a["proxyClientKeyFile"], "kpki-front-proxy-client-key.pem"),
        (&a["etcd"]["caFile"], "kpki-etcd-ca.pem"),
        (
            &a["etcd"]["certFile"],
            "kpki-etcd-apiserver-etcd-client.pem",
        ),
        (
            &a["etcd"]["keyFile"],
            "kpki-etcd-apiserver-etcd-client-key.pem",
        ),
        (&v["caFile"], "kpki-kubernetes-ca.pem"),
        (
            &v["controllerManager"]["serviceAccountKeyFile"],
            "kpki-service-account-sa-key.pem",
        ),
        (
            &v["controllerManager"]["rootCaFile"],
            "kpki-kubernetes-ca.pem",
        ),
        (
            &v["controllerManager"]["kubeconfig"]["certFile"],
            "kpki-kubernetes-controller-manager.pem",
        ),
        (
            &v["controllerManager"]["kubeconfig"]["keyFile"],
            "kpki-kubernetes-controller-manager-key.pem",
        ),
        (
            &v["scheduler"]["kubeconfig"]["certFile"],
            "kpki-kubernetes-scheduler.pem",
        ),
        (
            &v["scheduler"]["kubeconfig"]["keyFile"],
            "kpki-kubernetes-scheduler-key.pem",
        ),
        (&v["kubelet"]["clientCaFile"], "kpki-kubernetes-ca.pem"),
        (&v["kubelet"]["tlsCertFile"], "kpki-kubelet-serving.pem"),
        (&v["kubelet"]["tlsKeyFile"], "kpki-kubelet-serving-key.pem"),
        (&v["kubelet"]["kubeconfig"]["certFile"], "kpki-kubelet.pem"),
        (
            &v["kubelet"]["kubeconfig"]["keyFile"],
            "kpki-kubelet-key.pem",
        ),
        (
            &v["proxy"]["kubeconfig"]["certFile"],
            "kpki-kubernetes-kube-proxy.pem",
        ),
        (
            &v["proxy"]["kubeconfig"]["keyFile"],
            "kpki-kubernetes-kube-proxy-key.pem",
        ),
    ];
    for (value, name) in expect {
        assert_eq!(*value, agenix(name), "{name}");
    }
    let servers = ["1", "2", "3", "5"].map(|n| format!("https://[2001:db8::{n}]:2379"));
    assert_eq!(a["etcd"]["servers"], serde_json::json!(servers));
    assert_eq!(a["advertiseAddress"], "2001:db8::2");
    assert_eq!(a["bindAddress"], "::");
    assert_eq!(a["serviceClusterIpRange"], "fd00:10:96::/112");
    assert_eq!(
        a["extraOpts"],
        "--requestheader-client-ca-file=/run/agenix/kpki-front-proxy-ca.pem --requestheader-allowed-names=front-proxy-client --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group --requestheader-extra-headers-prefix=X-Remote-Extra-"
    );
    // Every kubeconfig reaches the API server at a valid URL (nixpkgs' own default for an IPv6
    // address is not one), and the kubelet's hostname is its node name.
    for component in ["controllerManager", "scheduler", "kubelet", "proxy"] {
        assert_eq!(
            v[component]["kubeconfig"]["server"], "https://[2001:db8::1]:6443",
            "{component}"
        );
        assert_eq!(
            v[component]["kubeconfig"]["caFile"],
            agenix("kpki-kubernetes-ca.pem"),
            "{component}"
        );
    }
    assert_eq!(v["kubelet"]["hostname"], "node-02");
    let e = &v["etcd"];
    assert_eq!(e["ETCD_NAME"], "node-02");
    assert_eq!(e["ETCD_CERT_FILE"], agenix("kpki-etcd-server.pem"));
    assert_eq!(e["ETCD_PEER_KEY_FILE"], agenix("kpki-etcd-peer-key.pem"));
    assert_eq!(e["ETCD_TRUSTED_CA_FILE"], agenix("kpki-etcd-ca.pem"));
    assert_eq!(e["ETCD_PEER_TRUSTED_CA_FILE"], agenix("kpki-etcd-ca.pem"));
    assert_eq!(
        (
            e["ETCD_CLIENT_CERT_AUTH"].as_str(),
            e["ETCD_PEER_CLIENT_CERT_AUTH"].as_str()
        ),
        (Some("1"), Some("1"))
    );
    assert_eq!(
        e["ETCD_LISTEN_CLIENT_URLS"],
        "https://[2001:db8::2]:2379,https://[::1]:2379"
    );
    assert_eq!(e["ETCD_LISTEN_PEER_URLS"], "https://[2001:db8::2]:2380");
    assert_eq!(
        e["ETCD_INITIAL_CLUSTER"],
        "node-01=https://[2001:db8::1]:2380,node-02=https://[2001:db8::2]:2380,node-03=https://[2001:db8::3]:2380,node-05=https://[2001:db8::5]:2380"
    );
    // kpki.paths: every file of the host, by its path under pki/.
    let paths = v["paths"].as_object().unwrap();
    assert_eq!(
        paths["node-02/kubelet-key.pem"],
        agenix("kpki-kubelet-key.pem")
    );
    assert_eq!(paths["kubernetes/ca.pem"], agenix("kpki-kubernetes-ca.pem"));
    assert_eq!(paths.len(), v["secrets"].as_object().unwrap().len());
}

#[test]
fn kpkis_module_evaluates_on_its_own_with_data_written_by_hand() {
    // src/secrets/module.nix is a function of the cluster's data: reviewable and testable as
    // Nix, without kpki. One etcd node with two files, the etcd service wired to them.
    let data = r#"{
      apiServer = "https://[2001:db8::7]:6443"; serviceCidr = "fd00:10:96::/112";
      kubernetesCa = "kubernetes/ca.pem"; frontProxyCa = "front-proxy/ca.pem"; crl = "etcd/crl.der";
      etcdMembers = [ { name = "solo"; host = "[2001:db8::7]"; } ];
      nodes.solo = {
        roles = [ "etcd" ]; addresses = [ "2001:db8::7" ];
        files = {
          "etcd/ca.pem" = { name = "the-ca"; file = /x/ca.age; owner = "etcd"; mode = "0444"; fingerprint = "one"; };
          "solo/etcd-server.pem" = { name = "the-cert"; file = /x/cert.age; owner = "etcd"; mode = "0444"; fingerprint = "two"; };
        };
      };
      wiring.etcd = {
        role = "etcd"; options = "services.etcd"; unit = "etcd";
        files = [ { option = "trustedCaFile"; rel = "etcd/ca.pem"; } { option = "certFile"; own = "etcd-server.pem"; } ];
        restart = [ { rel = "etcd/ca.pem"; } ];
      };
    }"#;
    let module = format!(
        "(import {}/src/secrets/module.nix {data})",
        env!("CARGO_MANIFEST_DIR")
    );
    let v = eval_module(&module, "solo", ETCD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["etcd"]["ETCD_TRUSTED_CA_FILE"], agenix("the-ca"));
    assert_eq!(v["etcd"]["ETCD_CERT_FILE"], agenix("the-cert"));
    assert_eq!(
        v["etcd"]["ETCD_INITIAL_CLUSTER"],
        "solo=https://[2001:db8::7]:2380"
    );
    assert_eq!(v["restartTriggers"]["etcd"], serde_json::json!(["one"]));
    assert_eq!(v["secrets"]["the-cert"]["mode"], "0444");
    let other = eval_module(&module, "elsewhere", ETCD).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(other["secrets"], serde_json::json!({}));
    assert_eq!(other["etcd"]["ETCD_CERT_FILE"], Value::Null);
}

#[test]
fn each_kind_of_node_gets_only_what_it_holds() {
    let cluster = mixed_cluster();
    let files = |v: &Value| -> Vec<String> {
        let mut f: Vec<String> = v["paths"].as_object().unwrap().keys().cloned().collect();
        f.sort();
        f
    };
    let worker = ok(&cluster, "node-04", WORKER);
    assert_eq!(
        files(&worker),
        [
            "kubernetes/ca.pem",
            "kubernetes/kube-proxy-key.pem",
            "kubernetes/kube-proxy.pem",
            "node-04/kubelet-key.pem",
            "node-04/kubelet-serving-key.pem",
            "node-04/kubelet-serving.pem",
            "node-04/kubelet.pem"
        ]
    );
    assert_eq!(
        worker["kubelet"]["tlsCertFile"],
        agenix("kpki-kubelet-serving.pem")
    );
    assert_eq!(worker["kubelet"]["hostname"], "node-04");
    assert_eq!(
        worker["proxy"]["kubeconfig"]["server"],
        "https://[2001:db8::1]:6443"
    );
    assert_eq!(worker["apiserver"], Value::Null);
    let etcd = ok(&cluster, "node-05", ETCD);
    assert_eq!(
        files(&etcd),
        [
            "etcd/ca.pem",
            "kubernetes/ca.pem",
            "node-05/etcd-peer-key.pem",
            "node-05/etcd-peer.pem",
            "node-05/etcd-server-key.pem",
            "node-05/etcd-server.pem"
        ]
    );
    assert_eq!(
        etcd["etcd"]["ETCD_CERT_FILE"],
        agenix("kpki-etcd-server.pem")
    );
    assert_eq!(
        etcd["etcd"]["ETCD_LISTEN_PEER_URLS"],
        "https://[2001:db8::5]:2380"
    );
    let control = ok(&cluster, "node-06", CONTROL_PLANE);
    assert_eq!(
        control["apiserver"]["tlsCertFile"],
        agenix("kpki-apiserver.pem")
    );
    assert!(
        !files(&control)
            .iter()
            .any(|f| f.starts_with("node-06/kubelet") || f.contains("etcd-server"))
    );
    // A worker that also runs an apiserver kpki gave it no certificates for gets nothing wired:
    // nixpkgs then asks for what it needs itself.
    let line = eval(&cluster, "node-04", EVERYTHING).unwrap_err();
    assert!(line.contains("has no value defined"), "{line}");
    // A host that is not in the config gets no secret and no wiring.
    let stranger = ok(&cluster, "elsewhere", "{ kpki.wireServices = true; }");
    assert_eq!(stranger["secrets"], serde_json::json!({}));
    assert_eq!(stranger["caFile"], Value::Null);
    // Without wireServices, the secrets are declared and nothing is wired.
    let plain = ok(
        &cluster,
        "node-01",
        "{ services.kubernetes.kubelet.enable = true; services.kubernetes.masterAddress = \"m\"; }",
    );
    assert_eq!(plain["kubelet"]["tlsCertFile"], Value::Null);
    assert!(plain["secrets"].as_object().unwrap().len() > 20);
}

#[test]
fn easycerts_and_wiring_exclude_each_other() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let v = ok(
        &cluster,
        "node-01",
        "{ kpki.wireServices = true; services.kubernetes.easyCerts = true; }",
    );
    let message = v["assertions"][0].as_str().unwrap_or_default();
    assert!(
        message.contains("services.kubernetes.easyCerts = false"),
        "{v}"
    );
    let v = ok(
        &cluster,
        "node-01",
        "{ services.kubernetes.easyCerts = true; }",
    );
    assert_eq!(v["assertions"], serde_json::json!([]));
}

#[test]
fn your_definitions_win_and_extra_options_merge() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let settings = "{ kpki.wireServices = true; services.kubernetes = { apiserver.enable = true; kubelet.enable = true; kubelet.hostname = \"custom\"; apiserver.extraOpts = \"--v=2\"; apiserver.bindAddress = \"2001:db8::1\"; }; }";
    let v = ok(&cluster, "node-01", settings);
    assert_eq!(v["kubelet"]["hostname"], "custom");
    assert_eq!(v["apiserver"]["bindAddress"], "2001:db8::1");
    let opts = v["apiserver"]["extraOpts"].as_str().unwrap();
    assert!(
        opts.contains("--v=2") && opts.contains("--requestheader-client-ca-file="),
        "{opts}"
    );
}

#[test]
fn every_option_kpki_sets_is_one_nixpkgs_declares() {
    // The stand-in refuses a definition of an option nobody declared, as the module system does;
    // a module with a misspelled option shows that the check bites.
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    ok(&cluster, "node-01", EVERYTHING);
    let line = eval(
        &cluster,
        "node-01",
        "{ services.kubernetes.apiserver.tlsCertFiles = \"/x\"; }",
    )
    .unwrap_err();
    assert!(
        line.contains("services.kubernetes.apiserver.tlsCertFiles' does not exist"),
        "{line}"
    );
    // And a second value at kpki's priority conflicts, as it would in nixpkgs.
    let settings = "{ lib, ... }: { kpki.wireServices = true; services.kubernetes.kubelet.enable = true; services.kubernetes.kubelet.hostname = lib.mkOverride 900 \"other\"; }";
    let line = eval(&cluster, "node-01", settings).unwrap_err();
    assert!(line.contains("conflicting definition values"), "{line}");
}

/// The restart triggers of each unit on `host`.
fn triggers(cluster: &Cluster, host: &str) -> BTreeMap<String, Value> {
    let v = ok(cluster, host, EVERYTHING);
    v["restartTriggers"]
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .collect()
}

#[test]
fn a_deploy_restarts_exactly_the_units_whose_files_changed() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let before = triggers(&cluster, "node-02");
    let other = triggers(&cluster, "node-01");
    let kubelet = manifest_entry(&cluster, "node-02/kubelet.pem").1;
    assert!(
        before["kubelet"]
            .as_array()
            .unwrap()
            .contains(&Value::String(kubelet))
    );
    // etcd reads its serving certificate at each handshake: only its CA restarts it.
    assert_eq!(
        before["etcd"],
        serde_json::json!([manifest_entry(&cluster, "etcd/ca.pem").1])
    );
    cluster.kpki(&["issue", "kubelet", "node-02"]).success();
    let after = triggers(&cluster, "node-02");
    let changed: Vec<&String> = before
        .keys()
        .filter(|unit| before[*unit] != after[*unit])
        .collect();
    assert_eq!(changed, ["kubelet"]);
    assert_eq!(
        triggers(&cluster, "node-01"),
        other,
        "node-01 would restart"
    );
    cluster.kpki(&["issue", "apiserver-etcd-client"]).success();
    let again = triggers(&cluster, "node-02");
    let changed: Vec<&String> = after
        .keys()
        .filter(|unit| after[*unit] != again[*unit])
        .collect();
    assert_eq!(changed, ["kube-apiserver"]);
}

/// Starts the three members of the default cluster as the module wires them (the environment
/// of each node's etcd service, its files where agenix would put them); returns them with the
/// apiserver's etcd client and servers as wired on node-01.
fn wired_etcd(cluster: &Cluster, version: Version) -> (Etcd, Client, Vec<String>, Deployment) {
    let components = "services.etcd.enable = true; services.kubernetes.apiserver.enable = true;";
    let deployment = Deployment::evaluate(cluster, components);
    for i in 0..deployment.wired.len() {
        deployment.deploy(cluster, i);
    }
    let etcd = Etcd::start_with_env(&deployment.etcd_environments(), version.program());
    let client = Client {
        ca: deployment.get(0, "/apiserver/etcd/caFile").into(),
        cert: deployment.get(0, "/apiserver/etcd/certFile").into(),
        key: deployment.get(0, "/apiserver/etcd/keyFile").into(),
    };
    etcd.wait_healthy(&client);
    let servers = deployment.wired[0]["apiserver"]["etcd"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (etcd, client, servers, deployment)
}

#[test]
fn etcd_runs_on_exactly_what_the_module_wires() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let (etcd, client, servers, _root) = wired_etcd(&cluster, Version::V3_4);
    let put = client.ctl(
        &etcd.hosts.ns(0),
        &servers.join(","),
        &["put", "/kpki/nixos", "wired"],
    );
    assert!(put.status.success(), "{put:?}\n{}", etcd.logs());
    let get = client.ctl(
        &etcd.hosts.ns(2),
        &servers[2],
        &["get", "--print-value-only", "/kpki/nixos"],
    );
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "wired",
        "{get:?}"
    );
}

/// etcd of `version` started exactly as the module wires it, each node on its own copy of its
/// files, refuses a revoked client and accepts the reissued one.
fn etcd_checks_the_revocation_list_the_module_wires(version: Version) {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let keep = |rel: &str| {
        let to = cluster
            .path()
            .join(format!("old-{}", rel.replace('/', "-")));
        std::fs::copy(cluster.pki(rel), &to).unwrap();
        to
    };
    let old = Client {
        ca: keep("etcd/ca.pem"),
        cert: keep("etcd/apiserver-etcd-client.pem"),
        key: keep("etcd/apiserver-etcd-client-key.pem"),
    };
    cluster
        .kpki(&["revoke", "etcd/apiserver-etcd-client"])
        .success();
    let v = ok(&cluster, "node-02", ETCD);
    // etcd 3.5 and later parse only a DER list: the module wires crl.der, not the PEM copy.
    let crl = agenix("kpki-etcd-crl.der");
    assert_eq!(v["paths"][CRL], crl);
    assert_eq!(v["etcd"]["ETCD_CLIENT_CRL_FILE"], crl);
    assert_eq!(v["etcd"]["ETCD_PEER_CRL_FILE"], crl);
    assert!(
        ok(&cluster, "node-02", CONTROL_PLANE)["paths"]
            .get(CRL)
            .is_some(),
        "node-02 holds etcd: it gets the list whatever it runs"
    );

    let (etcd, client, servers, _root) = wired_etcd(&cluster, version);
    let put = client.ctl(&etcd.hosts.ns(0), &servers[0], &["put", "/kpki/crl", "new"]);
    assert!(
        put.status.success(),
        "the reissued client: {put:?}\n{}",
        etcd.logs()
    );
    for (i, server) in servers.iter().enumerate() {
        let refused = old.ctl(&etcd.hosts.ns(i), server, &["get", "/kpki/crl"]);
        assert!(
            !refused.status.success(),
            "member {i} accepted the revoked client"
        );
    }
    let logs = etcd.full_logs();
    assert!(logs.contains("revoked"), "{}", etcd.logs());
    assert!(!logs.contains("malformed crl"), "{}", etcd.logs());
}

#[test]
fn etcd_3_4_checks_the_revocation_list_the_module_wires() {
    etcd_checks_the_revocation_list_the_module_wires(Version::V3_4);
}

#[test]
fn etcd_3_6_checks_the_revocation_list_the_module_wires() {
    etcd_checks_the_revocation_list_the_module_wires(Version::V3_6);
}
