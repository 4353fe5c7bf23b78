//! One function per subcommand, composing the library's floors.

use std::io::Write;

use crate::config::{Config, DEFAULT_CONFIG};
use crate::error::Result;
use crate::issuing;
use crate::plan;
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
    if store.prepare_pki()? {
        ctx.say("created pki/.gitignore");
    }
    if default {
        store::write_atomic(
            &store.config_path(),
            DEFAULT_CONFIG.as_bytes(),
            store::PUBLIC_MODE,
        )?;
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

/// `kpki completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "kpki", &mut std::io::stdout());
    Ok(())
}
