//! `kpki init`: the config on first use, then every missing CA, key and certificate, sealed.

use super::*;

/// Refuses `dir` inside the `pki/` or `secrets/` of a cluster directory (a second cluster
/// there would put plaintext where only ciphertext belongs); warns when it lies elsewhere inside
/// one (where `kpki init` was probably meant to run).
pub(super) fn refuse_nested(ctx: &Context, report: &mut Report) -> Result<()> {
    let Ok(dir) = std::fs::canonicalize(ctx.store.root()) else {
        return Ok(());
    };
    for parent in dir.ancestors().skip(1) {
        let other = Store::new(parent);
        if other.config_path().is_file() || other.secrets_path(crate::manifest::FILE).is_file() {
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

/// `kpki init --config-only`: the example config, to edit before the first real init.
pub(super) fn write_example_config(
    ctx: &Context,
    report: &mut Report,
    missing: bool,
) -> Result<()> {
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
    if args.config_only {
        warn_config(report, &config);
        return write_example_config(ctx, report, default);
    }
    let (cluster, admins) = open(ctx, report, Access::Write, || {
        let admins = secrets::admins(store, &config)?;
        Ok((config, admins))
    })?;
    let (config, recipients, state) = cluster.parts();
    let steps = actions::missing(&state, &config)?;
    let mut applied = actions::apply(&state, &config, &steps, crate::clock::now())?;
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
    let committed = secrets::commit(&state, &config, &recipients, extras)?;
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
    report_committed(report, &committed);
    if !drifted.is_empty() {
        report.warn(format_args!(
            "{} certificates drifted from the config ({}): run kpki rotate",
            drifted.len(),
            abbreviate(&drifted)
        ));
    }
    if applied.written.is_empty() && committed.is_empty() && wrote_extras.is_empty() {
        if drifted.is_empty() && repaired == 0 {
            report.say("nothing to do: every CA, key, certificate and secret is up to date");
        }
    } else if !applied.written.is_empty() || !committed.encrypted.is_empty() {
        report.say(format_args!(
            "{} files created in pki/, {} encrypted into secrets/",
            in_pki(&config, &applied).len(),
            committed.encrypted.len()
        ));
    }
    Ok(())
}

/// Makes every plaintext key in `pki/` readable by its owner only again (a hand's `cp` or
/// `chmod` may have opened it); returns those it repaired, with the mode they had.
pub(super) fn repair_key_modes(state: &State, config: &Config) -> Result<Vec<(String, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut repaired = Vec::new();
    for sealed in secrets::sealed_files(state, config)? {
        if sealed.kind != crate::pem::FileKind::PrivateKey {
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
