//! Shell completion that knows the cluster: the shell script (`kpki completions SHELL`) asks the
//! binary for candidates as the user types, so profiles, node names and user names come from
//! `pki/kpki.toml` and the cluster directory where the shell stands. Candidates are best effort:
//! a missing or broken config gives none, never an error in the middle of a command line.

use clap_complete::engine::{ArgValueCandidates, CompletionCandidate};

use crate::catalogue::{self, Kind};
use crate::config::Config;
use crate::state::{Access, State};
use crate::store::Store;

/// The command-line interface with candidates attached to the arguments that name things of the
/// cluster. `main` parses with it too, so completion and parsing are one definition.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    crate::cli::Cli::command()
        .mut_subcommand("issue", |c| {
            c.after_help(catalogue::profiles_help())
                .mut_arg("profile", |a| a.add(ArgValueCandidates::new(profiles)))
                .mut_arg("node", |a| a.add(ArgValueCandidates::new(nodes)))
        })
        .mut_subcommand("kubeconfig", |c| {
            c.mut_arg("who", |a| a.add(ArgValueCandidates::new(identities)))
                .mut_arg("name", |a| a.add(ArgValueCandidates::new(names)))
                .mut_arg("node", |a| a.add(ArgValueCandidates::new(nodes)))
        })
        .mut_subcommand("import", |c| {
            ["kubeadm", "easycerts"].into_iter().fold(c, |c, layout| {
                c.mut_subcommand(layout, |s| {
                    s.mut_arg("node", |a| a.add(ArgValueCandidates::new(nodes)))
                })
            })
        })
}

/// Writes the script that registers kpki's completion with `shell`.
pub fn registration(shell: clap_complete::Shell) -> std::io::Result<String> {
    let shells = clap_complete::env::Shells::builtins();
    let completer = shells
        .completer(&shell.to_string())
        .ok_or_else(|| std::io::Error::other(format!("no completion registration for {shell}")))?;
    let mut script = Vec::new();
    completer.write_registration("COMPLETE", "kpki", "kpki", "kpki", &mut script)?;
    Ok(String::from_utf8_lossy(&script).into_owned())
}

/// The config of the cluster directory the shell stands in, if it reads. Read as every command
/// reads it (a regular file, size-limited), so a FIFO or a device there cannot hang the shell.
fn config() -> Option<Config> {
    let store = Store::new(".");
    let path = store.config_path();
    let text = store.read_text(&path).ok()??;
    Config::parse(&text, &path).ok()
}

fn candidates<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Vec<CompletionCandidate> {
    names
        .into_iter()
        .map(|n| CompletionCandidate::new(n.into()))
        .collect()
}

/// The nodes of `pki/kpki.toml`.
fn nodes() -> Vec<CompletionCandidate> {
    candidates(node_names(config().as_ref()))
}

/// The names of `config`'s nodes (none without a config).
fn node_names(config: Option<&Config>) -> Vec<String> {
    config
        .iter()
        .flat_map(|c| c.nodes.iter().map(|n| n.name.clone()))
        .collect()
}

/// The extra client users (`pki/users/`, or the manifest in a fresh clone).
fn users() -> Vec<String> {
    State::open(Store::new("."), None, Access::Read)
        .and_then(|state| crate::secrets::users(&state))
        .unwrap_or_default()
}

/// `kpki issue` profiles: the catalogue's leaves, the declared certificates, `node`, `client`.
fn profiles() -> Vec<CompletionCandidate> {
    let config = config();
    let declared = config.iter().flat_map(|c| c.certificates.iter());
    let leaves = catalogue::ENTRIES
        .iter()
        .filter(|e| matches!(e.kind, Kind::Leaf { .. }))
        .map(|e| e.profile.to_string());
    candidates(
        leaves
            .chain(declared.map(|d| d.name.clone()))
            .chain(["node".into(), "client".into()]),
    )
}

/// The identities `kpki kubeconfig` writes.
fn identities() -> Vec<CompletionCandidate> {
    candidates(crate::cli::IDENTITIES.iter().copied())
}

/// What follows the identity: a node (kubelet), a user (user) or a declared certificate (cert).
fn names() -> Vec<CompletionCandidate> {
    let config = config();
    let declared = config
        .iter()
        .flat_map(|c| c.certificates.iter().map(|d| d.name.clone()));
    candidates(
        node_names(config.as_ref())
            .into_iter()
            .chain(users())
            .chain(declared),
    )
}
