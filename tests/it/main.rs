//! kpki's integration tests: one binary sharing one harness. Certificates are checked by real
//! programs (openssl, etcd) and by a second parser (rustls-webpki), never by kpki's own code.

mod attack;
mod bad_input;
mod config_errors;
mod controlplane;
mod crash;
mod declared;
mod deploy;
mod etcd;
mod fuzz_corpus;
mod hardening;
mod harness;
mod import;
mod init;
mod interrupt;
mod issue;
mod kube;
mod layers;
mod lifecycle;
mod locking;
mod netns;
mod nixos;
mod openssl;
mod output;
mod plugin;
mod public;
mod revocation;
mod rollout;
mod secrets;
mod team;
mod verify;
mod webpki;
