//! kpki: the PKI of a Kubernetes cluster on NixOS, from one config file.
//!
//! Floors, each using only those below it: `error`, `clock`, `store`, `pem`, `agefile` and `cli` at the
//! bottom; `config`; `catalogue`, `secrets::manifest`; `state` (the one reader of PKI material);
//! `issuing`, `inspection`, `kubeconfig`; `secrets` (what secrets/ must hold, committing);
//! `plan`; `rotation`; `report` (what a command says, printed by the binary); `commands`.

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
pub mod plan;
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
