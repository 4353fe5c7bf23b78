//! The subcommands, one file each (as cargo lays out its commands), composing the library's
//! floors; this module holds what they share: the context, opening a cluster (config,
//! recipients, the authenticated state) and what reports say. Every writer opens the state,
//! refuses plaintext changed outside kpki, makes its changes in memory, and commits them with the
//! sealing in one transaction.

use std::collections::HashMap;
use std::path::Path;

use zeroize::Zeroizing;

use crate::actions::{self, Applied};
use crate::assessment;
use crate::catalogue::{self, CaName, Item, Kind, Part, Scope, Subject, Target};
use crate::cli::{
    ImportFrom, InitArgs, IssueArgs, KubeconfigArgs, RevokeArgs, RotateArgs, StatusArgs,
};
use crate::config::{Config, DEFAULT_CONFIG, Node, Role};
use crate::error::{Error, Result};
use crate::importing;
use crate::report::{Report, abbreviate, did_you_mean};
use crate::revocation;
use crate::rotation;
use crate::secrets::{self, Committed, Depth, ExtraFile, Recipients};
use crate::state::{ADMIN_IDENTITY, Access, Place, State};
use crate::store::{self, Store};
use crate::trust;

mod import;
mod init;
mod issue;
mod kubeconfig;
mod revoke;
mod rollout;
mod rotate;
mod status;
mod verify;

pub use import::import;
pub use init::init;
pub use issue::issue;
pub use kubeconfig::kubeconfig;
pub use revoke::revoke;
pub use rollout::rollout;
pub use rotate::rotate;
pub use status::status;
pub use verify::verify;

/// What every command works on.
pub struct Context {
    pub store: Store,
    /// The admin identity from `-i` or `KPKI_IDENTITY`.
    pub identity: Option<std::path::PathBuf>,
    /// Whom to trust for the committed state (`--trust`, `KPKI_TRUST`, `--allow-rollback`).
    pub trust: trust::Policy,
    /// Recipients new to the signed state that the admin confirmed (`--accept-recipients`).
    pub accepted: Vec<String>,
}

/// Prints the config's warnings (valid, but probably not meant).
fn warn_config(report: &mut Report, config: &Config) {
    for warning in config.warnings() {
        report.warn(format_args!("pki/kpki.toml: {warning}"));
    }
}

/// The config on disk, or the embedded default (then `true`: it still has to be written).
fn config_or_default(store: &Store) -> Result<(Config, bool)> {
    let path = store.config_path();
    match store.read_text(&path)? {
        Some(text) => Ok((parse_config(&text, &path)?, false)),
        None => {
            refuse_lost_config(store)?;
            Ok((parse_config(DEFAULT_CONFIG, &path)?, true))
        }
    }
}

/// A config, checked also against the catalogue (declared certificates must not take its names).
fn parse_config(text: &str, path: &Path) -> Result<Config> {
    let config = Config::parse(text, path)?;
    catalogue::check_declared(&config)
        .and_then(|()| secrets::nix::check_unique_names(&config))
        .map_err(|message| Error::Config {
            file: path.to_path_buf(),
            message,
        })?;
    Ok(config)
}

/// An existing cluster (a manifest or encrypted files in `secrets/`) whose config is gone is
/// not a new cluster: refuse rather than start over with the default config.
fn refuse_lost_config(store: &Store) -> Result<()> {
    let sealed = store.secrets_path(crate::manifest::FILE).exists()
        || store
            .list(&store.secrets_dir())?
            .iter()
            .any(|f| f.ends_with(".age"));
    if !sealed {
        return Ok(());
    }
    Err(Error::usage(
        format!(
            "{}: missing, but {} holds an existing cluster's secrets",
            store.config_path().display(),
            store.secrets_dir().display()
        ),
        Some("restore it (git checkout pki/kpki.toml); kpki will not start a new cluster over existing secrets".into()),
    ))
}

/// The config on disk, which must exist.
fn config(store: &Store) -> Result<Config> {
    let path = store.config_path();
    match store.read_text(&path)? {
        Some(text) => parse_config(&text, &path),
        None => {
            refuse_lost_config(store)?;
            Err(Error::usage(
                format!("{}: no config here", path.display()),
                Some("run kpki init first, or point --dir at the cluster directory".into()),
            ))
        }
    }
}

/// An initialized cluster: config, recipients and state.
struct Cluster {
    config: Config,
    recipients: Recipients,
    state: State,
}

impl Cluster {
    /// The config, the recipients and the state, for a command that takes them apart.
    fn parts(self) -> (Config, Recipients, State) {
        (self.config, self.recipients, self.state)
    }
}

