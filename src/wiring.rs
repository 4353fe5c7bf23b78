//! The NixOS view of the catalogue: which option of nixpkgs' etcd and Kubernetes services takes
//! which file, for `kpki.wireServices` in `secrets/kpki.nix`. The options are those nixpkgs'
//! easyCerts sets (`nixos/modules/services/cluster/kubernetes/pki.nix`), plus the front-proxy CA,
//! which nixpkgs has no option for.

use crate::catalogue::{Kind, Part};
use crate::config::Role;

/// A service of a node, as nixpkgs runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Apiserver,
    ControllerManager,
    Scheduler,
    Kubelet,
    Proxy,
    Etcd,
}

impl Service {
    /// Every service, in the order the module lists them.
    pub const ALL: [Service; 6] = [
        Service::Apiserver,
        Service::ControllerManager,
        Service::Scheduler,
        Service::Kubelet,
        Service::Proxy,
        Service::Etcd,
    ];

    /// The nixpkgs option set of the service.
    pub fn options(self) -> &'static str {
        match self {
            Service::Apiserver => "services.kubernetes.apiserver",
            Service::ControllerManager => "services.kubernetes.controllerManager",
            Service::Scheduler => "services.kubernetes.scheduler",
            Service::Kubelet => "services.kubernetes.kubelet",
            Service::Proxy => "services.kubernetes.proxy",
            Service::Etcd => "services.etcd",
        }
    }

    /// The role a node needs for kpki to wire the service.
    pub fn role(self) -> Role {
        match self {
            Service::Apiserver | Service::ControllerManager | Service::Scheduler => {
                Role::ControlPlane
            }
            Service::Kubelet | Service::Proxy => Role::Worker,
            Service::Etcd => Role::Etcd,
        }
    }

    /// Its systemd unit.
    pub fn unit(self) -> &'static str {
        match self {
            Service::Apiserver => "kube-apiserver",
            Service::ControllerManager => "kube-controller-manager",
            Service::Scheduler => "kube-scheduler",
            Service::Kubelet => "kubelet",
            Service::Proxy => "kube-proxy",
            Service::Etcd => "etcd",
        }
    }

    /// Whether the service picks up a replaced certificate and key by itself: etcd reads its
    /// serving and peer certificates at each handshake, so only its trusted CA (read at start)
    /// needs a restart.
    pub fn reloads_certificates(self) -> bool {
        self == Service::Etcd
    }
}

/// One option set to the decrypted path of a file.
#[derive(Debug, Clone, Copy)]
pub struct Wire {
    pub service: Service,
    /// The option below the service's option set.
    pub option: &'static str,
    /// The catalogue entry, by profile.
    pub profile: &'static str,
    pub part: Part,
}

impl Wire {
    /// Whether the file is a CA certificate (which even a service that reloads its own
    /// certificate reads only at start).
    pub fn is_ca(&self) -> bool {
        crate::catalogue::builtin(self.profile).is_some_and(|e| matches!(e.kind, Kind::Ca(_)))
    }
}

const fn wire(service: Service, option: &'static str, profile: &'static str, part: Part) -> Wire {
    Wire {
        service,
        option,
        profile,
        part,
    }
}

use Part::{Cert, Key};
use Service::*;

/// Every option kpki wires to a file.
pub static WIRES: &[Wire] = &[
    wire(Apiserver, "clientCaFile", "kubernetes-ca", Cert),
    wire(Apiserver, "kubeletClientCaFile", "kubernetes-ca", Cert),
    wire(Apiserver, "tlsCertFile", "apiserver", Cert),
    wire(Apiserver, "tlsKeyFile", "apiserver", Key),
    wire(
        Apiserver,
        "kubeletClientCertFile",
        "apiserver-kubelet-client",
        Cert,
    ),
    wire(
        Apiserver,
        "kubeletClientKeyFile",
        "apiserver-kubelet-client",
        Key,
    ),
    wire(Apiserver, "serviceAccountKeyFile", "service-account", Cert),
    wire(
        Apiserver,
        "serviceAccountSigningKeyFile",
        "service-account",
        Key,
    ),
    wire(Apiserver, "proxyClientCertFile", "front-proxy-client", Cert),
    wire(Apiserver, "proxyClientKeyFile", "front-proxy-client", Key),
    wire(Apiserver, "etcd.caFile", "etcd-ca", Cert),
    wire(Apiserver, "etcd.certFile", "apiserver-etcd-client", Cert),
    wire(Apiserver, "etcd.keyFile", "apiserver-etcd-client", Key),
    wire(
        ControllerManager,
        "serviceAccountKeyFile",
        "service-account",
        Key,
    ),
    wire(ControllerManager, "rootCaFile", "kubernetes-ca", Cert),
    wire(
        ControllerManager,
        "kubeconfig.certFile",
        "controller-manager",
        Cert,
    ),
    wire(
        ControllerManager,
        "kubeconfig.keyFile",
        "controller-manager",
        Key,
    ),
    wire(Scheduler, "kubeconfig.certFile", "scheduler", Cert),
    wire(Scheduler, "kubeconfig.keyFile", "scheduler", Key),
    wire(Kubelet, "clientCaFile", "kubernetes-ca", Cert),
    wire(Kubelet, "tlsCertFile", "kubelet-serving", Cert),
    wire(Kubelet, "tlsKeyFile", "kubelet-serving", Key),
    wire(Kubelet, "kubeconfig.certFile", "kubelet", Cert),
    wire(Kubelet, "kubeconfig.keyFile", "kubelet", Key),
    wire(Proxy, "kubeconfig.certFile", "kube-proxy", Cert),
    wire(Proxy, "kubeconfig.keyFile", "kube-proxy", Key),
    wire(Etcd, "certFile", "etcd-server", Cert),
    wire(Etcd, "keyFile", "etcd-server", Key),
    wire(Etcd, "peerCertFile", "etcd-peer", Cert),
    wire(Etcd, "peerKeyFile", "etcd-peer", Key),
    wire(Etcd, "trustedCaFile", "etcd-ca", Cert),
    wire(Etcd, "peerTrustedCaFile", "etcd-ca", Cert),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalogue::{self, Readers, Scope};

    #[test]
    fn every_wired_file_reaches_the_nodes_that_run_the_service() {
        for w in WIRES {
            let entry = catalogue::builtin(w.profile).unwrap_or_else(|| panic!("{}", w.profile));
            let readers = match w.part {
                Part::Cert => entry.cert_readers,
                Part::Key => entry.key_readers,
            };
            let reaches = match (readers, entry.scope) {
                (Readers::AllNodes, _) => true,
                (Readers::Selected(selection), _) => selection.roles.contains(&w.service.role()),
                (Readers::OwnNode, Scope::Node(selection)) => selection.roles == [w.service.role()],
                _ => false,
            };
            assert!(
                reaches,
                "{} {:?} never reaches {:?}",
                w.profile, w.part, w.service
            );
        }
    }
}
