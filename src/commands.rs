//! One function per subcommand, composing the library's floors.

use std::io::Write;
use std::path::Path;

use crate::catalogue::{self, CaName, Item, Kind, Part, Scope, Subject};
use crate::config::{self, Config, DEFAULT_CONFIG, Node, Role, Span};
use crate::error::{Error, Result};
use crate::inspection::{self, status};
use crate::issuing;
use crate::kubeconfig;
use crate::plan;
use crate::rotation;
use crate::secrets::{self, Recipients, Vault};
use crate::store::{self, Store};

/// What every command works on.
pub struct Context {
    pub store: Store,
    /// The admin identity from `-i` or `KPKI_IDENTITY`.
    pub identity: Option<std::path::PathBuf>,
    pub quiet: bool,
}

impl Context {
    /// The PKI material of this cluster directory, plaintext or decrypted.
    fn vault(&self) -> Vault {
        Vault::new(self.store.clone(), self.identity.clone())
    }

    /// Prints a warning on stderr unless `--quiet`.
    fn warn(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("kpki: warning: {line}");
        }
    }

    /// Prints a progress or result line unless `--quiet`.
    fn say(&self, line: impl std::fmt::Display) {
        if !self.quiet {
            let _ = writeln!(std::io::stdout().lock(), "{line}");
        }
    }
}

/// The config on disk, or the embedded default (then `true`: it still has to be written).
fn config_or_default(store: &Store) -> Result<(Config, bool)> {
    let path = store.config_path();
    match store::read_optional(&path)? {
        Some(text) => Ok((Config::parse(&text, &path)?, false)),
        None => Ok((Config::parse(DEFAULT_CONFIG, &path)?, true)),
    }
}

/// `kpki init`.
pub fn init(ctx: &Context) -> Result<()> {
    let store = &ctx.store;
    let (config, default) = config_or_default(store)?;
    let admins = secrets::admins(store, &config)?;
    let recipients = Recipients::new(&config, admins.recipients.clone())?;
    let vault = ctx.vault();
    let actions = plan::init(&vault, &config)?;
    store.ensure_room(4 * actions.len() + 8)?;
    if store.prepare_pki()? {
        ctx.say("created pki/.gitignore");
    }
    if default {
        store.write_config(DEFAULT_CONFIG)?;
        ctx.say("created pki/kpki.toml (the embedded default: edit it, then run kpki init again)");
    }
    if let Some(identity) = &admins.generated {
        store.write_pki(secrets::ADMIN_IDENTITY, identity.as_bytes(), true)?;
        ctx.say(format_args!(
            "created pki/{} as the admin identity (secrets.admins is empty): back it up, or put your own key in secrets.admins",
            secrets::ADMIN_IDENTITY
        ));
    }
    let mut written = plan::apply(&vault, &config, &actions, issuing::now())?;
    written.sort();
    for file in &written {
        ctx.say(format_args!("created pki/{file}"));
    }
    for node in config.nodes.iter().filter(|n| n.host_key.is_none()) {
        ctx.warn(format_args!(
            "node \"{}\" has no host_key: its secrets are encrypted to the admins only",
            node.name
        ));
    }
    let sealing = secrets::seal(&vault, &config, &recipients)?;
    report_sealing(ctx, &sealing);
    if written.is_empty() && sealing.encrypted.is_empty() && sealing.written.is_empty() {
        ctx.say("nothing to do: every CA, key, certificate and secret is up to date");
    } else {
        ctx.say(format_args!(
            "{} files created in pki/, {} encrypted into secrets/",
            written.len(),
            sealing.encrypted.len()
        ));
    }
    Ok(())
}

/// Prints what sealing wrote.
fn report_sealing(ctx: &Context, sealing: &secrets::Sealing) {
    for file in &sealing.encrypted {
        ctx.say(format_args!("encrypted secrets/{file}"));
    }
    for file in &sealing.written {
        ctx.say(format_args!("wrote secrets/{file}"));
    }
}

/// The config on disk, which must exist.
fn config(store: &Store) -> Result<Config> {
    let path = store.config_path();
    if !path.exists() {
        return Err(Error::usage(
            format!("{}: no config here", path.display()),
            Some("run kpki init first, or point --dir at the cluster directory".into()),
        ));
    }
    Config::load(&path)
}

