//! Observe and diff: the desired state for this machine, the actual state, the plan; and the
//! IPsec backend resolved from charon.

use std::time::Instant;

use tracing::debug;

use crate::base::kinds::BackendChoice;
use crate::base::kinds::IpsecBackend;
use crate::config::SiteConfig;
use crate::ipsec::vici::{self, ViciError};
use crate::linux::discover;
use crate::linux::Facts;
use crate::model::DesiredState;
use crate::plan::{self, ActualState, Plan};

use super::ApplyError;
use super::System;

/// The IPsec backend: configured, or asked from charon (`auto`: kernel-libipsec loaded?).
pub async fn resolve_backend(
    cfg: &SiteConfig,
    vici: &vici::Client,
) -> Result<IpsecBackend, ApplyError> {
    Ok(match cfg.ipsec.backend {
        BackendChoice::Kernel => IpsecBackend::Kernel,
        BackendChoice::Libipsec => IpsecBackend::Libipsec,
        BackendChoice::Auto => {
            if vici.plugins().await?.iter().any(|p| p == "kernel-libipsec") {
                IpsecBackend::Libipsec
            } else {
                IpsecBackend::Kernel
            }
        }
    })
}

/// Refuse a config whose proposals the running charon cannot negotiate (a missing DH group,
/// cipher or PRF): every SA would fail and the guard would drop everything.
pub async fn charon_can_negotiate(
    cfg: &SiteConfig,
    vici: &vici::Client,
    backend: IpsecBackend,
) -> Result<(), ApplyError> {
    let reply = match vici.algorithms().await {
        Ok(r) => r,
        // A charon older than `get-algorithms` (5.4) cannot be asked.
        Err(ViciError::UnknownCommand(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let esp = cfg.ipsec.esp_proposal_names();
    let missing = crate::ipsec::algorithms::missing(
        &cfg.ipsec.ike_proposals,
        &esp,
        backend,
        &crate::ipsec::algorithms::available(&reply),
    );
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApplyError::Config(
        missing.into_iter().map(|(k, m)| cfg.issue(&k, m)).collect(),
    ))
}

/// Everything `plan` and `apply` need: facts, desired and actual state, and the diff.
pub struct Prepared {
    pub facts: Facts,
    pub desired: DesiredState,
    pub actual: ActualState,
    pub plan: Plan,
}

pub async fn prepare(cfg: &SiteConfig, sys: &System) -> Result<Prepared, ApplyError> {
    prepare_with(cfg, sys, plan::DiffOptions::default()).await
}

/// [`prepare`] with diff options (the daemon waits for missing access interfaces).
pub async fn prepare_with(
    cfg: &SiteConfig,
    sys: &System,
    opts: plan::DiffOptions,
) -> Result<Prepared, ApplyError> {
    let t = Instant::now();
    let mut facts = discover::facts(cfg, &sys.netlink).await?;
    debug!(ms = t.elapsed().as_secs_f64() * 1e3, "discovered facts");
    if cfg.ipsec.enabled {
        if let Some(v) = &sys.vici {
            let backend = resolve_backend(cfg, v).await?;
            facts.ipsec_backend = Some(backend);
            charon_can_negotiate(cfg, v, backend).await?;
        }
    }
    let desired = DesiredState::build(cfg, &facts).map_err(ApplyError::Config)?;
    if !desired.storm.is_empty() && !crate::ovs::storm::available() {
        let key = match cfg.switch.bum_limit_pps {
            Some(_) => "switch.bum_limit_pps".to_string(),
            None => cfg
                .vlans
                .iter()
                .position(|v| v.bum_limit_pps.is_some())
                .map(|i| format!("vlan[{i}].bum_limit_pps"))
                .unwrap_or_default(),
        };
        return Err(ApplyError::Config(vec![cfg.issue(
            &key,
            "storm control needs ovs-ofctl (package openvswitch-common), which cannot be run here",
        )]));
    }
    let actual = sys.observe(cfg).await?;
    debug!(ms = t.elapsed().as_secs_f64() * 1e3, "observed the system");
    let plan = plan::diff_with(&desired, &actual, opts).map_err(ApplyError::Conflicts)?;
    debug!(
        ms = t.elapsed().as_secs_f64() * 1e3,
        changes = plan.changes.len(),
        "planned"
    );
    Ok(Prepared {
        facts,
        desired,
        actual,
        plan,
    })
}
