//! `kpki revoke`: a certificate on the etcd list, or a user removed.

use super::*;

/// `kpki revoke NAME...`.
pub fn revoke(ctx: &Context, args: &RevokeArgs, report: &mut Report) -> Result<()> {
    let (config, recipients, state) = cluster(ctx, report, Access::Write)?.parts();
    let now = crate::clock::now();
    let mut applied = Applied::default();
    let mut deleted = Vec::new();
    for name in &args.names {
        let (outcome, done) = revocation::revoke(&state, &config, name, now)?;
        applied.merge(done);
        match outcome {
            revocation::Revoked::Reissued(revoked) => {
                let serials: Vec<&str> = revoked.iter().map(|r| r.serial.as_str()).collect();
                report.say(format_args!(
                    "revoked {} (serial {}) on {}; reissued it with a new key",
                    revoked[0].file,
                    serials.join(", and of the previous etcd CA "),
                    catalogue::crl_file()
                ))
            }
            revocation::Revoked::UserRemoved {
                deleted: files,
                outlived,
            } => {
                deleted.extend(files);
                if let Some(u) = outlived {
                    report.warn(format_args!(
                        "{}: stays valid until {}: the {} CA has no revocation (kpki rotate --ca {} ends it)",
                        u.file,
                        crate::clock::rfc3339(u.not_after),
                        u.ca.dir(),
                        u.ca.dir()
                    ));
                }
            }
        }
    }
    applied.written.sort();
    applied.written.dedup();
    let committed = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "wrote");
    let deleted: Vec<String> = deleted
        .iter()
        .flat_map(|rel| [format!("pki/{rel}"), format!("secrets/{rel}.age")])
        .collect();
    report.files("deleted", deleted);
    report_committed(report, &committed);
    if !applied.written.is_empty() {
        report.say("next: deploy to every node (etcd reads the new CRL at its next connection)");
    }
    Ok(())
}
