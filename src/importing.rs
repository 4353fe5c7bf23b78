//! Adopting a PKI made elsewhere, so a running cluster never notices the switch: kubeadm's
//! `/etc/kubernetes/pki`, nixpkgs' easyCerts (cfssl's CA and the files certmgr wrote), or any
//! directory of PEM files mapped by hand.
//!
//! Every file is parsed strictly, keys are converted to kpki's PKCS#8 and checked against their
//! certificates, leaves against the CA they must chain to, and CAs against those kpki already
//! holds (only a re-import of the same CAs is accepted). Nothing is adopted unless all of it
//! passes; what does not match today's config is adopted anyway and reported as drift, for
//! `kpki rotate` to reissue under the same CA.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::catalogue::{self, CaName, Item, Kind, Part, Scope};
use crate::config::{Config, Node};
use crate::error::{Error, Result};
use crate::inspection::{facts, signed_by};
use crate::pem::{self, Material};
use crate::state::State;
use crate::store::{self, PEM_LIMIT};

/// Where a PKI comes from.
#[derive(Debug, Clone, Copy)]
pub enum Layout<'a> {
    /// One control-plane node's `/etc/kubernetes/pki`.
    Kubeadm { node: &'a str },
    /// One node's easyCerts files: cfssl's `ca.pem`, `ca-key.pem` and what certmgr wrote to
    /// `/var/lib/kubernetes/secrets`, copied into one directory.
    EasyCerts { node: &'a str },
    /// Files given one by one: `(file in the directory, path under pki/)`.
    Map(&'a [(String, String)]),
}

/// kubeadm's files and the catalogue entry (by profile) and part each becomes; a per-node
/// entry's is the imported node's.
const KUBEADM: &[(&str, &str, Part)] = &[
    ("ca.crt", "kubernetes-ca", Part::Cert),
    ("ca.key", "kubernetes-ca", Part::Key),
    ("etcd/ca.crt", "etcd-ca", Part::Cert),
    ("etcd/ca.key", "etcd-ca", Part::Key),
    ("front-proxy-ca.crt", "front-proxy-ca", Part::Cert),
    ("front-proxy-ca.key", "front-proxy-ca", Part::Key),
    ("sa.pub", "service-account", Part::Cert),
    ("sa.key", "service-account", Part::Key),
    ("apiserver.crt", "apiserver", Part::Cert),
    ("apiserver.key", "apiserver", Part::Key),
    (
        "apiserver-kubelet-client.crt",
        "apiserver-kubelet-client",
        Part::Cert,
    ),
    (
        "apiserver-kubelet-client.key",
        "apiserver-kubelet-client",
        Part::Key,
    ),
    (
        "apiserver-etcd-client.crt",
        "apiserver-etcd-client",
        Part::Cert,
    ),
    (
        "apiserver-etcd-client.key",
        "apiserver-etcd-client",
        Part::Key,
    ),
    ("front-proxy-client.crt", "front-proxy-client", Part::Cert),
    ("front-proxy-client.key", "front-proxy-client", Part::Key),
    ("etcd/server.crt", "etcd-server", Part::Cert),
    ("etcd/server.key", "etcd-server", Part::Key),
    ("etcd/peer.crt", "etcd-peer", Part::Cert),
    ("etcd/peer.key", "etcd-peer", Part::Key),
];

/// easyCerts' files (names from nixpkgs' kubernetes modules) and what each becomes, as for
/// kubeadm. Its one CA is all three of kpki's; its etcd certificate serves both clients and
/// peers.
const EASYCERTS: &[(&str, &str, Part)] = &[
    ("ca.pem", "kubernetes-ca", Part::Cert),
    ("ca-key.pem", "kubernetes-ca", Part::Key),
    ("ca.pem", "etcd-ca", Part::Cert),
    ("ca-key.pem", "etcd-ca", Part::Key),
    ("ca.pem", "front-proxy-ca", Part::Cert),
    ("ca-key.pem", "front-proxy-ca", Part::Key),
    ("service-account.pem", "service-account", Part::Cert),
    ("service-account-key.pem", "service-account", Part::Key),
    ("kube-apiserver.pem", "apiserver", Part::Cert),
    ("kube-apiserver-key.pem", "apiserver", Part::Key),
    (
        "kube-apiserver-kubelet-client.pem",
        "apiserver-kubelet-client",
        Part::Cert,
    ),
    (
        "kube-apiserver-kubelet-client-key.pem",
        "apiserver-kubelet-client",
        Part::Key,
    ),
    (
        "kube-apiserver-etcd-client.pem",
        "apiserver-etcd-client",
        Part::Cert,
    ),
    (
        "kube-apiserver-etcd-client-key.pem",
        "apiserver-etcd-client",
        Part::Key,
    ),
    (
        "kube-apiserver-proxy-client.pem",
        "front-proxy-client",
        Part::Cert,
    ),
    (
        "kube-apiserver-proxy-client-key.pem",
        "front-proxy-client",
        Part::Key,
    ),
    ("cluster-admin.pem", "admin", Part::Cert),
    ("cluster-admin-key.pem", "admin", Part::Key),
    (
        "kube-controller-manager-client.pem",
        "controller-manager",
        Part::Cert,
    ),
    (
        "kube-controller-manager-client-key.pem",
        "controller-manager",
        Part::Key,
    ),
    ("kube-scheduler-client.pem", "scheduler", Part::Cert),
    ("kube-scheduler-client-key.pem", "scheduler", Part::Key),
    ("kube-proxy-client.pem", "kube-proxy", Part::Cert),
    ("kube-proxy-client-key.pem", "kube-proxy", Part::Key),
    ("kubelet.pem", "kubelet-serving", Part::Cert),
    ("kubelet-key.pem", "kubelet-serving", Part::Key),
    ("kubelet-client.pem", "kubelet", Part::Cert),
    ("kubelet-client-key.pem", "kubelet", Part::Key),
    ("etcd.pem", "etcd-server", Part::Cert),
    ("etcd-key.pem", "etcd-server", Part::Key),
    ("etcd.pem", "etcd-peer", Part::Cert),
    ("etcd-key.pem", "etcd-peer", Part::Key),
];

/// What an import brings, checked.
#[derive(Debug, Default)]
pub struct Import {
    /// Files to write, by path under `pki/`, with the file each comes from.
    pub adopted: BTreeMap<String, (PathBuf, Material)>,
    /// Files kpki already holds otherwise (a cluster-wide one imported from another node, or one
    /// reissued since): kept, never replaced by an older one.
    pub kept: Vec<String>,
    /// Files that already hold what the import brings.
    pub unchanged: Vec<String>,
    /// Files in the directory that go nowhere (no catalogue entry takes them).
    pub unused: Vec<String>,
}

/// Reads and checks everything `layout` takes from `dir`; refuses the whole import at the first
/// file that fails, naming it.
pub fn plan(state: &State, config: &Config, dir: &Path, layout: Layout<'_>) -> Result<Import> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::file(dir, "is not a directory"));
    }
    let sources = sources(config, dir, layout)?;
    let mut read: BTreeMap<String, (PathBuf, Material)> = BTreeMap::new();
    for (from, to) in &sources {
        read.insert(to.clone(), (from.clone(), adopt_file(from, to)?));
    }
    check_pairs(&read)?;
    let cas = check_cas(state, &read)?;
    check_leaves(config, &read, &cas)?;
    let mut import = Import {
        unused: unused(dir, layout, &sources)?,
        ..Import::default()
    };
    for (rel, (from, material)) in read {
        let current = state.fingerprint(&rel)?;
        if current.as_deref() == Some(material.fingerprint.as_str()) {
            import.unchanged.push(rel);
        } else if current.is_some() {
            import.kept.push(rel);
        } else {
            import.adopted.insert(rel, (from, material));
        }
    }
    Ok(import)
}

/// The files `layout` takes from `dir`, with where each goes. A node must be in the config; the
/// built-in layouts need their CA files and skip others that are absent (external etcd, say).
fn sources(config: &Config, dir: &Path, layout: Layout<'_>) -> Result<Vec<(PathBuf, String)>> {
    let (table, node) = match layout {
        Layout::Kubeadm { node } => (KUBEADM, node),
        Layout::EasyCerts { node } => (EASYCERTS, node),
        Layout::Map(maps) => return mapped(config, dir, maps),
    };
    let Some(imported) = config.nodes.iter().find(|n| n.name == node) else {
        return Err(Error::usage(
            format!("--node {node}: no such node in pki/kpki.toml"),
            Some("add the node to the config first (its name, addresses and roles)".into()),
        ));
    };
    // A worker never holds the CA keys or the service-account key: any found in its files were
    // put there by someone, and adopting them would hand that someone the cluster.
    if !imported.has(crate::config::Role::ControlPlane) {
        return Err(Error::usage(
            format!(
                "--node {node} is not a control-plane node: the CA keys and the service-account key are adopted only from a control-plane node's files"
            ),
            Some("import a control-plane node's files, or map files one by one with kpki import dir --map".into()),
        ));
    }
    let files = catalogue_files(config);
    let mut found = Vec::new();
    for &(from, profile, part) in table {
        let path = dir.join(from);
        let to = import_file(profile, imported, part);
        let is_ca = catalogue::is_ca_file(&to);
        if !path.exists() {
            if is_ca {
                return Err(Error::file(
                    &path,
                    "is missing: an import needs the CA it adopts",
                ));
            }
            continue;
        }
        if !files.contains_key(&to) {
            return Err(Error::file(
                &path,
                format!(
                    "goes to pki/{to}, but node {node} does not hold it (check its roles in pki/kpki.toml)"
                ),
            ));
        }
        found.push((path, to));
    }
    Ok(found)
}

/// The file under `pki/` that a table's `profile` and `part` name, for `node` when per-node.
fn import_file(profile: &str, node: &Node, part: Part) -> String {
    let entry = catalogue::builtin(profile).expect("the import tables name built-in entries");
    let node = matches!(entry.scope, Scope::Node(_)).then_some(node);
    Item::new(entry, node)
        .expect("an entry bound as its scope says")
        .file(part)
}

/// The files `--map FILE=PATH` names, each checked to be a file of the catalogue.
fn mapped(
    config: &Config,
    dir: &Path,
    maps: &[(String, String)],
) -> Result<Vec<(PathBuf, String)>> {
    let files = catalogue_files(config);
    maps.iter()
        .map(|(from, to)| {
            let to = to.strip_prefix("pki/").unwrap_or(to);
            if !files.contains_key(to) {
                return Err(Error::usage(
                    format!("--map {from}={to}: pki/{to} is not a file of this cluster's catalogue"),
                    Some("map to the paths kpki uses: kubernetes/ca.pem, kubernetes/ca-key.pem, node-01/apiserver.pem, ...".into()),
                ));
            }
            Ok((dir.join(from), to.to_string()))
        })
        .collect()
}

/// Every file of the catalogue under `config`, with its item.
fn catalogue_files(config: &Config) -> BTreeMap<String, Item<'_>> {
    catalogue::items(config)
        .into_iter()
        .flat_map(|item| [Part::Cert, Part::Key].map(|p| (item.file(p), item)))
        .collect()
}

