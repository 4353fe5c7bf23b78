//! `kpki rotate`: renewals, CA and service-account rotations, and `--prune`.

use super::*;
use crate::config::Span;

/// What one `kpki rotate` does: its flags resolved into exactly one mode, each carrying only
/// the flags that mean something to it (clap refuses the others, e.g. `--keep-key` with
/// `--finish`).
#[derive(Clone, Copy)]
enum Mode {
    /// Renew what is due within the window (or everything), re-encrypt what is stale.
    Renew {
        within: Option<Span>,
        all: bool,
    },
    StartCa(CaName),
    FinishCa(CaName),
    StartSa,
    FinishSa,
    Prune,
}

impl Mode {
    fn of(request: &RotateArgs) -> Mode {
        match (
            request.prune,
            request.ca,
            request.service_account,
            request.finish,
        ) {
            (true, ..) => Mode::Prune,
            (_, Some(ca), _, false) => Mode::StartCa(ca),
            (_, Some(ca), _, true) => Mode::FinishCa(ca),
            (_, None, true, false) => Mode::StartSa,
            (_, None, true, true) => Mode::FinishSa,
            (_, None, false, _) => Mode::Renew {
                within: request.within,
                all: request.all,
            },
        }
    }
}

/// `kpki rotate`.
pub fn rotate(ctx: &Context, request: &RotateArgs, report: &mut Report) -> Result<()> {
    let mode = Mode::of(request);
    let cluster = cluster(ctx, report, Access::Write)?;
    let applied = match mode {
        Mode::Prune => return prune(&cluster, request.dry_run, report),
        Mode::Renew { within, all } => match renew(&cluster, within, all, request, report)? {
            Some(applied) => applied,
            None => return Ok(()),
        },
        Mode::StartCa(ca) | Mode::FinishCa(ca) if request.dry_run => {
            let (state, config) = (&cluster.state, &cluster.config);
            let finish = matches!(mode, Mode::FinishCa(_));
            for line in rotation::plan_ca(state, config, ca, finish, request.keep_key)? {
                report.step(true, line);
            }
            return dry_run(report, "");
        }
        Mode::StartSa | Mode::FinishSa if request.dry_run => {
            let what = finishing(matches!(mode, Mode::FinishSa));
            return dry_run(report, &format!("{what} the service-account key"));
        }
        Mode::StartCa(ca) => start_ca(&cluster, ca, request.keep_key)?,
        Mode::FinishCa(ca) => {
            gate(&cluster, Some(ca), request, report)?;
            finish_ca(&cluster, ca, report)?
        }
        Mode::StartSa => rotation::start_sa(&cluster.state, &cluster.config)?,
        Mode::FinishSa => {
            gate(&cluster, None, request, report)?;
            rotation::finish_sa(&cluster.state)?
        }
    };
    let (config, recipients, state) = cluster.parts();
    let committed = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "wrote");
    report_committed(report, &committed);
    match mode {
        Mode::StartCa(ca) => report.say(format_args!(
            "next: deploy, restart every node on the new certificates one at a time (kpki rollout shows who is behind), then run kpki rotate --ca {} --finish",
            ca.dir()
        )),
        Mode::StartSa => report.say(
            "next: deploy, restart the apiservers and controller-managers; once tokens signed with the old key have expired, run kpki rotate --service-account --finish",
        ),
        _ if applied.written.is_empty() && committed.is_empty() => {
            report.say("nothing to do: nothing is due, drifted or stale")
        }
        _ => {}
    }
    Ok(())
}

/// Before finishing a rotation (of `ca`, or of the service-account key): asks the running
/// cluster unless told not to.
fn gate(
    cluster: &Cluster,
    ca: Option<CaName>,
    request: &RotateArgs,
    report: &mut Report,
) -> Result<()> {
    let (state, config) = (&cluster.state, &cluster.config);
    let running = match ca {
        Some(ca) => state.rotating(ca)?,
        None => rotation::sa_rotating(state)?,
    };
    if running && !request.no_live_check {
        super::rollout::gate(state, config, ca, request.force, report)?;
    }
    Ok(())
}

