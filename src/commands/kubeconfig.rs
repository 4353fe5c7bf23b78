//! `kpki kubeconfig`: a kubeconfig for an identity kpki holds.

use super::*;

/// `kpki kubeconfig IDENTITY [NAME [NODE]] [--server URL] [-o FILE]`.
pub fn kubeconfig(ctx: &Context, args: &KubeconfigArgs, report: &mut Report) -> Result<()> {
    let config = config(&ctx.store)?;
    report_interrupted(&ctx.store, report);
    let server = match &args.server {
        Some(s) => {
            let crate::config::ApiServer { url, host, .. } = crate::kubeconfig::server_url(s)
                .map_err(|e| Error::usage(format!("--server: {e}"), None))?;
            if !apiserver_names(&config).contains(&host) {
                report.warn(format_args!(
                    "--server {url}: no apiserver certificate is valid for that host, so clients will refuse it (add it to cluster.api_sans and run kpki rotate)"
                ));
            }
            url
        }
        None => config.cluster.api_server.clone(),
    };
    let (cert, key, user) = kubeconfig_client(&config, args)?;
    let state = State::open(ctx.store.clone(), ctx.identity.clone(), Access::Read)?;
    refuse_untrusted(ctx, &state)?;
    if args.who == "user" && !state.exists(&cert)? {
        return Err(Error::usage(
            format!("no user \"{user}\" (pki/{cert} does not exist)"),
            Some(format!("make one with kpki issue client --cn {user}")),
        ));
    }
    let text = crate::kubeconfig::client(&state, &config, &cert, &key, &user, &server)?;
    match &args.output {
        Some(path) => {
            store::write_outside(path, text.as_bytes(), store::SECRET_MODE)?;
            report.say(format_args!(
                "wrote {} ({user} at {server})",
                path.display()
            ));
        }
        None => report.output(text),
    }
    Ok(())
}

/// Every name and address some apiserver certificate is valid for.
pub(super) fn apiserver_names(config: &Config) -> Vec<crate::config::San> {
    catalogue::items(config)
        .into_iter()
        .filter(|i| i.entry().profile == "apiserver")
        .flat_map(|i| i.subject(config).sans)
        .collect()
}

/// The certificate, key and user name of a kubeconfig identity.
pub(super) fn kubeconfig_client(
    config: &Config,
    args: &KubeconfigArgs,
) -> Result<(String, String, String)> {
    let from_item = |item: Item<'_>| {
        (
            item.file(Part::Cert),
            item.file(Part::Key),
            item.subject(config).common_name,
        )
    };
    let (who, name) = (args.who.as_str(), args.name.as_deref());
    if who != "cert" && args.node.is_some() {
        return Err(Error::usage(
            "only `kubeconfig cert NAME NODE` takes a node after the name",
            None,
        ));
    }
    match (who, name) {
        ("admin" | "controller-manager" | "scheduler" | "kube-proxy", None) => {
            let item = catalogue::shared_item(who).expect("catalogued");
            Ok(from_item(item))
        }
        ("kubelet", node) => {
            let node = find_node(config, node, "`kubeconfig kubelet` needs a node")?;
            let entry = catalogue::kubelet();
            if !node.has(Role::Worker) {
                return Err(Error::usage(
                    format!("node \"{}\" is not a worker and has no kubelet", node.name),
                    None,
                ));
            }
            Ok(from_item(Item::new(entry, Some(node)).expect("kubelet is per node")))
        }
        ("user", Some(user)) => {
            catalogue::check_user_name(user).map_err(|e| Error::usage(format!("user: {e}"), None))?;
            Ok((
                catalogue::user_file(user, Part::Cert),
                catalogue::user_file(user, Part::Key),
                user.to_string(),
            ))
        }
        ("user", None) => Err(Error::usage(
            "`kubeconfig user` needs a user name",
            Some("users are made with kpki issue client --cn NAME".into()),
        )),
        ("cert", Some(name)) => declared_client(config, name, args.node.as_deref()).map(from_item),
        (_, _) => Err(Error::usage(
            format!(
                "no kubeconfig for \"{who}\"{}",
                name.map(|n| format!(" {n}")).unwrap_or_default()
            ),
            Some(
                "valid: admin, controller-manager, scheduler, kube-proxy, kubelet NODE, user NAME, cert NAME [NODE]"
                    .into(),
            ),
        )),
    }
}

/// The declared client certificate of the Kubernetes CA named `name` (of `node`, when it is one
/// per node).
pub(super) fn declared_client<'c>(
    config: &'c Config,
    name: &str,
    node: Option<&str>,
) -> Result<Item<'c>> {
    let client_of_kubernetes = |e: &catalogue::Entry<'_>| {
        e.is_declared()
            && matches!(e.kind, Kind::Leaf { ca: CaName::Kubernetes, usage } if usage.client())
    };
    let entry = catalogue::entry(config, name)
        .filter(client_of_kubernetes)
        .ok_or_else(|| {
            let valid: Vec<&str> = catalogue::entries(config)
                .filter(client_of_kubernetes)
                .map(|e| e.profile)
                .collect();
            Error::usage(
                format!("no declared client certificate of the Kubernetes CA named {name:?}"),
                Some(format!("declared in kpki.toml: {}", list_or_none(&valid))),
            )
        })?;
    let node = match entry.scope {
        Scope::Cluster { .. } => None,
        Scope::Node(selection) => {
            let node = find_node(config, node, &format!("{name} is per node: name the node"))?;
            if !selection.includes(node) {
                return Err(Error::usage(
                    format!("node \"{}\" has no {name}", node.name),
                    None,
                ));
            }
            Some(node)
        }
    };
    Item::new(entry, node).ok_or_else(|| Error::usage(format!("{name} takes no node"), None))
}