/// One file read strictly as what `pki/TO` holds: keys converted to PKCS#8, the public key of
/// a certificate where a public key is due (easyCerts' service-account certificate).
fn adopt_file(from: &Path, to: &str) -> Result<Material> {
    let bytes = store::read_regular(from, PEM_LIMIT)?
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| Error::file(from, "is missing"))?;
    let bad = |m: String| Error::file(from, m);
    match catalogue::file_kind(to) {
        pem::FileKind::PrivateKey => pem::adopt_key(&bytes).map_err(bad),
        pem::FileKind::PublicKeys if bytes.windows(17).any(|w| w == b"BEGIN CERTIFICATE") => {
            let cert = pem::parse(pem::FileKind::Certificates, &bytes).map_err(bad)?;
            let spki = facts(cert.first()).map_err(bad)?.spki;
            Ok(pem::made(
                pem::FileKind::PublicKeys,
                pem::encode("PUBLIC KEY", &spki),
            ))
        }
        kind => pem::parse(kind, &bytes).map_err(bad),
    }
}

/// Every key matches its certificate (or, for the service-account pair, its public key).
fn check_pairs(read: &BTreeMap<String, (PathBuf, Material)>) -> Result<()> {
    for (rel, (from, key)) in read
        .iter()
        .filter(|(_, (_, m))| m.kind == pem::FileKind::PrivateKey)
    {
        let public_rel = rel.replace("-key.pem", ".pem");
        let Some((public_from, public)) = read.get(&public_rel) else {
            if catalogue::file_kind(&public_rel) == pem::FileKind::PublicKeys {
                continue;
            }
            return Err(Error::file(
                from,
                format!(
                    "is a key without its certificate (pki/{public_rel}): kpki adopts a key only with the certificate that vouches for it"
                ),
            ));
        };
        let spki = pem::key_spki(&key.text).map_err(|m| Error::file(from, m))?;
        let first = match public.kind {
            pem::FileKind::PublicKeys => public.first().to_vec(),
            _ => {
                facts(public.first())
                    .map_err(|m| Error::file(public_from, m))?
                    .spki
            }
        };
        if spki != first {
            return Err(Error::file(
                from,
                format!("does not match its certificate {}", public_from.display()),
            ));
        }
    }
    Ok(())
}

