//! The assessment of every CA, key pair and certificate: one row each, like `kubeadm certs
//! check-expiration`, with its health (what it needs). `kpki status` shows it; `rotate`,
//! `import` and the writers' drift notes act on it.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;
use time::OffsetDateTime;

use crate::catalogue::{self, CaName, Item, Kind, Part, Subject, Target};
use crate::clock::rfc3339;
use crate::config::{Config, Span};
use crate::error::{Error, InOrder, Result};
use crate::inspection::{
    Facts, ca_drift, drift, facts, key_pair_drift, recorded_drift, subject_names,
};
use crate::secrets::{SealPlan, Stale};
use crate::state::State;

/// What a row needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
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

impl Health {
    /// The word shown in the table.
    pub fn word(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Renew => "renew",
            Health::Expired => "expired",
            Health::NotYetValid => "not yet valid",
            Health::Drift => "drift",
            Health::Missing => "missing",
            Health::StaleSecret => "stale-secret",
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
    pub state: Health,
    /// Why, for every state but `ok`, `renew` and `expired`.
    pub detail: Option<String>,
}

/// A row with what it describes: a catalogue item, or an extra user with the subject its
/// file name gives it.
pub struct Assessed<'c> {
    pub target: Target<'c>,
    pub row: Row,
    /// Assessed from the signed manifest's public facts: no identity to read the certificate.
    pub recorded: bool,
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
    pki: &State,
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
    pki: &'a State,
    config: &'a Config,
    cas: HashMap<CaName, Facts>,
    /// The revocation ledger: a live certificate on it (a rolled-back state) is reissued.
    revoked: std::collections::BTreeMap<String, crate::manifest::Revocation>,
    stale: &'a HashMap<&'a str, &'a Stale>,
    at: OffsetDateTime,
}

/// The first certificate of each CA's `ca.pem` that exists: the CA that signs today.
fn current_cas(pki: &State) -> Result<HashMap<CaName, Facts>> {
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
            && matches!(row.state, Health::Ok | Health::Renew | Health::StaleSecret)
        {
            row.state = Health::Drift;
            row.detail = Some(why);
        }
        if item.entry().kind == Kind::KeyPair
            && row.state == Health::Ok
            && let Some(public) = readable(pki.require(&files[0]))?
            && let Some(why) = key_pair_drift(public.first(), config)
        {
            row.state = Health::Drift;
            row.detail = Some(why);
        }
        row.name = item.name();
        row.node = item.node().map(|n| n.name.clone());
        row.ca = ca.map(CaName::dir);
        Ok(Assessed {
            target: Target::Item(Box::new(*item)),
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
            && matches!(row.state, Health::Ok | Health::Renew | Health::StaleSecret)
        {
            let authority = match seen {
                Seen::Read(cert) => cert.authority_key_id.as_deref().map(crate::inspection::hex),
                Seen::Recorded(c) | Seen::Vouched(c) => c.authority.clone(),
            };
            let why = if common_name != user {
                Some(format!(
                    "its CN is {common_name:?}, but the file is named for {user:?}"
                ))
            } else if cas
                .get(&CaName::Kubernetes)
                .and_then(|ca| ca.subject_key_id.as_deref())
                .is_some_and(|id| authority.is_some_and(|a| a != crate::inspection::hex(id)))
            {
                Some("issued by another CA than the current one".into())
            } else {
                None
            };
            if let Some(why) = why {
                row.state = Health::Drift;
                row.detail = Some(why);
            }
        }
        row.name = catalogue::user_name(user);
        row.ca = Some(CaName::Kubernetes.dir());
        Ok(Assessed {
            target: Target::User(Subject {
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
            row.state = Health::Missing;
            row.detail = Some(format!(
                "{} missing: kpki rotate (or kpki init) creates it",
                missing.join(" and ")
            ));
            return Ok((row, None));
        }
        let text = match pki.read(cert) {
            Ok(text) => text.expect("exists"),
            Err(Error::File { path, message }) => {
                row.state = Health::StaleSecret;
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
    fn vouched(&self, [cert, key]: &[String; 2]) -> Result<Option<crate::inspection::PublicFacts>> {
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
            state: Health::Ok,
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
        let dates = facts.as_ref().map(|f| (f.not_before, f.not_after));
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
            Health::Expired
        } else if not_before > at {
            Health::NotYetValid
        } else if left <= config.keys.renew_before.0 {
            Health::Renew
        } else {
            Health::Ok
        };
        if row.state == Health::NotYetValid {
            row.detail = Some(format!("valid from {}", rfc3339(not_before)));
        }
    }
}

/// What a row saw of its certificate.
enum Seen {
    /// The certificate itself.
    Read(Facts),
    /// The signed manifest's record of it (no identity to decrypt it).
    Recorded(crate::inspection::PublicFacts),
    /// The signed manifest's complete record of the very certificate `pki/` holds, unchanged
    /// since kpki checked it against the manifest: as good as reading it, and not read.
    Vouched(crate::inspection::PublicFacts),
}

impl Seen {
    fn serial(&self) -> &str {
        match self {
            Seen::Read(f) => &f.serial,
            Seen::Recorded(f) | Seen::Vouched(f) => &f.serial,
        }
    }
}

pub use crate::error::readable;

/// A path relative to the cluster directory, for a row's detail.
fn shown(pki: &State, path: &std::path::Path) -> String {
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
    if row.state == Health::Ok && !out_of_date.is_empty() {
        row.state = Health::StaleSecret;
        row.detail = Some(out_of_date.join("; "));
    }
}

/// The row of the etcd CA's revocation list, when there is one: its next update is its
/// expiry; it drifts when it is not what the manifest's revocations and the current CA make.
pub fn crl_row(pki: &State, config: &Config, at: OffsetDateTime) -> Result<Option<Row>> {
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
            Some(l) if l <= time::Duration::ZERO => Health::Expired,
            Some(l) if l <= config.keys.renew_before.0 => Health::Renew,
            _ => Health::Ok,
        },
        detail: Some(format!("{} revoked", crl.serials.len())),
    };
    if let Some(why) = crate::revocation::crl_due(pki, at, Span(time::Duration::ZERO))? {
        if row.state == Health::Ok {
            row.state = Health::Drift;
        }
        row.detail = Some(format!(
            "{} revoked; {why}: kpki rotate signs it anew",
            crl.serials.len()
        ));
    }
    Ok(Some(row))
}
