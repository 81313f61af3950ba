//! The netlink steps of a plan: VXLAN devices, MTUs and flood entries before the switch is
//! wired (phase 1, with an undo log), links up and deletions after (phase 3).
//!
//! Steps of one kind are independent of each other and go out together, up to
//! [`IN_FLIGHT`] requests at a time on the one netlink socket: at thousands of VLANs × peers
//! a request-and-wait per object would spend its time in round trips, not in the kernel.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;

use futures::StreamExt;
use tracing::{info, warn};

use super::{LinkChange, Netlink, NetlinkError, ObservedLink, ObservedLinks, VxlanSpec};

/// Netlink requests in flight at once.
const IN_FLIGHT: usize = 64;

/// Run futures with up to [`IN_FLIGHT`] at once; results in their order.
async fn together<F: Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    futures::stream::iter(futs)
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// How to take back one phase-1 step.
pub enum Undo {
    /// A device this plan created.
    Delete {
        name: String,
    },
    /// A device this plan replaced: the old one, as it was.
    Recreate {
        spec: VxlanSpec,
        flood: Vec<IpAddr>,
    },
    Mtu {
        name: String,
        mtu: u32,
    },
    RemoveFlood {
        index: u32,
        dev: String,
        dst: IpAddr,
    },
    AddFlood {
        index: u32,
        dev: String,
        dst: IpAddr,
    },
}

/// The spec of a device as observed (to recreate it on rollback).
fn observed_spec(l: &ObservedLink, wanted: &VxlanSpec) -> Option<VxlanSpec> {
    let a = l.vxlan.as_ref()?;
    Some(VxlanSpec {
        name: l.name.clone(),
        vni: a.vni?,
        local: a.local?,
        port: a.port?,
        underlay_index: a.underlay_index,
        mtu: l.mtu,
        alias: l.alias.clone().unwrap_or_else(|| wanted.alias.clone()),
        // A device made before limits existed comes back with the limit now wanted.
        mac_limit: a.mac_limit.unwrap_or(wanted.mac_limit),
    })
}

