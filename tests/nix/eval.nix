# Evaluates secrets/kpki.nix as NixOS would on one host, with the stand-in lib (or the real one:
# `lib = import <nixpkgs/lib>`), and returns what the tests compare, as JSON.
{
  lib ? import ./lib.nix,
  module,
  hostName,
  settings ? { },
}:
let
  evaluated = lib.evalModules {
    modules = [ ./nixos.nix module { networking.hostName = hostName; } settings ];
  };
  c = evaluated.config;
  k8s = c.services.kubernetes;
  failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  # The options kpki may set, as they end up; those not set read null.
  pick = set: names: builtins.listToAttrs (map (n: { name = n; value = set.${n} or null; }) names);
  kubeconfig = k: pick k [ "server" "caFile" "certFile" "keyFile" ];
  when = cond: value: if cond then value else null;
in
if failed != [ ] then { assertions = failed; } else {
  assertions = [ ];
  secrets = builtins.mapAttrs (n: s: { inherit (s) owner group mode path; file = toString s.file; }) c.age.secrets;
  paths = c.kpki.paths;
  caFile = k8s.caFile;
  apiserverAddress = when (k8s.apiserver.enable || k8s.kubelet.enable || k8s.proxy.enable) k8s.apiserverAddress;
  apiserver = when k8s.apiserver.enable (pick k8s.apiserver [
    "clientCaFile" "kubeletClientCaFile" "tlsCertFile" "tlsKeyFile" "kubeletClientCertFile"
    "kubeletClientKeyFile" "serviceAccountKeyFile" "serviceAccountSigningKeyFile"
    "proxyClientCertFile" "proxyClientKeyFile" "advertiseAddress" "bindAddress"
    "serviceClusterIpRange" "extraOpts"
  ] // { etcd = pick k8s.apiserver.etcd [ "servers" "caFile" "certFile" "keyFile" ]; });
  controllerManager = when k8s.controllerManager.enable (pick k8s.controllerManager [ "serviceAccountKeyFile" "rootCaFile" ] // { kubeconfig = kubeconfig k8s.controllerManager.kubeconfig; });
  scheduler = when k8s.scheduler.enable { kubeconfig = kubeconfig k8s.scheduler.kubeconfig; };
  kubelet = when k8s.kubelet.enable (pick k8s.kubelet [ "hostname" "clientCaFile" "tlsCertFile" "tlsKeyFile" ] // { kubeconfig = kubeconfig k8s.kubelet.kubeconfig; });
  proxy = when k8s.proxy.enable { kubeconfig = kubeconfig k8s.proxy.kubeconfig; };
  etcd = when c.services.etcd.enable c.systemd.services.etcd.environment;
  restartTriggers = builtins.mapAttrs (n: u: u.restartTriggers) c.systemd.services;
}
