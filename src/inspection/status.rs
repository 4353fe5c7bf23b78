//! `kpki status`: one row per CA, key pair and certificate, like `kubeadm certs
//! check-expiration`, with the state that says what needs doing.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;

use super::{Facts, ca_drift, drift, facts, key_pair_drift, recorded_drift, subject_names};
use crate::catalogue::{self, CaName, Item, Kind, Part, Subject};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::config::{Config, Span};
use crate::error::{Error, InOrder, Result};
use crate::rotation::Rotation;
use crate::secrets::{SealPlan, Stale};
use crate::state::State as Pki;

/// What a row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Ok,
    /// Expires within `keys.renew_before` (of the date asked about).
    Renew,
    Expired,
    /// Not valid yet at the date asked about.
    NotYetValid,
    /// No longer matches what the config and catalogue say.
    Drift,
    Missing,
    /// The encrypted copy is out of date, has other recipients than due, or was changed
    /// outside kpki.
    StaleSecret,
}

impl State {
    /// The word shown in the table.
    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Renew => "renew",
            State::Expired => "expired",
            State::NotYetValid => "not yet valid",
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
    /// Why, for every state but `ok`, `renew` and `expired`.
    pub detail: Option<String>,
}

/// A row with what it describes: a catalogue item, or an extra user with the subject its
/// file name gives it.
pub struct Assessed<'c> {
    pub item: Option<Item<'c>>,
    pub user: Option<Subject>,
    pub row: Row,
    /// Assessed from the signed manifest's public facts: no identity to read the certificate.
    pub recorded: bool,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
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

impl Report {
    /// Whether anything needs action.
    pub fn needs_action(&self) -> bool {
        self.rows.iter().any(|r| r.state != State::Ok)
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

/// The files of `seal` whose encrypted copy must be written again, with why.
pub fn stale_files<'p>(seal: &'p SealPlan<'_>) -> HashMap<&'p str, &'p Stale> {
    seal.stale_files()
        .map(|(s, why)| (s.rel.as_str(), why))
        .collect()
}

/// Assesses every item of the catalogue and every extra user as of `at`; `stale` marks rows
/// whose encrypted copies must be written again.
pub fn assess<'c>(
    pki: &Pki,
    config: &'c Config,
    stale: &HashMap<&str, &Stale>,
    at: OffsetDateTime,
) -> Result<Vec<Assessed<'c>>> {
    let survey = Survey {
        pki,
        config,
        cas: current_cas(pki)?,
        revoked: readable(crate::revocation::ledger(pki))?.unwrap_or_else(|| pki.revocations()),
        stale,
        at,
    };
    let items = catalogue::items(config);
    let mut rows = items
        .par_iter()
        .map(|item| survey.item(item))
        .collect::<Vec<_>>()
        .in_order()?;
    for user in crate::secrets::users(pki)? {
        rows.push(survey.user(&user)?);
    }
    Ok(rows)
}

/// What every row is assessed against: the PKI, the config, the CAs that sign today, the files
/// whose encrypted copies must be written again, and the moment.
struct Survey<'a> {
    pki: &'a Pki,
    config: &'a Config,
    cas: HashMap<CaName, Facts>,
    /// The revocation ledger: a live certificate on it (a rolled-back state) is reissued.
    revoked: std::collections::BTreeMap<String, crate::secrets::manifest::Revocation>,
    stale: &'a HashMap<&'a str, &'a Stale>,
    at: OffsetDateTime,
}

/// The first certificate of each CA's `ca.pem` that exists: the CA that signs today.
fn current_cas(pki: &Pki) -> Result<HashMap<CaName, Facts>> {
    let mut cas = HashMap::new();
    for name in catalogue::CAS {
        let rel = catalogue::ca_file(name);
        if let Ok(Some(text)) = pki.read(&rel) {
            let bad = |m: String| Error::file(&pki.store().pki_path(&rel), m);
            cas.insert(name, facts(text.first()).map_err(bad)?);
        }
    }
    Ok(cas)
}

