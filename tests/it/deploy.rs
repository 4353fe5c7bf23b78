//! The default cluster deployed as NixOS deploys it: `secrets/kpki.nix` evaluated on each node
//! (`nixos::eval`) with the components a test runs, and each node's own copy of its files at
//! the paths the module declares, taken when that node is (re)deployed. Servers reload the
//! files they watch, so one shared `pki/` would switch every node at once; here a node sees new
//! files only when it is deployed, as in a rolling restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::etcd::NODES;
use crate::harness::{Cluster, s};

/// Every component of a node with all roles, as NixOS settings.
pub const EVERYTHING: &str = "services.etcd.enable = true; services.kubernetes.apiserver.enable = true; services.kubernetes.controllerManager.enable = true; services.kubernetes.scheduler.enable = true; services.kubernetes.kubelet.enable = true; services.kubernetes.proxy.enable = true;";

/// The three nodes of the default cluster, each with what the module wires on it.
pub struct Deployment {
    root: tempfile::TempDir,
    /// `tests/nix/eval.nix`'s answer per node: options set, `paths`, the etcd environment.
    pub wired: Vec<Value>,
}

impl Deployment {
    /// Evaluates the module on every node with `kpki.wireServices` and the NixOS settings
    /// `components` (dotted assignments, e.g. [`EVERYTHING`]); agenix's files of node N go to
    /// `N/agenix/`, etcd's data to `N/data/`. Nothing is deployed yet.
    pub fn evaluate(cluster: &Cluster, components: &str) -> Deployment {
        let root = tempfile::tempdir().unwrap();
        let wired = NODES
            .iter()
            .map(|node| {
                let dir = root.path().join(node);
                let settings = format!(
                    "{{ kpki.wireServices = true; age.secretsDir = \"{}\"; services.etcd.dataDir = \"{}\"; {components} }}",
                    s(&dir.join("agenix")),
                    s(&dir.join("data"))
                );
                crate::nixos::eval(cluster, node, &settings)
                    .unwrap_or_else(|e| panic!("{node}: {e}"))
            })
            .collect();
        Deployment { root, wired }
    }

    /// agenix's part of deploying node `i`: every file the module declares for it, copied from
    /// `cluster`'s `pki/` now, each replaced by a rename (a file gone from `pki/` is removed).
    pub fn deploy(&self, cluster: &Cluster, i: usize) {
        for (rel, path) in self.wired[i]["paths"].as_object().unwrap() {
            let (from, to) = (cluster.pki(rel), Path::new(path.as_str().unwrap()));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            if !from.exists() {
                let _ = std::fs::remove_file(to);
                continue;
            }
            let temp = to.with_extension("deploying");
            std::fs::copy(&from, &temp).unwrap();
            std::fs::rename(&temp, to).unwrap();
        }
    }

    /// The option at JSON `pointer` (e.g. `/apiserver/tlsCertFile`) on node `i`, a string.
    pub fn get(&self, i: usize, pointer: &str) -> &str {
        self.wired[i]
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{}: {pointer} is not wired", NODES[i]))
    }

    /// The environment of every node's etcd service.
    pub fn etcd_environments(&self) -> Vec<BTreeMap<String, String>> {
        self.wired
            .iter()
            .map(|v| serde_json::from_value(v["etcd"].clone()).expect("an etcd environment"))
            .collect()
    }

    /// The kubeconfig nixpkgs writes for `component` (`kubelet`, `controllerManager`, ...) on
    /// node `i` from its `kubeconfig` options (server, CA, certificate and key files, as
    /// `mkKubeConfig` does); its path.
    pub fn kubeconfig(&self, i: usize, component: &str) -> PathBuf {
        let option = |name: &str| self.get(i, &format!("/{component}/kubeconfig/{name}"));
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{ "name": "local", "cluster": {
                "server": option("server"),
                "certificate-authority": option("caFile"),
            }}],
            "users": [{ "name": component, "user": {
                "client-certificate": option("certFile"),
                "client-key": option("keyFile"),
            }}],
            "contexts": [{ "name": "local", "context": { "cluster": "local", "user": component } }],
            "current-context": "local",
        });
        let path = self
            .root
            .path()
            .join(NODES[i])
            .join(format!("{component}.kubeconfig"));
        std::fs::write(&path, config.to_string()).unwrap();
        path
    }
}
