# The NixOS options kpki.nix touches, declared with the names, types and defaults of nixpkgs'
# modules (nixos/modules/services/cluster/kubernetes/{default,apiserver,controller-manager,
# scheduler,kubelet,proxy}.nix, services/databases/etcd.nix, misc/assertions.nix, the systemd
# unit options) and agenix's modules/age.nix, together with the definitions of their own that
# compete with kpki's: the mkDefault values nixpkgs sets once a component is enabled. The etcd
# service's environment is computed from the options as nixpkgs' etcd module does, so a test can
# start a real etcd from it.
{ config, lib, ... }:
let
  outer = config;
  inherit (lib) mkDefault mkIf mkMerge mkOption types;
  k8s = config.services.kubernetes;
  etcd = config.services.etcd;
  kubeconfig = prefix: {
    server = mkOption { type = types.str; description = "${prefix} kube-apiserver server address."; };
    caFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
    certFile = mkOption { type = types.nullOr types.path; default = null; };
    keyFile = mkOption { type = types.nullOr types.path; default = null; };
  };
  enable = mkOption { type = types.bool; default = false; };
  file = mkOption { type = types.nullOr types.path; default = null; };
  anyComponent = k8s.apiserver.enable || k8s.controllerManager.enable || k8s.scheduler.enable
    || k8s.kubelet.enable || k8s.proxy.enable;
