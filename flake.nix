{
  description = "kpki: the PKI of a Kubernetes cluster on NixOS, from one config file";

  inputs = {
    # kpki needs rustc >= 1.88 (rcgen 0.14, time 0.3.55); nixos-25.11 ships it.
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";
    agenix = {
      url = "github:ryantm/agenix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
    flake-utils.url = "github:numtide/flake-utils";
  };

  outputs = { self, nixpkgs, agenix, flake-utils }:
    {
      # The cluster's NixOS module, once `kpki init` has written it (this repository is also the
      # cluster template): import it with agenix's module on every node.
      nixosModules = nixpkgs.lib.optionalAttrs (builtins.pathExists ./secrets/kpki.nix) {
        kpki = ./secrets/kpki.nix;
      };
    }
    // flake-utils.lib.eachDefaultSystem (system:
      let
        pkgs = import nixpkgs { inherit system; };
      in
      {
        packages.default = pkgs.rustPlatform.buildRustPackage {
          pname = "kpki";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = self;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite needs root, network namespaces and real etcd/openssl/age/nix:
          # it runs in CI (.ci/run), not in the sandbox.
          doCheck = false;
          meta.mainProgram = "kpki";
        };

        formatter = pkgs.nixpkgs-fmt;

        devShells.default = pkgs.mkShell {
          packages = with pkgs; [
            self.packages.${system}.default # kpki
            cargo
            rustc
            clippy
            rustfmt
            agenix.packages.${system}.default
            age # secrets debugging
            openssl # certificate inspection
            etcd # etcd and etcdctl
            kubectl
            gnumake # automation
          ];
        };
      });
}