/// An initialized cluster: config, recipients and vault.
fn cluster(ctx: &Context) -> Result<(Config, Recipients, Vault)> {
    let config = config(&ctx.store)?;
    let admins = secrets::admins(&ctx.store, &config)?;
    if admins.generated.is_some() {
        return Err(Error::usage(
            "secrets.admins is empty and there is no pki/admin.agekey: kpki init has not run here",
            Some("run kpki init first".into()),
        ));
    }
    let recipients = Recipients::new(&config, admins.recipients)?;
    Ok((config, recipients, ctx.vault()))
}

/// A cluster whose PKI `init` has completed.
fn complete_cluster(ctx: &Context) -> Result<(Config, Recipients, Vault)> {
    let (config, recipients, vault) = cluster(ctx)?;
    require_complete(&vault, &config)?;
    Ok((config, recipients, vault))
}

/// Refuses to work on a PKI that `init` has not completed under the current config.
fn require_complete(vault: &Vault, config: &Config) -> Result<()> {
    if !plan::missing(vault, config)?.is_empty() {
        return Err(Error::usage(
            "the PKI is incomplete (kpki init has not run since the config changed)",
            Some("run kpki init first".into()),
        ));
    }
    Ok(())
}

/// `kpki status`; returns whether anything needs action.
pub fn status(ctx: &Context, at: Option<&str>, json: bool) -> Result<bool> {
    let (config, recipients, vault) = cluster(ctx)?;
    let at = match at {
        Some(date) => {
            config::parse_date(date).map_err(|e| Error::usage(format!("--at: {e}"), None))?
        }
        None => issuing::now(),
    };
    let seal = secrets::plan(&vault, &config, &recipients)?;
    let rotations = rotation::in_progress(&vault)?;
    let report = status::report(&vault, &config, &seal, at, rotations)?;
    let text = if json {
        serde_json::to_string_pretty(&report).expect("a report serializes") + "\n"
    } else {
        status::table(&report)
    };
    print(&text)?;
    Ok(report.needs_action())
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Error::io(Path::new("stdout"), e))
}

/// `kpki verify`; returns whether it found problems.
pub fn verify(ctx: &Context) -> Result<bool> {
    let (config, recipients, vault) = cluster(ctx)?;
    let seal = secrets::plan(&vault, &config, &recipients)?;
    let mut problems = inspection::verify::verify(&vault, &config, &recipients, &seal)?;
    problems.sort();
    problems.dedup();
    for problem in &problems {
        println!("{problem}");
    }
    if problems.is_empty() {
        ctx.say("verified: no problems");
    }
    Ok(!problems.is_empty())
}

/// What `kpki rotate` was asked to do.
pub struct RotateRequest<'a> {
    pub within: Option<&'a str>,
    pub all: bool,
    pub dry_run: bool,
    pub keep_key: bool,
    pub ca: Option<&'a str>,
    pub service_account: bool,
    pub finish: bool,
}

/// `kpki rotate`.
pub fn rotate(ctx: &Context, request: &RotateRequest<'_>) -> Result<()> {
    let (config, recipients, vault) = cluster(ctx)?;
    let now = issuing::now();
    let written = match (request.ca, request.service_account) {
        (Some(ca), _) => {
            let ca = ca_name(ca)?;
            require_complete(&vault, &config)?;
            if request.dry_run {
                return dry_run(
                    ctx,
                    &format!(
                        "{} the {} CA",
                        if request.finish {
                            "finish rotating"
                        } else {
                            "rotate"
                        },
                        ca.dir()
                    ),
                );
            }
            match request.finish {
                true => rotation::finish_ca(&vault, &config, ca)?,
                false => {
                    let plan = secrets::plan(&vault, &config, &recipients)?;
                    let sealed = secrets::is_current(&ctx.store, &config, &recipients, &plan)?;
                    rotation::start_ca(&vault, &config, ca, request.keep_key, sealed, now)?
                }
            }
        }
        (None, true) => {
            require_complete(&vault, &config)?;
            if request.dry_run {
                return dry_run(
                    ctx,
                    if request.finish {
                        "finish rotating the service-account key"
                    } else {
                        "rotate the service-account key"
                    },
                );
            }
            match request.finish {
                true => rotation::finish_sa(&vault)?,
                false => rotation::start_sa(&vault, &config)?,
            }
        }
        (None, false) if request.finish => {
            return Err(Error::usage(
                "--finish goes with --ca NAME or --service-account",
                None,
            ));
        }
        (None, false) => {
            let within = match request.within {
                Some(w) => w
                    .parse::<Span>()
                    .map_err(|e| Error::usage(format!("--within: {e}"), None))?,
                None => config.keys.renew_before,
            };
            let seal = secrets::plan(&vault, &config, &recipients)?;
            let assessed = status::assess(&vault, &config, &seal, now)?;
            let renewals = rotation::renewals(assessed, within, request.all);
            for r in &renewals {
                ctx.say(format_args!("renew {} ({})", r.name, r.reason));
            }
            if !request.dry_run {
                ctx.store
                    .ensure_room(4 * renewals.len() + seal.stale_files().count() + 8)?;
            }
            if request.dry_run {
                for s in seal.stale_files() {
                    ctx.say(format_args!("re-encrypt secrets/{}.age", s.rel));
                }
                return dry_run(ctx, "");
            }
            rotation::renew(&vault, &config, &renewals, request.keep_key, now)?
        }
    };
    let mut written = written;
    written.sort();
    for file in &written {
        ctx.say(format_args!("wrote pki/{file}"));
    }
    let sealing = secrets::seal(&vault, &config, &recipients)?;
    report_sealing(ctx, &sealing);
    if written.is_empty() && sealing.encrypted.is_empty() && sealing.written.is_empty() {
        ctx.say("nothing to do: nothing is due, drifted or stale");
    }
    Ok(())
}

