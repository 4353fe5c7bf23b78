//! `kpki status`: one row per file, from what can be read, and notes on the cache.

use serde::Serialize;
use time::OffsetDateTime;

use super::*;
use crate::assessment::{Health, Row, assess, crl_row, stale_files};
use crate::clock::rfc3339;
use crate::rotation::Rotation;
use crate::secrets::SealPlan;

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
        || overview(&state, &config, &seal, at),
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
    rows.manifest = trust::signer(state.signature()).map(|signer| Signed {
        signer,
        generation: state.manifest().generation,
    });
    report.output(match args.json {
        true => serde_json::to_string_pretty(&rows).expect("a report serializes") + "\n",
        false => table(&rows),
    });
    report.needs_action |= rows.needs_action();
    Ok(())
}

/// The whole status report.
#[derive(Debug, Serialize)]
pub struct Overview {
    pub at: String,
    pub rows: Vec<Row>,
    /// Encrypted files out of date that no row shows (relative to the cluster directory).
    pub stale_secrets: Vec<String>,
    /// Files the manifest holds that the config no longer accounts for (a removed node or
    /// declaration), relative to `pki/`: `kpki rotate --prune` removes them.
    pub leftovers: Vec<String>,
    /// The leftovers said by what they were: a removed node's files, or the same files on
    /// several nodes (a removed declaration, a role a node lost).
    pub leftover_groups: Vec<String>,
    /// Encrypted files that neither the manifest nor the config accounts for (relative to
    /// `secrets/`).
    pub orphaned_secrets: Vec<String>,
    /// Of the manifest, `secrets.nix` and `kpki.nix`, those missing or not as kpki writes them.
    pub outdated_files: Vec<String>,
    /// Of those, the ones untouched since kpki wrote them: the config changed since (a node
    /// added, renumbered, given a role), no hand edited them.
    pub behind_config: Vec<String>,
    /// Rotations in progress.
    pub rotations: Vec<Rotation>,
    /// Certificates assessed from the manifest's record and encrypted files not decrypted:
    /// no identity was at hand, so their content went unchecked.
    pub unread: usize,
    /// The last `kpki rollout` from this clone, with its time; `None` when there was none.
    pub rollout: Option<String>,
    /// Who signed the manifest, and its generation; `None` when it is not signed.
    pub manifest: Option<Signed>,
    /// About the plaintext cache and checks not made; no action needed.
    pub notes: Vec<String>,
}

impl Overview {
    /// Whether anything needs action.
    pub fn needs_action(&self) -> bool {
        self.rows.iter().any(|r| r.state != Health::Ok)
            || !self.stale_secrets.is_empty()
            || !self.leftovers.is_empty()
            || !self.orphaned_secrets.is_empty()
            || !self.outdated_files.is_empty()
            || !self.rotations.is_empty()
    }
}

/// The committed manifest's signer (the fingerprint `--trust` takes) and generation.
#[derive(Debug, Serialize)]
pub struct Signed {
    pub signer: String,
    pub generation: u64,
}

/// The status report as of `at`: rows and the state of `secrets/`. Outdated Nix files,
/// rotations in progress and notes are the caller's to add.
pub fn overview(
    pki: &State,
    config: &Config,
    seal: &SealPlan<'_>,
    at: OffsetDateTime,
) -> Result<Overview> {
    // Listing secrets/ for orphans is syscalls, assessing is parsing: side by side.
    let (assessed, orphans) = rayon::join(
        || assess(pki, config, &stale_files(seal), at),
        || seal.orphans(pki, Depth::Changed),
    );
    let assessed = assessed?;
    let covered: std::collections::HashSet<String> = assessed
        .iter()
        .flat_map(|a| [a.target.file(Part::Cert), a.target.file(Part::Key)])
        .collect();
    let stale_secrets = seal
        .stale_files()
        .filter(|(s, _)| !covered.contains(&s.rel))
        .map(|(s, why)| format!("secrets/{}.age ({})", s.rel, why.describe()))
        .collect();
    let recorded = assessed.iter().filter(|a| a.recorded).count();
    let mut notes = Vec::new();
    if recorded > 0 {
        notes.push(format!(
            "no identity: {recorded} certificates were checked from the signed manifest's record (expiry, subject, SANs, revocation), not read; kpki verify -i checks their content"
        ));
    }
    let mut rows: Vec<Row> = assessed.into_iter().map(|a| a.row).collect();
    let crl = crl_row(pki, config, at)?;
    if crl.is_none() && pki.exists(&catalogue::crl_file())? {
        notes.push("no identity: the etcd revocation list was not read".into());
    }
    rows.extend(crl);
    Ok(Overview {
        at: rfc3339(at),
        rows,
        stale_secrets,
        leftovers: seal.leftovers.iter().map(|(rel, _)| rel.clone()).collect(),
        leftover_groups: leftover_groups(config, seal.leftovers.iter().map(|(rel, _)| rel)),
        orphaned_secrets: orphans?,
        outdated_files: Vec::new(),
        behind_config: Vec::new(),
        rotations: Vec::new(),
        manifest: None,
        rollout: None,
        unread: recorded,
        notes,
    })
}

