//! The `kpki` binary: parse, dispatch, and turn the outcome into an exit code
//! (0 success, 1 a check found something to act on, 2 an error).

use std::process::ExitCode;

use clap::FromArgMatches;
use kpki::cli::{Cli, Command, ImportFrom};
use kpki::commands::{self, Context, IssueRequest, RotateRequest};
use kpki::error::Result;
use kpki::importing::Layout;
use kpki::store::Store;

fn main() -> ExitCode {
    // Answers the shell's completion requests (COMPLETE=SHELL in the environment) and exits.
    clap_complete::CompleteEnv::with_factory(kpki::completion::command).complete();
    let matches = kpki::completion::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !cli.quiet {
        kpki::progress::enable();
    }
    let identity = cli.identity.clone().or_else(|| {
        std::env::var_os("KPKI_IDENTITY")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    let ctx = Context::new(Store::new(&cli.dir), identity, cli.quiet, cli.verbose);
    let outcome = lock(&ctx, &cli.command).and_then(|_lock| dispatch(&ctx, cli.command));
    match outcome {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(1),
        Err(e) => {
            eprintln!("kpki: error: {e}");
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(2)
        }
    }
}

/// The cluster directory's lock: exclusive for the commands that write, shared for the others.
/// `init` creates the cluster directory first, so that it is locked before anything is written.
fn lock(ctx: &Context, command: &Command) -> Result<Option<kpki::store::Lock>> {
    let exclusive = match command {
        Command::Init { .. } => {
            ctx.store.create_root()?;
            true
        }
        Command::Issue { .. }
        | Command::Rotate { .. }
        | Command::Revoke { .. }
        | Command::Import { .. } => true,
        Command::Status { .. } | Command::Verify | Command::Kubeconfig(_) => false,
        Command::Completions { .. } => return Ok(None),
    };
    ctx.store.lock(exclusive).map(Some)
}

/// Runs one command; `Ok(true)` when a check found something that needs action.
fn dispatch(ctx: &Context, command: Command) -> Result<bool> {
    let done = |r: Result<()>| r.map(|()| false);
    match command {
        Command::Init { config_only } => done(commands::init(ctx, config_only)),
        Command::Issue {
            profile,
            node,
            keep_key,
            validity,
            cn,
            groups,
        } => done(commands::issue(
            ctx,
            &IssueRequest {
                profile: &profile,
                node: node.as_deref(),
                keep_key,
                validity,
                cn: cn.as_deref(),
                groups: &groups,
            },
        )),
        Command::Kubeconfig(args) => done(commands::kubeconfig(ctx, &args)),
        Command::Status { at, json } => commands::status(ctx, at.as_deref(), json),
        Command::Verify => commands::verify(ctx),
        Command::Rotate {
            within,
            all,
            dry_run,
            keep_key,
            ca,
            service_account,
            finish,
            prune,
        } => done(commands::rotate(
            ctx,
            &RotateRequest {
                within,
                all,
                dry_run,
                keep_key,
                ca,
                service_account,
                finish,
                prune,
            },
        )),
        Command::Revoke { names } => done(commands::revoke(ctx, &names)),
        Command::Import { from } => done(match &from {
            ImportFrom::Kubeadm { source, node } => {
                commands::import(ctx, source, Layout::Kubeadm { node })
            }
            ImportFrom::Easycerts { source, node } => {
                commands::import(ctx, source, Layout::EasyCerts { node })
            }
            ImportFrom::Dir { source, maps } => commands::import(ctx, source, Layout::Map(maps)),
        }),
        Command::Completions { shell } => done(commands::completions(ctx, shell)),
    }
}
