//! `kpki import`: a PKI made by kubeadm, easyCerts or by hand, adopted after every check.

use super::*;

/// `kpki import`: adopts the PKI of a directory laid out as kubeadm, easyCerts or a map says.
pub fn import(ctx: &Context, from: &ImportFrom, report: &mut Report) -> Result<()> {
    let (dir, layout) = match from {
        ImportFrom::Kubeadm { source, node } => (source, importing::Layout::Kubeadm { node }),
        ImportFrom::Easycerts { source, node } => (source, importing::Layout::EasyCerts { node }),
        ImportFrom::Dir { source, maps } => (source, importing::Layout::Map(maps)),
    };
    let store = &ctx.store;
    let (cluster, admins) = open(ctx, report, Access::Write, || {
        let config = config(store)?;
        let admins = secrets::admins(store, &config)?;
        Ok((config, admins))
    })?;
    let (config, recipients, state) = cluster.parts();
    let plan = importing::plan(&state, &config, dir, layout)?;
    for rel in &plan.kept {
        report.say(format_args!(
            "kept pki/{rel}: kpki holds another one already (a cluster-wide one from another node, or one reissued since)"
        ));
    }
    if !plan.unused.is_empty() {
        report.say(format_args!(
            "not adopted (no catalogue entry takes them): {}",
            abbreviate(&plan.unused)
        ));
    }
    if plan.adopted.is_empty() {
        report.say("nothing to adopt: pki/ already holds everything the import brings");
        return Ok(());
    }
    let adopted = importing::apply(&state, plan.adopted);
    let extras = first_run_files(store, &admins);
    let committed = secrets::commit(&state, &config, &recipients, extras)?;
    for (rel, from) in &adopted {
        report.say(format_args!("adopted pki/{rel} from {}", from.display()));
    }
    warn_generated(report, &admins);
    report_committed(report, &committed);
    let now = crate::clock::now();
    let seal = secrets::plan(&state, &config, &recipients, Depth::Changed)?;
    let assessed = assessment::assess(&state, &config, &assessment::stale_files(&seal), now)?;
    let adopted: std::collections::HashSet<String> = adopted.into_iter().map(|(r, _)| r).collect();
    let mut missing = Vec::new();
    for a in &assessed {
        let Target::Item(item) = &a.target else {
            continue;
        };
        match a.row.state {
            assessment::Health::Drift if adopted.contains(&item.file(Part::Cert)) => {
                report.say(format_args!(
                    "drift {}: {}: kpki rotate reissues it under the same CA",
                    a.row.name,
                    a.row.detail.as_deref().unwrap_or_default()
                ))
            }
            assessment::Health::Missing => missing.push(a.row.name.clone()),
            _ => {}
        }
    }
    if !missing.is_empty() {
        report.say(format_args!(
            "missing (the import did not bring them): {}: kpki rotate creates them under the adopted CAs",
            abbreviate(&missing)
        ));
    }
    for note in shared_cas(&state)? {
        report.say(format_args!("note: {note}"));
    }
    report.say("next: kpki rotate, then deploy: the nodes keep trusting the same CAs");
    Ok(())
}