/// The CA certificates the import brings or kpki holds, by CA. An imported CA must be a CA
/// certificate, alone in its file; where kpki already holds that CA, it must be the same one.
fn check_cas(
    state: &State,
    read: &BTreeMap<String, (PathBuf, Material)>,
) -> Result<BTreeMap<CaName, Vec<u8>>> {
    let mut cas = BTreeMap::new();
    for ca in catalogue::CAS {
        let rel = catalogue::ca_file(ca);
        let held = state.read(&rel)?;
        let Some((from, imported)) = read.get(&rel) else {
            if let Some(held) = held {
                cas.insert(ca, held.first().to_vec());
            }
            continue;
        };
        let ca_facts = facts(imported.first()).map_err(|m| Error::file(from, m))?;
        if imported.blocks().len() != 1 || !ca_facts.is_ca {
            return Err(Error::file(from, "is not one CA certificate"));
        }
        if let Some(why) = unfit_ca(imported.first()) {
            return Err(Error::file(from, why));
        }
        if let Some(held) = held
            && held.fingerprint != imported.fingerprint
        {
            return Err(Error::usage(
                format!(
                    "{}: another {} CA than the one kpki holds (pki/{rel}); an import adopts a PKI into an empty cluster directory, or the same CAs again (another node of the same cluster)",
                    from.display(),
                    ca.dir()
                ),
                Some("import every node of one cluster into one cluster directory".into()),
            ));
        }
        cas.insert(ca, imported.first().to_vec());
    }
    Ok(cas)
}

