//! One function per subcommand, composing the library's floors. Every writer opens the state,
//! refuses plaintext changed outside kpki, makes its changes in memory, and commits them with the
//! sealing in one transaction.

use std::collections::HashMap;
use std::path::Path;

use zeroize::Zeroizing;

use crate::catalogue::{self, CaName, Item, Kind, Part, Scope, Subject};
use crate::cli::{
    ImportFrom, InitArgs, IssueArgs, KubeconfigArgs, RevokeArgs, RotateArgs, StatusArgs,
};
use crate::config::{Config, DEFAULT_CONFIG, Node, Role};
use crate::error::{Error, Result};
use crate::importing;
use crate::inspection::{self, status};
use crate::issuing;
use crate::kubeconfig;
use crate::plan::{self, Applied, Target};
use crate::report::{Report, abbreviate, did_you_mean};
use crate::revocation;
use crate::rotation;
use crate::secrets::{self, Depth, Extra, Recipients, Sealing};
use crate::state::{ADMIN_IDENTITY, Access, Place, State};
use crate::store::{self, Store};
use crate::trust;

/// What every command works on.
pub struct Context {
    pub store: Store,
    /// The admin identity from `-i` or `KPKI_IDENTITY`.
    pub identity: Option<std::path::PathBuf>,
    /// Whom to trust for the committed state (`--trust`, `KPKI_TRUST`, `--allow-rollback`).
    pub trust: trust::Policy,
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
    let sealed = store.secrets_path(secrets::manifest::FILE).exists()
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

/// Opens an initialized cluster; a writer first refuses plaintext changed outside kpki.
fn cluster(ctx: &Context, report: &mut Report, access: Access) -> Result<Cluster> {
    // The config and the committed state are read at once: at thousands of nodes each is a
    // parse of megabytes of TOML.
    let (config, state) = rayon::join(
        || config(&ctx.store),
        || State::open(ctx.store.clone(), ctx.identity.clone(), access),
    );
    let config = config?;
    warn_config(report, &config);
    let admins = secrets::admins(&ctx.store, &config)?;
    if admins.generated.is_some() {
        return Err(Error::usage(
            "secrets.admins is empty and there is no pki/admin.agekey: kpki init has not run here",
            Some("run kpki init first".into()),
        ));
    }
    let recipients = Recipients::new(&config, admins.recipients)?;
    let state = state?;
    authenticate(ctx, &state, access, report)?;
    match access {
        Access::Write => {
            state.audit()?;
        }
        Access::Read => report_interrupted(&ctx.store, report),
    }
    Ok(Cluster {
        config,
        recipients,
        state,
    })
}

/// Checks the committed manifest's signature and generation against this clone's pin: a
/// writer refuses a state it cannot trust, a reader reports it. A writer's commit pins what
/// was verified; a reader changes no file.
fn authenticate(ctx: &Context, state: &State, access: Access, report: &mut Report) -> Result<()> {
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
    match trust::check(state.loaded(), pin.as_ref(), &ctx.trust) {
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

/// Refuses `dir` inside the `pki/` or `secrets/` of a cluster directory (a second cluster
/// there would put plaintext where only ciphertext belongs); warns when it lies elsewhere inside
/// one (where `kpki init` was probably meant to run).
fn refuse_nested(ctx: &Context, report: &mut Report) -> Result<()> {
    let Ok(dir) = std::fs::canonicalize(ctx.store.root()) else {
        return Ok(());
    };
    for parent in dir.ancestors().skip(1) {
        let other = Store::new(parent);
        if other.config_path().is_file() || other.secrets_path(secrets::manifest::FILE).is_file() {
            if dir.starts_with(other.pki_dir()) || dir.starts_with(other.secrets_dir()) {
                return Err(Error::usage(
                    format!(
                        "{} is inside the pki/ or secrets/ of the cluster directory {}",
                        dir.display(),
                        parent.display()
                    ),
                    Some(format!(
                        "run kpki in {} (or pass --dir {})",
                        parent.display(),
                        parent.display()
                    )),
                ));
            }
            report.warn(format_args!(
                "{} is inside the cluster directory {}: this creates a second cluster there (use --dir {} for the existing one)",
                dir.display(),
                parent.display(),
                parent.display()
            ));
            return Ok(());
        }
    }
    Ok(())
}

/// The file a cluster directory's first write brings besides the PKI and `pki/.gitignore`
/// (which every commit keeps current): a generated admin identity.
fn first_run_files(store: &Store, admins: &secrets::Admins) -> Vec<Extra> {
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

/// `kpki import`: adopts the PKI of a directory laid out as kubeadm, easyCerts or a map says.
pub fn import(ctx: &Context, from: &ImportFrom, report: &mut Report) -> Result<()> {
    let (dir, layout) = match from {
        ImportFrom::Kubeadm { source, node } => (source, importing::Layout::Kubeadm { node }),
        ImportFrom::Easycerts { source, node } => (source, importing::Layout::EasyCerts { node }),
        ImportFrom::Dir { source, maps } => (source, importing::Layout::Map(maps)),
    };
    let store = &ctx.store;
    let config = config(store)?;
    warn_config(report, &config);
    let admins = secrets::admins(store, &config)?;
    let recipients = Recipients::new(&config, admins.recipients.clone())?;
    let state = State::open(store.clone(), ctx.identity.clone(), Access::Write)?;
    authenticate(ctx, &state, Access::Write, report)?;
    state.audit()?;
    let plan = importing::plan(&state, &config, dir, layout)?;
    for rel in &plan.kept {
        report.say(format_args!(
            "kept pki/{rel}: kpki holds another one already (a cluster-wide one from another node, or one reissued since)"
        ));
    }
    if !plan.unused.is_empty() {
        report.say(format_args!(
            "not adopted (no catalogue entry takes them): {}",
            abbreviate(&plan.unused)
        ));
    }
    if plan.adopted.is_empty() {
        report.say("nothing to adopt: pki/ already holds everything the import brings");
        return Ok(());
    }
    let adopted = importing::apply(&state, plan.adopted);
    let extras = first_run_files(store, &admins);
    let sealing = secrets::commit(&state, &config, &recipients, extras)?;
    for (rel, from) in &adopted {
        report.say(format_args!("adopted pki/{rel} from {}", from.display()));
    }
    warn_generated(report, &admins);
    report_sealing(report, &sealing);
    let now = issuing::now();
    let seal = secrets::plan(&state, &config, &recipients, Depth::Changed)?;
    let assessed = status::assess(&state, &config, &status::stale_files(&seal), now)?;
    let adopted: std::collections::HashSet<String> = adopted.into_iter().map(|(r, _)| r).collect();
    let mut missing = Vec::new();
    for a in &assessed {
        let Some(item) = a.item else { continue };
        match a.row.state {
            status::State::Drift if adopted.contains(&item.file(Part::Cert)) => {
                report.say(format_args!(
                    "drift {}: {}: kpki rotate reissues it under the same CA",
                    a.row.name,
                    a.row.detail.as_deref().unwrap_or_default()
                ))
            }
            status::State::Missing => missing.push(a.row.name.clone()),
            _ => {}
        }
    }
    if !missing.is_empty() {
        report.say(format_args!(
            "missing (the import did not bring them): {}: kpki rotate creates them under the adopted CAs",
            abbreviate(&missing)
        ));
    }
    for note in shared_cas(&state)? {
        report.say(format_args!("note: {note}"));
    }
    report.say("next: kpki rotate, then deploy: the nodes keep trusting the same CAs");
    Ok(())
}

/// Notes on CAs that are one CA (adopted from easyCerts, which has a single CA).
fn shared_cas(state: &State) -> Result<Vec<String>> {
    let mut fingerprints = Vec::new();
    for ca in catalogue::CAS {
        let rel = format!("{}/ca.pem", ca.dir());
        fingerprints.push((ca, state.fingerprint(&rel)?));
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

/// `kpki init --config-only`: the example config, to edit before the first real init.
fn write_example_config(ctx: &Context, report: &mut Report, missing: bool) -> Result<()> {
    if !missing {
        report.say("pki/kpki.toml exists already: nothing written");
        return Ok(());
    }
    let mut txn = ctx.store.transaction();
    txn.write(
        ctx.store.config_path(),
        Zeroizing::new(DEFAULT_CONFIG.as_bytes().to_vec()),
        store::PUBLIC_MODE,
        store::PRIVATE_DIR_MODE,
    );
    txn.commit(|_| Ok(()))?;
    report.say("wrote pki/kpki.toml, the example cluster: put in your nodes' names, addresses, roles and host keys, and your admin key, then run kpki init");
    Ok(())
}

/// `kpki init`.
pub fn init(ctx: &Context, args: &InitArgs, report: &mut Report) -> Result<()> {
    let store = &ctx.store;
    let (config, default) = config_or_default(store)?;
    if default {
        refuse_nested(ctx, report)?;
    }
    warn_config(report, &config);
    if args.config_only {
        return write_example_config(ctx, report, default);
    }
    let admins = secrets::admins(store, &config)?;
    let recipients = Recipients::new(&config, admins.recipients.clone())?;
    let state = State::open(store.clone(), ctx.identity.clone(), Access::Write)?;
    authenticate(ctx, &state, Access::Write, report)?;
    state.audit()?;
    let actions = plan::missing(&state, &config)?;
    let mut applied = plan::apply(&state, &config, &actions, issuing::now())?;
    applied.written.extend(revocation::complete_crl(&state)?);
    let mut extras = first_run_files(store, &admins);
    if default {
        extras.push(extra(
            store.config_path(),
            DEFAULT_CONFIG.as_bytes(),
            store::PUBLIC_MODE,
        ));
    }
    let wrote_extras: Vec<String> = extras.iter().map(|e| shown(store, &e.path)).collect();
    let drifted = drifted(&state, &config)?;
    let sealing = secrets::commit(&state, &config, &recipients, extras)?;
    let repairs = repair_key_modes(&state, &config)?;
    let repaired = repairs.len();
    for (rel, mode) in repairs {
        report.say(format_args!(
            "repaired pki/{rel}: mode {mode:04o}, now 0600 (a private key)"
        ));
    }
    for file in &wrote_extras {
        report.say(format_args!("created {file}"));
    }
    if default {
        report.say("wrote pki/kpki.toml, the example cluster (3 nodes at 2001:db8::1..3), and its PKI; for your own nodes, start in an empty directory with kpki init --config-only, edit pki/kpki.toml, then run kpki init");
    }
    warn_generated(report, &admins);
    report_applied(report, &config, &applied, "created");
    let keyless: Vec<String> = config
        .nodes
        .iter()
        .filter(|n| n.host_key.is_none())
        .map(|n| n.name.clone())
        .collect();
    match keyless.as_slice() {
        [] => {}
        [one] => report.warn(format_args!(
            "node \"{one}\" has no host_key: its secrets are encrypted to the admins only"
        )),
        many => report.warn(format_args!(
            "{} nodes have no host_key ({}): their secrets are encrypted to the admins only",
            many.len(),
            abbreviate(many)
        )),
    }
    report_sealing(report, &sealing);
    if !drifted.is_empty() {
        report.warn(format_args!(
            "{} certificates drifted from the config ({}): run kpki rotate",
            drifted.len(),
            abbreviate(&drifted)
        ));
    }
    if applied.written.is_empty() && sealing.is_empty() && wrote_extras.is_empty() {
        if drifted.is_empty() && repaired == 0 {
            report.say("nothing to do: every CA, key, certificate and secret is up to date");
        }
    } else if !applied.written.is_empty() || !sealing.encrypted.is_empty() {
        report.say(format_args!(
            "{} files created in pki/, {} encrypted into secrets/",
            in_pki(&config, &applied).len(),
            sealing.encrypted.len()
        ));
    }
    Ok(())
}

/// Makes every plaintext key in `pki/` readable by its owner only again (a hand's `cp` or
/// `chmod` may have opened it); returns those it repaired, with the mode they had.
fn repair_key_modes(state: &State, config: &Config) -> Result<Vec<(String, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut repaired = Vec::new();
    for sealed in secrets::sealed_files(state, config)? {
        if sealed.kind != crate::pem::Kind::PrivateKey {
            continue;
        }
        let path = state.store().pki_path(&sealed.rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_file() && mode != store::SECRET_MODE {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(store::SECRET_MODE))
                .map_err(|e| Error::io(&path, e))?;
            repaired.push((sealed.rel, mode));
        }
    }
    Ok(repaired)
}

/// A file written with a command's changes.
fn extra(path: std::path::PathBuf, contents: &[u8], mode: u32) -> Extra {
    Extra {
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
    match status::assess(state, config, &HashMap::new(), issuing::now()) {
        Ok(rows) => Ok(rows
            .into_iter()
            .filter(|a| a.row.state == status::State::Drift)
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
            config.plaintext_keys || crate::pem::Kind::of(f) != crate::pem::Kind::PrivateKey
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
fn report_sealing(report: &mut Report, sealing: &Sealing) {
    for file in &sealing.refreshed {
        report.say(format_args!(
            "refreshed {file} from secrets/ (committed since this cache was made)"
        ));
    }
    for file in &sealing.restored {
        report.say(format_args!(
            "restored {file} from secrets/ (deleted from the cache)"
        ));
    }
    report.files("encrypted", sealing.encrypted.clone());
    for file in &sealing.written {
        report.say(format_args!("wrote {file}"));
    }
}

/// Notes for readers: on the plaintext cache, on what could not be checked, and on declared
/// certificates that make nodes cluster admins.
fn cache_notes(state: &State, config: &Config, unchecked: usize) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let divergent = state.divergent()?;
    let behind = divergent
        .iter()
        .filter(|(_, p)| matches!(p, Place::Stale { .. } | Place::Removed))
        .count();
    if behind > 0 {
        notes.push(format!(
            "{behind} files in pki/ are behind secrets/ (another admin committed since); the committed versions were used, and kpki init refreshes pki/"
        ));
    }
    let changed: Vec<String> = divergent
        .iter()
        .filter(|(_, p)| matches!(p, Place::Changed { .. }))
        .map(|(rel, _)| format!("pki/{rel}"))
        .collect();
    if !changed.is_empty() {
        notes.push(format!(
            "changed outside kpki, not used: {} (remove them to use the committed versions)",
            abbreviate(&changed)
        ));
    }
    for item in catalogue::items(config)
        .iter()
        .filter(|i| i.entry().is_declared())
    {
        let subject = item.subject(config);
        let readers = item.readers(Part::Key, config);
        if subject.organizations.iter().any(|o| o == "system:masters") && !readers.is_empty() {
            let names: Vec<String> = readers.iter().map(|n| n.name.clone()).collect();
            notes.push(format!(
                "{} carries system:masters and goes to nodes ({}): each of them can act as cluster admin",
                item.name(),
                abbreviate(&names)
            ));
        }
    }
    notes.extend(shared_cas(state)?);
    notes.extend(api_server_on_a_node(config));
    if unchecked > 0 {
        notes.push(format!(
            "{unchecked} encrypted files changed since kpki last saw them and were not decrypted to check them: pass -i with an admin identity"
        ));
    }
    Ok(notes)
}

/// A note when `cluster.api_server` is one node's own address: every apiserver certificate
/// carries the API host, so any control-plane node's key can then pass for that node.
fn api_server_on_a_node(config: &Config) -> Option<String> {
    let crate::config::San::Ip(host) = &config.cluster.api_server_host else {
        return None;
    };
    let node = config.nodes.iter().find(|n| n.addresses.contains(host))?;
    Some(format!(
        "cluster.api_server is {}'s own address: every apiserver certificate is valid for it, so any control-plane node's key can serve as {} (a VIP or DNS name in front of the apiservers avoids this; README: Configuration)",
        node.name, node.name
    ))
}

/// `kpki status`; anything that needs action sets `report.needs_action`.
pub fn status(ctx: &Context, args: &StatusArgs, report: &mut Report) -> Result<()> {
    let Cluster {
        config,
        recipients,
        state,
    } = cluster(ctx, report, Access::Read)?;
    let at = args.at.unwrap_or_else(issuing::now);
    let seal = secrets::plan(&state, &config, &recipients, Depth::Changed)?;
    let rotations = rotation::in_progress(&state, &config)?;
    let notes = cache_notes(&state, &config, seal.unchecked())?;
    let mut rows = status::report(&state, &config, &seal, at)?;
    for name in secrets::outdated_files(&state, &config, &recipients, &seal, Depth::Changed)? {
        if secrets::output_as_written(&state, name)? {
            rows.behind_config.push(format!("secrets/{name}"));
        }
        rows.outdated_files.push(format!("secrets/{name}"));
    }
    rows.rotations = rotations;
    rows.notes.extend(notes);
    rows.unread = rows.unread.max(seal.unchecked());
    rows.manifest = trust::signer(state.signature()).map(|signer| status::Signed {
        signer,
        generation: state.manifest().generation,
    });
    report.output(match args.json {
        true => serde_json::to_string_pretty(&rows).expect("a report serializes") + "\n",
        false => status::table(&rows),
    });
    report.needs_action |= rows.needs_action();
    Ok(())
}

/// `kpki verify`; problems found set `report.needs_action`.
pub fn verify(ctx: &Context, report: &mut Report) -> Result<()> {
    let Cluster {
        config,
        recipients,
        state,
    } = cluster(ctx, report, Access::Read)?;
    let seal = secrets::plan(&state, &config, &recipients, Depth::All)?;
    let identity = state.has_identity()?;
    // Without an identity, files kept only in secrets/ cannot be checked; when that is every
    // file, there is nothing to verify at all.
    let (unread, total) = sealed_only(&state, &seal)?;
    let unread = if identity { 0 } else { unread };
    if unread == total && total > 0 {
        return Err(Error::Identity {
            message: "secrets/ must be decrypted (pki/ holds nothing to check), but no identity was given".into(),
            hint: Some("pass -i FILE (an age identity or OpenSSH private key) or set KPKI_IDENTITY".into()),
        });
    }
    let mut problems = inspection::verify::verify(&state, &config, &recipients, &seal)?;
    problems.sort();
    problems.dedup();
    not_an_admin(ctx, &recipients, &seal, &mut problems);
    for problem in &problems {
        report.output(format!("{problem}\n"));
    }
    for note in cache_notes(&state, &config, 0)? {
        report.note(note);
    }
    if !identity {
        report.note(format_args!(
            "not checked without an identity: the contents of secrets/, and {unread} files kept only there (keys among them, matched with their certificates): pass -i with an admin identity"
        ));
    }
    match (problems.is_empty() && !report.needs_action, identity) {
        (true, true) => report.say("verified: no problems"),
        (true, false) => report.say("verified what is readable without an identity: no problems"),
        _ => {}
    }
    report.needs_action |= !problems.is_empty();
    Ok(())
}

/// `kpki rotate`.
pub fn rotate(ctx: &Context, request: &RotateArgs, report: &mut Report) -> Result<()> {
    if request.prune {
        let cluster = cluster(ctx, report, Access::Write)?;
        return prune(&cluster, request.dry_run, report);
    }
    let (within, ca) = (request.within, request.ca);
    let Cluster {
        config,
        recipients,
        state,
    } = cluster(ctx, report, Access::Write)?;
    let now = issuing::now();
    let applied = match (ca, request.service_account) {
        (Some(ca), _) if request.dry_run => {
            let plan = rotation::plan_ca(&state, &config, ca, request.finish, request.keep_key)?;
            for line in plan {
                report.step(true, line);
            }
            return dry_run(report, "");
        }
        (None, true) if request.dry_run => {
            return dry_run(
                report,
                &format!("{} the service-account key", finishing(request.finish)),
            );
        }
        (Some(ca), _) if request.finish => {
            let finished = rotation::finish_ca(&state, &config, ca)?;
            if ca == revocation::CA {
                revocation::forget_superseded(&state);
            }
            for rel in &finished.removed {
                report.say(format_args!("delete pki/{rel} and secrets/{rel}.age"));
            }
            finished.applied
        }
        (Some(ca), _) => {
            if ca == revocation::CA {
                revocation::note_superseded(&state, &config, now)?;
            }
            let mut applied = rotation::start_ca(&state, &config, ca, request.keep_key, now)?;
            // The CRL is signed by the CA that signs today: the new one.
            if ca == revocation::CA && revocation::crl(&state)?.is_some() {
                applied
                    .written
                    .extend(revocation::issue_crl(&state, &config, now)?);
            }
            applied
        }
        (None, true) if request.finish => rotation::finish_sa(&state)?,
        (None, true) => rotation::start_sa(&state, &config)?,
        (None, false) => {
            let within = within.unwrap_or(config.keys.renew_before);
            let seal = secrets::plan(&state, &config, &recipients, Depth::Changed)?;
            let assessed = status::assess(&state, &config, &status::stale_files(&seal), now)?;
            let renewals = rotation::renewals(assessed, within, request.all);
            let plan = request.dry_run;
            for r in &renewals {
                report.step(plan, format_args!("renew {} ({})", r.name, r.reason));
            }
            let crl_due = revocation::crl_due(&state, now, within)?;
            if let Some(why) = &crl_due {
                report.step(
                    plan,
                    format_args!("sign {} anew ({why})", catalogue::crl_file()),
                );
            }
            if plan {
                for (s, why) in seal.stale_files() {
                    report.step(
                        plan,
                        format_args!("re-encrypt secrets/{}.age ({})", s.rel, why.describe()),
                    );
                }
                for rel in stale_cache(&state)? {
                    report.step(plan, format_args!("refresh {rel} from secrets/"));
                }
                return dry_run(report, "");
            }
            if renewals.is_empty() && crl_due.is_none() {
                // Nothing to renew: the plan made above is the plan to commit.
                let sealing =
                    secrets::commit_planned(&state, &config, &recipients, Vec::new(), seal)?;
                report_sealing(report, &sealing);
                if sealing.is_empty() {
                    report.say("nothing to do: nothing is due, drifted or stale");
                }
                return Ok(());
            }
            let mut applied = rotation::renew(&state, &config, &renewals, request.keep_key, now)?;
            if crl_due.is_some() {
                applied
                    .written
                    .extend(revocation::issue_crl(&state, &config, now)?);
            }
            applied
        }
    };
    let sealing = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "wrote");
    report_sealing(report, &sealing);
    match ca {
        Some(ca) if !request.finish => report.say(format_args!(
            "next: deploy, restart every node on the new certificates one at a time, then run kpki rotate --ca {} --finish",
            ca.dir()
        )),
        None if request.service_account && !request.finish => report.say(
            "next: deploy, restart the apiservers and controller-managers; once tokens signed with the old key have expired, run kpki rotate --service-account --finish",
        ),
        _ if applied.written.is_empty() && sealing.is_empty() => {
            report.say("nothing to do: nothing is due, drifted or stale")
        }
        _ => {}
    }
    Ok(())
}

/// `kpki rotate --prune`: removes what the config no longer accounts for, revokes, reissues.
fn prune(cluster: &Cluster, plan_only: bool, report: &mut Report) -> Result<()> {
    let (state, config, recipients) = (&cluster.state, &cluster.config, &cluster.recipients);
    let now = issuing::now();
    let seal = secrets::plan(state, config, recipients, Depth::Changed)?;
    let prune = revocation::plan_prune(state, config, &seal, now)?;
    if prune.is_empty() {
        report.say("nothing to prune: every file in secrets/ belongs to the config");
        return if plan_only {
            dry_run(report, "")
        } else {
            Ok(())
        };
    }
    for line in prune_plan(&prune) {
        report.step(plan_only, line);
    }
    if plan_only {
        return dry_run(report, "");
    }
    let applied = revocation::apply_prune(state, config, &prune, now)?;
    let sealing = secrets::commit(state, config, recipients, Vec::new())?;
    report_applied(report, config, &applied, "wrote");
    report_sealing(report, &sealing);
    report.say(prune_next(&prune));
    Ok(())
}

/// The plan of a prune, one line per step.
fn prune_plan(prune: &revocation::Prune<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    for (dir, roles) in &prune.removed {
        let files: Vec<&String> = prune
            .deleted
            .iter()
            .filter(|f| f.starts_with(&format!("{dir}/")))
            .collect();
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        let held = match names.as_slice() {
            [] => String::new(),
            [one] => format!("; the {one} role"),
            more => format!("; the {} roles", more.join(", ")),
        };
        lines.push(format!(
            "delete {} (no longer in the config{held})",
            abbreviate(&files.iter().map(|f| format!("pki/{f}")).collect::<Vec<_>>())
        ));
    }
    let orphans: Vec<String> = prune
        .deleted
        .iter()
        .filter(|f| {
            !prune
                .removed
                .iter()
                .any(|(d, _)| f.starts_with(&format!("{d}/")))
        })
        .map(|f| format!("secrets/{f}.age"))
        .collect();
    if !orphans.is_empty() {
        lines.push(format!(
            "delete {} (in secrets/ but in neither the manifest nor the config)",
            abbreviate(&orphans)
        ));
    }
    for r in &prune.revoked {
        lines.push(format!(
            "revoke {} (serial {}, valid until {}) on {}",
            r.file,
            r.serial,
            short_date(r.not_after),
            catalogue::crl_file()
        ));
    }
    for item in &prune.reissued {
        lines.push(format!(
            "reissue {} with a new key (a removed node could read its key)",
            item.name()
        ));
    }
    match prune.signing_key {
        revocation::SigningKey::Rotate => lines.push(
            "start a service-account key rotation (a removed node could read the signing key)".into(),
        ),
        revocation::SigningKey::Busy => lines.push(
            "a removed node could read the service-account signing key, but a rotation of it is in progress: finish it, then run kpki rotate --service-account".into(),
        ),
        revocation::SigningKey::Untouched => {}
    }
    for ca in catalogue::CAS {
        let outlived: Vec<String> = prune
            .outlived
            .iter()
            .filter(|u| u.ca == ca)
            .map(|u| format!("{} ({})", u.file, short_date(u.not_after)))
            .collect();
        if !outlived.is_empty() {
            lines.push(format!(
                "still valid until they expire (the {} CA has no revocation; kpki rotate --ca {} ends them): {}",
                ca.dir(),
                ca.dir(),
                abbreviate(&outlived)
            ));
        }
    }
    lines
}

/// A date as `2027-11-26`.
fn short_date(t: time::OffsetDateTime) -> String {
    status::rfc3339(t).chars().take(10).collect()
}

/// What to do after a prune.
fn prune_next(prune: &revocation::Prune<'_>) -> String {
    let mut next = String::from("next: deploy to every node");
    if !prune.revoked.is_empty() {
        next += " (etcd refuses the revoked certificates as soon as a member has the new CRL)";
    }
    if prune.signing_key == revocation::SigningKey::Rotate {
        next += "; finish the service-account rotation once old tokens have expired (kpki rotate --service-account --finish)";
    }
    if let Some(ca) = prune.outlived.first().map(|u| u.ca) {
        next += &format!(
            "; what stays valid ends with a CA rotation (kpki rotate --ca {})",
            ca.dir()
        );
    }
    next
}

/// `kpki revoke NAME...`.
pub fn revoke(ctx: &Context, args: &RevokeArgs, report: &mut Report) -> Result<()> {
    let Cluster {
        config,
        recipients,
        state,
    } = cluster(ctx, report, Access::Write)?;
    let now = issuing::now();
    let mut applied = Applied::default();
    let mut deleted = Vec::new();
    for name in &args.names {
        let (outcome, done) = revocation::revoke(&state, &config, name, now)?;
        applied.merge(done);
        match outcome {
            revocation::Revoked::Reissued(revoked) => {
                let serials: Vec<&str> = revoked.iter().map(|r| r.serial.as_str()).collect();
                report.say(format_args!(
                    "revoked {} (serial {}) on {}; reissued it with a new key",
                    revoked[0].file,
                    serials.join(", and of the previous etcd CA "),
                    catalogue::crl_file()
                ))
            }
            revocation::Revoked::UserRemoved {
                deleted: files,
                outlived,
            } => {
                deleted.extend(files);
                if let Some(u) = outlived {
                    report.warn(format_args!(
                        "{}: stays valid until {}: the {} CA has no revocation (kpki rotate --ca {} ends it)",
                        u.file,
                        status::rfc3339(u.not_after),
                        u.ca.dir(),
                        u.ca.dir()
                    ));
                }
            }
        }
    }
    applied.written.sort();
    applied.written.dedup();
    let sealing = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "wrote");
    let deleted: Vec<String> = deleted
        .iter()
        .flat_map(|rel| [format!("pki/{rel}"), format!("secrets/{rel}.age")])
        .collect();
    report.files("deleted", deleted);
    report_sealing(report, &sealing);
    if !applied.written.is_empty() {
        report.say("next: deploy to every node (etcd reads the new CRL at its next connection)");
    }
    Ok(())
}

/// When the identity decrypts no file at all, one line says so instead of one per file: it is
/// not an admin's (with its recipient, for an age identity file given with `-i`).
fn not_an_admin(
    ctx: &Context,
    recipients: &Recipients,
    seal: &secrets::SealPlan<'_>,
    problems: &mut Vec<String>,
) {
    let locked = |p: &String| p.contains(crate::agefile::NOT_A_RECIPIENT);
    let count = problems.iter().filter(|p| locked(p)).count();
    let sealed = seal
        .sealed
        .iter()
        .filter(|s| ctx.store.secret_path(&s.rel).is_file())
        .count();
    if count < 2 || count < sealed {
        return;
    }
    problems.retain(|p| !locked(p));
    let recipient = ctx
        .identity
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| crate::agefile::identity_recipient(&text).ok());
    let (who, what) = match (&ctx.identity, recipient) {
        (Some(path), Some(r)) => (path.display().to_string(), format!("its recipient {r} is")),
        (Some(path), None) => (path.display().to_string(), "it is".to_string()),
        (None, _) => ("the default identity".to_string(), "it is".to_string()),
    };
    problems.push(format!(
        "{who}: decrypts none of the {count} files in secrets/: {what} not one of the {} in secrets.admins",
        recipients.admins().len()
    ));
}

/// How many files of `seal` that `pki/` may cache exist only in `secrets/`, and of how many.
fn sealed_only(state: &State, seal: &secrets::SealPlan<'_>) -> Result<(usize, usize)> {
    let cacheable = seal
        .sealed
        .iter()
        .filter(|s| s.kind != crate::pem::Kind::Kubeconfig);
    let (mut unread, mut total) = (0, 0);
    for s in cacheable {
        unread += usize::from(state.place(&s.rel)? == Place::Sealed);
        total += 1;
    }
    Ok((unread, total))
}

/// Plaintext files a commit would refresh from `secrets/`.
fn stale_cache(state: &State) -> Result<Vec<String>> {
    Ok(state
        .divergent()?
        .into_iter()
        .filter(|(_, p)| !matches!(p, Place::Changed { .. }))
        .map(|(rel, _)| format!("pki/{rel}"))
        .collect())
}

fn finishing(finish: bool) -> &'static str {
    if finish { "finish rotating" } else { "rotate" }
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

/// `kpki issue`.
pub fn issue(ctx: &Context, request: &IssueArgs, report: &mut Report) -> Result<()> {
    let validity = request.validity;
    if request.profile == "service-account" {
        return Err(Error::usage(
            "the service-account key is not reissued: a new key at once would invalidate every token",
            Some("rotate it with an overlap: kpki rotate --service-account (then --finish)".into()),
        ));
    }
    let subject = match request.profile.as_str() {
        "client" => Some(client_subject(request)?),
        _ if request.cn.is_some() || !request.groups.is_empty() => {
            return Err(Error::usage(
                "--cn and --group go with `kpki issue client` only",
                None,
            ));
        }
        _ => None,
    };
    let Cluster {
        config,
        recipients,
        state,
    } = cluster(ctx, report, Access::Write)?;
    let now = issuing::now();
    let targets = match subject {
        Some(subject) => vec![Target::User(subject)],
        None => issue_targets(&config, &request.profile, request.node.as_deref())?
            .into_iter()
            .map(|item| Target::Item(Box::new(item)))
            .collect(),
    };
    if let Some(span) = validity.filter(|v| v.0 <= config.keys.renew_before.0) {
        report.warn(format_args!(
            "--validity {} days is within keys.renew_before ({} days): kpki status will show it due for renewal at once, and kpki rotate will renew it",
            span.0.whole_days(),
            config.keys.renew_before.0.whole_days()
        ));
    }
    let actions = plan::issue(&state, targets, request.keep_key, validity)?;
    let applied = plan::apply(&state, &config, &actions, now)?;
    let sealing = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "issued");
    report_sealing(report, &sealing);
    Ok(())
}

/// The subject of `kpki issue client --cn NAME --group G...`.
fn client_subject(request: &IssueArgs) -> Result<Subject> {
    if let Some(node) = &request.node {
        return Err(Error::usage(
            format!("`issue client` takes no node (got \"{node}\")"),
            None,
        ));
    }
    let name = request.cn.as_deref().ok_or_else(|| {
        Error::usage(
            "`issue client` needs --cn NAME",
            Some("e.g. kpki issue client --cn alice --group developers".into()),
        )
    })?;
    catalogue::check_user_name(name).map_err(|e| Error::usage(format!("--cn: {e}"), None))?;
    if request.groups.len() > 2 {
        return Err(Error::usage(
            format!(
                "--group: {} groups given, but a certificate can carry at most 2",
                request.groups.len()
            ),
            Some("bind further groups with RBAC instead".into()),
        ));
    }
    if let Some(bad) = request
        .groups
        .iter()
        .find(|g| g.is_empty() || g.chars().any(char::is_control))
    {
        return Err(Error::usage(
            format!("--group: {bad:?} is not a group name"),
            None,
        ));
    }
    Ok(Subject {
        common_name: name.to_string(),
        organizations: request.groups.to_vec(),
        sans: Vec::new(),
    })
}

/// The items `kpki issue PROFILE [NODE]` names.
fn issue_targets<'c>(
    config: &'c Config,
    profile: &str,
    node: Option<&str>,
) -> Result<Vec<Item<'c>>> {
    if profile == "node" {
        let node = find_node(config, node, "`issue node` needs a node")?;
        return Ok(catalogue::node_items(config, node).collect());
    }
    let Some(entry) = catalogue::entry(config, profile) else {
        let mut valid: Vec<&str> = catalogue::entries(config)
            .filter(|e| !matches!(e.kind, Kind::Ca(_) | Kind::KeyPair))
            .map(|e| e.profile)
            .collect();
        valid.extend(["node", "client"]);
        return Err(Error::usage(
            format!(
                "unknown profile \"{profile}\"{}",
                did_you_mean(profile, &valid)
            ),
            Some(format!("valid profiles: {}", valid.join(", "))),
        ));
    };
    match (entry.kind, entry.scope) {
        (Kind::Ca(ca), _) => Err(Error::usage(
            format!("{profile} is a CA and is not reissued"),
            Some(format!("rotate it with kpki rotate --ca {}", ca.dir())),
        )),
        (_, Scope::Cluster { .. }) => match node {
            Some(node) => Err(Error::usage(
                format!("{profile} is cluster-wide and takes no node (got \"{node}\")"),
                None,
            )),
            None => Ok(Item::new(entry, None).into_iter().collect()),
        },
        (_, Scope::Node(selection)) => {
            let node = find_node(config, node, &format!("{profile} needs a node"))?;
            if !selection.includes(node) {
                let with: Vec<&str> = config
                    .nodes
                    .iter()
                    .filter(|n| selection.includes(n))
                    .map(|n| n.name.as_str())
                    .collect();
                let roles: Vec<&str> = selection.roles.iter().map(|r| r.name()).collect();
                return Err(Error::usage(
                    format!(
                        "node \"{}\" has no {profile} (it goes to nodes with the role {})",
                        node.name,
                        roles.join(" or ")
                    ),
                    Some(format!("nodes that have it: {}", with.join(", "))),
                ));
            }
            Ok(Item::new(entry, Some(node)).into_iter().collect())
        }
    }
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

/// `kpki kubeconfig IDENTITY [NAME [NODE]] [--server URL] [-o FILE]`.
pub fn kubeconfig(ctx: &Context, args: &KubeconfigArgs, report: &mut Report) -> Result<()> {
    let config = config(&ctx.store)?;
    report_interrupted(&ctx.store, report);
    let server = match &args.server {
        Some(s) => {
            let (url, host) = kubeconfig::server_url(s)
                .map_err(|e| Error::usage(format!("--server: {e}"), None))?;
            if !apiserver_names(&config).contains(&host) {
                report.warn(format_args!(
                    "--server {url}: no apiserver certificate is valid for that host, so clients will refuse it (add it to cluster.api_sans and run kpki rotate)"
                ));
            }
            url
        }
        None => config.cluster.api_server.clone(),
    };
    let (cert, key, user) = kubeconfig_client(&config, args)?;
    let state = State::open(ctx.store.clone(), ctx.identity.clone(), Access::Read)?;
    if args.who == "user" && !state.exists(&cert)? {
        return Err(Error::usage(
            format!("no user \"{user}\" (pki/{cert} does not exist)"),
            Some(format!("make one with kpki issue client --cn {user}")),
        ));
    }
    let text = kubeconfig::client(&state, &config, &cert, &key, &user, &server)?;
    match &args.output {
        Some(path) => {
            store::write_outside(path, text.as_bytes(), store::SECRET_MODE)?;
            report.say(format_args!(
                "wrote {} ({user} at {server})",
                path.display()
            ));
        }
        None => report.output(text),
    }
    Ok(())
}

/// Every name and address some apiserver certificate is valid for.
fn apiserver_names(config: &Config) -> Vec<crate::config::San> {
    catalogue::items(config)
        .into_iter()
        .filter(|i| i.entry().profile == "apiserver")
        .flat_map(|i| i.subject(config).sans)
        .collect()
}

/// The certificate, key and user name of a kubeconfig identity.
fn kubeconfig_client(config: &Config, args: &KubeconfigArgs) -> Result<(String, String, String)> {
    let from_item = |item: Item<'_>| {
        (
            item.file(Part::Cert),
            item.file(Part::Key),
            item.subject(config).common_name,
        )
    };
    let (who, name) = (args.who.as_str(), args.name.as_deref());
    if who != "cert" && args.node.is_some() {
        return Err(Error::usage(
            "only `kubeconfig cert NAME NODE` takes a node after the name",
            None,
        ));
    }
    match (who, name) {
        ("admin" | "controller-manager" | "scheduler" | "kube-proxy", None) => {
            let item = catalogue::shared_item(who).expect("catalogued");
            Ok(from_item(item))
        }
        ("kubelet", node) => {
            let node = find_node(config, node, "`kubeconfig kubelet` needs a node")?;
            let entry = catalogue::builtin("kubelet").expect("catalogued");
            if !node.has(Role::Worker) {
                return Err(Error::usage(
                    format!("node \"{}\" is not a worker and has no kubelet", node.name),
                    None,
                ));
            }
            Ok(from_item(Item::new(entry, Some(node)).expect("kubelet is per node")))
        }
        ("user", Some(user)) => {
            catalogue::check_user_name(user).map_err(|e| Error::usage(format!("user: {e}"), None))?;
            Ok((
                catalogue::user_file(user, Part::Cert),
                catalogue::user_file(user, Part::Key),
                user.to_string(),
            ))
        }
        ("user", None) => Err(Error::usage(
            "`kubeconfig user` needs a user name",
            Some("users are made with kpki issue client --cn NAME".into()),
        )),
        ("cert", Some(name)) => declared_client(config, name, args.node.as_deref()).map(from_item),
        (_, _) => Err(Error::usage(
            format!(
                "no kubeconfig for \"{who}\"{}",
                name.map(|n| format!(" {n}")).unwrap_or_default()
            ),
            Some(
                "valid: admin, controller-manager, scheduler, kube-proxy, kubelet NODE, user NAME, cert NAME [NODE]"
                    .into(),
            ),
        )),
    }
}

/// The declared client certificate of the Kubernetes CA named `name` (of `node`, when it is one
/// per node).
fn declared_client<'c>(config: &'c Config, name: &str, node: Option<&str>) -> Result<Item<'c>> {
    let client_of_kubernetes = |e: &catalogue::Entry<'_>| {
        e.is_declared()
            && matches!(e.kind, Kind::Leaf { ca: CaName::Kubernetes, usage } if usage.client())
    };
    let entry = catalogue::entry(config, name)
        .filter(client_of_kubernetes)
        .ok_or_else(|| {
            let valid: Vec<&str> = catalogue::entries(config)
                .filter(client_of_kubernetes)
                .map(|e| e.profile)
                .collect();
            Error::usage(
                format!("no declared client certificate of the Kubernetes CA named {name:?}"),
                Some(format!("declared in kpki.toml: {}", list_or_none(&valid))),
            )
        })?;
    let node = match entry.scope {
        Scope::Cluster { .. } => None,
        Scope::Node(selection) => {
            let node = find_node(config, node, &format!("{name} is per node: name the node"))?;
            if !selection.includes(node) {
                return Err(Error::usage(
                    format!("node \"{}\" has no {name}", node.name),
                    None,
                ));
            }
            Some(node)
        }
    };
    Item::new(entry, node).ok_or_else(|| Error::usage(format!("{name} takes no node"), None))
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
