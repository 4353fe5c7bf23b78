//! `kpki rollout`: the running cluster, asked over TLS; and the check that gates finishing a
//! rotation.

use std::time::Duration;

use crate::cli::RolloutArgs;
use crate::rollout::{self as live, Endpoint, Generations, Row, Service};

use super::*;

/// The last report, for `status` (git-ignored, under `pki/.kpki/`).
pub(super) const LAST: &str = "rollout.json";

/// What `status` shows of the last report: its summary line and when it was made.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Saved {
    pub at: String,
    pub summary: String,
}

/// `kpki rollout`; anything not current sets `report.needs_action`.
pub fn rollout(ctx: &Context, args: &RolloutArgs, report: &mut Report) -> Result<()> {
    let (config, _, state) = cluster(ctx, report, Access::Read)?.parts();
    // Its verdicts decide a --finish and its summary lands in status: judged only against CA
    // certificates a trusted manifest vouches for, never a pusher's.
    refuse_untrusted(ctx, &state)?;
    let endpoints = live::endpoints(&config, &args.nodes)?;
    let rows = ask(&state, &endpoints, args.timeout.0.unsigned_abs(), None)?;
    let behind = rows.iter().filter(|r| r.verdict != "current").count();
    let summary = summary(&rows);
    report.output(match args.json {
        true => {
            let json = serde_json::json!({ "rows": rows, "summary": summary });
            serde_json::to_string_pretty(&json).expect("a report serializes") + "\n"
        }
        false => table(&rows) + &summary + "\n",
    });
    let saved = Saved {
        at: crate::clock::rfc3339(crate::clock::now()),
        summary,
    };
    if ctx.store.pki_dir().is_dir() {
        let text = serde_json::to_string(&saved).expect("a summary serializes");
        ctx.store.write_state(LAST, text.as_bytes())?;
    }
    report.needs_action |= behind > 0;
    Ok(())
}

/// The last rollout's summary and time, for `status` (which asks no server itself).
pub(super) fn last(store: &Store) -> Option<String> {
    let text = store.read_text(&store.state_path(LAST)).ok()??;
    let saved: Saved = serde_json::from_str(&text).ok()?;
    Some(format!("{} (asked {})", saved.summary, saved.at))
}

/// Asks `endpoints` and judges each against its CA's generations (or those of `ca`, when the
/// question is whether servers accept that CA's clients).
fn ask(
    state: &State,
    endpoints: &[Endpoint],
    timeout: Duration,
    ca: Option<CaName>,
) -> Result<Vec<Row>> {
    let mut generations: HashMap<CaName, Generations> = HashMap::new();
    for e in endpoints {
        let name = ca.unwrap_or(e.service.ca());
        if let std::collections::hash_map::Entry::Vacant(v) = generations.entry(name) {
            v.insert(live::generations(state, name)?);
        }
    }
    let reached = live::ask(endpoints, timeout);
    Ok(endpoints
        .iter()
        .zip(reached)
        .map(|(e, r)| live::judge(state, e, r, &generations[&ca.unwrap_or(e.service.ca())]))
        .collect())
}

/// The one-line summary: how many endpoints are current, behind, unknown, unreachable.
fn summary(rows: &[Row]) -> String {
    let count = |v: &str| rows.iter().filter(|r| r.verdict == v).count();
    let unreachable = rows.len() - count("current") - count("behind") - count("unknown");
    format!(
        "{} endpoints: {} current, {} behind, {} unknown, {} unreachable",
        rows.len(),
        count("current"),
        count("behind"),
        count("unknown"),
        unreachable
    )
}

/// The rows as a table.
fn table(rows: &[Row]) -> String {
    let serves = |r: &Row| match &r.serves {
        Some(live::Serves::Current) => "current".to_string(),
        Some(live::Serves::Old { serial, .. }) => format!("old ({serial})"),
        Some(live::Serves::Unknown { .. }) => "unknown".to_string(),
        None => "-".to_string(),
    };
    let trusts = |r: &Row| {
        r.trusts.as_ref().map_or("-", |t| match t {
            live::Trusts::Current => "current CA",
            live::Trusts::NewAndOld => "new + old",
            live::Trusts::NewOnly => "new only",
            live::Trusts::OldOnly => "old only",
            live::Trusts::Neither => "neither",
            live::Trusts::NotAsked => "not asked",
        })
    };
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.node.clone(),
                format!("{} {}", r.endpoint.name(), r.address),
                serves(r),
                trusts(r).to_string(),
                match &r.detail {
                    Some(d) => format!("{}: {d}", r.verdict),
                    None => r.verdict.to_string(),
                },
            ]
        })
        .collect();
    let header = ["NODE", "ENDPOINT", "SERVES", "TRUSTS", "VERDICT"];
    let widths = crate::report::widths(header, &cells);
    let mut out = crate::report::table_line(header, widths);
    for row in &cells {
        out += &crate::report::table_line(row.each_ref().map(String::as_str), widths);
    }
    out
}

/// Before finishing the rotation of `ca` (or, with `None`, of the service-account key): asks
/// the servers that depend on it and refuses while one that answered is behind (does not
/// accept the new CA's clients, or serves a certificate of the old one), or while one did not
/// answer unless `force`.
pub(super) fn gate(
    state: &State,
    config: &Config,
    ca: Option<CaName>,
    force: bool,
    report: &mut Report,
) -> Result<()> {
    let endpoints: Vec<Endpoint> = live::endpoints(config, &[])?
        .into_iter()
        .filter(|e| match ca {
            Some(CaName::FrontProxy) | None => e.service == Service::Apiserver,
            Some(ca) => e.service.ca() == ca,
        })
        .collect();
    let judged_by = ca.filter(|c| *c == CaName::FrontProxy);
    let rows = ask(state, &endpoints, Duration::from_secs(5), judged_by)?;
    let named = |r: &Row| format!("{} {} ({})", r.node, r.endpoint.name(), r.address);
    let behind: Vec<String> = rows
        .iter()
        .filter(|r| r.verdict == "behind" || r.verdict == "unknown")
        .filter(|r| judged_by.is_none() || r.trusts != Some(live::Trusts::NewAndOld))
        .map(|r| format!("{}: {}", named(r), r.detail.as_deref().unwrap_or(r.verdict)))
        .collect();
    let what = ca.map_or("the service-account key".to_string(), |c| {
        format!("the {} CA", c.dir())
    });
    if !behind.is_empty() {
        return Err(Error::usage(
            format!(
                "not finishing the rotation of {what}: {} of {} endpoints are behind: {}",
                behind.len(),
                rows.len(),
                abbreviate(&behind)
            ),
            Some(
                "deploy to those nodes and restart them, check with kpki rollout, then finish"
                    .into(),
            ),
        ));
    }
    let unreachable: Vec<String> = rows
        .iter()
        .filter(|r| !matches!(r.verdict, "current" | "behind" | "unknown"))
        .map(|r| format!("{} ({})", named(r), r.verdict))
        .collect();
    if !unreachable.is_empty() && !force {
        return Err(Error::usage(
            format!(
                "not finishing the rotation of {what}: {} endpoints did not answer: {}",
                unreachable.len(),
                abbreviate(&unreachable)
            ),
            Some("finish anyway with --force (they must trust the new CA before they come back), or skip the check with --no-live-check".into()),
        ));
    }
    report.note(format_args!(
        "the running cluster is ready: {} endpoints on {what}{}",
        rows.len() - unreachable.len(),
        match unreachable.len() {
            0 => String::new(),
            n => format!(" ({n} unreachable, --force)"),
        }
    ));
    Ok(())
}