in
{
  options = {
    assertions = mkOption { type = types.listOf types.unspecified; default = [ ]; };
    networking.hostName = mkOption { type = types.str; };
    systemd.services = mkOption {
      type = types.attrsOf (types.submodule {
        options = {
          restartTriggers = mkOption { type = types.listOf types.unspecified; default = [ ]; };
          environment = mkOption { type = types.attrsOf types.str; default = { }; };
        };
      });
      default = { };
    };
    age = {
      secretsDir = mkOption { type = types.path; default = "/run/agenix"; };
      identityPaths = mkOption { type = types.listOf types.path; default = [ ]; };
      secrets = mkOption {
        default = { };
        type = types.attrsOf (types.submodule ({ name, ... }: {
          options = {
            name = mkOption { type = types.str; default = name; };
            file = mkOption { type = types.path; };
            path = mkOption { type = types.str; default = "${outer.age.secretsDir}/${name}"; };
            mode = mkOption { type = types.str; default = "0400"; };
            owner = mkOption { type = types.str; default = "0"; };
            group = mkOption { type = types.str; default = "0"; };
            symlink = mkOption { type = types.bool; default = true; };
          };
        }));
      };
    };
    services.kubernetes = {
      easyCerts = mkOption { type = types.bool; default = false; };
      caFile = file;
      masterAddress = mkOption { type = types.str; };
      apiserverAddress = mkOption { type = types.str; };
      apiserver = {
        inherit enable;
        advertiseAddress = mkOption { type = types.nullOr types.str; default = null; };
        bindAddress = mkOption { type = types.str; default = "0.0.0.0"; };
        securePort = mkOption { type = types.int; default = 6443; };
        clientCaFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
        kubeletClientCaFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
        kubeletClientCertFile = file;
        kubeletClientKeyFile = file;
        proxyClientCertFile = file;
        proxyClientKeyFile = file;
        tlsCertFile = file;
        tlsKeyFile = file;
        serviceAccountKeyFile = mkOption { type = types.path; };
        serviceAccountSigningKeyFile = mkOption { type = types.path; };
        serviceClusterIpRange = mkOption { type = types.str; default = "10.0.0.0/24"; };
        extraOpts = mkOption { type = types.separatedString " "; default = ""; };
        etcd = {
          servers = mkOption { type = types.listOf types.str; default = [ "http://127.0.0.1:2379" ]; };
          caFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
          certFile = file;
          keyFile = file;
        };
      };
      controllerManager = {
        inherit enable;
        serviceAccountKeyFile = file;
        rootCaFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
        kubeconfig = kubeconfig "Kubernetes controller manager";
      };
      scheduler = {
        inherit enable;
        kubeconfig = kubeconfig "Kubernetes scheduler";
      };
      kubelet = {
        inherit enable;
        hostname = mkOption { type = types.str; };
        clientCaFile = mkOption { type = types.nullOr types.path; default = k8s.caFile; };
        tlsCertFile = file;
        tlsKeyFile = file;
        kubeconfig = kubeconfig "Kubelet";
      };
      proxy = {
        inherit enable;
        kubeconfig = kubeconfig "Kubernetes proxy";
      };
    };
    services.etcd = {
      inherit enable;
      name = mkOption { type = types.str; default = config.networking.hostName; };
      dataDir = mkOption { type = types.path; default = "/var/lib/etcd"; };
      advertiseClientUrls = mkOption { type = types.listOf types.str; default = etcd.listenClientUrls; };
      listenClientUrls = mkOption { type = types.listOf types.str; default = [ "http://127.0.0.1:2379" ]; };
      listenPeerUrls = mkOption { type = types.listOf types.str; default = [ "http://127.0.0.1:2380" ]; };
      initialAdvertisePeerUrls = mkOption { type = types.listOf types.str; default = etcd.listenPeerUrls; };
      initialCluster = mkOption { type = types.listOf types.str; default = [ "${etcd.name}=http://127.0.0.1:2380" ]; };
      initialClusterState = mkOption { type = types.enum [ "new" "existing" ]; default = "new"; };
      initialClusterToken = mkOption { type = types.str; default = "etcd-cluster"; };
      clientCertAuth = mkOption { type = types.bool; default = false; };
      peerClientCertAuth = mkOption { type = types.bool; default = false; };
      trustedCaFile = file;
      certFile = file;
      keyFile = file;
      peerCertFile = mkOption { type = types.nullOr types.path; default = etcd.certFile; };
      peerKeyFile = mkOption { type = types.nullOr types.path; default = etcd.keyFile; };
      peerTrustedCaFile = mkOption { type = types.nullOr types.path; default = etcd.trustedCaFile; };
      extraConf = mkOption { type = types.attrsOf types.str; default = { }; };
    };
  };

  config = mkMerge [
    # default.nix: once a component runs, the apiserver address (not a valid URL for IPv6).
    (mkIf anyComponent {
      services.kubernetes.apiserverAddress = mkDefault ("https://" + (
        if k8s.apiserver.advertiseAddress != null then k8s.apiserver.advertiseAddress
        else "${k8s.masterAddress}:${toString k8s.apiserver.securePort}"));
    })
    (mkIf k8s.apiserver.enable {
      services.kubernetes.apiserver.etcd.servers = mkDefault [ "https://${k8s.masterAddress}:2379" ];
      # apiserver.nix: a single-member etcd at the master address.
      services.etcd = {
        clientCertAuth = mkDefault true;
        peerClientCertAuth = mkDefault true;
        listenClientUrls = mkDefault [ "https://0.0.0.0:2379" ];
        listenPeerUrls = mkDefault [ "https://0.0.0.0:2380" ];
        advertiseClientUrls = mkDefault [ "https://${k8s.masterAddress}:2379" ];
        initialCluster = mkDefault [ "${k8s.masterAddress}=https://${k8s.masterAddress}:2380" ];
        name = mkDefault k8s.masterAddress;
        initialAdvertisePeerUrls = mkDefault [ "https://${k8s.masterAddress}:2380" ];
      };
    })
    (mkIf k8s.controllerManager.enable {
      services.kubernetes.controllerManager.kubeconfig.server = mkDefault k8s.apiserverAddress;
    })
    (mkIf k8s.scheduler.enable {
      services.kubernetes.scheduler.kubeconfig.server = mkDefault k8s.apiserverAddress;
    })
    (mkIf k8s.kubelet.enable {
      services.kubernetes.kubelet.hostname = mkDefault config.networking.hostName;
      services.kubernetes.kubelet.kubeconfig.server = mkDefault k8s.apiserverAddress;
    })
    (mkIf k8s.proxy.enable {
      services.kubernetes.proxy.kubeconfig.server = mkDefault k8s.apiserverAddress;
    })
    # etcd.nix: the service's environment.
    (mkIf etcd.enable {
      systemd.services.etcd.environment =
        let
          optional = n: v: if v == null then { } else { ${n} = toString v; };
          join = builtins.concatStringsSep ",";
        in
        {
          ETCD_NAME = etcd.name;
          ETCD_DATA_DIR = etcd.dataDir;
          ETCD_ADVERTISE_CLIENT_URLS = join etcd.advertiseClientUrls;
          ETCD_LISTEN_CLIENT_URLS = join etcd.listenClientUrls;
          ETCD_LISTEN_PEER_URLS = join etcd.listenPeerUrls;
          ETCD_INITIAL_ADVERTISE_PEER_URLS = join etcd.initialAdvertisePeerUrls;
          ETCD_PEER_CLIENT_CERT_AUTH = if etcd.peerClientCertAuth then "1" else "";
          ETCD_CLIENT_CERT_AUTH = if etcd.clientCertAuth then "1" else "";
          ETCD_INITIAL_CLUSTER = join etcd.initialCluster;
          ETCD_INITIAL_CLUSTER_STATE = etcd.initialClusterState;
          ETCD_INITIAL_CLUSTER_TOKEN = etcd.initialClusterToken;
        }
        // optional "ETCD_PEER_TRUSTED_CA_FILE" etcd.peerTrustedCaFile
        // optional "ETCD_PEER_CERT_FILE" etcd.peerCertFile
        // optional "ETCD_PEER_KEY_FILE" etcd.peerKeyFile
        // optional "ETCD_TRUSTED_CA_FILE" etcd.trustedCaFile
        // optional "ETCD_CERT_FILE" etcd.certFile
        // optional "ETCD_KEY_FILE" etcd.keyFile
        // builtins.listToAttrs (map (n: { name = "ETCD_${n}"; value = etcd.extraConf.${n}; }) (builtins.attrNames etcd.extraConf));
    })
  ];
}