/// Keep the successes of a batch in the undo log; the first failure is the batch's error.
fn settle<T>(
    results: Vec<(Result<(), NetlinkError>, T)>,
    undo: &mut Vec<Undo>,
    on_success: impl Fn(T) -> Undo,
) -> Result<(), NetlinkError> {
    let mut first = None;
    for (r, t) in results {
        match r {
            Ok(()) => undo.push(on_success(t)),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Phase 1: devices, MTUs and flood entries. `index` learns the new devices' ifindexes.
/// Every step that succeeded is in `undo`, also when a later one failed.
pub async fn make(
    nl: &Netlink,
    changes: &[&LinkChange],
    links: &ObservedLinks,
    index: &mut BTreeMap<String, u32>,
    undo: &mut Vec<Undo>,
) -> Result<(), NetlinkError> {
    // Devices whose fixed attributes changed go first, one by one (rare).
    let mut new: Vec<&VxlanSpec> = vec![];
    for c in changes {
        match c {
            LinkChange::CreateVxlan { spec } => new.push(spec),
            LinkChange::ReplaceVxlan {
                index: old,
                spec,
                why,
            } => {
                nl.delete_link(*old, &spec.name).await?;
                info!(dev = %spec.name, why = %why, "re-creating VXLAN device");
                if let Some(b) = links.links.get(&spec.name) {
                    if let Some(old_spec) = observed_spec(b, spec) {
                        undo.push(Undo::Recreate {
                            spec: old_spec,
                            flood: b.flood.iter().copied().collect(),
                        });
                    }
                }
                new.push(spec);
            }
            _ => {}
        }
    }
    // New devices, then their indexes.
    let made = together(
        new.iter()
            .map(|s| async move { (nl.create_vxlan(s).await, *s) }),
    )
    .await;
    settle(made, undo, |s| {
        info!(dev = %s.name, vni = s.vni, "created VXLAN device");
        Undo::Delete {
            name: s.name.clone(),
        }
    })?;
    let found = together(
        new.iter()
            .map(|s| async move { (nl.index_of(&s.name).await, s.name.clone()) }),
    )
    .await;
    for (r, name) in found {
        index.insert(name, r?);
    }
    // MTUs and flood entries.
    let index = &*index;
    let steps = changes.iter().copied().filter(|c| {
        matches!(
            c,
            LinkChange::SetMtu { .. }
                | LinkChange::AddFlood { .. }
                | LinkChange::RemoveFlood { .. }
        )
    });
    let done = together(steps.map(|c| async move { (step(nl, c, index).await, c) })).await;
    let mut first = None;
    for (r, c) in done {
        match r {
            Ok(u) => undo.extend(u),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
        let _ = c;
    }
    first.map_or(Ok(()), Err)
}

/// A device's ifindex, known before the plan or learned when phase 1 made it.
fn index_in(index: &BTreeMap<String, u32>, dev: &str) -> Result<u32, NetlinkError> {
    index
        .get(dev)
        .copied()
        .ok_or_else(|| NetlinkError::NoSuchLink(dev.to_string()))
}

/// One MTU or flood step; how to undo it.
async fn step(
    nl: &Netlink,
    c: &LinkChange,
    index: &BTreeMap<String, u32>,
) -> Result<Option<Undo>, NetlinkError> {
    let index_of = |dev: &String| index_in(index, dev);
    Ok(Some(match c {
        LinkChange::SetMtu { dev, from, to, .. } => {
            nl.set_mtu(dev, *to).await?;
            Undo::Mtu {
                name: dev.clone(),
                mtu: *from,
            }
        }
        LinkChange::AddFlood { dev, address, .. } => {
            let i = index_of(dev)?;
            nl.add_flood(i, dev, *address).await?;
            Undo::RemoveFlood {
                index: i,
                dev: dev.clone(),
                dst: *address,
            }
        }
        LinkChange::RemoveFlood { dev, address } => {
            let i = index_of(dev)?;
            nl.remove_flood(i, dev, *address).await?;
            Undo::AddFlood {
                index: i,
                dev: dev.clone(),
                dst: *address,
            }
        }
        // Not a phase-1 step (`make` hands it none).
        _ => return Ok(None),
    }))
}

/// Phase 3: links up, MTUs given back, EVPN's remote MACs, devices deleted once their ports
/// left the bridge. Every step is tried; the failures are returned. (A remote MAC the kernel
/// refuses — its device's FDB full — leaves that MAC flooded, as an unknown one is: reported,
/// never a reason to take the whole plan back.)
pub async fn finish(
    nl: &Netlink,
    changes: &[&LinkChange],
    index: &BTreeMap<String, u32>,
) -> Vec<String> {
    let steps = changes.iter().copied().filter(|c| {
        matches!(
            c,
            LinkChange::SetUp { .. }
                | LinkChange::RestoreMtu { .. }
                | LinkChange::PlaceMac { .. }
                | LinkChange::RemoveMac { .. }
        )
    });
    let index_of = |dev: &String| index_in(index, dev);
    let mut results = together(steps.map(|c| async move {
        match c {
            LinkChange::SetUp { dev } => nl.set_up(dev).await,
            LinkChange::RestoreMtu { dev, to } => nl.set_mtu(dev, *to).await,
            LinkChange::PlaceMac {
                dev, mac, address, ..
            } => nl.place_mac(index_of(dev)?, dev, mac, *address).await,
            LinkChange::RemoveMac { dev, mac, .. } => nl.remove_mac(index_of(dev)?, dev, mac).await,
            _ => Ok(()),
        }
    }))
    .await;
    // Devices go together: one request for them all (see `Netlink::delete_links`).
    let doomed: Vec<(u32, &str)> = changes
        .iter()
        .filter_map(|c| match c {
            LinkChange::DeleteVxlan { index, name } => Some((*index, name.as_str())),
            _ => None,
        })
        .collect();
    for ((_, name), r) in doomed.iter().zip(nl.delete_links(&doomed).await) {
        if r.is_ok() {
            info!(dev = %name, "deleted VXLAN device");
        }
        results.push(r);
    }
    results
        .into_iter()
        .filter_map(Result::err)
        .map(|e| {
            warn!(error = %e, "finishing step failed");
            e.to_string()
        })
        .collect()
}

/// Take back phase 1, newest first; says what it did.
pub async fn rollback(nl: &Netlink, undo: Vec<Undo>) -> String {
    let steps = undo.len();
    let mut errors = vec![];
    for u in undo.into_iter().rev() {
        let r = match u {
            Undo::Delete { name } => nl.delete_named(&name).await,
            Undo::Recreate { spec, flood } => recreate(nl, &spec, flood).await,
            Undo::Mtu { name, mtu } => nl.set_mtu(&name, mtu).await,
            Undo::RemoveFlood { index, dev, dst } => nl.remove_flood(index, &dev, dst).await,
            Undo::AddFlood { index, dev, dst } => nl.add_flood(index, &dev, dst).await,
        };
        if let Err(e) = r {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        format!("{steps} step(s) undone, the system is as before")
    } else {
        format!(
            "{} of {steps} undo step(s) failed: {}",
            errors.len(),
            errors.join("; ")
        )
    }
}

/// Put back a device this plan replaced (whatever now has its name goes first).
async fn recreate(nl: &Netlink, spec: &VxlanSpec, flood: Vec<IpAddr>) -> Result<(), NetlinkError> {
    match nl.delete_named(&spec.name).await {
        Ok(()) | Err(NetlinkError::NoSuchLink(_)) => {}
        Err(e) => return Err(e),
    }
    nl.create_vxlan(spec).await?;
    let i = nl.index_of(&spec.name).await?;
    for dst in flood {
        nl.add_flood(i, &spec.name, dst).await?;
    }
    Ok(())
}