/// Opens an initialized cluster; a writer first refuses plaintext changed outside kpki.
fn cluster(ctx: &Context, report: &mut Report, access: Access) -> Result<Cluster> {
    let (cluster, admins) = open(ctx, report, access, || {
        let config = config(&ctx.store)?;
        let admins = secrets::admins(&ctx.store, &config)?;
        Ok((config, admins))
    })?;
    if admins.generated.is_some() {
        return Err(Error::usage(
            "secrets.admins is empty and there is no pki/admin.agekey: kpki init has not run here",
            Some("run kpki init first".into()),
        ));
    }
    Ok(cluster)
}

/// Opens a cluster as every command does: `load` (the config and its admins) beside the
/// committed state, then the config's warnings, the recipients (with those the admin
/// accepted), the state authenticated, and for a writer the audit of plaintext changed outside
/// kpki (for a reader, a note on an interrupted run). The admins come back too: `init` and
/// `import` write a generated identity.
fn open(
    ctx: &Context,
    report: &mut Report,
    access: Access,
    load: impl FnOnce() -> Result<(Config, secrets::Admins)> + Send,
) -> Result<(Cluster, secrets::Admins)> {
    // The config and the committed state are read at once: at thousands of nodes each is a
    // parse of megabytes of TOML. The host keys are parsed alongside too.
    let (opened, state) = rayon::join(
        || -> Result<_> {
            let (config, admins) = load()?;
            let recipients = Recipients::new(&config, admins.recipients.clone())?;
            Ok((config, admins, recipients.accepting(&ctx.accepted)))
        },
        || {
            let state = State::open(ctx.store.clone(), ctx.identity.clone(), access)?;
            if access == Access::Write {
                // The audit's look at every file (two stats each) overlaps the parse of the
                // config; what it finds counts only once the state is authenticated below, and
                // a failure here is met again, in order, by the audit itself.
                let _ = state.divergent();
            }
            Ok(state)
        },
    );
    let (config, admins, recipients) = opened?;
    warn_config(report, &config);
    let state = state?;
    authenticate(ctx, &state, access, report)?;
    match access {
        Access::Write => {
            state.audit()?;
        }
        Access::Read => report_interrupted(&ctx.store, report),
    }
    let cluster = Cluster {
        config,
        recipients,
        state,
    };
    Ok((cluster, admins))
}

/// Checks the committed manifest's signature and generation against this clone's pin: a
/// writer refuses a state it cannot trust, a reader reports it. A writer's commit pins what
/// was verified; a reader changes no file.
fn authenticate(ctx: &Context, state: &State, access: Access, report: &mut Report) -> Result<()> {
    match verdict(ctx, state)? {
        Ok(verdict) => {
            for note in &verdict.notes {
                report.note(note);
            }
            state.set_verified(verdict.pin);
            Ok(())
        }
        Err(problem) if access == Access::Write => Err(problem.into_error()),
        Err(problem) => {
            report.warn(format_args!("{} ({})", problem.message, problem.hint));
            report.needs_action = true;
            Ok(())
        }
    }
}

/// For a reader that hands material out (a kubeconfig): refuses a state it cannot trust, as
/// a writer does.
fn refuse_untrusted(ctx: &Context, state: &State) -> Result<()> {
    verdict(ctx, state)?
        .map(drop)
        .map_err(trust::Problem::into_error)
}

/// The committed manifest against this clone's pin and the fingerprint given, if any.
fn verdict(ctx: &Context, state: &State) -> Result<Result<trust::Verdict, trust::Problem>> {
    if let Some(given) = &ctx.trust.given
        && !trust::valid_fingerprint(given)
    {
        return Err(Error::usage(
            format!("--trust {given}: not a key fingerprint (sha256: and 64 lowercase hex digits)"),
            Some(
                "kpki status shows the fingerprint of the Kubernetes CA that signs the manifest"
                    .into(),
            ),
        ));
    }
    let pin = trust::Pin::load(&ctx.store)?;
    Ok(trust::check(state.loaded(), pin.as_ref(), &ctx.trust))
}

/// For a reader: says that an interrupted run left temporary files, which only a writer may
/// clear, and counts it as something to act on.
fn report_interrupted(store: &Store, report: &mut Report) {
    if store.interrupted() {
        report.warn(format_args!(
            "an interrupted kpki run left temporary files in {} (git-ignored; keys among them): run kpki init to complete or clear them",
            shown(store, &store.temp_dir())
        ));
        report.needs_action = true;
    }
}

/// The file a cluster directory's first write brings besides the PKI and `pki/.gitignore`
/// (which every commit keeps current): a generated admin identity.
fn first_run_files(store: &Store, admins: &secrets::Admins) -> Vec<ExtraFile> {
    let identity = admins.generated.as_ref().map(|identity| {
        extra(
            store.pki_path(ADMIN_IDENTITY),
            identity.as_bytes(),
            store::SECRET_MODE,
        )
    });
    identity.into_iter().collect()
}