impl Survey<'_> {
    /// A catalogue item's row: its files, then drift from the config and the current CA.
    fn item<'c>(&self, item: &Item<'c>) -> Result<Assessed<'c>> {
        let (pki, config, cas) = (self.pki, self.config, &self.cas);
        let files = [item.file(Part::Cert), item.file(Part::Key)];
        let ca = match item.entry().kind {
            Kind::Leaf { ca, .. } => Some(ca),
            _ => None,
        };
        let current_ca = ca.and_then(|c| cas.get(&c));
        // A leaf that matches its record needs no reading; one that drifts is read, so that its
        // row says exactly how. A CA is always read: its drift is judged on more than that.
        let vouched = match ca {
            Some(_) => self.vouched(&files)?,
            None => None,
        };
        let (mut row, seen) = match vouched {
            Some(facts) if recorded_drift(item, config, &facts, current_ca).is_none() => {
                let (row, _) = self.recorded(Self::blank(), &files[0], &files[1]);
                (row, Some(Seen::Vouched(facts)))
            }
            _ => self.files(&files, item.entry().kind)?,
        };
        let why = match (&seen, item.entry().kind) {
            (Some(seen), Kind::Leaf { .. }) if self.revoked.contains_key(seen.serial()) => {
                Some(format!(
                    "revoked (serial {} is on the etcd CA's revocation list)",
                    seen.serial()
                ))
            }
            (Some(Seen::Read(leaf)), Kind::Leaf { .. }) => {
                drift(item, config, leaf, ca.and_then(|c| cas.get(&c)))
            }
            (Some(Seen::Recorded(leaf) | Seen::Vouched(leaf)), Kind::Leaf { .. }) => {
                recorded_drift(item, config, leaf, current_ca)
            }
            (Some(Seen::Read(cert)), Kind::Ca(name)) => ca_drift(name.dir(), cert, config),
            _ => None,
        };
        if let Some(why) = why
            && matches!(row.state, State::Ok | State::Renew | State::StaleSecret)
        {
            row.state = State::Drift;
            row.detail = Some(why);
        }
        if item.entry().kind == Kind::KeyPair
            && row.state == State::Ok
            && let Some(public) = readable(pki.require(&files[0]))?
            && let Some(why) = key_pair_drift(public.first(), config)
        {
            row.state = State::Drift;
            row.detail = Some(why);
        }
        row.name = item.name();
        row.node = item.node().map(|n| n.name.clone());
        row.ca = ca.map(CaName::dir);
        Ok(Assessed {
            item: Some(*item),
            user: None,
            row,
            recorded: matches!(seen, Some(Seen::Recorded(_))),
        })
    }

    /// An extra user's row; its certificate must name the user its file is named after.
    fn user<'c>(&self, user: &str) -> Result<Assessed<'c>> {
        let cas = &self.cas;
        let files = [Part::Cert, Part::Key].map(|p| catalogue::user_file(user, p));
        let (mut row, seen) = self.files(&files, catalogue::USER_KIND)?;
        let (common_name, organizations) = match &seen {
            Some(Seen::Read(c)) => (
                c.subject.common_name.clone(),
                c.subject.organizations.clone(),
            ),
            Some(Seen::Recorded(c) | Seen::Vouched(c)) => subject_names(&c.subject),
            None => (String::new(), Vec::new()),
        };
        if let Some(seen) = &seen
            && matches!(row.state, State::Ok | State::Renew | State::StaleSecret)
        {
            let authority = match seen {
                Seen::Read(cert) => cert.authority_key_id.as_deref().map(super::hex),
                Seen::Recorded(c) | Seen::Vouched(c) => c.authority.clone(),
            };
            let why = if common_name != user {
                Some(format!(
                    "its CN is {common_name:?}, but the file is named for {user:?}"
                ))
            } else if cas
                .get(&CaName::Kubernetes)
                .and_then(|ca| ca.subject_key_id.as_deref())
                .is_some_and(|id| authority.is_some_and(|a| a != super::hex(id)))
            {
                Some("issued by another CA than the current one".into())
            } else {
                None
            };
            if let Some(why) = why {
                row.state = State::Drift;
                row.detail = Some(why);
            }
        }
        row.name = catalogue::user_name(user);
        row.ca = Some(CaName::Kubernetes.dir());
        Ok(Assessed {
            item: None,
            user: Some(Subject {
                common_name: user.to_string(),
                organizations,
                sans: Vec::new(),
            }),
            row,
            recorded: matches!(seen, Some(Seen::Recorded(_))),
        })
    }

    /// The row of a certificate (or public key) file and its key file, and what was seen of
    /// the certificate: read, or (without an identity to decrypt it) as the signed manifest
    /// records it.
    fn files(&self, [cert, key]: &[String; 2], kind: Kind) -> Result<(Row, Option<Seen>)> {
        let (pki, stale) = (self.pki, self.stale);
        let mut row = Self::blank();
        let missing: Vec<&str> = [cert, key]
            .into_iter()
            .map(|f| Ok((f, pki.exists(f)?)))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|(_, there)| !there)
            .map(|(f, _)| f.as_str())
            .collect();
        if !missing.is_empty() {
            row.state = State::Missing;
            row.detail = Some(format!(
                "{} missing: kpki rotate (or kpki init) creates it",
                missing.join(" and ")
            ));
            return Ok((row, None));
        }
        let text = match pki.read(cert) {
            Ok(text) => text.expect("exists"),
            Err(Error::File { path, message }) => {
                row.state = State::StaleSecret;
                row.detail = Some(format!("{}: {message}", shown(pki, &path)));
                return Ok((row, None));
            }
            Err(Error::Identity { .. }) => return Ok(self.recorded(row, cert, key)),
            Err(e) => return Err(e),
        };
        if kind == Kind::KeyPair {
            mark_stale(&mut row, [cert, key], stale);
            return Ok((row, None));
        }
        let bad = |m: String| Error::file(&pki.store().pki_path(cert), m);
        let leaf = facts(text.first()).map_err(bad)?;
        self.dated(&mut row, leaf.not_before, leaf.not_after);
        mark_stale(&mut row, [cert, key], stale);
        Ok((row, Some(Seen::Read(leaf))))
    }

    /// The signed manifest's complete facts of `cert` when `pki/` holds the very certificate
    /// they describe, unchanged since kpki wrote or checked it (its stamp is the recorded one),
    /// and its key exists: at thousands of nodes, reading and parsing every certificate is most
    /// of `status`.
    fn vouched(
        &self,
        [cert, key]: &[String; 2],
    ) -> Result<Option<crate::secrets::manifest::Facts>> {
        let facts = self
            .pki
            .manifest()
            .files
            .get(cert)
            .and_then(|e| e.certificate.as_ref().filter(|f| f.complete()));
        match facts {
            Some(facts) if self.pki.as_recorded(cert)? == Some(true) && self.pki.exists(key)? => {
                Ok(Some(facts.clone()))
            }
            _ => Ok(None),
        }
    }

    /// A row before anything is known of it.
    fn blank() -> Row {
        Row {
            name: String::new(),
            node: None,
            ca: None,
            expires: None,
            residual_seconds: None,
            state: State::Ok,
            detail: None,
        }
    }

    /// The row of a certificate kpki cannot decrypt, from the manifest's public facts.
    fn recorded(&self, mut row: Row, cert: &str, key: &str) -> (Row, Option<Seen>) {
        let facts = self
            .pki
            .manifest()
            .files
            .get(cert)
            .and_then(|e| e.certificate.clone());
        let dates = facts
            .as_ref()
            .and_then(|f| Some((parse_rfc3339(&f.not_before)?, parse_rfc3339(&f.not_after)?)));
        let Some((not_before, not_after)) = dates else {
            row.detail = Some(format!("{cert}: not read (no identity)"));
            return (row, None);
        };
        self.dated(&mut row, not_before, not_after);
        mark_stale(&mut row, [&cert.to_string(), &key.to_string()], self.stale);
        (row, facts.map(Seen::Recorded))
    }

    /// Sets a row's expiry and state from a certificate's validity.
    fn dated(&self, row: &mut Row, not_before: OffsetDateTime, not_after: OffsetDateTime) {
        let (config, at) = (self.config, self.at);
        let left = not_after - at;
        row.expires = Some(rfc3339(not_after));
        row.residual_seconds = Some(left.whole_seconds());
        row.state = if left <= time::Duration::ZERO {
            State::Expired
        } else if not_before > at {
            State::NotYetValid
        } else if left <= config.keys.renew_before.0 {
            State::Renew
        } else {
            State::Ok
        };
        if row.state == State::NotYetValid {
            row.detail = Some(format!("valid from {}", rfc3339(not_before)));
        }
    }
}

