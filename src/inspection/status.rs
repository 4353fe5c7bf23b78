//! `kpki status`: one row per CA, key pair and certificate, like `kubeadm certs
//! check-expiration`, with the state that says what needs doing.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;

use super::{Facts, drift, facts, pem_certs, pem_public_keys};
use crate::catalogue::{self, CaName, Item, Kind, Part};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::secrets::{SealPlan, Vault};

/// What a row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Ok,
    /// Expires within `keys.renew_before` (of the date asked about).
    Renew,
    Expired,
    /// No longer matches what the config and catalogue say.
    Drift,
    Missing,
    /// The encrypted copy is out of date or has other recipients than due.
    StaleSecret,
}

impl State {
    /// The word shown in the table.
    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Renew => "renew",
            State::Expired => "expired",
            State::Drift => "drift",
            State::Missing => "missing",
            State::StaleSecret => "stale-secret",
        }
    }
}

/// One certificate, CA or key pair.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub node: Option<String>,
    pub ca: Option<&'static str>,
    /// RFC 3339.
    pub expires: Option<String>,
    pub residual_seconds: Option<i64>,
    pub state: State,
    /// Why, for `drift`, `missing` and `stale-secret`.
    pub detail: Option<String>,
}

/// A row with the item it describes (`None` for extra users).
pub struct Assessed<'c> {
    pub item: Option<Item<'c>>,
    pub row: Row,
    pub facts: Option<Facts>,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub at: String,
    pub rows: Vec<Row>,
    /// Encrypted files out of date (relative to `secrets/`).
    pub stale_secrets: Vec<String>,
    /// Encrypted files that belong to nothing in the config any more (relative to `secrets/`).
    pub orphaned_secrets: Vec<String>,
    /// Rotations in progress, as sentences.
    pub rotations: Vec<String>,
}

impl Report {
    /// Whether anything needs action.
    pub fn needs_action(&self) -> bool {
        self.rows.iter().any(|r| r.state != State::Ok)
            || !self.stale_secrets.is_empty()
            || !self.orphaned_secrets.is_empty()
            || !self.rotations.is_empty()
    }
}

/// Assesses every item of the catalogue and every extra user as of `at`.
pub fn assess<'c>(
    vault: &Vault,
    config: &'c Config,
    seal: &SealPlan<'_>,
    at: OffsetDateTime,
) -> Result<Vec<Assessed<'c>>> {
    let stale: HashSet<&str> = seal.stale_files().map(|s| s.rel.as_str()).collect();
    let cas = current_cas(vault)?;
    let items = catalogue::items(config);
    let mut rows = items
        .par_iter()
        .map(|item| assess_item(vault, config, item, &cas, &stale, at))
        .collect::<Result<Vec<_>>>()?;
    for user in crate::secrets::users(vault.store())? {
        let files = [Part::Cert, Part::Key].map(|p| catalogue::user_file(&user, p));
        let mut assessed = assess_files(vault, config, &files, &stale, at, None)?;
        assessed.row.name = files[0].trim_end_matches(".pem").to_string();
        assessed.row.ca = Some(CaName::Kubernetes.dir());
        rows.push(assessed);
    }
    Ok(rows)
}

/// The first certificate of each CA's `ca.pem` that exists: the CA that signs today.
fn current_cas(vault: &Vault) -> Result<HashMap<CaName, Facts>> {
    let mut cas = HashMap::new();
    for name in [CaName::Kubernetes, CaName::Etcd, CaName::FrontProxy] {
        let rel = Item {
            entry: catalogue::ca_entry(name),
            node: None,
        }
        .file(Part::Cert);
        if let Some(text) = vault.read(&rel)? {
            let bad = |m: String| Error::file(&vault.store().pki_path(&rel), m);
            let first = pem_certs(&text).map_err(bad)?;
            cas.insert(name, facts(&first[0]).map_err(bad)?);
        }
    }
    Ok(cas)
}

fn assess_item<'c>(
    vault: &Vault,
    config: &Config,
    item: &Item<'c>,
    cas: &HashMap<CaName, Facts>,
    stale: &HashSet<&str>,
    at: OffsetDateTime,
) -> Result<Assessed<'c>> {
    let files = [item.file(Part::Cert), item.file(Part::Key)];
    let ca = match item.entry.kind {
        Kind::Leaf { ca, .. } => Some(ca),
        _ => None,
    };
    let mut assessed = assess_files(vault, config, &files, stale, at, Some(item))?;
    if let (Some(leaf), State::Ok | State::Renew | State::StaleSecret) =
        (&assessed.facts, assessed.row.state)
        && let Some(why) = drift(item, config, leaf, ca.and_then(|c| cas.get(&c)))
    {
        assessed.row.state = State::Drift;
        assessed.row.detail = Some(why);
    }
    assessed.row.name = item.name();
    assessed.row.node = item.node.map(|n| n.name.clone());
    assessed.row.ca = ca.map(CaName::dir);
    assessed.item = Some(*item);
    Ok(assessed)
}

