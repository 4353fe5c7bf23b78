//! kpki: the PKI of a Kubernetes cluster on NixOS, from one config file.
//!
//! Floors, each using only those below it (`tests/it/layers.rs` fails on a cycle): `error`,
//! `clock`, `pem`, `progress`; `store`; `agefile`; `config`; `catalogue` (every file kpki
//! manages), `cli`; `issuing`, `report`, `wiring`; `inspection` (what a certificate says);
//! `manifest`; `trust`; `state` (the one reader of PKI material); `importing`, `kubeconfig`,
//! `plan`, `rollout`; `revocation`, `secrets` (what secrets/ must hold, committing);
//! `assessment`; `rotation`; `prune`; `commands`, one file per subcommand.

pub mod actions;
pub mod agefile;
pub mod assessment;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod completion;
pub mod config;
pub mod error;
pub mod importing;
pub mod inspection;
pub mod issuing;
pub mod kubeconfig;
pub mod manifest;
pub mod pem;
pub mod progress;
pub mod prune;
pub mod report;
pub mod revocation;
pub mod rollout;
pub mod rotation;
pub mod secrets;
pub mod state;
pub mod store;
pub mod trust;
pub mod wiring;
