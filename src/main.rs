//! The `kpki` binary: parse, dispatch, and turn the outcome into an exit code
//! (0 success, 1 a check found something to act on, 2 an error).

use std::process::ExitCode;

use clap::Parser;
use kpki::cli::{Cli, Command};
use kpki::commands::{self, Context, IssueRequest, RotateRequest};
use kpki::error::Result;
use kpki::store::Store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.quiet {
        kpki::progress::enable();
    }
    let ctx = Context {
        store: Store::new(&cli.dir),
        identity: cli.identity.clone(),
        quiet: cli.quiet,
    };
    let outcome = lock(&ctx, &cli.command).and_then(|_lock| {
        let outcome = dispatch(&ctx, cli.command);
        // Whatever happened, make the renames done so far durable before the lock is released.
        let synced = ctx.store.sync();
        outcome.and_then(|found| synced.map(|()| found))
    });
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
fn lock(ctx: &Context, command: &Command) -> Result<Option<kpki::store::Lock>> {
    let exclusive = match command {
        Command::Init | Command::Issue { .. } | Command::Rotate { .. } => true,
        Command::Status { .. } | Command::Verify | Command::Kubeconfig { .. } => false,
        Command::Completions { .. } => return Ok(None),
    };
    ctx.store.lock(exclusive).map(Some)
}

/// Runs one command; `Ok(true)` when a check found something that needs action.
fn dispatch(ctx: &Context, command: Command) -> Result<bool> {
    let done = |r: Result<()>| r.map(|()| false);
    match command {
        Command::Init => done(commands::init(ctx)),
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
                validity: validity.as_deref(),
                cn: cn.as_deref(),
                groups: &groups,
            },
        )),
        Command::Kubeconfig {
            who,
            name,
            server,
            output,
        } => done(commands::kubeconfig(
            ctx,
            &who,
            name.as_deref(),
            server.as_deref(),
            output.as_deref(),
        )),
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
        } => done(commands::rotate(
            ctx,
            &RotateRequest {
                within: within.as_deref(),
                all,
                dry_run,
                keep_key,
                ca: ca.as_deref(),
                service_account,
                finish,
            },
        )),
        Command::Completions { shell } => done(commands::completions(shell)),
    }
}
