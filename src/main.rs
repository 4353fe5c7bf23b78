//! The `kpki` binary: parse, dispatch, print what the command reports, and turn the outcome
//! into an exit code (0 success, 1 a check found something to act on, 2 an error).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::FromArgMatches;
use kpki::cli::{Cli, Command};
use kpki::commands::{self, Context};
use kpki::error::Result;
use kpki::report::{Report, Style};
use kpki::store::Store;

/// jemalloc rather than glibc's malloc: kpki allocates on rayon's threads and frees on others,
/// where glibc's per-thread arenas grow and shrink a page range at a time (ten thousand
/// `mprotect` calls in a no-op `rotate` at 5,000 nodes). A sixth off that `rotate`, with the
/// same peak memory for `init` (mimalloc was as fast but took a quarter more memory).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Answers the shell's completion requests (COMPLETE=SHELL in the environment) and exits.
    clap_complete::CompleteEnv::with_factory(kpki::completion::command).complete();
    let matches = kpki::completion::command()
        .try_get_matches()
        .unwrap_or_else(|e| usage_error(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_error(e));
    if !cli.quiet {
        kpki::progress::enable();
    }
    let identity = cli.identity.clone().or_else(|| {
        std::env::var_os("KPKI_IDENTITY")
            .filter(|v| !v.is_empty())
            .map(Into::into)
    });
    let trust = cli
        .trust
        .clone()
        .or_else(|| std::env::var("KPKI_TRUST").ok().filter(|v| !v.is_empty()));
    let ctx = Context {
        store: Store::new(&cli.dir),
        identity,
        trust: kpki::trust::Policy {
            given: trust,
            allow_rollback: cli.allow_rollback,
        },
        accepted: cli.accept_recipients.clone(),
    };
    let style = Style {
        quiet: cli.quiet,
        verbose: cli.verbose,
        terminal: std::io::stdout().is_terminal(),
    };
    let mut report = Report::default();
    let outcome =
        lock(&ctx, &cli.command).and_then(|_lock| dispatch(&ctx, &cli.command, &mut report));
    // A command that failed changed nothing: only its warnings and notes are printed.
    if outcome.is_err() {
        report.failed();
    }
    report.print(
        style,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    match outcome {
        Ok(()) if report.needs_action => ExitCode::from(1),
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

/// A command line clap refuses, said as kpki says every error: the cause on one line, then a
/// hint (clap's tip, else the usage). Help and version are printed as clap prints them.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let (cause, rest) = text.split_once("\n\n").unwrap_or((&text, ""));
    let cause: Vec<&str> = cause.lines().map(str::trim).collect();
    let cause = cause.join(" ");
    eprintln!("kpki: error: {}", cause.trim_start_matches("error: "));
    let tip = rest
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("tip: "));
    let usage = rest.lines().find_map(|l| l.strip_prefix("Usage: "));
    match (tip, usage) {
        (Some(tip), _) => eprintln!("hint: {tip}"),
        (None, Some(usage)) => eprintln!("hint: usage: {usage} (see --help)"),
        (None, None) => {}
    }
    std::process::exit(2);
}

/// The cluster directory's lock: exclusive for the commands that write, shared for the others.
/// `init` creates the cluster directory first, so that it is locked before anything is written.
fn lock(ctx: &Context, command: &Command) -> Result<Option<kpki::store::Lock>> {
    let exclusive = match command {
        Command::Init(_) => {
            ctx.store.create_root()?;
            true
        }
        Command::Issue(_) | Command::Rotate(_) | Command::Revoke(_) | Command::Import { .. } => {
            true
        }
        Command::Status(_) | Command::Verify | Command::Kubeconfig(_) | Command::Rollout(_) => {
            false
        }
        Command::Completions { .. } => return Ok(None),
    };
    ctx.store.lock(exclusive).map(Some)
}

/// Runs one command, which says what it did in `report`.
fn dispatch(ctx: &Context, command: &Command, report: &mut Report) -> Result<()> {
    match command {
        Command::Init(args) => commands::init(ctx, args, report),
        Command::Issue(args) => commands::issue(ctx, args, report),
        Command::Kubeconfig(args) => commands::kubeconfig(ctx, args, report),
        Command::Status(args) => commands::status(ctx, args, report),
        Command::Verify => commands::verify(ctx, report),
        Command::Rotate(args) => commands::rotate(ctx, args, report),
        Command::Rollout(args) => commands::rollout(ctx, args, report),
        Command::Revoke(args) => commands::revoke(ctx, args, report),
        Command::Import { from } => commands::import(ctx, from, report),
        Command::Completions { shell } => commands::completions(*shell, report),
    }
}
