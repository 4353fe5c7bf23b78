# The NixOS module kpki writes as secrets/kpki.nix, applied there to the cluster's data (a
# literal kpki generates from pki/kpki.toml, the catalogue and the manifest):
#   apiServer, serviceCidr   cluster.api_server and cluster.service_cidr
#   etcdMembers              [ { name; host; } ]: each etcd node with its first address as a URL host
#   kubernetesCa, frontProxyCa, crl   the pki paths of those CAs and of etcd's revocation list
#   nodes.NAME               { roles; addresses; files."PKI PATH" = { name; file; owner; mode; fingerprint; }; }
#   wiring.SERVICE           { role; options; unit; files = [ { option; rel | own; } ]; restart = [ { rel | own; } ]; }
# A file is `rel` (its path under pki/) or `own` (a file of the host's own directory).
# For the host it is evaluated on (config.networking.hostName) it declares age.secrets for exactly
# that host's files, sets kpki.paths, and with kpki.wireServices sets the TLS options of nixpkgs'
# etcd and Kubernetes services (in place of services.kubernetes.easyCerts).
data:
{ config, lib, ... }:
let
  inherit (lib) mkIf mkMerge mkOption mkOverride types;
  cfg = config.kpki;
  k8s = config.services.kubernetes;
  host = config.networking.hostName;
  # Above nixpkgs' own defaults (mkDefault, 1000), below your plain definitions (100).
  wire = mkOverride 900;
  node = data.nodes.${host} or null;
  files = if node == null then { } else node.files;
  has = role: node != null && builtins.elem role node.roles;
  path = rel: config.age.secrets.${files.${rel}.name}.path;
  fileOf = f: f.rel or "${host}/${f.own}";
  # What a unit reads, by fingerprint (from the manifest): a deploy restarts exactly the units
  # whose files changed.
  changes = rels: map (rel: files.${rel}.fingerprint) rels;
  urlHost = a: if builtins.match ".*:.*" a != null then "[${a}]" else a;
  url = port: a: "https://${urlHost a}:${toString port}";
  address = builtins.head node.addresses;
  optionPath = option: lib.splitString "." option;

  # The options of each service that are not file paths.
  values = {
    apiserver = {
      etcd.servers = wire (map (m: "https://${m.host}:2379") data.etcdMembers);
      advertiseAddress = wire address;
      bindAddress = wire (if urlHost address != address then "::" else "0.0.0.0");
      serviceClusterIpRange = wire data.serviceCidr;
      # nixpkgs has no option for the front-proxy CA; extraOpts is merged, not replaced.
      extraOpts = builtins.concatStringsSep " " [
        "--requestheader-client-ca-file=${path data.frontProxyCa}"
        "--requestheader-allowed-names=front-proxy-client"
        "--requestheader-username-headers=X-Remote-User"
        "--requestheader-group-headers=X-Remote-Group"
        "--requestheader-extra-headers-prefix=X-Remote-Extra-"
      ];
    };
    # The kubelet's identity is system:node:NODE: its hostname must be the node name.
    kubelet.hostname = wire host;
    etcd = {
      name = wire host;
      clientCertAuth = wire true;
      peerClientCertAuth = wire true;
      listenClientUrls = wire (map (url 2379) node.addresses ++ [ "https://[::1]:2379" ]);
      advertiseClientUrls = wire (map (url 2379) node.addresses);
      listenPeerUrls = wire (map (url 2380) node.addresses);
      initialAdvertisePeerUrls = wire (map (url 2380) node.addresses);
      initialCluster = wire (map (m: "${m.name}=https://${m.host}:2380") data.etcdMembers);
      # Once a certificate is revoked (kpki revoke, kpki rotate --prune): etcd reads the list at
      # every connection, so a new one needs no restart.
      extraConf = mkIf (files ? ${data.crl}) {
        CLIENT_CRL_FILE = wire (path data.crl);
        PEER_CRL_FILE = wire (path data.crl);
      };
    };
  };

  # A service wired on this host when kpki.wireServices is on, the host has the service's role
  # and the service is enabled: each of its file options set to the decrypted path, its other
  # options, and the restart triggers of its unit.
  wireService =
    name: s:
    let
      options = optionPath s.options;
      at = lib.setAttrByPath options;
    in
    mkIf (cfg.wireServices && has s.role && lib.attrByPath (options ++ [ "enable" ]) false config) (
      mkMerge (
        map (f: lib.setAttrByPath (options ++ optionPath f.option) (wire (path (fileOf f)))) s.files
        ++ [
          (at (values.${name} or { }))
          { systemd.services.${s.unit}.restartTriggers = changes (map fileOf s.restart); }
        ]
      )
    );
in
{
  options.kpki = {
    wireServices = mkOption {
      type = types.bool;
      default = false;
      description = "Set the TLS options of nixpkgs' etcd and Kubernetes services on this host from kpki's files, as services.kubernetes.easyCerts would (which must then be off).";
    };
    paths = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      description = "The decrypted path of each kpki file this host receives, by its path under pki/ (\"kubernetes/ca.pem\", \"node-02/kubelet-key.pem\").";
    };
  };

  config = mkMerge (
    [
      {
        age.secrets = builtins.listToAttrs (
          map (f: {
            inherit (f) name;
            value = {
              inherit (f) file owner mode;
              group = f.owner;
            };
          }) (builtins.attrValues files)
        );
        kpki.paths = builtins.mapAttrs (rel: f: config.age.secrets.${f.name}.path) files;
        assertions = [
          {
            assertion = !(cfg.wireServices && k8s.easyCerts);
            message = "kpki.wireServices replaces services.kubernetes.easyCerts: set services.kubernetes.easyCerts = false (the kubernetes roles switch it on)";
          }
        ];
      }
      (mkIf (cfg.wireServices && files ? ${data.kubernetesCa}) {
        services.kubernetes.caFile = wire (path data.kubernetesCa);
        # Every component's kubeconfig.server defaults to this (nixpkgs' own default is not a
        # valid URL for an IPv6 address).
        services.kubernetes.apiserverAddress = wire data.apiServer;
      })
    ]
    ++ lib.mapAttrsToList wireService data.wiring
  );
}
