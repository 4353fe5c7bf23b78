//! `kpki rotate --prune`: carries out the removal of nodes, roles and declarations from the
//! config. What a removed node held is deleted; what the etcd CA issued to it goes on the
//! revocation list; shared certificates whose key it could read are reissued; what only a CA
//! rotation can end is reported with its expiry.

use std::collections::{BTreeMap, BTreeSet};

use time::OffsetDateTime;

use crate::actions::{self, Action, Applied};
use crate::catalogue::{self, Item, Kind, Part, Readers};
use crate::config::{Config, Role};
use crate::error::Result;
use crate::manifest::Reason;
use crate::pem;
use crate::revocation::{Ending, Revoke, Unrevocable, ending, issue_crl, record, superseded_of};
use crate::secrets::{Depth, SealPlan};
use crate::state::State;

/// What a service-account key rotation after a removal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// No removed node could read the signing key.
    Untouched,
    /// A rotation starts (with overlap: finishing stays the admin's call).
    Rotate,
    /// A rotation is already in progress: finish it, then start another.
    Busy,
}

/// What `kpki rotate --prune` carries out.
pub struct Prune<'c> {
    /// The directories whose files go, each with the roles it held and lost (a node removed,
    /// or one that lost a role; a declaration's cluster-wide directory has none).
    pub removed: Vec<(String, Vec<Role>)>,
    /// Files to delete, relative to `pki/` (their encrypted copies go too).
    pub deleted: Vec<String>,
    /// Certificates of the etcd CA to put on its CRL.
    pub revoked: Vec<Revoke>,
    /// Shared certificates whose key a removed node could read, reissued with new keys.
    pub reissued: Vec<Item<'c>>,
    pub signing_key: SigningKey,
    /// Certificates that stay valid until they expire.
    pub outlived: Vec<Unrevocable>,
}

impl Prune<'_> {
    /// Whether there is nothing to prune.
    pub fn is_empty(&self) -> bool {
        self.deleted.is_empty()
    }
}

/// Plans the removal of everything the manifest holds and the config no longer accounts for
/// (`seal`'s leftovers), and of encrypted files nothing accounts for.
pub fn plan<'c>(
    state: &State,
    config: &'c Config,
    seal: &SealPlan<'_>,
    now: OffsetDateTime,
) -> Result<Prune<'c>> {
    let mut deleted: Vec<String> = seal.leftovers.iter().map(|(rel, _)| rel.clone()).collect();
    let mut lost: BTreeMap<String, BTreeSet<Role>> = BTreeMap::new();
    let clusters = catalogue::cluster_dirs();
    for rel in &deleted {
        let (dir, file) = rel.split_once('/').unwrap_or((rel, ""));
        let roles = lost.entry(dir.to_string()).or_default();
        if !clusters.contains(dir) {
            let current = config.nodes.iter().find(|n| n.name == dir);
            roles.extend(
                catalogue::role_of_node_file(file).filter(|r| !current.is_some_and(|n| n.has(*r))),
            );
        }
    }
    let mut revoked = Vec::new();
    let mut outlived = Vec::new();
    let mut end = |rel: &str, reason| -> Result<()> {
        match ending(state, rel, reason, now)? {
            Ending::Revoke(r) => revoked.push(r),
            Ending::Outlive(u) => outlived.push(u),
            Ending::Expired => {}
        }
        revoked.extend(superseded_of(state, config, rel, reason, now)?);
        Ok(())
    };
    for rel in &deleted {
        if catalogue::file_kind(rel) == pem::FileKind::Certificates {
            end(rel, Reason::Removed)?;
        }
    }
    let mut reissued = Vec::new();
    let mut signing_key = SigningKey::Untouched;
    for item in catalogue::items(config)
        .into_iter()
        .filter(|i| i.node().is_none())
    {
        if !readable_by_removed(&item, config, &lost) {
            continue;
        }
        match item.entry().kind {
            Kind::Leaf { .. } => {
                end(&item.file(Part::Cert), Reason::Superseded)?;
                reissued.push(item);
            }
            Kind::KeyPair => {
                signing_key = if crate::rotation::in_progress(state, config)?
                    .iter()
                    .any(|r| r.what == "service-account")
                {
                    SigningKey::Busy
                } else {
                    SigningKey::Rotate
                };
            }
            Kind::Ca(_) => {}
        }
    }
    deleted.extend(
        seal.orphans(state, Depth::All)?
            .into_iter()
            .filter_map(|rel| rel.strip_suffix(".age").map(String::from)),
    );
    Ok(Prune {
        removed: lost
            .into_iter()
            .map(|(dir, roles)| (dir, roles.into_iter().collect()))
            .collect(),
        deleted,
        revoked,
        reissued,
        signing_key,
        outlived,
    })
}

/// Whether a node that lost `lost` roles (by directory) could read `item`'s key and, if it is
/// still in the config, can no longer.
fn readable_by_removed(
    item: &Item<'_>,
    config: &Config,
    lost: &BTreeMap<String, BTreeSet<Role>>,
) -> bool {
    let Readers::Selected(selection) = item.entry().key_readers else {
        return false;
    };
    lost.iter().any(|(dir, roles)| {
        let could = selection.roles.iter().any(|r| roles.contains(r));
        let still = config
            .nodes
            .iter()
            .find(|n| n.name == *dir)
            .is_some_and(|n| selection.includes(n));
        could && !still
    })
}

/// Carries out `prune` on `state`: deletes, reissues, starts the signing-key rotation, and
/// signs a CRL with the new revocations.
pub fn apply(
    state: &State,
    config: &Config,
    prune: &Prune<'_>,
    now: OffsetDateTime,
) -> Result<Applied> {
    for rel in &prune.deleted {
        state.delete(rel);
    }
    let steps: Vec<Action<'_>> = prune
        .reissued
        .iter()
        .map(|item| Action::item(*item, false))
        .collect();
    let mut applied = actions::apply(state, config, &steps, now)?;
    if prune.signing_key == SigningKey::Rotate {
        applied.merge(crate::rotation::start_sa(state, config)?);
    }
    if !prune.revoked.is_empty() {
        record(state, &prune.revoked, now);
        applied.written.extend(issue_crl(state, config, now)?);
    }
    applied.written.sort();
    Ok(applied)
}
