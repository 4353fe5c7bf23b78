//! The `kpki` binary: parse, dispatch, and turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use kpki::cli::{Cli, Command};
use kpki::commands::{self, Context};
use kpki::store::Store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        store: Store::new(&cli.dir),
        identity: cli.identity.clone(),
        quiet: cli.quiet,
    };
    let result = match cli.command {
        Command::Init => commands::init(&ctx),
        Command::Issue {
            profile,
            node,
            keep_key,
            validity,
            cn,
            groups,
        } => commands::issue(
            &ctx,
            &commands::IssueRequest {
                profile: &profile,
                node: node.as_deref(),
                keep_key,
                validity: validity.as_deref(),
                cn: cn.as_deref(),
                groups: &groups,
            },
        ),
        Command::Kubeconfig {
            who,
            name,
            server,
            output,
        } => commands::kubeconfig(
            &ctx,
            &who,
            name.as_deref(),
            server.as_deref(),
            output.as_deref(),
        ),
        Command::Completions { shell } => commands::completions(shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kpki: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(2)
        }
    }
}
