//! `kpki status`: one row per file, from what can be read, and notes on the cache.

use super::*;

/// Notes for readers: on the plaintext cache, on what could not be checked, and on declared
/// certificates that make nodes cluster admins.
pub(super) fn cache_notes(state: &State, config: &Config, unchecked: usize) -> Result<Vec<String>> {
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
pub(super) fn api_server_on_a_node(config: &Config) -> Option<String> {
    let crate::config::San::Ip(host) = &config.cluster.api_server_host else {
        return None;
    };
    let node = config.nodes.iter().find(|n| n.addresses.contains(host))?;
    Some(format!(
        "cluster.api_server is {}'s own address: every apiserver certificate is valid for it, so any control-plane node's key can serve as {} (a VIP or DNS name in front of the apiservers avoids this; docs/configuration.md)",
        node.name, node.name
    ))
}

/// `kpki status`; anything that needs action sets `report.needs_action`.
pub fn status(ctx: &Context, args: &StatusArgs, report: &mut Report) -> Result<()> {
    let (config, recipients, state) = cluster(ctx, report, Access::Read)?.parts();
    let at = args.at.unwrap_or_else(crate::clock::now);
    let seal = secrets::plan(&state, &config, &recipients, Depth::Changed)?;
    let rotations = rotation::in_progress(&state, &config)?;
    let notes = cache_notes(&state, &config, seal.unchecked())?;
    let (rows, outdated) = rayon::join(
        || assessment::report(&state, &config, &seal, at),
        || secrets::outdated_files(&state, &config, &recipients, &seal, Depth::Changed),
    );
    let mut rows = rows?;
    for name in outdated? {
        if secrets::output_as_written(&state, name)? {
            rows.behind_config.push(format!("secrets/{name}"));
        }
        rows.outdated_files.push(format!("secrets/{name}"));
    }
    rows.rotations = rotations;
    rows.notes.extend(notes);
    rows.unread = rows.unread.max(seal.unchecked());
    rows.rollout = super::rollout::last(&ctx.store);
    rows.manifest = trust::signer(state.signature()).map(|signer| assessment::Signed {
        signer,
        generation: state.manifest().generation,
    });
    report.output(match args.json {
        true => serde_json::to_string_pretty(&rows).expect("a report serializes") + "\n",
        false => assessment::table(&rows),
    });
    report.needs_action |= rows.needs_action();
    Ok(())
}
