//! A real Kubernetes control plane on the files of `kpki init`: kube-apiserver on every node,
//! kube-controller-manager, kube-scheduler, a kubelet and kubectl, built from `tests/k8s/go.mod` (the
//! `k8s.io/kubernetes` module through the Go module proxy) into `target/k8s/`, over a three-member
//! etcd (`etcd.rs`) of etcd 3.6 built the same way: Debian's etcd 3.4 lacks the watch progress
//! notifications kube-apiserver 1.34 waits for (its watch cache falls behind: "Too large resource
//! version"). One network namespace per node. Every server runs as `secrets/kpki.nix` wires it
//! (`deploy.rs`): its flags come from the nixpkgs options the module sets, on that node's own
//! copy of its files, so a wiring mistake breaks this cluster and a node sees new files only when
//! it is deployed again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::deploy::{Deployment, EVERYTHING};
pub use crate::etcd::{ADDRESSES, NODES};
use crate::etcd::{Client, Etcd};
use crate::harness::{Cluster, Run, require, s};

/// The directory holding the programs `make k8s` builds from `tests/k8s` (kube-apiserver,
/// kube-controller-manager, kube-scheduler, kubectl, etcd, the stand-in). make rebuilds them only
/// when a source changed: the first run pays for the build (minutes), later ones find them.
pub fn programs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        require("go");
        let status = Command::new(require("make"))
            .current_dir(root)
            .args(["-s", "k8s"])
            .status()
            .expect("make runs");
        assert!(status.success(), "make k8s failed");
        root.join("target/k8s")
    })
}

/// The options of nixpkgs' `services.kubernetes.apiserver` kpki may set, and the flag
/// `apiserver.nix` makes of each (`etcd` and `extraOpts` are passed on apart).
const APISERVER_FLAGS: [(&str, &str); 13] = [
    ("advertiseAddress", "advertise-address"),
    ("bindAddress", "bind-address"),
    ("clientCaFile", "client-ca-file"),
    ("kubeletClientCaFile", "kubelet-certificate-authority"),
    ("kubeletClientCertFile", "kubelet-client-certificate"),
    ("kubeletClientKeyFile", "kubelet-client-key"),
    ("proxyClientCertFile", "proxy-client-cert-file"),
    ("proxyClientKeyFile", "proxy-client-key-file"),
    ("serviceAccountKeyFile", "service-account-key-file"),
    (
        "serviceAccountSigningKeyFile",
        "service-account-signing-key-file",
    ),
    ("serviceClusterIpRange", "service-cluster-ip-range"),
    ("tlsCertFile", "tls-cert-file"),
    ("tlsKeyFile", "tls-private-key-file"),
];

/// The URL of node `i`'s apiserver.
pub fn apiserver_url(i: usize) -> String {
    format!("https://[{}]:6443", ADDRESSES[i])
}

/// A command running `program` (one of the built ones) in network namespace `ns`.
fn in_namespace(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new(require("ip"));
    cmd.args(["netns", "exec", ns])
        .arg(programs().join(program));
    cmd
}

/// Shell commands that mount this machine's cgroup filesystems again where they are now.
fn cgroup_mounts() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let steps: Vec<String> = mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (point, kind, options) = (fields[1], fields[2], fields[3]);
            (point == "/sys/fs/cgroup" || point.starts_with("/sys/fs/cgroup/"))
                .then(|| format!("mkdir -p {point} && mount -t {kind} -o {options} {kind} {point}"))
        })
        .collect();
    assert!(
        !steps.is_empty(),
        "no cgroup filesystem under /sys/fs/cgroup"
    );
    steps.join(" && ")
}

/// kubectl on the control plane's hosts.
pub struct Kubectl {
    namespaces: Vec<String>,
}

