//! Converging the system: observe → diff → execute, with rollback.
//!
//! The netlink steps (phases 1 and 3) are [`links`].
//!
//! Execution runs in three phases so that nothing is left half-applied:
//! 1. **netlink** (VXLAN devices, MTUs, flood entries), each step recorded in an undo log;
//! 2. **one OVSDB transaction** for the bridge and all ports, then a wait until ovs-vswitchd
//!    has applied it — if this fails, phase 1 is undone;
//! 3. **finishing** steps that only make sense once the switch is wired: links up, VXLAN
//!    devices deleted after their ports left the bridge, MTUs given back to released ports.
//!    Errors here are collected (every step is still tried) and reported.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::base::kinds::BackendChoice;
use crate::base::kinds::IpsecBackend;
use crate::config::{ConfigIssue, SiteConfig};
use crate::guard::GuardChange;
use crate::guard::{self, GuardError};
use crate::ipsec::credentials::{known, peer_certs, revoked_peers};
use crate::ipsec::vici::{self, ViciError};
use crate::ipsec::{self, IpsecError, ObservedConn, ObservedIpsec};
use crate::linux::discover;
use crate::linux::Facts;
use crate::linux::LinkChange;
use crate::linux::{links, Netlink, NetlinkError};
use crate::model::DesiredState;
use crate::ovs::storm::StormChange;
use crate::ovs::{replica::Replica, switch, txn, Client, OvsdbError, SwitchChange};
use crate::plan::{self, ActualState, Change, Conflict, Plan};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", render_issues(.0))]
    Config(Vec<ConfigIssue>),
    #[error("cannot converge; nothing was changed:{}", render_conflicts(.0))]
    Conflicts(Vec<Conflict>),
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Vici(#[from] ViciError),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Ipsec(#[from] IpsecError),
    #[error(transparent)]
    Storm(#[from] crate::ovs::storm::StormError),
    #[error("charon is not reachable")]
    CharonUnreachable,
    /// The daemon lost its connections to the system (it makes them again).
    #[error("no system connection")]
    NotConnected,
    #[error("applying failed: {cause}; rolled back: {rollback}")]
    RolledBack { cause: String, rollback: String },
    #[error("the switch is wired but {} finishing step(s) failed:{}", .0.len(), .0.iter().map(|e| format!("\n  {e}")).collect::<String>())]
    Finishing(Vec<String>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut s = String::from("the config does not fit this system; nothing was changed:");
    for i in issues {
        s.push_str("\n  ");
        s.push_str(&i.to_string());
    }
    s
}

fn render_conflicts(c: &[Conflict]) -> String {
    c.iter().map(|c| format!("\n  {c}")).collect()
}

/// Connections to the system's backends, opened in the current network namespace.
pub struct System {
    pub netlink: Netlink,
    pub ovsdb: Client,
    /// charon, when IPsec is on (required) or when it happens to be reachable (for cleanup).
    pub vici: Option<vici::Client>,
    /// The daemon's monitor-fed copy of OVSDB, read instead of a select while it is live.
    pub replica: Option<Arc<Replica>>,
    /// ovs-ofctl's address of the bridge (storm control).
    pub ofctl_target: String,
    /// Whether observing reads storm control (see [`System::note_storm`]).
    observe_storm: AtomicBool,
}

impl System {
    /// Connect to netlink, OVSDB and (with IPsec) charon. A missing socket is a clear error,
    /// before anything is read or changed.
    pub async fn connect(cfg: &SiteConfig) -> Result<Self, ApplyError> {
        Self::open(cfg, cfg.ipsec.enabled).await
    }

    /// Like `connect`, but charon is optional (for `down` and `status`).
    pub async fn connect_lenient(cfg: &SiteConfig) -> Result<Self, ApplyError> {
        Self::open(cfg, false).await
    }

    /// Without `require_charon`, charon is still used when reachable: to clean up the
    /// connections of an earlier secure config, or to report SA state.
    async fn open(cfg: &SiteConfig, require_charon: bool) -> Result<Self, ApplyError> {
        let netlink = Netlink::connect()?;
        let ovsdb = Client::connect(&cfg.switch.ovsdb).await?;
        let vici = match vici::Client::connect(&cfg.ipsec.vici).await {
            Ok(v) => Some(v),
            Err(e) if require_charon => return Err(e.into()),
            Err(_) => None,
        };
        Ok(System {
            netlink,
            ovsdb,
            vici,
            replica: None,
            ofctl_target: crate::ovs::storm::target(&cfg.switch.ovsdb, &cfg.switch.bridge),
            observe_storm: AtomicBool::new(true),
        })
    }

    /// Storm control is read from ovs-vswitchd over OpenFlow — two round trips that wait for
    /// its main loop, slow on a bridge of thousands of ports — only while it matters: limits
    /// configured, or ours seen in force. With neither, nothing of ours can appear (only
    /// l2s-vnf adds it), so the daemon stops asking until a config wants limits again.
    pub fn note_storm(&self, desired: &DesiredState, actual: &ActualState) {
        let needed =
            !desired.storm.is_empty() || actual.storm.as_ref().is_some_and(|s| !s.is_empty());
        // Unknown (not read, or unreadable) and not wanted: keep asking as before.
        if needed || actual.storm.is_some() {
            self.observe_storm.store(needed, Ordering::Relaxed);
        }
    }

    /// Read everything this instance may own, all sources at once.
    pub async fn observe(&self, cfg: &SiteConfig) -> Result<ActualState, ApplyError> {
        let bridge = cfg.switch.bridge.as_str();
        let rules = async {
            let mut out = vec![];
            for v6 in [false, true] {
                out.extend(
                    self.netlink
                        .owned_vxlan_rules(v6)
                        .await?
                        .into_iter()
                        .map(|(ports, _)| (ports, v6)),
                );
            }
            Ok::<_, ApplyError>(out)
        };
        let charon = async {
            let Some(v) = &self.vici else {
                return Ok::<_, ApplyError>((
                    None,
                    Default::default(),
                    (None, None, None),
                    (None, None, None),
                    vec![],
                ));
            };
            let conns: Vec<ObservedConn> = v
                .list_conns()
                .await?
                .into_iter()
                .filter(|(name, _)| ipsec::owned_conn(name, bridge))
                .map(|(name, children)| ObservedConn { name, children })
                .collect();
            let sas = ipsec::sa_states(&v.list_sas(None).await?)
                .into_iter()
                .filter(|(n, _)| ipsec::owned_conn(n, bridge))
                .collect();
            // What charon cannot tell is not known (`None`: the diff leaves it alone), and
            // status says why. A charon without `get-shared` (before 5.7) cannot tell.
            let mut unknown = vec![];
            let u = &mut unknown;
            let keys = known(u, "its shared keys", v.shared_keys().await);
            let authorities = known(u, "its authorities", v.get_authorities().await).map(|a| {
                a.into_iter()
                    .filter(|n| ipsec::owned_conn(n, bridge))
                    .collect::<Vec<_>>()
            });
            let key_ids = known(u, "its private keys", v.get_keys().await);
            let own_certs = known(
                u,
                "this site's certificates",
                v.certs_of(&cfg.site.id).await,
            );
            let crls = known(u, "its CRLs", v.crls().await);
            // Peers' certificates matter here only when a CRL could revoke them.
            let certs = match &cfg.ipsec.pki {
                Some(p) if !p.creds.crls.is_empty() => Some(peer_certs(v, cfg, &mut unknown).await),
                _ => None,
            };
            Ok((
                Some(conns),
                sas,
                (keys, authorities, key_ids),
                (own_certs, crls, certs),
                unknown,
            ))
        };
        let table = guard::table_name(bridge);
        let guard_listing = async {
            tokio::task::spawn_blocking(move || guard::observe(&table))
                .await
                .ok()
                .flatten()
        };
        let policies = async {
            tokio::task::spawn_blocking(crate::xfrm::dump)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        let target = self.ofctl_target.clone();
        let read_storm = self.observe_storm.load(Ordering::Relaxed);
        let storm = async {
            if !read_storm {
                return None;
            }
            tokio::task::spawn_blocking(move || crate::ovs::storm::observe(&target))
                .await
                .ok()
                .flatten()
        };
        let switch = async {
            match self.replica.as_ref().and_then(|r| r.observed(bridge)) {
                Some(s) => Ok(s),
                None => switch::observe(&self.ovsdb, bridge).await,
            }
        };
        // A socket holds one dump at a time: the rule dump follows the link dump.
        let links_and_rules = async {
            let links = self.netlink.observe().await?;
            Ok::<_, ApplyError>((links, rules.await?))
        };
        let (switch, links_and_rules, charon, guard_listing, policies, storm) = tokio::join!(
            switch,
            links_and_rules,
            charon,
            guard_listing,
            policies,
            storm
        );
        let (conns, sas, (keys, authorities, key_ids), (own_certs, crls, peer_certs), unknown) =
            charon?;
        let revoked = peer_certs
            .as_ref()
            .map(|c| revoked_peers(cfg, c))
            .unwrap_or_default();
        let (mut links, rules) = links_and_rules?;
        links.vxlan_rules = rules;
        let ipsec = ObservedIpsec {
            charon_unknown: unknown,
            conns,
            sas,
            policies,
            keys,
            authorities,
            key_ids,
            own_certs,
            crls,
            revoked,
            peer_certs,
        };
        Ok(ActualState {
            switch: switch?,
            links,
            guard: guard_listing,
            ipsec,
            storm,
        })
    }
}

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
    let esp: Vec<String> = cfg
        .ipsec
        .esp_proposals
        .iter()
        .map(|e| e.proposal.clone())
        .collect();
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
    let mut failures = links::finish(nl, &link_changes).await;
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

async fn remove_rules(nl: &Netlink, ports: (u16, u16), v6: bool) -> Result<(), ApplyError> {
    for (p, rule) in nl.owned_vxlan_rules(v6).await? {
        if p == ports {
            nl.remove_rule(rule).await?;
        }
    }
    Ok(())
}
