//! `kpki verify`: the deep check, decrypting what an identity allows.

use super::status::cache_notes;

mod checks;
use super::*;

/// `kpki verify`; problems found set `report.needs_action`.
pub fn verify(ctx: &Context, report: &mut Report) -> Result<()> {
    let (config, recipients, state) = cluster(ctx, report, Access::Read)?.parts();
    let seal = secrets::plan(&state, &config, &recipients, Depth::All)?;
    let identity = state.has_identity()?;
    // Without an identity, files kept only in secrets/ cannot be checked; when that is every
    // file, there is nothing to verify at all.
    let (unread, total) = sealed_only(&state, &seal)?;
    let unread = if identity { 0 } else { unread };
    if unread == total && total > 0 {
        return Err(Error::Identity {
            message: "secrets/ must be decrypted (pki/ holds nothing to check), but no identity was given".into(),
            hint: Some("pass -i FILE (an age identity or OpenSSH private key) or set KPKI_IDENTITY".into()),
        });
    }
    let mut problems = checks::verify(&state, &config, &recipients, &seal)?;
    problems.sort();
    problems.dedup();
    not_an_admin(ctx, &recipients, &seal, &mut problems);
    for problem in &problems {
        report.output(format!("{problem}\n"));
    }
    for note in cache_notes(&state, &config, 0)? {
        report.note(note);
    }
    if !identity {
        report.note(format_args!(
            "not checked without an identity: the contents of secrets/, and {unread} files kept only there (keys among them, matched with their certificates): pass -i with an admin identity"
        ));
    }
    match (problems.is_empty() && !report.needs_action, identity) {
        (true, true) => report.say("verified: no problems"),
        (true, false) => report.say("verified what is readable without an identity: no problems"),
        _ => {}
    }
    report.needs_action |= !problems.is_empty();
    Ok(())
}

/// When the identity decrypts no file at all, one line says so instead of one per file: it is
/// not an admin's (with its recipient, for an age identity file given with `-i`).
pub(super) fn not_an_admin(
    ctx: &Context,
    recipients: &Recipients,
    seal: &secrets::SealPlan<'_>,
    problems: &mut Vec<String>,
) {
    let locked = |p: &String| p.contains(crate::agefile::NOT_A_RECIPIENT);
    let count = problems.iter().filter(|p| locked(p)).count();
    let sealed = seal
        .sealed
        .iter()
        .filter(|s| ctx.store.secret_path(&s.rel).is_file())
        .count();
    if count < 2 || count < sealed {
        return;
    }
    problems.retain(|p| !locked(p));
    let recipient = ctx
        .identity
        .as_deref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| crate::agefile::identity_recipient(&text).ok());
    let (who, what) = match (&ctx.identity, recipient) {
        (Some(path), Some(r)) => (path.display().to_string(), format!("its recipient {r} is")),
        (Some(path), None) => (path.display().to_string(), "it is".to_string()),
        (None, _) => ("the default identity".to_string(), "it is".to_string()),
    };
    problems.push(format!(
        "{who}: decrypts none of the {count} files in secrets/: {what} not one of the {} in secrets.admins",
        recipients.admins().len()
    ));
}

/// How many files of `seal` that `pki/` may cache exist only in `secrets/`, and of how many.
pub(super) fn sealed_only(state: &State, seal: &secrets::SealPlan<'_>) -> Result<(usize, usize)> {
    let cacheable = seal
        .sealed
        .iter()
        .filter(|s| s.kind != crate::pem::FileKind::Kubeconfig);
    let (mut unread, mut total) = (0, 0);
    for s in cacheable {
        unread += usize::from(state.place(&s.rel)? == Place::Sealed);
        total += 1;
    }
    Ok((unread, total))
}
