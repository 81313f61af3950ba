//! Executing a plan in phases (see the module above), with rollback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::guard::GuardChange;
use crate::guard::{self};
use crate::ipsec::{self};
use crate::linux::LinkChange;
use crate::linux::{links, Netlink};
use crate::ovs::storm::StormChange;
use crate::ovs::{switch, txn, OvsdbError, SwitchChange};
use crate::plan::{ActualState, Change, Plan};

use super::ApplyError;
use super::System;

/// What an apply did.
#[derive(Debug, Clone)]
pub struct Report {
    pub changes: usize,
    pub elapsed: Duration,
    /// The OVS configuration number ovs-vswitchd reached with it, if it changed OVSDB.
    pub ovs_cfg: Option<i64>,
}

/// Execute a plan against the system. `actual` is the state the plan was computed from.
pub async fn execute(
    sys: &System,
    plan: &Plan,
    actual: &ActualState,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    if plan.is_empty() {
        return Ok(Report {
            changes: 0,
            elapsed: started.elapsed(),
            ovs_cfg: None,
        });
    }
    let nl = &sys.netlink;
    let mut index: BTreeMap<String, u32> = actual
        .links
        .links
        .iter()
        .map(|(n, l)| (n.clone(), l.index))
        .collect();
    let mut undo: Vec<links::Undo> = vec![];
    let mut ovs_cfg = None;

    // Phase 0: the guard and the policy rule, before any VXLAN device exists or comes up.
    for c in &plan.changes {
        match c {
            Change::Guard(GuardChange::Ensure { spec, .. }) => {
                guard::ensure(spec)?;
                info!(table = %spec.table, backend = ?spec.backend, "fail-closed guard in place");
            }
            Change::Link(LinkChange::AddVxlanRule { port, v6 }) => {
                nl.add_vxlan_rule(*port, *v6).await?
            }
            Change::Link(LinkChange::AddBgpRule { side, v6 }) => {
                nl.add_bgp_rule(*side, *v6).await?
            }
            _ => {}
        }
    }

    // Phase 1: netlink, with undo.
    let link_changes: Vec<&LinkChange> = plan.changes.iter().filter_map(Change::as_link).collect();
    let mut phase1 = links::make(nl, &link_changes, &actual.links, &mut index, &mut undo)
        .await
        .map_err(ApplyError::from);

    debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        "netlink phase done"
    );
    // Phase 2: the OVSDB transaction(s), reverted if ovs-vswitchd does not apply them.
    if phase1.is_ok() {
        let ovs: Vec<&SwitchChange> = plan.changes.iter().filter_map(Change::as_switch).collect();
        phase1 = txn::apply(&sys.ovsdb, &ovs, actual.switch.bridge.as_ref(), &index)
            .await
            .map(|reached| ovs_cfg = reached)
            .map_err(ApplyError::from);
        if phase1.is_ok() && !ovs.is_empty() {
            info!(
                changes = ovs.len(),
                "OVS transaction applied by ovs-vswitchd"
            );
        }
    }
    if let Err(cause) = phase1 {
        let rollback = match &cause {
            ApplyError::Ovsdb(OvsdbError::NotApplied {
                reverted: Err(_), ..
            }) => format!(
                "the {} netlink step(s) were kept to match OVSDB: the system holds the new configuration, which ovs-vswitchd applies when it can; it is NOT as before",
                undo.len()
            ),
            _ => links::rollback(nl, undo).await,
        };
        return Err(ApplyError::RolledBack {
            cause: cause.to_string(),
            rollback,
        });
    }

    debug!(
        ms = started.elapsed().as_secs_f64() * 1e3,
        "OVSDB phase done (ovs-vswitchd applied it)"
    );
    // Phase 3: finishing steps; every one is tried.
    let mut failures = links::finish(nl, &link_changes, &index).await;
    // ovs-vswitchd reports ports it could not open.
    let added: Vec<String> = plan
        .changes
        .iter()
        .filter_map(|c| match c {
            Change::Switch(SwitchChange::AddPort { name, .. }) => Some(name.clone()),
            _ => None,
        })
        .collect();
    for (port, err) in switch::interface_errors(&sys.ovsdb, &added).await? {
        failures.push(format!("ovs-vswitchd cannot use port {port}: {err}"));
    }
    for c in &plan.changes {
        if let Change::Storm(StormChange { limits, .. }) = c {
            let (target, limits) = (sys.ofctl_target.clone(), limits.clone());
            let done =
                tokio::task::spawn_blocking(move || crate::ovs::storm::ensure(&target, &limits))
                    .await;
            match done {
                Ok(Ok(())) => info!(change = %c, "storm control in force"),
                Ok(Err(e)) => failures.push(e.to_string()),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }

    // Phase 4: IPsec, then removals of security objects (the guard last of all).
    for c in &plan.changes {
        let r: Result<(), ApplyError> = match c {
            Change::Ipsec(change) => match &sys.vici {
                Some(v) => ipsec::execute(v, change).await.map_err(ApplyError::from),
                None => Err(ApplyError::CharonUnreachable),
            },
            Change::Link(LinkChange::RemoveVxlanRule { ports, v6 }) => {
                remove_rules(nl, *ports, *v6).await
            }
            Change::Link(LinkChange::RemoveBgpRule { side, v6 }) => {
                remove_bgp_rule(nl, *side, *v6).await
            }
            _ => Ok(()),
        };
        if let Err(e) = r {
            warn!(error = %e, "IPsec step failed");
            failures.push(e.to_string());
        }
    }
    for c in &plan.changes {
        if let Change::Guard(GuardChange::Remove { table }) = c {
            if let Err(e) = guard::remove(table) {
                failures.push(e.to_string());
            }
        }
    }
    if !failures.is_empty() {
        return Err(ApplyError::Finishing(failures));
    }
    Ok(Report {
        changes: plan.changes.len(),
        elapsed: started.elapsed(),
        ovs_cfg,
    })
}

async fn remove_bgp_rule(
    nl: &Netlink,
    side: crate::linux::BgpSide,
    v6: bool,
) -> Result<(), ApplyError> {
    for (s, rule) in nl.owned_rules(v6).await?.bgp {
        if s == side {
            nl.remove_rule(rule).await?;
        }
    }
    Ok(())
}

async fn remove_rules(nl: &Netlink, ports: (u16, u16), v6: bool) -> Result<(), ApplyError> {
    for (p, rule) in nl.owned_rules(v6).await?.vxlan {
        if p == ports {
            nl.remove_rule(rule).await?;
        }
    }
    Ok(())
}