/// Ends a dry run, saying what would have been done.
fn dry_run(ctx: &Context, what: &str) -> Result<()> {
    if !what.is_empty() {
        ctx.say(format_args!("would {what}"));
    }
    ctx.say("dry run: nothing changed");
    Ok(())
}

/// A CA named on the command line.
fn ca_name(name: &str) -> Result<CaName> {
    catalogue::CAS
        .into_iter()
        .find(|c| c.dir() == name)
        .ok_or_else(|| {
            Error::usage(
                format!("--ca: unknown CA \"{name}\""),
                Some("valid: kubernetes, etcd, front-proxy".into()),
            )
        })
}

/// `--validity DUR`.
fn validity(arg: Option<&str>) -> Result<Option<Span>> {
    arg.map(|v| {
        v.parse::<Span>()
            .map_err(|e| Error::usage(format!("--validity: {e}"), None))
    })
    .transpose()
}

/// What `kpki issue` was asked to issue.
pub struct IssueRequest<'a> {
    pub profile: &'a str,
    pub node: Option<&'a str>,
    pub keep_key: bool,
    pub validity: Option<&'a str>,
    pub cn: Option<&'a str>,
    pub groups: &'a [String],
}

/// `kpki issue`.
pub fn issue(ctx: &Context, request: &IssueRequest<'_>) -> Result<()> {
    let (config, recipients, vault) = complete_cluster(ctx)?;
    let validity = validity(request.validity)?;
    let now = issuing::now();
    let mut written = if request.profile == "client" {
        let subject = client_subject(request)?;
        ctx.store.ensure_room(12)?;
        plan::issue_user(&vault, &config, &subject, request.keep_key, validity, now)?
    } else {
        if request.cn.is_some() || !request.groups.is_empty() {
            return Err(Error::usage(
                "--cn and --group go with `kpki issue client` only",
                None,
            ));
        }
        let items = issue_targets(&config, request.profile, request.node)?;
        let actions = plan::issue(&vault, items, request.keep_key, validity)?;
        ctx.store.ensure_room(4 * actions.len() + 8)?;
        plan::apply(&vault, &config, &actions, now)?
    };
    written.sort();
    for file in &written {
        ctx.say(format_args!("issued pki/{file}"));
    }
    let sealing = secrets::seal(&vault, &config, &recipients)?;
    report_sealing(ctx, &sealing);
    Ok(())
}

