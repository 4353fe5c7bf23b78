//! The command line, as clap definitions only: help, completions and parsing all come from here.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kubernetes PKI for NixOS clusters: CAs and certificates with IPv6 SANs, age-encrypted for
/// exactly the machines that need them, with agenix rules and a NixOS module.
#[derive(Debug, Parser)]
#[command(name = "kpki", version, propagate_version = true)]
#[command(after_help = "Exit status: 0 success, 1 a check found something to act on, 2 an error.")]
pub struct Cli {
    /// The cluster directory (holds pki/ and secrets/).
    #[arg(long, global = true, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// The admin identity that decrypts secrets/ (age identity file or OpenSSH private key).
    #[arg(
        short = 'i',
        long,
        global = true,
        value_name = "FILE",
        env = "KPKI_IDENTITY"
    )]
    pub identity: Option<PathBuf>,
    /// Print nothing but errors and requested output.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write pki/kpki.toml from the embedded default when missing, then create every missing
    /// CA, key and certificate. Never replaces an existing CA or key; a second run changes nothing.
    Init,
    /// Print shell completions.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}