/// Why kpki could not go on with an imported CA, or `None`: it must sign certificates
/// (`keyCertSign`) and revocation lists of its own, take a cross-signed successor below it
/// during a rotation (a path length of at least 1), and name any host kpki issues for (no name
/// constraints).
fn unfit_ca(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let usage = cert.key_usage().ok().flatten().map(|u| u.value);
    if usage.is_some_and(|u| !u.key_cert_sign()) {
        return Some(
            "is a CA certificate without keyCertSign: it cannot sign kpki's certificates".into(),
        );
    }
    let path_len = cert
        .basic_constraints()
        .ok()
        .flatten()
        .and_then(|b| b.value.path_len_constraint);
    if path_len == Some(0) {
        return Some("is a CA with path length 0: a CA rotation's cross-signed successor could not sit below it (kpki's CAs have path length 1)".into());
    }
    if cert.name_constraints().ok().flatten().is_some() {
        return Some("is a CA with name constraints: certificates kpki issues for other names would fail verification".into());
    }
    None
}

/// Every imported leaf is signed by the CA of its catalogue entry, and is no CA.
fn check_leaves(
    config: &Config,
    read: &BTreeMap<String, (PathBuf, Material)>,
    cas: &BTreeMap<CaName, Vec<u8>>,
) -> Result<()> {
    let files = catalogue_files(config);
    for (rel, (from, material)) in read {
        let Some(Kind::Leaf { ca, .. }) = files.get(rel).map(|i| i.entry().kind) else {
            continue;
        };
        if material.kind != pem::FileKind::Certificates {
            continue;
        }
        let Some(ca_der) = cas.get(&ca) else {
            return Err(Error::file(
                from,
                format!(
                    "is a certificate of the {} CA, which the import does not bring and kpki does not hold",
                    ca.dir()
                ),
            ));
        };
        let leaf = facts(material.first()).map_err(|m| Error::file(from, m))?;
        if leaf.is_ca
            || cas
                .values()
                .any(|ca| facts(ca).is_ok_and(|c| c.spki == leaf.spki))
        {
            return Err(Error::file(
                from,
                "is a CA certificate, or holds a CA's key, in the place of a leaf: refused",
            ));
        }
        if !signed_by(material.first(), ca_der) {
            return Err(Error::file(
                from,
                format!("is not signed by the {} CA being adopted", ca.dir()),
            ));
        }
    }
    Ok(())
}

/// The PEM-looking files of `dir` (and `dir/etcd`) that a built-in layout does not take.
fn unused(dir: &Path, layout: Layout<'_>, sources: &[(PathBuf, String)]) -> Result<Vec<String>> {
    if matches!(layout, Layout::Map(_)) {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("etcd")] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let pemish = [".crt", ".key", ".pem", ".pub"]
                .iter()
                .any(|e| name.ends_with(e));
            if pemish && path.is_file() && !sources.iter().any(|(from, _)| *from == path) {
                found.push(
                    path.strip_prefix(dir)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Puts what an import adopts into `state`; returns where each file came from.
pub fn apply(
    state: &State,
    adopted: BTreeMap<String, (PathBuf, Material)>,
) -> Vec<(String, PathBuf)> {
    adopted
        .into_iter()
        .map(|(rel, (from, material))| {
            state.put(&rel, material);
            (rel, from)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_import_tables_name_built_in_entries() {
        for &(from, profile, _) in KUBEADM.iter().chain(EASYCERTS) {
            assert!(catalogue::builtin(profile).is_some(), "{from}: {profile}");
        }
    }
}
