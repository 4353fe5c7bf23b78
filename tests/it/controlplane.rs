//! The programs that read kpki's certificates, run on them: three kube-apiservers over a
//! three-member etcd, kube-controller-manager, kube-scheduler, a kubelet and kubectl (`kube.rs`),
//! each on the files `kpki init` wrote for its node, over IPv6 in network namespaces; then the
//! Kubernetes CA and the service-account key rotated under them while a client keeps working.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::harness::{Cluster, DEFAULT_CONFIG, openssl_fingerprint, run, run_ok, s};
use crate::kube::{ADDRESSES, ControlPlane, Kubectl, apiserver_url};

/// Who the apiserver of `host` says the holder of `kubeconfig` is: "user [groups]".
/// An error is kubectl's output.
fn whoami(
    plane: &ControlPlane,
    host: usize,
    kubeconfig: &Path,
    extra: &[&str],
) -> Result<String, String> {
    let server = apiserver_url(host);
    let jsonpath = "jsonpath={.status.userInfo.username} {.status.userInfo.groups}";
    let args = [
        &["--server", &server],
        extra,
        &["auth", "whoami", "-o", jsonpath],
    ]
    .concat();
    let out = plane.kubectl(host, kubeconfig, &args);
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        false => Err(format!("{out:?}")),
    }
}

/// `kubectl get --raw PATH` as the admin against the apiserver of `host`.
fn raw(plane: &ControlPlane, host: usize, server: &str, extra: &[&str], path: &str) -> String {
    let args = [&["--server", server], extra, &["get", "--raw", path]].concat();
    plane.kubectl_ok(host, &plane.path("admin.kubeconfig"), &args)
}

/// The serving certificate names the `kubernetes` service by IP and by its DNS names: a client
/// reaching the service IP (added to node-01) and clients verifying the service names connect;
/// a name outside the SANs is refused.
fn service_names_are_served(plane: &ControlPlane) {
    let ns = plane.etcd.hosts.ns(0);
    run_ok(
        "ip",
        &["-n", &ns, "addr", "add", "fd00:10:96::1/128", "dev", "lo"],
    );
    let ready = raw(plane, 0, "https://[fd00:10:96::1]:6443", &[], "/readyz");
    assert_eq!(ready.trim(), "ok");
    let server = apiserver_url(1);
    for name in ["kubernetes", "kubernetes.default.svc.cluster.local"] {
        let ready = raw(plane, 1, &server, &["--tls-server-name", name], "/readyz");
        assert_eq!(ready.trim(), "ok");
    }
    let wrong = plane.kubectl(
        1,
        &plane.path("admin.kubeconfig"),
        &[
            "--server",
            &server,
            "--tls-server-name",
            "other.example",
            "get",
            "--raw",
            "/readyz",
        ],
    );
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        !wrong.status.success() && err.contains("x509"),
        "a name outside the SANs: {wrong:?}"
    );
}

/// A user of `kpki issue client` is who its certificate says, and may do what RBAC grants its
/// group, nothing more.
fn client_users_get_rbac_of_their_group(plane: &ControlPlane) {
    let kpki = |args: &[&str]| plane.cluster.kpki(args).success();
    kpki(&["issue", "client", "--cn", "alice", "--group", "dev"]);
    let alice = plane.kubeconfig("alice.kubeconfig", &["user", "alice"]);
    assert_eq!(
        whoami(plane, 2, &alice, &[]).unwrap(),
        "alice [\"dev\",\"system:authenticated\"]"
    );
    for args in [
        ["create", "namespace", "team"].as_slice(),
        &[
            "-n",
            "team",
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
        ],
        &[
            "-n",
            "team",
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "dev",
            "--role=reader",
            "--group=dev",
        ],
    ] {
        plane.admin(0, args);
    }
    let server = apiserver_url(1);
    let as_alice =
        |args: &[&str]| plane.kubectl(1, &alice, &[&["--server", &*server], args].concat());
    // The binding reaches apiserver 1 through its watch, within moments.
    plane.wait_until("alice reads team's configmaps", || {
        let got = as_alice(&["-n", "team", "get", "configmap", "settings", "-o", "name"]);
        match String::from_utf8_lossy(&got.stdout).trim() {
            "configmap/settings" => Ok(()),
            _ => Err(format!("{got:?}")),
        }
    });
    for denied in [
        ["-n", "team", "get", "secrets"].as_slice(),
        &["-n", "default", "get", "configmaps"],
        &["-n", "team", "delete", "configmap", "settings"],
    ] {
        let out = as_alice(denied);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Forbidden") && err.contains("\"alice\""),
            "alice: {denied:?}: {out:?}"
        );
    }
}