/// Starts the rotation of `ca`: a new CA, every leaf reissued under it; for the etcd CA, its
/// superseded leaves recorded and the revocation list signed by the new CA.
fn start_ca(cluster: &Cluster, ca: CaName, keep_key: bool) -> Result<Applied> {
    let (state, config) = (&cluster.state, &cluster.config);
    let now = crate::clock::now();
    if ca == revocation::CA {
        revocation::note_superseded(state, config, now)?;
    }
    let mut applied = rotation::start_ca(state, config, ca, keep_key, now)?;
    // The CRL is signed by the CA that signs today: the new one.
    if ca == revocation::CA && revocation::crl(state)?.is_some() {
        applied
            .written
            .extend(revocation::issue_crl(state, config, now)?);
    }
    Ok(applied)
}

/// Finishes the rotation of `ca`: the old CA leaves the bundle, the chain link every leaf.
fn finish_ca(cluster: &Cluster, ca: CaName, report: &mut Report) -> Result<Applied> {
    let state = &cluster.state;
    let finished = rotation::finish_ca(state, &cluster.config, ca)?;
    if ca == revocation::CA {
        revocation::forget_superseded(state);
    }
    for rel in &finished.removed {
        report.say(format_args!("delete pki/{rel} and secrets/{rel}.age"));
    }
    Ok(finished.applied)
}

/// Renews what is due within `within` (default `keys.renew_before`), or every leaf with
/// `all`, and signs the revocation list anew when it is due; `None` when the command is done
/// (a dry run, or nothing but re-encryption, already committed).
fn renew(
    cluster: &Cluster,
    within: Option<Span>,
    all: bool,
    request: &RotateArgs,
    report: &mut Report,
) -> Result<Option<Applied>> {
    let (state, config, recipients) = (&cluster.state, &cluster.config, &cluster.recipients);
    let now = crate::clock::now();
    let within = within.unwrap_or(config.keys.renew_before);
    // What is due does not depend on which encrypted copies are stale (that only turns an
    // `ok` row into `stale-secret`): the two are made side by side.
    let (seal, assessed) = rayon::join(
        || secrets::plan(state, config, recipients, Depth::Changed),
        || assessment::assess(state, config, &HashMap::new(), now),
    );
    let seal = seal?;
    let renewals = rotation::renewals(assessed?, within, all);
    let plan = request.dry_run;
    for r in &renewals {
        report.step(plan, format_args!("renew {} ({})", r.name, r.reason));
    }
    let crl_due = revocation::crl_due(state, now, within)?;
    if let Some(why) = &crl_due {
        report.step(
            plan,
            format_args!("sign {} anew ({why})", catalogue::crl_file()),
        );
    }
    if plan {
        for (s, why) in seal.stale_files() {
            report.step(
                plan,
                format_args!("re-encrypt secrets/{}.age ({})", s.rel, why.describe()),
            );
        }
        for rel in stale_cache(state)? {
            report.step(plan, format_args!("refresh {rel} from secrets/"));
        }
        dry_run(report, "")?;
        return Ok(None);
    }
    if renewals.is_empty() && crl_due.is_none() {
        // Nothing to renew: the plan made above is the plan to commit.
        let committed = secrets::commit_planned(state, config, recipients, Vec::new(), seal)?;
        report_committed(report, &committed);
        if committed.is_empty() {
            report.say("nothing to do: nothing is due, drifted or stale");
        }
        return Ok(None);
    }
    let mut applied = rotation::renew(state, config, &renewals, request.keep_key, now)?;
    if crl_due.is_some() {
        applied
            .written
            .extend(revocation::issue_crl(state, config, now)?);
    }
    Ok(Some(applied))
}

/// `kpki rotate --prune`: removes what the config no longer accounts for, revokes, reissues.
pub(super) fn prune(cluster: &Cluster, plan_only: bool, report: &mut Report) -> Result<()> {
    let (state, config, recipients) = (&cluster.state, &cluster.config, &cluster.recipients);
    let now = crate::clock::now();
    let seal = secrets::plan(state, config, recipients, Depth::Changed)?;
    let prune = crate::prune::plan(state, config, &seal, now)?;
    if prune.is_empty() {
        report.say("nothing to prune: every file in secrets/ belongs to the config");
        return if plan_only {
            dry_run(report, "")
        } else {
            Ok(())
        };
    }
    for line in prune_plan(&prune) {
        report.step(plan_only, line);
    }
    if plan_only {
        return dry_run(report, "");
    }
    let applied = crate::prune::apply(state, config, &prune, now)?;
    let committed = secrets::commit(state, config, recipients, Vec::new())?;
    report_applied(report, config, &applied, "wrote");
    report_committed(report, &committed);
    report.say(prune_next(&prune));
    Ok(())
}

