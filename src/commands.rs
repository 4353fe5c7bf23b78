//! One function per subcommand, composing the library's floors.

use std::io::Write;

use crate::config::{Config, DEFAULT_CONFIG};
use crate::error::Result;
use crate::issuing;
use crate::plan;
use crate::store::{self, Store};

/// What every command works on.
pub struct Context {
    pub store: Store,
    pub quiet: bool,
}

impl Context {
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
    let actions = plan::init(store, &config)?;
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
    let mut written = plan::apply(store, &config, &actions, issuing::now())?;
    written.sort();
    for file in &written {
        ctx.say(format_args!("created pki/{file}"));
    }
    if written.is_empty() {
        ctx.say("nothing to do: every CA, key and certificate exists");
    } else {
        ctx.say(format_args!(
            "{} files created in {}",
            written.len(),
            store.pki_dir().display()
        ));
    }
    Ok(())
}

/// `kpki completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut cmd = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut cmd, "kpki", &mut std::io::stdout());
    Ok(())
}