/// The report as a table, then the secrets, rotations and notes.
pub fn table(report: &Overview) -> String {
    let header = ["CERTIFICATE", "NODE", "CA", "EXPIRES", "RESIDUAL", "STATE"];
    let cells: Vec<[String; 6]> = report
        .rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.node.clone().unwrap_or_else(|| "-".into()),
                r.ca.unwrap_or("-").to_string(),
                r.expires
                    .as_deref()
                    .and_then(|e| e.get(..10))
                    .unwrap_or("-")
                    .to_string(),
                r.residual_seconds
                    .map(residual)
                    .unwrap_or_else(|| "-".into()),
                r.state.word().to_string(),
            ]
        })
        .collect();
    let widths = crate::report::widths(header, &cells);
    let line = |row: [&str; 6]| crate::report::table_line(row, widths);
    let mut out = line(header);
    for (row, r) in cells.iter().zip(&report.rows) {
        out += &line(row.each_ref().map(String::as_str));
        if let Some(detail) = &r.detail {
            out += &format!("    {detail}\n");
        }
    }
    out += "\n";
    out += &match &report.manifest {
        Some(m) => format!(
            "manifest: generation {}, signed by the Kubernetes CA {}\n",
            m.generation, m.signer
        ),
        None => "manifest: not signed\n".to_string(),
    };
    let stale_rows = report
        .rows
        .iter()
        .filter(|r| r.state == Health::StaleSecret)
        .count();
    let nothing_else = report.outdated_files.is_empty()
        && report.leftovers.is_empty()
        && report.orphaned_secrets.is_empty();
    if report.stale_secrets.is_empty() && stale_rows == 0 {
        if nothing_else && report.unread > 0 {
            out += &format!(
                "secrets: recipients as they must be; {} files not decrypted (no identity), their content unchecked\n",
                report.unread
            );
        } else if nothing_else {
            out += "secrets: up to date\n";
        }
    } else {
        let mut all: Vec<&str> = report.stale_secrets.iter().map(String::as_str).collect();
        let rows = format!("{stale_rows} rows above");
        if stale_rows > 0 {
            all.push(&rows);
        }
        out += &format!(
            "secrets: out of date ({}): kpki init or kpki rotate writes them again\n",
            all.join(", ")
        );
    }
    for file in &report.outdated_files {
        out += &match report.behind_config.contains(file) {
            true => format!(
                "secrets: {file} is behind pki/kpki.toml (changed since kpki wrote it): kpki init rewrites it\n"
            ),
            false => format!(
                "secrets: {file} is missing or not as kpki writes it (edited by hand?): kpki init rewrites it\n"
            ),
        };
    }
    for group in &report.leftover_groups {
        out += &format!(
            "removed: {group}: kpki rotate --prune deletes them, revokes their etcd certificates and reissues the shared keys they opened\n"
        );
    }
    if !report.orphaned_secrets.is_empty() {
        out += &format!(
            "secrets: {} in neither the manifest nor the config (put there by hand?): kpki rotate --prune deletes them: {}\n",
            report.orphaned_secrets.len(),
            report.orphaned_secrets.join(", ")
        );
    }
    if let Some(rollout) = &report.rollout {
        out += &format!("rollout: {rollout}\n");
    }
    for rotation in &report.rotations {
        out += &format!("rotation: {} is being rotated", rotation.subject());
        if let Some(started) = &rotation.started {
            out += &format!(" (started {})", short_date(started));
        }
        if !rotation.pending.is_empty() {
            out += &format!(", not yet reissued: {}", rotation.pending.join(", "));
        }
        out += &format!(": {}\n", rotation.next);
    }
    for note in &report.notes {
        out += &format!("note: {note}\n");
    }
    out
}