/// The controller-manager and the scheduler, on their kpki identities, take their leases; the
/// controller-manager publishes the Kubernetes CA as `kube-root-ca.crt` in every namespace.
fn controllers_run_on_their_identities(plane: &mut ControlPlane) {
    plane.start_controller_manager(0);
    plane.start_scheduler(1);
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        plane.wait_for(lease, || !plane.lease_holder(lease).is_empty());
    }
    let admin = plane.path("admin.kubeconfig");
    let root_ca = ["-n", "team", "get", "configmap", "kube-root-ca.crt"];
    plane.wait_for("kube-root-ca.crt", || {
        plane.kubectl(0, &admin, &root_ca).status.success()
    });
    let published = plane.admin(
        0,
        &[&root_ca[..], &["-o", "jsonpath={.data.ca\\.crt}"]].concat(),
    );
    let file = plane.path("published-ca.pem");
    std::fs::write(&file, published).unwrap();
    assert_eq!(
        openssl_fingerprint(&file),
        openssl_fingerprint(&plane.cluster.pki("kubernetes/ca.pem"))
    );
    for name in ["controller-manager", "scheduler"] {
        let log = plane.log(name);
        assert!(
            !log.contains("x509") && !log.contains("Unauthorized") && !log.contains("forbidden"),
            "{name} had TLS or authorization errors:\n{log}"
        );
    }
}