/// The subject of `kpki issue client --cn NAME --group G...`.
fn client_subject(request: &IssueRequest<'_>) -> Result<Subject> {
    if let Some(node) = request.node {
        return Err(Error::usage(
            format!("`issue client` takes no node (got \"{node}\")"),
            None,
        ));
    }
    let name = request.cn.ok_or_else(|| {
        Error::usage(
            "`issue client` needs --cn NAME",
            Some("e.g. kpki issue client --cn alice --group developers".into()),
        )
    })?;
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && !name.ends_with("-key")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if !valid_name {
        return Err(Error::usage(
            format!("--cn: \"{name}\" is not a usable user name"),
            Some("use letters, digits, '.', '_', '-', '@' (at most 64, not ending in -key)".into()),
        ));
    }
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
        return Ok(catalogue::node_items(node).collect());
    }
    let Some(entry) = catalogue::entry(profile) else {
        let mut valid: Vec<&str> = catalogue::ENTRIES
            .iter()
            .filter(|e| !matches!(e.kind, Kind::Ca(_)))
            .map(|e| e.profile)
            .collect();
        valid.extend(["node", "client"]);
        return Err(Error::usage(
            format!("unknown profile \"{profile}\""),
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
            None => Ok(vec![Item { entry, node: None }]),
        },
        (_, Scope::Node(role)) => {
            let node = find_node(config, node, &format!("{profile} needs a node"))?;
            if !node.has(role) {
                let with: Vec<&str> = config
                    .nodes
                    .iter()
                    .filter(|n| n.has(role))
                    .map(|n| n.name.as_str())
                    .collect();
                return Err(Error::usage(
                    format!(
                        "node \"{}\" has no {} role, so it has no {profile}",
                        node.name,
                        role.name()
                    ),
                    Some(format!("nodes with that role: {}", with.join(", "))),
                ));
            }
            Ok(vec![Item {
                entry,
                node: Some(node),
            }])
        }
    }
}

/// The node named on the command line.
fn find_node<'c>(config: &'c Config, name: Option<&str>, missing: &str) -> Result<&'c Node> {
    let names = || {
        let all: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        Some(format!("nodes: {}", all.join(", ")))
    };
    let name = name.ok_or_else(|| Error::usage(missing, names()))?;
    config
        .node(name)
        .ok_or_else(|| Error::usage(format!("unknown node \"{name}\""), names()))
}

/// `kpki kubeconfig IDENTITY [NAME] [--server URL] [-o FILE]`.
pub fn kubeconfig(
    ctx: &Context,
    who: &str,
    name: Option<&str>,
    server: Option<&str>,
    output: Option<&Path>,
) -> Result<()> {
    let config = config(&ctx.store)?;
    let vault = ctx.vault();
    let server = match server {
        Some(s) => {
            kubeconfig::server_url(s).map_err(|e| Error::usage(format!("--server: {e}"), None))?
        }
        None => config.cluster.api_server.clone(),
    };
    let (cert, key, user) = kubeconfig_client(&config, who, name)?;
    let text = secrets::client_kubeconfig(&vault, &config, &cert, &key, &user, &server)?;
    match output {
        Some(path) => {
            store::write_atomic(path, text.as_bytes(), store::SECRET_MODE)?;
            ctx.say(format_args!(
                "wrote {} ({user} at {server})",
                path.display()
            ));
        }
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(Path::new("stdout"), e))?,
    }
    Ok(())
}

/// The certificate, key and user name of a kubeconfig identity.
fn kubeconfig_client(
    config: &Config,
    who: &str,
    name: Option<&str>,
) -> Result<(String, String, String)> {
    let from_item = |item: Item<'_>| {
        (
            item.file(Part::Cert),
            item.file(Part::Key),
            item.subject(config).common_name,
        )
    };
    match (who, name) {
        ("admin" | "controller-manager" | "scheduler" | "kube-proxy", None) => {
            let entry = catalogue::entry(who).expect("catalogued");
            Ok(from_item(Item { entry, node: None }))
        }
        ("kubelet", node) => {
            let node = find_node(config, node, "`kubeconfig kubelet` needs a node")?;
            let entry = catalogue::entry("kubelet").expect("catalogued");
            if !node.has(Role::Worker) {
                return Err(Error::usage(
                    format!("node \"{}\" is not a worker and has no kubelet", node.name),
                    None,
                ));
            }
            Ok(from_item(Item {
                entry,
                node: Some(node),
            }))
        }
        ("user", Some(user)) => Ok((
            catalogue::user_file(user, Part::Cert),
            catalogue::user_file(user, Part::Key),
            user.to_string(),
        )),
        ("user", None) => Err(Error::usage(
            "`kubeconfig user` needs a user name",
            Some("users are made with kpki issue client --cn NAME".into()),
        )),
        (_, _) => Err(Error::usage(
            format!(
                "no kubeconfig for \"{who}\"{}",
                name.map(|n| format!(" {n}")).unwrap_or_default()
            ),
            Some(
                "valid: admin, controller-manager, scheduler, kube-proxy, kubelet NODE, user NAME"
                    .into(),
            ),
        )),
    }
}

/// `kpki completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "kpki", &mut std::io::stdout());
    Ok(())
}