impl Kubectl {
    /// kubectl on host `host` with `kubeconfig`.
    pub fn run(&self, host: usize, kubeconfig: &Path, args: &[&str]) -> Output {
        in_namespace(&self.namespaces[host], "kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--request-timeout", "10s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// A background process of the control plane, with its log.
struct Process {
    name: String,
    child: Child,
}

/// etcd, an apiserver per node, and whatever else a test starts; everything is killed on drop,
/// before the network namespaces go.
pub struct ControlPlane<'a> {
    pub cluster: &'a Cluster,
    pub etcd: Etcd,
    /// What the module wires on each node, and each node's files.
    pub deployment: Deployment,
    dir: tempfile::TempDir,
    processes: Vec<Process>,
}

impl<'a> ControlPlane<'a> {
    /// etcd and the three apiservers of `cluster`, each node deployed, ready.
    pub fn start(cluster: &'a Cluster) -> ControlPlane<'a> {
        let deployment = Deployment::evaluate(cluster, EVERYTHING);
        for i in 0..NODES.len() {
            deployment.deploy(cluster, i);
        }
        let etcd = Etcd::start_with_env(&deployment.etcd_environments(), programs().join("etcd"));
        etcd.wait_healthy(&Client::of(cluster, "etcd/apiserver-etcd-client"));
        let mut plane = ControlPlane {
            cluster,
            etcd,
            deployment,
            dir: tempfile::tempdir().unwrap(),
            processes: Vec::new(),
        };
        plane.kubeconfig("admin.kubeconfig", &["admin"]);
        for i in 0..NODES.len() {
            plane.start_apiserver(i);
        }
        for i in 0..NODES.len() {
            plane.wait_ready(i);
        }
        plane
    }

    /// Deploys the files now in `pki/` to node `i` (its servers keep running).
    pub fn deploy(&self, i: usize) {
        self.deployment.deploy(self.cluster, i);
    }

    /// The wired option at `pointer` on node `i` (see [`Deployment::get`]).
    fn wired(&self, i: usize, pointer: &str) -> String {
        self.deployment.get(i, pointer).to_string()
    }

    /// A path in the test's scratch directory (kubeconfigs, logs).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `kpki kubeconfig ARGS` to `name` in the scratch directory and returns its path.
    pub fn kubeconfig(&self, name: &str, args: &[&str]) -> PathBuf {
        let path = self.path(name);
        let mut all = vec!["kubeconfig"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-q", "-o", s(&path)]);
        self.cluster.kpki(&all).success();
        path
    }

    /// A command running `program` (one of the built ones) on host `host`.
    fn command(&self, host: usize, program: &str) -> Command {
        in_namespace(&self.etcd.hosts.ns(host), program)
    }

    /// Starts `program ARGS` on host `host` in the background as `name` (replacing a process of
    /// that name), logging to `name.log`.
    pub fn spawn(&mut self, name: &str, host: usize, program: &str, args: &[String]) {
        let mut cmd = self.command(host, program);
        cmd.args(args);
        self.spawn_command(name, cmd);
    }

    /// Starts `cmd` in the background as `name` (replacing a process of that name), logging to
    /// `name.log`.
    fn spawn_command(&mut self, name: &str, mut cmd: Command) {
        self.stop(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        self.processes.push(Process {
            name: name.to_string(),
            child,
        });
    }

    /// (Re)starts a real kubelet on host `host` as the module wires it: its kubeconfig, serving
    /// certificate and client CA from the node's copy, webhook authorization through the
    /// apiserver. Kubernetes' fake container runtime stands in for containerd, so the kubelet
    /// registers its node and goes Ready without containers.
    pub fn start_kubelet(&mut self, host: usize) {
        let node = NODES[host];
        let socket = self.path(&format!("cri-{node}.sock"));
        let endpoint = format!("unix://{}", s(&socket));
        // The runtime is no part of the PKI: it keeps running across kubelet restarts.
        let runtime = format!("cri-{node}");
        if !self.processes.iter().any(|p| p.name == runtime) {
            let args = [format!("--endpoint={endpoint}")];
            self.spawn(&runtime, host, "fakecri", &args);
            self.wait_for("the fake container runtime's socket", || socket.exists());
        }
        let kubeconfig = self.deployment.kubeconfig(host, "kubelet");
        let wired = |option: &str| self.wired(host, &format!("/kubelet/{option}"));
        let scratch = |dir: &str| s(&self.path(&format!("{dir}-{node}"))).to_string();
        // nixpkgs passes these as flags; the same settings as a KubeletConfiguration file (JSON
        // is YAML), where their flags are deprecated.
        let config = serde_json::json!({
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "address": ADDRESSES[host],
            "port": 10250,
            "tlsCertFile": wired("tlsCertFile"),
            "tlsPrivateKeyFile": wired("tlsKeyFile"),
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": false },
                "x509": { "clientCAFile": wired("clientCaFile") },
            },
            "authorization": { "mode": "Webhook" },
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "cgroupDriver": "cgroupfs",
            "readOnlyPort": 0,
            "healthzPort": 0,
        });
        let config_file = self.path(&format!("kubelet-{node}.json"));
        std::fs::write(&config_file, config.to_string()).unwrap();
        let args = [
            format!("--config={}", s(&config_file)),
            format!("--kubeconfig={}", s(&kubeconfig)),
            format!("--hostname-override={}", wired("hostname")),
            format!("--node-ip={}", ADDRESSES[host]),
            format!("--root-dir={}", scratch("kubelet-root")),
            format!("--cert-dir={}", scratch("kubelet-certs")),
        ];
        // `ip netns exec` mounts a fresh /sys without the cgroup hierarchies the kubelet needs:
        // mount the host's again (the same hierarchies) in its mount namespace first.
        let mut cmd = Command::new(require("ip"));
        cmd.args(["netns", "exec", &self.etcd.hosts.ns(host), "sh", "-c"])
            .arg(format!("{} && exec \"$0\" \"$@\"", cgroup_mounts()))
            .arg(programs().join("kubelet"))
            .args(args);
        self.spawn_command(&format!("kubelet-{node}"), cmd);
    }

    /// Kills the process `name`, if running.
    pub fn stop(&mut self, name: &str) {
        if let Some(at) = self.processes.iter().position(|p| p.name == name) {
            let mut p = self.processes.remove(at);
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// The log of process `name`.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// The last lines of every log, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<String> = self.processes.iter().map(|p| p.name.clone()).collect();
        names.sort();
        let tails: Vec<String> = names
            .iter()
            .map(|n| {
                let log = self.log(n);
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {n}\n{}",
                    lines[lines.len().saturating_sub(12)..].join("\n")
                )
            })
            .collect();
        format!("{}\n{}", tails.join("\n"), self.etcd.logs())
    }

    /// (Re)starts the apiserver of node `i` as the module wires it, on the node's copy: every
    /// option kpki sets becomes the flag nixpkgs' `apiserver.nix` makes of it (an option this
    /// test does not know fails it), plus the flags nixpkgs sets on its own.
    pub fn start_apiserver(&mut self, i: usize) {
        let wired = self.deployment.wired[i]["apiserver"].as_object().unwrap();
        let mut args: Vec<String> = Vec::new();
        for (option, value) in wired.iter().filter(|(_, v)| !v.is_null()) {
            match (
                option.as_str(),
                APISERVER_FLAGS.iter().find(|(o, _)| o == option),
            ) {
                ("etcd", _) => {
                    let etcd = |o: &str| value[o].as_str().unwrap().to_string();
                    let servers: Vec<&str> = value["servers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap())
                        .collect();
                    args.push(format!("--etcd-servers={}", servers.join(",")));
                    args.push(format!("--etcd-cafile={}", etcd("caFile")));
                    args.push(format!("--etcd-certfile={}", etcd("certFile")));
                    args.push(format!("--etcd-keyfile={}", etcd("keyFile")));
                }
                ("extraOpts", _) => {
                    args.extend(value.as_str().unwrap().split_whitespace().map(String::from));
                }
                (_, Some((_, flag))) => {
                    args.push(format!("--{flag}={}", value.as_str().unwrap()));
                }
                (_, None) => {
                    panic!("kpki.nix sets services.kubernetes.apiserver.{option}: pass it on here")
                }
            }
        }
        let own = [
            ("secure-port", "6443".to_string()),
            (
                "service-account-issuer",
                "https://kubernetes.default.svc.cluster.local".into(),
            ),
            ("authorization-mode", "Node,RBAC".into()),
            ("enable-admission-plugins", "NodeRestriction".into()),
            ("kubelet-preferred-address-types", "InternalIP".into()),
            ("enable-aggregator-routing", "true".into()),
            (
                "cert-dir",
                s(&self.path(&format!("apiserver-{i}-certs"))).into(),
            ),
            ("profiling", "false".into()),
        ];
        args.extend(own.iter().map(|(k, v)| format!("--{k}={v}")));
        self.spawn(&format!("apiserver-{i}"), i, "kube-apiserver", &args);
    }

    /// Waits until the apiserver of node `i` answers `/readyz` with `ok`.
    pub fn wait_ready(&self, i: usize) {
        let admin = self.path("admin.kubeconfig");
        let server = apiserver_url(i);
        self.wait_until(&format!("apiserver-{i} ready"), || {
            let args = ["--server", &server, "get", "--raw", "/readyz?verbose"];
            let out = self.kubectl(i, &admin, &args);
            let stdout = String::from_utf8_lossy(&out.stdout);
            match out.status.success() && stdout.ends_with("readyz check passed\n") {
                true => Ok(()),
                false => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
            }
        });
    }

    /// Polls `done` every 500 ms for up to two minutes; fails naming `what` with the logs.
    pub fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        self.wait_until(what, || done().then_some(()).ok_or_else(String::new));
    }

    /// Polls `check` every 500 ms for up to two minutes; fails naming `what`, the last error of
    /// `check` and the logs.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while let Err(last) = check() {
            assert!(
                Instant::now() < deadline,
                "timed out: {what}\n{last}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// kubectl on host `host` with `kubeconfig`.
    pub fn kubectl(&self, host: usize, kubeconfig: &Path, args: &[&str]) -> Output {
        self.kubectl_handle().run(host, kubeconfig, args)
    }

    /// A kubectl that does not borrow the control plane, for a client thread.
    pub fn kubectl_handle(&self) -> Kubectl {
        Kubectl {
            namespaces: (0..NODES.len()).map(|i| self.etcd.hosts.ns(i)).collect(),
        }
    }

    /// kubectl that must succeed; its stdout.
    pub fn kubectl_ok(&self, host: usize, kubeconfig: &Path, args: &[&str]) -> String {
        let out = self.kubectl(host, kubeconfig, args);
        let run = Run::from_output(
            out,
            format!("kubectl {args:?} with {}", kubeconfig.display()),
        );
        assert!(
            run.code() == Some(0),
            "kubectl {args:?} failed:\n{}{}\n{}",
            run.stdout(),
            run.stderr(),
            self.logs()
        );
        run.stdout()
    }

    /// kubectl as the admin on host `host`.
    pub fn admin(&self, host: usize, args: &[&str]) -> String {
        self.kubectl_ok(host, &self.path("admin.kubeconfig"), args)
    }

    /// `kubectl create -f -` of `manifest` on host 0 with `kubeconfig`.
    pub fn create(&self, kubeconfig: &Path, manifest: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(0, "kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["create", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Starts kube-controller-manager on host `host` as the module wires it: its kubeconfig,
    /// the SA signing key and the root CA it publishes.
    pub fn start_controller_manager(&mut self, host: usize) {
        let wired = |option: &str| self.wired(host, &format!("/controllerManager/{option}"));
        let own = [
            format!(
                "--service-account-private-key-file={}",
                wired("serviceAccountKeyFile")
            ),
            format!("--root-ca-file={}", wired("rootCaFile")),
            "--use-service-account-credentials=true".into(),
        ];
        self.start_component("controller-manager", "controllerManager", host, &own);
    }

    /// Starts kube-scheduler on host `host` with the kubeconfig the module wires.
    pub fn start_scheduler(&mut self, host: usize) {
        self.start_component("scheduler", "scheduler", host, &[]);
    }

    /// Starts `kube-NAME` on host `host` with the kubeconfig the module wires for `option`
    /// (nixpkgs' name of the component) for everything it asks the apiserver, short
    /// leader-election periods, no serving port, and `own` arguments.
    fn start_component(&mut self, name: &str, option: &str, host: usize, own: &[String]) {
        let kubeconfig = self.deployment.kubeconfig(host, option);
        let k = s(&kubeconfig);
        let common = [
            format!("--kubeconfig={k}"),
            format!("--authentication-kubeconfig={k}"),
            format!("--authorization-kubeconfig={k}"),
            "--secure-port=0".into(),
            "--leader-elect-lease-duration=6s".into(),
            "--leader-elect-renew-deadline=4s".into(),
            "--leader-elect-retry-period=1s".into(),
        ];
        self.spawn(
            name,
            host,
            &format!("kube-{name}"),
            &[&common[..], own].concat(),
        );
    }

    /// The holder of the leader lease `name` in kube-system, if any.
    pub fn lease_holder(&self, name: &str) -> String {
        let out = self.kubectl(
            0,
            &self.path("admin.kubeconfig"),
            &[
                "-n",
                "kube-system",
                "get",
                "lease",
                name,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for ControlPlane<'_> {
    fn drop(&mut self) {
        for p in &mut self.processes {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}
