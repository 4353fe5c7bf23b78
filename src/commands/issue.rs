//! `kpki issue`: one certificate (or a node's) reissued, or a client certificate made.

use super::*;

/// `kpki issue`.
pub fn issue(ctx: &Context, request: &IssueArgs, report: &mut Report) -> Result<()> {
    let validity = request.validity;
    if request.profile == "service-account" {
        return Err(Error::usage(
            "the service-account key is not reissued: a new key at once would invalidate every token",
            Some("rotate it with an overlap: kpki rotate --service-account (then --finish)".into()),
        ));
    }
    let subject = match request.profile.as_str() {
        "client" => Some(client_subject(request)?),
        _ if request.cn.is_some() || !request.groups.is_empty() => {
            return Err(Error::usage(
                "--cn and --group go with `kpki issue client` only",
                None,
            ));
        }
        _ => None,
    };
    let (config, recipients, state) = cluster(ctx, report, Access::Write)?.parts();
    let now = crate::clock::now();
    let targets = match subject {
        Some(subject) => vec![Target::User(subject)],
        None => issue_targets(&config, &request.profile, request.node.as_deref())?
            .into_iter()
            .map(|item| Target::Item(Box::new(item)))
            .collect(),
    };
    if let Some(span) = validity.filter(|v| v.0 <= config.keys.renew_before.0) {
        report.warn(format_args!(
            "--validity {} days is within keys.renew_before ({} days): kpki status will show it due for renewal at once, and kpki rotate will renew it",
            span.0.whole_days(),
            config.keys.renew_before.0.whole_days()
        ));
    }
    let steps = actions::issue(&state, targets, request.keep_key, validity)?;
    let applied = actions::apply(&state, &config, &steps, now)?;
    let committed = secrets::commit(&state, &config, &recipients, Vec::new())?;
    report_applied(report, &config, &applied, "issued");
    report_committed(report, &committed);
    Ok(())
}

/// The subject of `kpki issue client --cn NAME --group G...`.
pub(super) fn client_subject(request: &IssueArgs) -> Result<Subject> {
    if let Some(node) = &request.node {
        return Err(Error::usage(
            format!("`issue client` takes no node (got \"{node}\")"),
            None,
        ));
    }
    let name = request.cn.as_deref().ok_or_else(|| {
        Error::usage(
            "`issue client` needs --cn NAME",
            Some("e.g. kpki issue client --cn alice --group developers".into()),
        )
    })?;
    catalogue::check_user_name(name).map_err(|e| Error::usage(format!("--cn: {e}"), None))?;
    if request.groups.len() > 2 {
        return Err(Error::usage(
            format!(
                "--group: {} groups given, but a certificate can carry at most 2",
                request.groups.len()
            ),
            Some("bind further groups with RBAC instead".into()),
        ));
    }
    if let Some(bad) = request
        .groups
        .iter()
        .find(|g| g.is_empty() || g.chars().any(char::is_control))
    {
        return Err(Error::usage(
            format!("--group: {bad:?} is not a group name"),
            None,
        ));
    }
    Ok(Subject {
        common_name: name.to_string(),
        organizations: request.groups.to_vec(),
        sans: Vec::new(),
    })
}

/// The items `kpki issue PROFILE [NODE]` names.
pub(super) fn issue_targets<'c>(
    config: &'c Config,
    profile: &str,
    node: Option<&str>,
) -> Result<Vec<Item<'c>>> {
    if profile == "node" {
        let node = find_node(config, node, "`issue node` needs a node")?;
        return Ok(catalogue::node_items(config, node).collect());
    }
    let Some(entry) = catalogue::entry(config, profile) else {
        let mut valid: Vec<&str> = catalogue::entries(config)
            .filter(|e| !matches!(e.kind, Kind::Ca(_) | Kind::KeyPair))
            .map(|e| e.profile)
            .collect();
        valid.extend(["node", "client"]);
        return Err(Error::usage(
            format!(
                "unknown profile \"{profile}\"{}",
                did_you_mean(profile, &valid)
            ),
            Some(format!("valid profiles: {}", valid.join(", "))),
        ));
    };
    match (entry.kind, entry.scope) {
        (Kind::Ca(ca), _) => Err(Error::usage(
            format!("{profile} is a CA and is not reissued"),
            Some(format!("rotate it with kpki rotate --ca {}", ca.dir())),
        )),
        (_, Scope::Cluster { .. }) => match node {
            Some(node) => Err(Error::usage(
                format!("{profile} is cluster-wide and takes no node (got \"{node}\")"),
                None,
            )),
            None => Ok(Item::new(entry, None).into_iter().collect()),
        },
        (_, Scope::Node(selection)) => {
            let node = find_node(config, node, &format!("{profile} needs a node"))?;
            if !selection.includes(node) {
                let with: Vec<&str> = config
                    .nodes
                    .iter()
                    .filter(|n| selection.includes(n))
                    .map(|n| n.name.as_str())
                    .collect();
                let roles: Vec<&str> = selection.roles.iter().map(|r| r.name()).collect();
                return Err(Error::usage(
                    format!(
                        "node \"{}\" has no {profile} (it goes to nodes with the role {})",
                        node.name,
                        roles.join(" or ")
                    ),
                    Some(format!("nodes that have it: {}", with.join(", "))),
                ));
            }
            Ok(Item::new(entry, Some(node)).into_iter().collect())
        }
    }
}