/// Warns that a generated admin identity must be backed up.
fn warn_generated(report: &mut Report, admins: &secrets::Admins) {
    if admins.generated.is_some() {
        report.warn(format_args!(
            "created pki/{ADMIN_IDENTITY} as the admin identity (secrets.admins is empty): back it up, or put your own key in secrets.admins"
        ));
    }
}

/// Notes on CAs that are one CA (adopted from easyCerts, which has a single CA).
fn shared_cas(state: &State) -> Result<Vec<String>> {
    let mut fingerprints = Vec::new();
    for ca in catalogue::CAS {
        fingerprints.push((ca, state.fingerprint(&catalogue::ca_file(ca))?));
    }
    let kubernetes = fingerprints[0].1.clone();
    let same: Vec<&str> = fingerprints[1..]
        .iter()
        .filter(|(_, fp)| fp.is_some() && *fp == kubernetes)
        .map(|(ca, _)| ca.dir())
        .collect();
    Ok(match same.as_slice() {
        [] => Vec::new(),
        cas => vec![format!(
            "the kubernetes CA is also the {} CA (one CA, as easyCerts made it); to split them, each with its trust overlap, run {}",
            cas.join(" and "),
            cas.iter()
                .map(|c| format!("kpki rotate --ca {c} (and its --finish)"))
                .collect::<Vec<_>>()
                .join(", then ")
        )],
    })
}

/// A file written with a command's changes.
fn extra(path: std::path::PathBuf, contents: &[u8], mode: u32) -> ExtraFile {
    ExtraFile {
        path,
        contents: Zeroizing::new(contents.to_vec()),
        mode,
    }
}

/// A path relative to the cluster directory, for output.
fn shown(store: &Store, path: &Path) -> String {
    path.strip_prefix(store.root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The certificates (and CAs) that no longer match the config; none are named when reading
/// them would need an identity that is not at hand (a fresh clone with nothing to do).
fn drifted(state: &State, config: &Config) -> Result<Vec<String>> {
    match assessment::assess(state, config, &HashMap::new(), crate::clock::now()) {
        Ok(rows) => Ok(rows
            .into_iter()
            .filter(|a| a.row.state == assessment::Health::Drift)
            .map(|a| a.row.name)
            .collect()),
        Err(Error::Identity { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The files a plan changed that exist in `pki/`: without `plaintext_keys`, keys are only
/// sealed, never written there.
fn in_pki(config: &Config, applied: &Applied) -> Vec<String> {
    applied
        .written
        .iter()
        .filter(|f| {
            config.plaintext_keys
                || crate::catalogue::file_kind(f) != crate::pem::FileKind::PrivateKey
        })
        .map(|f| format!("pki/{f}"))
        .collect()
}

/// Prints what a plan changed in `pki/`, with `verb`, and the leaves cut short at their CA.
fn report_applied(report: &mut Report, config: &Config, applied: &Applied, verb: &str) {
    report.files(verb, in_pki(config, applied));
    for capped in &applied.capped {
        report.warn(capped);
    }
}

/// Prints what committing wrote.
fn report_committed(report: &mut Report, committed: &Committed) {
    for file in &committed.refreshed {
        report.say(format_args!(
            "refreshed {file} from secrets/ (committed since this cache was made)"
        ));
    }
    for file in &committed.restored {
        report.say(format_args!(
            "restored {file} from secrets/ (deleted from the cache)"
        ));
    }
    report.files("encrypted", committed.encrypted.clone());
    for file in &committed.written {
        report.say(format_args!("wrote {file}"));
    }
    if !committed.new_recipients.is_empty() {
        report.say(format_args!(
            "encrypted to {} recipient(s) new to the signed state, as accepted: {}",
            committed.new_recipients.len(),
            abbreviate(&committed.new_recipients)
        ));
    }
}

/// Ends a dry run, saying what would have been done. Printed even with `--quiet`: the plan is
/// what was asked for.
fn dry_run(report: &mut Report, what: &str) -> Result<()> {
    if !what.is_empty() {
        report.output(format!("would {what}\n"));
    }
    report.output("dry run: nothing changed\n".to_string());
    Ok(())
}

/// The node named on the command line.
fn find_node<'c>(config: &'c Config, name: Option<&str>, missing: &str) -> Result<&'c Node> {
    let all: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
    let listed: Vec<String> = all.iter().map(|n| n.to_string()).collect();
    let names = || Some(format!("nodes: {}", abbreviate(&listed)));
    let name = name.ok_or_else(|| Error::usage(missing, names()))?;
    config.node(name).ok_or_else(|| {
        Error::usage(
            format!("unknown node \"{name}\"{}", did_you_mean(name, &all)),
            names(),
        )
    })
}

/// Names joined, or "none".
fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// `kpki completions SHELL`.
pub fn completions(shell: clap_complete::Shell, report: &mut Report) -> Result<()> {
    let script = crate::completion::registration(shell)
        .map_err(|e| Error::usage(format!("completions for {shell}: {e}"), None))?;
    report.output(script);
    Ok(())
}