/// The directories of `files` (relative paths) with how many files each holds.
/// Leftover files (`DIR/FILE`) said by what they were: `node-03's 10 files (the node left the
/// config)`; `node-exporter.pem, node-exporter-key.pem on node-01..node-04, 4 nodes (the
/// declaration left the config)`; `etcd-peer.pem, ... on node-02 (the node lost the etcd role)`.
fn leftover_groups<'a>(config: &Config, files: impl Iterator<Item = &'a String>) -> Vec<String> {
    use std::collections::BTreeMap;
    let clusters = catalogue::cluster_dirs();
    let mut removed_nodes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut files_of: BTreeMap<(&str, String), Vec<&str>> = BTreeMap::new();
    for rel in files {
        let (dir, file) = rel.split_once('/').unwrap_or((rel, ""));
        if config.node(dir).is_none() && !clusters.contains(dir) {
            *removed_nodes.entry(dir).or_insert(0) += 1;
            continue;
        }
        let why = match catalogue::role_of_node_file(file) {
            Some(role) if !clusters.contains(dir) => {
                format!("the node lost the {} role", role.name())
            }
            _ => "the declaration left the config".to_string(),
        };
        files_of.entry((dir, why)).or_default().push(file);
    }
    let mut lines: Vec<String> = removed_nodes
        .into_iter()
        .map(|(dir, n)| format!("{dir}'s {n} files (the node left the config)"))
        .collect();
    let mut by_files: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for ((dir, why), mut names) in files_of {
        names.sort_by_key(|f| (f.replace("-key.pem", ".pem"), f.ends_with("-key.pem")));
        by_files
            .entry((names.join(", "), why))
            .or_default()
            .push(dir);
    }
    for ((names, why), dirs) in by_files {
        let on = match dirs.as_slice() {
            [one] => one.to_string(),
            [first, .., last] if dirs.len() > 2 => {
                format!("{first}..{last}, {} nodes", dirs.len())
            }
            more => more.join(", "),
        };
        lines.push(format!("{names} on {on} ({why})"));
    }
    lines
}

/// `2027-11-26T05:08:21Z` as `2027-11-26 05:08 UTC`.
fn short_date(rfc: &str) -> String {
    match rfc.get(..16) {
        Some(s) => format!("{} UTC", s.replace('T', " ")),
        None => rfc.to_string(),
    }
}

/// Time left, the way kubeadm shows it: `10y`, `364d`, `23h`, or `expired`. Counted in whole
/// days begun, so a CA made for 10 years a minute ago shows `10y`, not `9y`.
fn residual(seconds: i64) -> String {
    const DAY: i64 = 86_400;
    let days = (seconds + DAY - 1) / DAY;
    match seconds {
        s if s <= 0 => "expired".into(),
        _ if days >= 365 => format!("{}y", days / 365),
        s if s >= DAY => format!("{days}d"),
        s => format!("{}h", (s + 3599) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::residual;

    #[test]
    fn residual_time_counts_whole_days_begun() {
        const DAY: i64 = 86_400;
        // A 10-year CA and a 1-year leaf made a minute ago.
        assert_eq!(residual(3650 * DAY - 60), "10y");
        assert_eq!(residual(365 * DAY - 60), "1y");
        assert_eq!(residual(364 * DAY - 60), "364d");
        assert_eq!(residual(DAY + 1), "2d");
        assert_eq!(residual(DAY), "1d");
        assert_eq!(residual(3 * 3600 - 1), "3h");
        assert_eq!(residual(0), "expired");
    }
}