/// The row of a certificate (or public key) file and its key file.
fn assess_files<'c>(
    vault: &Vault,
    config: &Config,
    [cert, key]: &[String; 2],
    stale: &HashSet<&str>,
    at: OffsetDateTime,
    item: Option<&Item<'c>>,
) -> Result<Assessed<'c>> {
    let mut row = Row {
        name: String::new(),
        node: None,
        ca: None,
        expires: None,
        residual_seconds: None,
        state: State::Ok,
        detail: None,
    };
    let text = vault.read(cert)?;
    let missing: Vec<&str> = [(cert, text.is_some()), (key, vault.exists(key))]
        .into_iter()
        .filter(|(_, there)| !there)
        .map(|(f, _)| f.as_str())
        .collect();
    if !missing.is_empty() {
        row.state = State::Missing;
        row.detail = Some(format!("{} missing", missing.join(" and ")));
        return Ok(Assessed {
            item: None,
            row,
            facts: None,
        });
    }
    let text = text.expect("checked above");
    let bad = |m: String| Error::file(&vault.store().pki_path(cert), m);
    if item.is_some_and(|i| i.entry.kind == Kind::KeyPair) {
        pem_public_keys(&text).map_err(bad)?;
        mark_stale(&mut row, [cert, key], stale);
        return Ok(Assessed {
            item: None,
            row,
            facts: None,
        });
    }
    let leaf = facts(&pem_certs(&text).map_err(bad)?[0]).map_err(bad)?;
    let left = leaf.not_after - at;
    row.expires = Some(rfc3339(leaf.not_after));
    row.residual_seconds = Some(left.whole_seconds());
    row.state = if left <= time::Duration::ZERO {
        State::Expired
    } else if left <= config.keys.renew_before.0 {
        State::Renew
    } else {
        State::Ok
    };
    mark_stale(&mut row, [cert, key], stale);
    Ok(Assessed {
        item: None,
        row,
        facts: Some(leaf),
    })
}

/// Turns an `ok` row into `stale-secret` when one of its files' encrypted copy is out of date.
fn mark_stale(row: &mut Row, files: [&String; 2], stale: &HashSet<&str>) {
    let out_of_date: Vec<String> = files
        .iter()
        .filter(|f| stale.contains(f.as_str()))
        .map(|f| format!("secrets/{f}.age"))
        .collect();
    if row.state == State::Ok && !out_of_date.is_empty() {
        row.state = State::StaleSecret;
        row.detail = Some(format!("{} out of date", out_of_date.join(" and ")));
    }
}

/// A timestamp as RFC 3339.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The status report as of `at`, with the rotations in progress.
pub fn report(
    vault: &Vault,
    config: &Config,
    seal: &SealPlan<'_>,
    at: OffsetDateTime,
    rotations: Vec<String>,
) -> Result<Report> {
    let assessed = assess(vault, config, seal, at)?;
    let covered: HashSet<String> = assessed
        .iter()
        .flat_map(|a| match a.item {
            Some(item) => vec![item.file(Part::Cert), item.file(Part::Key)],
            None => Vec::new(),
        })
        .collect();
    let stale_secrets = seal
        .stale_files()
        .filter(|s| !covered.contains(&s.rel))
        .map(|s| format!("{}.age", s.rel))
        .collect();
    Ok(Report {
        at: rfc3339(at),
        rows: assessed.into_iter().map(|a| a.row).collect(),
        stale_secrets,
        orphaned_secrets: seal.orphans(vault.store()),
        rotations,
    })
}

/// The report as a table, then the secrets and rotations.
pub fn table(report: &Report) -> String {
    let header = ["CERTIFICATE", "NODE", "CA", "EXPIRES", "RESIDUAL", "STATE"];
    let cells: Vec<[String; 6]> = report
        .rows
        .iter()
        .map(|r| {
            let state = match &r.detail {
                Some(d) => format!("{} ({d})", r.state.word()),
                None => r.state.word().to_string(),
            };
            [
                r.name.clone(),
                r.node.clone().unwrap_or_else(|| "-".into()),
                r.ca.unwrap_or("-").to_string(),
                r.expires
                    .as_deref()
                    .map(short_date)
                    .unwrap_or_else(|| "-".into()),
                r.residual_seconds
                    .map(residual)
                    .unwrap_or_else(|| "-".into()),
                state,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: [&str; 6]| {
        let padded: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for row in &cells {
        out += &line(row.each_ref().map(String::as_str));
    }
    if report.stale_secrets.is_empty() {
        out += "\nsecrets: up to date\n";
    } else {
        out += &format!(
            "\nsecrets: {} out of date: {}\n",
            report.stale_secrets.len(),
            report.stale_secrets.join(", ")
        );
    }
    if !report.orphaned_secrets.is_empty() {
        out += &format!(
            "secrets: {} no longer in the config (a removed node?), delete them: {}\n",
            report.orphaned_secrets.len(),
            report.orphaned_secrets.join(", ")
        );
    }
    for rotation in &report.rotations {
        out += &format!("rotation: {rotation}\n");
    }
    out
}

/// `2027-11-26T05:08:21Z` as `2027-11-26 05:08 UTC`.
fn short_date(rfc: &str) -> String {
    match rfc.get(..16) {
        Some(s) => format!("{} UTC", s.replace('T', " ")),
        None => rfc.to_string(),
    }
}

/// Time left, the way kubeadm shows it: `9y`, `364d`, `23h`, or `expired`.
fn residual(seconds: i64) -> String {
    match seconds {
        s if s <= 0 => "expired".into(),
        s if s >= 365 * 86_400 => format!("{}y", s / (365 * 86_400)),
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s => format!("{}h", s / 3600),
    }
}
