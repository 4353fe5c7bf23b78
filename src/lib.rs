//! kpki: the PKI of a Kubernetes cluster on NixOS, from one config file.
//!
//! Floors, each using only those below it: `config`, `store`, `cli` at the bottom; then
//! `catalogue`; then `issuing`, `secrets` and `inspection`; then `plan`; then `rotation`; then `commands`.

pub mod catalogue;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod inspection;
pub mod issuing;
pub mod kubeconfig;
pub mod plan;
pub mod progress;
pub mod rotation;
pub mod secrets;
pub mod store;