/// A kubeconfig with the Kubernetes CA and no credentials, for bearer tokens.
fn token_kubeconfig(plane: &ControlPlane) -> std::path::PathBuf {
    let path = plane.path("token.kubeconfig");
    let ca = s(&plane.cluster.pki("kubernetes/ca.pem")).to_string();
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {ca}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n",
        apiserver_url(0)
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// A token from the TokenRequest API, signed by one apiserver with the SA key, is accepted by
/// another (they share the key), also by kubectl.
fn service_account_tokens_work_across_apiservers(plane: &ControlPlane) {
    plane.admin(0, &["-n", "team", "create", "serviceaccount", "bot"]);
    let server = apiserver_url(0);
    let token = plane.admin(
        0,
        &["--server", &server, "-n", "team", "create", "token", "bot"],
    );
    // Apiserver 2 looks the account up in its cache, which its watch fills within moments.
    let kubeconfig = token_kubeconfig(plane);
    plane.wait_until("the token at another apiserver", || {
        let who = whoami(plane, 2, &kubeconfig, &["--token", token.trim()])?;
        match who.starts_with("system:serviceaccount:team:bot [")
            && who.contains("system:serviceaccounts:team")
        {
            true => Ok(()),
            false => Err(who),
        }
    });
}

/// kube-proxy's identity (O=system:node-proxier) may watch what kube-proxy reads, cluster-wide,
/// through the bootstrap binding of its group, and nothing it does not need.
fn kube_proxy_reads_services(plane: &ControlPlane) {
    let kubeconfig = plane.deployment.kubeconfig(1, "proxy");
    let can = |verb: &str, what: &str| {
        let out = plane.kubectl(
            1,
            &kubeconfig,
            &[
                "--server",
                &apiserver_url(1),
                "auth",
                "can-i",
                verb,
                what,
                "-A",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for what in ["services", "endpointslices.discovery.k8s.io", "nodes"] {
        assert_eq!(can("watch", what), "yes", "kube-proxy watch {what}");
    }
    for what in ["secrets", "configmaps"] {
        assert_eq!(can("list", what), "no", "kube-proxy list {what}");
    }
}

/// A kubelet's identity creates its own Node; NodeRestriction refuses it another node's.
fn nodes_are_restricted_to_themselves(plane: &ControlPlane) {
    for (i, name) in ["node-01", "node-02"].into_iter().enumerate() {
        let kubeconfig = plane.kubeconfig(&format!("{name}.kubeconfig"), &["kubelet", name]);
        let node = format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\nstatus:\n  addresses:\n  - type: InternalIP\n    address: \"{}\"\n  daemonEndpoints:\n    kubeletEndpoint:\n      Port: 10250\n",
            ADDRESSES[i]
        );
        let out = plane.create(&kubeconfig, &node);
        assert!(out.status.success(), "{name} registers itself: {out:?}");
    }
    let node02 = plane.path("node-02.kubeconfig");
    let out = plane.kubectl(0, &node02, &["label", "node", "node-01", "stolen=yes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("system:node:node-02"),
        "node-02 modified node-01: {out:?}"
    );
    let own = plane.kubectl_ok(0, &node02, &["label", "node", "node-02", "mine=yes"]);
    assert!(own.contains("labeled"), "{own}");
}

/// Starts the stand-in on `host` at `port`, serving `cert` (a path under pki/ without `.pem`)
/// and requiring clients of `client_ca`.
fn standin(
    plane: &mut ControlPlane,
    name: &str,
    host: usize,
    port: u16,
    cert: &str,
    client_ca: &Path,
    extra: &[String],
) {
    let pki = |rel: String| s(&plane.cluster.pki(&rel)).to_string();
    let args = [
        format!("--listen=[{}]:{port}", ADDRESSES[host]),
        format!("--cert={}", pki(format!("{cert}.pem"))),
        format!("--key={}", pki(format!("{cert}-key.pem"))),
        format!("--client-ca={}", s(client_ca)),
        format!("--log={}", s(&plane.path(&format!("{name}-requests.log")))),
    ];
    plane.spawn(name, host, "standin", &[&args[..], extra].concat());
}

/// The apiserver reaches node-02's kubelet port with its kubelet client identity and verifies
/// the kubelet's serving certificate against the Kubernetes CA.
fn apiserver_reaches_kubelets_with_its_client(plane: &mut ControlPlane) {
    let ca = plane.cluster.pki("kubernetes/ca.pem");
    let proxy = "/api/v1/nodes/node-02/proxy/healthz";
    standin(
        plane,
        "kubelet",
        1,
        10250,
        "node-02/kubelet-serving",
        &ca,
        &[],
    );
    let admin = plane.path("admin.kubeconfig");
    let mut answer = String::new();
    plane.wait_for("the apiserver proxies to node-02's kubelet", || {
        let out = plane.kubectl(0, &admin, &["get", "--raw", proxy]);
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(
        answer.contains("\"commonName\":\"kube-apiserver-kubelet-client\"")
            && answer.contains("\"path\":\"/healthz\""),
        "{answer}"
    );
    // node-03's serving certificate at node-02's address is refused.
    standin(
        plane,
        "kubelet",
        1,
        10250,
        "node-03/kubelet-serving",
        &ca,
        &[],
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = plane.kubectl(0, &admin, &["get", "--raw", proxy]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("x509: certificate is valid for 2001:db8::3, not 2001:db8::2"),
        "the apiserver accepted node-03's serving certificate at node-02's address: {err}"
    );
    plane.stop("kubelet");
}

/// Front proxy: an aggregated API server (the stand-in, trusting the front-proxy CA it reads from
/// the `extension-apiserver-authentication` ConfigMap, as real ones do) receives alice's request
/// from the apiserver under the front-proxy client certificate, her name in `X-Remote-User`.
fn aggregated_apis_get_the_user_from_the_front_proxy(plane: &mut ControlPlane) {
    let ca = plane.admin(
        0,
        &[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "extension-apiserver-authentication",
            "-o",
            "jsonpath={.data.requestheader-client-ca-file}",
        ],
    );
    let ca_file = plane.path("requestheader-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    assert_eq!(
        openssl_fingerprint(&ca_file),
        openssl_fingerprint(&plane.cluster.pki("front-proxy/ca.pem"))
    );
    let group = ["--group-version=stub.kpki.test/v1".to_string()];
    standin(
        plane,
        "aggregated",
        2,
        8443,
        "node-03/kubelet-serving",
        &ca_file,
        &group,
    );
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: stub, namespace: team}}\nspec:\n  ipFamilies: [IPv6]\n  ports: [{{port: 443, targetPort: 8443}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: stub, namespace: team}}\nsubsets:\n- addresses: [{{ip: \"{}\"}}]\n  ports: [{{port: 8443}}]\n---\napiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {{name: v1.stub.kpki.test}}\nspec:\n  group: stub.kpki.test\n  version: v1\n  service: {{name: stub, namespace: team, port: 443}}\n  insecureSkipTLSVerify: true\n  groupPriorityMinimum: 1000\n  versionPriority: 10\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {{name: stub-reader}}\nrules:\n- apiGroups: [stub.kpki.test]\n  resources: [\"*\"]\n  verbs: [get, list]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: dev-stub}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: stub-reader}}\nsubjects:\n- {{apiGroup: rbac.authorization.k8s.io, kind: Group, name: dev}}\n",
        ADDRESSES[2]
    );
    let out = plane.create(&plane.path("admin.kubeconfig"), &manifest);
    assert!(out.status.success(), "aggregated API: {out:?}");
    let alice = plane.path("alice.kubeconfig");
    let mut answer = String::new();
    plane.wait_for("the aggregated API answers through the apiserver", || {
        let out = plane.kubectl(
            1,
            &alice,
            &[
                "--server",
                &apiserver_url(1),
                "get",
                "--raw",
                "/apis/stub.kpki.test/v1/whoami",
            ],
        );
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success()
    });
    assert!(
        answer.contains("\"commonName\":\"front-proxy-client\"")
            && answer.contains("\"remoteUser\":\"alice\"")
            && answer.contains("\"dev\""),
        "{answer}"
    );
    // A client of the Kubernetes CA cannot speak to the aggregated server directly.
    let url = format!(
        "https://[{}]:8443/apis/stub.kpki.test/v1/whoami",
        ADDRESSES[2]
    );
    let direct = curl_as(plane, 2, &url, "kubernetes/admin", &MALLORY);
    assert!(
        direct.starts_with("curl: (") && !direct.contains("remoteUser"),
        "{direct}"
    );
}

/// curl on host `host` with `client`'s certificate (`pki/CLIENT.pem`) and `headers`: a POST of
/// a SelfSubjectReview to a `selfsubjectreviews` URL, else a GET. The response body, or curl's
/// error.
fn curl_as(plane: &ControlPlane, host: usize, url: &str, client: &str, headers: &[&str]) -> String {
    let pki = |rel: String| s(&plane.cluster.pki(&rel)).to_string();
    let ns = plane.etcd.hosts.ns(host);
    let cert = pki(format!("{client}.pem"));
    let key = pki(format!("{client}-key.pem"));
    let mut args = vec![
        "netns", "exec", &ns, "curl", "-sS", "-k", "--cert", &cert, "--key", &key,
    ];
    args.extend(headers.iter().flat_map(|h| ["-H", h]));
    if url.ends_with("selfsubjectreviews") {
        args.extend(["-H", "Content-Type: application/json", "-d"]);
        args.push(r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#);
    }
    args.push(url);
    let out = run("ip", &args);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Headers claiming to be mallory in system:masters, as a front proxy would pass a user on.
const MALLORY: [&str; 2] = ["X-Remote-User: mallory", "X-Remote-Group: system:masters"];

/// The apiserver's own request-header authentication: the user named by the header is believed
/// from the front-proxy client only, never from a client of the Kubernetes CA.
fn request_headers_are_believed_from_the_front_proxy_only(plane: &ControlPlane) {
    let url = format!(
        "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        apiserver_url(0)
    );
    let proxied = curl_as(plane, 0, &url, "front-proxy/client", &MALLORY);
    assert!(proxied.contains("\"username\": \"mallory\""), "{proxied}");
    let direct = curl_as(plane, 0, &url, "kubernetes/kube-proxy", &MALLORY);
    assert!(
        direct.contains("\"username\": \"system:kube-proxy\"") && !direct.contains("mallory"),
        "a client of the Kubernetes CA set its user by header: {direct}"
    );
}

/// The kubelet of node-03 answers `healthz` through every apiserver's node proxy.
fn kubelet_reached_from_every_apiserver(plane: &ControlPlane) {
    for i in 0..ADDRESSES.len() {
        let healthz = "/api/v1/nodes/node-03/proxy/healthz";
        plane.wait_until(&format!("node-03's kubelet through apiserver {i}"), || {
            let args = ["--server", &apiserver_url(i), "get", "--raw", healthz];
            let out = plane.kubectl(i, &plane.path("admin.kubeconfig"), &args);
            match String::from_utf8_lossy(&out.stdout).as_ref() {
                "ok" => Ok(()),
                _ => Err(format!("{out:?}")),
            }
        });
    }
}

/// The time node-03's kubelet last renewed its node lease.
fn node_lease_renewed(plane: &ControlPlane) -> String {
    let args = [
        "-n",
        "kube-node-lease",
        "get",
        "lease",
        "node-03",
        "-o",
        "jsonpath={.spec.renewTime}",
    ];
    let out = plane.kubectl(0, &plane.path("admin.kubeconfig"), &args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Restarts node-03's kubelet on the files now in `pki/` and waits until it renewed its lease
/// (its client certificate works) and every apiserver reaches it (its serving certificate and
/// the apiservers' kubelet client work).
fn restart_kubelet(plane: &mut ControlPlane) {
    let before = node_lease_renewed(plane);
    plane.start_kubelet(2);
    plane.wait_for("node-03's kubelet renews its lease", || {
        let now = node_lease_renewed(plane);
        !now.is_empty() && now != before
    });
    kubelet_reached_from_every_apiserver(plane);
}

/// A real kubelet on node-03's files registers its Node with its client certificate and goes
/// Ready; the apiserver reaches it with its kubelet client (verifying the kubelet's serving
/// certificate), which the kubelet authenticates by the Kubernetes CA and authorizes through the
/// apiserver (kube-proxy's identity is known there, and refused); a client of another CA is
/// not authenticated.
fn a_real_kubelet_joins(plane: &mut ControlPlane) {
    plane.start_kubelet(2);
    let admin = plane.path("admin.kubeconfig");
    let ready = r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#;
    plane.wait_until("node-03 Ready", || {
        let out = plane.kubectl(0, &admin, &["get", "node", "node-03", "-o", ready]);
        match String::from_utf8_lossy(&out.stdout).as_ref() {
            "True" => Ok(()),
            _ => Err(format!("{out:?}")),
        }
    });
    kubelet_reached_from_every_apiserver(plane);
    let pods = raw(
        plane,
        0,
        &apiserver_url(0),
        &[],
        "/api/v1/nodes/node-03/proxy/pods",
    );
    assert!(pods.contains("\"kind\":\"PodList\""), "{pods}");
    let kubelet = format!("https://[{}]:10250/pods", ADDRESSES[2]);
    // The kubelet may answer before its authenticator is ready: poll briefly.
    plane.wait_until("the admin at the kubelet", || {
        let admin = curl_as(plane, 0, &kubelet, "kubernetes/admin", &[]);
        admin
            .contains("\"kind\":\"PodList\"")
            .then_some(())
            .ok_or(admin)
    });
    let proxy = curl_as(plane, 0, &kubelet, "kubernetes/kube-proxy", &[]);
    assert!(
        proxy.starts_with("Forbidden (user=system:kube-proxy"),
        "kube-proxy, authenticated but not authorized by the apiserver: {proxy}"
    );
    let foreign = curl_as(plane, 0, &kubelet, "front-proxy/client", &[]);
    assert_eq!(
        foreign, "Unauthorized",
        "a client of another CA at the kubelet"
    );
}

#[test]
fn kubernetes_control_plane_runs_on_kpki_files() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mut plane = ControlPlane::start(&cluster);
    service_names_are_served(&plane);
    client_users_get_rbac_of_their_group(&plane);
    controllers_run_on_their_identities(&mut plane);
    service_account_tokens_work_across_apiservers(&plane);
    kube_proxy_reads_services(&plane);
    nodes_are_restricted_to_themselves(&plane);
    apiserver_reaches_kubelets_with_its_client(&mut plane);
    a_real_kubelet_joins(&mut plane);
    aggregated_apis_get_the_user_from_the_front_proxy(&mut plane);
    request_headers_are_believed_from_the_front_proxy_only(&plane);
}

/// Deploys the files now in `pki/` to one node at a time and restarts its apiserver, then the
/// controller-manager, the scheduler and node-03's kubelet, waiting for each (as an admin with
/// a kubeconfig of the files now in `pki/`); the balancer sends nothing to an apiserver from
/// its restart until it is ready. `progress` after each restart, and `rolled(plane, i)` once
/// node `i`'s apiserver is ready.
fn roll(
    plane: &mut ControlPlane,
    balancer: &Balancer,
    progress: &dyn Fn(),
    rolled: &dyn Fn(&ControlPlane, usize),
) {
    plane.kubeconfig("admin.kubeconfig", &["admin"]);
    for i in 0..ADDRESSES.len() {
        balancer.ready[i].store(false, Ordering::SeqCst);
        plane.deploy(i);
        plane.start_apiserver(i);
        plane.wait_ready(i);
        balancer.ready[i].store(true, Ordering::SeqCst);
        progress();
        rolled(plane, i);
    }
    plane.start_controller_manager(0);
    plane.start_scheduler(1);
    progress();
    restart_kubelet(plane);
    progress();
}

/// A client in front of every apiserver, as a load balancer with readiness checks is: it sends
/// only to ready apiservers, from a different one each time, and moves on to the next when one
/// does not answer. Refusals for a TLS, authentication or authorization reason are failures.
struct Balancer {
    kubectl: Kubectl,
    ready: [AtomicBool; 3],
}

impl Balancer {
    fn new(plane: &ControlPlane) -> Balancer {
        Balancer {
            kubectl: plane.kubectl_handle(),
            ready: [(); 3].map(|_| AtomicBool::new(true)),
        }
    }

    /// Request number `n`: a list of configmaps in `team` with `kubeconfig` (and `token`).
    fn request(&self, n: usize, kubeconfig: &Path, token: Option<&str>) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        let servers = (0..ADDRESSES.len()).map(|k| (n + k) % ADDRESSES.len());
        for i in servers.filter(|&i| self.ready[i].load(Ordering::SeqCst)) {
            let server = apiserver_url(i);
            let mut args = vec!["--server", &*server, "--request-timeout", "5s"];
            args.extend(token.map(|t| ["--token", t]).into_iter().flatten());
            args.extend(["get", "--raw", "/api/v1/namespaces/team/configmaps"]);
            let out = self.kubectl.run(0, kubeconfig, &args);
            if out.status.success() {
                return if errors.is_empty() {
                    Ok(())
                } else {
                    Err(errors)
                };
            }
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let refused = ["x509", "tls:", "certificate", "Unauthorized", "Forbidden"]
                .iter()
                .any(|s| err.contains(s));
            if refused {
                errors.push(format!("{server}: {err}"));
            }
        }
        errors.push("no apiserver answered".into());
        Err(errors)
    }
}

/// Asserts that the client made progress and no request failed.
fn assert_no_failure(
    plane: &ControlPlane,
    what: &str,
    (succeeded, failures): (usize, Vec<String>),
) {
    assert!(
        failures.is_empty(),
        "{what}: requests failed:\n{}\n{}",
        failures.join("\n"),
        plane.logs()
    );
    assert!(succeeded > 10, "{what}: only {succeeded} requests");
}

/// `kpki ARGS` on an admin's machine on the nodes' network (host 0).
fn rollout_kpki(plane: &ControlPlane, args: &[&str]) -> crate::harness::Run {
    crate::rollout::kpki_at(&plane.etcd.hosts, 0, plane.cluster, args)
}

/// `kpki rollout --json` now, as a reader of one field of one endpoint's rows, node by node.
fn rollout<'a>(plane: &ControlPlane<'a>) -> impl Fn(&str, &str) -> Vec<String> + 'a {
    let (json, cluster) = (
        rollout_kpki(plane, &["rollout", "--json"]).stdout(),
        plane.cluster,
    );
    move |endpoint, field| crate::rollout::column(&json, cluster, endpoint, field)
}

/// Mid-rotation of the Kubernetes CA, node-01 deployed and its apiserver restarted, the others
/// not: `kpki rollout` says exactly that (node-03's kubelet still serves its old leaf), and
/// --finish is refused naming every server behind and no other.
fn one_apiserver_rolled(plane: &ControlPlane) {
    let seen = rollout(plane);
    assert_eq!(
        seen("apiserver", ".verdict"),
        ["current", "behind", "behind"]
    );
    assert_eq!(seen("apiserver", ".serves.is"), ["current", "old", "old"]);
    assert_eq!(
        seen("apiserver", ".trusts"),
        ["new-and-old", "old-only", "old-only"]
    );
    assert_eq!(
        seen("kubelet", ".verdict"),
        ["refused", "refused", "behind"]
    );
    assert_eq!(seen("kubelet", ".serves.is"), ["null", "null", "old"]);
    let line = rollout_kpki(plane, &["rotate", "--ca", "kubernetes", "--finish"]).fails_with(2);
    for behind in ["node-02 apiserver", "node-03 apiserver", "node-03 kubelet"] {
        assert!(line.contains(behind), "{behind}: {line}");
    }
    assert!(!line.contains("node-01"), "{line}");
}

#[test]
fn kubernetes_ca_and_service_account_rotations_roll_without_failed_requests() {
    let cluster = Cluster::initialized(DEFAULT_CONFIG);
    let mut plane = ControlPlane::start(&cluster);
    plane.admin(0, &["create", "namespace", "team"]);
    plane.start_controller_manager(0);
    plane.start_scheduler(1);
    for lease in ["kube-controller-manager", "kube-scheduler"] {
        plane.wait_for(lease, || !plane.lease_holder(lease).is_empty());
    }
    restart_kubelet(&mut plane);
    let kpki = |args: &[&str]| cluster.kpki(args).success();
    let balancer = Balancer::new(&plane);

    // The Kubernetes CA: an admin kubeconfig from before the rotation (old CA, old certificate)
    // keeps working through the first roll; one written after it (both CAs, new certificate)
    // through the roll after --finish. `kpki rollout` sees each node as it is, and --finish
    // waits for the last one.
    let before = plane.kubeconfig("before.kubeconfig", &["admin"]);
    let client = std::sync::Mutex::new(before);
    let finish = ["rotate", "--ca", "kubernetes", "--finish"];
    let result = crate::harness::while_running(
        |n| balancer.request(n, &client.lock().unwrap(), None),
        |progress| {
            kpki(&["rotate", "--ca", "kubernetes"]);
            roll(&mut plane, &balancer, progress, &|plane, i| {
                if i == 0 {
                    one_apiserver_rolled(plane);
                }
            });
            let seen = rollout(&plane);
            assert_eq!(seen("apiserver", ".trusts"), ["new-and-old"; 3]);
            assert_eq!(
                seen("kubelet", ".verdict"),
                ["refused", "refused", "current"]
            );
            // Two kubelets are not running: finishing needs --force.
            let line = rollout_kpki(&plane, &finish).fails_with(2);
            assert!(
                line.contains("node-01 kubelet") && line.contains("node-02 kubelet"),
                "{line}"
            );
            rollout_kpki(&plane, &[&finish[..], &["--force"]].concat()).success();
            *client.lock().unwrap() = plane.kubeconfig("during.kubeconfig", &["admin"]);
            progress();
            roll(&mut plane, &balancer, progress, &|_, _| {});
        },
    );
    assert_eq!(rollout(&plane)("apiserver", ".trusts"), ["current"; 3]);
    assert_no_failure(&plane, "Kubernetes CA rotation", result);
    let old = plane.kubectl(
        0,
        &plane.path("before.kubeconfig"),
        &["get", "--raw", "/readyz"],
    );
    assert!(
        !old.status.success(),
        "the old CA is still trusted after --finish"
    );
    for name in ["controller-manager", "scheduler", "kubelet-node-03"] {
        let log = plane.log(name);
        assert!(
            !log.contains("x509") && !log.contains("Unauthorized"),
            "{name}:\n{log}"
        );
    }

    // The SA key: a token from before the rotation works on every apiserver until --finish.
    plane.admin(0, &["-n", "team", "create", "serviceaccount", "bot"]);
    plane.admin(
        0,
        &[
            "-n",
            "team",
            "create",
            "role",
            "reader",
            "--verb=list",
            "--resource=configmaps",
        ],
    );
    plane.admin(
        0,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "bot",
            "--role=reader",
            "--serviceaccount=team:bot",
        ],
    );
    let token = |plane: &ControlPlane| {
        plane
            .admin(0, &["-n", "team", "create", "token", "bot"])
            .trim()
            .to_string()
    };
    let old_token = token(&plane);
    let anonymous = token_kubeconfig(&plane);
    // Every apiserver's RBAC cache has the new binding before the clock starts.
    plane.wait_for("the bot's binding on every apiserver", || {
        (0..ADDRESSES.len()).all(|n| balancer.request(n, &anonymous, Some(&old_token)).is_ok())
    });
    let result = crate::harness::while_running(
        |n| balancer.request(n, &anonymous, Some(&old_token)),
        |progress| {
            kpki(&["rotate", "--service-account"]);
            roll(&mut plane, &balancer, progress, &|_, _| {});
        },
    );
    assert_no_failure(&plane, "service-account rotation", result);
    let new_token = token(&plane);
    let current = std::sync::Mutex::new(new_token.clone());
    let result = crate::harness::while_running(
        |n| balancer.request(n, &anonymous, Some(&current.lock().unwrap())),
        |progress| {
            for n in 0..ADDRESSES.len() {
                balancer
                    .request(n, &anonymous, Some(&old_token))
                    .expect("the old token before --finish");
            }
            rollout_kpki(&plane, &["rotate", "--service-account", "--finish"]).success();
            roll(&mut plane, &balancer, progress, &|_, _| {});
        },
    );
    assert_no_failure(&plane, "service-account finish", result);
    for n in 0..ADDRESSES.len() {
        let refused = balancer
            .request(n, &anonymous, Some(&old_token))
            .unwrap_err();
        assert!(
            refused.iter().any(|e| e.contains("Unauthorized")),
            "{refused:?}"
        );
    }
}