/// The plan of a prune, one line per step.
pub(super) fn prune_plan(prune: &crate::prune::Prune<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    for (dir, roles) in &prune.removed {
        let files: Vec<&String> = prune
            .deleted
            .iter()
            .filter(|f| f.starts_with(&format!("{dir}/")))
            .collect();
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        let held = match names.as_slice() {
            [] => String::new(),
            [one] => format!("; the {one} role"),
            more => format!("; the {} roles", more.join(", ")),
        };
        lines.push(format!(
            "delete {} (no longer in the config{held})",
            abbreviate(&files.iter().map(|f| format!("pki/{f}")).collect::<Vec<_>>())
        ));
    }
    let orphans: Vec<String> = prune
        .deleted
        .iter()
        .filter(|f| {
            !prune
                .removed
                .iter()
                .any(|(d, _)| f.starts_with(&format!("{d}/")))
        })
        .map(|f| format!("secrets/{f}.age"))
        .collect();
    if !orphans.is_empty() {
        lines.push(format!(
            "delete {} (in secrets/ but in neither the manifest nor the config)",
            abbreviate(&orphans)
        ));
    }
    for r in &prune.revoked {
        lines.push(format!(
            "revoke {} (serial {}, valid until {}) on {}",
            r.file,
            r.serial,
            crate::clock::date(r.not_after),
            catalogue::crl_file()
        ));
    }
    for item in &prune.reissued {
        lines.push(format!(
            "reissue {} with a new key (a removed node could read its key)",
            item.name()
        ));
    }
    match prune.signing_key {
        crate::prune::SigningKey::Rotate => lines.push(
            "start a service-account key rotation (a removed node could read the signing key)".into(),
        ),
        crate::prune::SigningKey::Busy => lines.push(
            "a removed node could read the service-account signing key, but a rotation of it is in progress: finish it, then run kpki rotate --service-account".into(),
        ),
        crate::prune::SigningKey::Untouched => {}
    }
    for ca in catalogue::CAS {
        let outlived: Vec<String> = prune
            .outlived
            .iter()
            .filter(|u| u.ca == ca)
            .map(|u| format!("{} ({})", u.file, crate::clock::date(u.not_after)))
            .collect();
        if !outlived.is_empty() {
            lines.push(format!(
                "still valid until they expire (the {} CA has no revocation; kpki rotate --ca {} ends them): {}",
                ca.dir(),
                ca.dir(),
                abbreviate(&outlived)
            ));
        }
    }
    lines
}

/// What to do after a prune.
pub(super) fn prune_next(prune: &crate::prune::Prune<'_>) -> String {
    let mut next = String::from("next: deploy to every node");
    if !prune.revoked.is_empty() {
        next += " (etcd refuses the revoked certificates as soon as a member has the new CRL)";
    }
    if prune.signing_key == crate::prune::SigningKey::Rotate {
        next += "; finish the service-account rotation once old tokens have expired (kpki rotate --service-account --finish)";
    }
    if let Some(ca) = prune.outlived.first().map(|u| u.ca) {
        next += &format!(
            "; what stays valid ends with a CA rotation (kpki rotate --ca {})",
            ca.dir()
        );
    }
    next
}

/// Plaintext files a commit would refresh from `secrets/`.
pub(super) fn stale_cache(state: &State) -> Result<Vec<String>> {
    Ok(state
        .divergent()?
        .into_iter()
        .filter(|(_, p)| !matches!(p, Place::Changed { .. }))
        .map(|(rel, _)| format!("pki/{rel}"))
        .collect())
}

pub(super) fn finishing(finish: bool) -> &'static str {
    if finish { "finish rotating" } else { "rotate" }
}