/// What a row saw of its certificate.
enum Seen {
    /// The certificate itself.
    Read(Facts),
    /// The signed manifest's record of it (no identity to decrypt it).
    Recorded(crate::secrets::manifest::Facts),
    /// The signed manifest's complete record of the very certificate `pki/` holds, unchanged
    /// since kpki checked it against the manifest: as good as reading it, and not read.
    Vouched(crate::secrets::manifest::Facts),
}

impl Seen {
    fn serial(&self) -> &str {
        match self {
            Seen::Read(f) => &f.serial,
            Seen::Recorded(f) | Seen::Vouched(f) => &f.serial,
        }
    }
}

/// `Ok(None)` for what needs an identity that is not at hand; other errors stand.
pub fn readable<T>(result: Result<T>) -> Result<Option<T>> {
    match result {
        Ok(t) => Ok(Some(t)),
        Err(Error::Identity { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A path relative to the cluster directory, for a row's detail.
fn shown(pki: &Pki, path: &std::path::Path) -> String {
    path.strip_prefix(pki.store().root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Turns an `ok` row into `stale-secret` when one of its files' encrypted copy must be written
/// again, saying why.
fn mark_stale(row: &mut Row, files: [&String; 2], stale: &HashMap<&str, &Stale>) {
    let out_of_date: Vec<String> = files
        .iter()
        .filter_map(|f| {
            Some(format!(
                "secrets/{f}.age: {}",
                stale.get(f.as_str())?.describe()
            ))
        })
        .collect();
    if row.state == State::Ok && !out_of_date.is_empty() {
        row.state = State::StaleSecret;
        row.detail = Some(out_of_date.join("; "));
    }
}

/// The status report as of `at`: rows and the state of `secrets/`. Outdated Nix files,
/// rotations in progress and notes are the caller's to add.
pub fn report(
    pki: &Pki,
    config: &Config,
    seal: &SealPlan<'_>,
    at: OffsetDateTime,
) -> Result<Report> {
    // Listing secrets/ for orphans is syscalls, assessing is parsing: side by side.
    let (assessed, orphans) = rayon::join(
        || assess(pki, config, &stale_files(seal), at),
        || seal.orphans(pki.store()),
    );
    let assessed = assessed?;
    let covered: std::collections::HashSet<String> = assessed
        .iter()
        .flat_map(|a| match (a.item, &a.user) {
            (Some(item), _) => vec![item.file(Part::Cert), item.file(Part::Key)],
            (None, Some(user)) => [Part::Cert, Part::Key]
                .map(|p| catalogue::user_file(&user.common_name, p))
                .to_vec(),
            _ => Vec::new(),
        })
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
    Ok(Report {
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

/// The row of the etcd CA's revocation list, when there is one: its next update is its
/// expiry; it drifts when it is not what the manifest's revocations and the current CA make.
fn crl_row(pki: &Pki, config: &Config, at: OffsetDateTime) -> Result<Option<Row>> {
    let Some(Some(crl)) = readable(crate::revocation::crl(pki))? else {
        return Ok(None);
    };
    let left = crl.next_update.map(|t| t - at);
    let mut row = Row {
        name: "etcd/crl".into(),
        node: None,
        ca: Some(crate::revocation::CA.dir()),
        expires: crl.next_update.map(rfc3339),
        residual_seconds: left.map(|l| l.whole_seconds()),
        state: match left {
            Some(l) if l <= time::Duration::ZERO => State::Expired,
            Some(l) if l <= config.keys.renew_before.0 => State::Renew,
            _ => State::Ok,
        },
        detail: Some(format!("{} revoked", crl.serials.len())),
    };
    if let Some(why) = crate::revocation::crl_due(pki, at, Span(time::Duration::ZERO))? {
        if row.state == State::Ok {
            row.state = State::Drift;
        }
        row.detail = Some(format!(
            "{} revoked; {why}: kpki rotate signs it anew",
            crl.serials.len()
        ));
    }
    Ok(Some(row))
}

/// The report as a table, then the secrets, rotations and notes.
pub fn table(report: &Report) -> String {
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
        .filter(|r| r.state == State::StaleSecret)
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
