//! `l2s-vnf run`: converge, then stay converged.
//!
//! One loop owns the system connections and does all the work, so reconciles never overlap:
//! - **start**: adopt what exists (the diff changes only what differs; nothing is torn down,
//!   so restarting the daemon under traffic loses nothing), then tell systemd READY;
//! - **events** ([`watch`]): OVSDB, netlink, nftables and charon wake the loop; after a short
//!   debounce it reconciles, and every change it makes then is a *repair*, logged with what
//!   was wrong and what woke it;
//! - **periodic**: a full reconcile every `[daemon] reconcile_interval`;
//! - **reload** (SIGHUP or `l2s-vnf reload` over the [`control`] socket): validate → diff →
//!   apply the delta; an invalid config is reported and the running one kept;
//! - **stop** (SIGTERM/SIGINT): leave the data plane and the guard in place, exit 0.

pub mod control;
pub mod guard_keeper;
pub mod lock;
pub mod metrics;
pub mod network_paths;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::apply::{self, ApplyError, System};
use crate::base::clock::unix_now;
use crate::config::SiteConfig;
use crate::ipsec;
use crate::ovs::replica::Replica;
use crate::plan::{ActualState, DiffOptions};
use crate::status::health;
use crate::status::{self, DaemonStatus, ReconcileRecord, RepairRecord, Status};
use control::{Job, ReloadOutcome, Reply, Request};
use metrics::Metrics;
use network_paths::NetworkPaths;
use watch::{IpsecEvents, Trigger, Watchers};

/// Events that arrive within this window are handled by one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// First and longest wait before retrying a failed reconcile (the watchers also wake the
/// loop as soon as a source that was gone is back).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
const RECENT_REPAIRS: usize = 20;
/// Above this many changes, a start or reload logs a summary (each change at debug level).
const LOG_EACH_CHANGE: usize = 40;
/// How long the OVSDB replica may take to show a configuration ovs-vswitchd reached.
const REPLICA_CATCH_UP: Duration = Duration::from_secs(2);

/// Why a reconcile runs.
#[derive(Debug, Clone)]
enum Cause {
    Start,
    Reload(&'static str),
    /// Events or the periodic check: whatever it changes is drift being repaired.
    Repair(String),
    /// EVPN learned or lost a site, or a discovered site's SA came up or went.
    Evpn(&'static str),
}

impl Cause {
    fn describe(&self) -> String {
        match self {
            Cause::Start => "start".into(),
            Cause::Reload(via) => format!("reload ({via})"),
            Cause::Repair(t) => t.clone(),
            Cause::Evpn(why) => format!("EVPN: {why}"),
        }
    }
}

struct Daemon {
    config_path: PathBuf,
    cfg: SiteConfig,
    sys: Option<System>,
    started: Instant,
    started_unix: u64,
    stats: DaemonStatus,
    recent: VecDeque<RepairRecord>,
    /// Access interfaces configured but absent (their ports wait for them).
    waiting: Vec<String>,
    metrics: Arc<Metrics>,
    events: Arc<IpsecEvents>,
    /// Each VLAN's data path as the last reconcile found it: why it is degraded, if it is.
    health: BTreeMap<u16, Vec<String>>,
    /// The OVSDB copy the watcher keeps (observation reads it while it is live).
    replica: Arc<Replica>,
    /// Path probes to the peers, once the probe port is bound.
    paths: Option<Arc<NetworkPaths>>,
    probe_task: Option<tokio::task::JoinHandle<()>>,
    /// This site's VTEP address and access MTU, as the last reconcile found them.
    vtep: Option<std::net::IpAddr>,
    access_mtu: u32,
    /// Frames each access port had refused when the access MTU was last set (status warns
    /// about refusals after that).
    refused_base: BTreeMap<String, u64>,
    /// charon's words about failed authentications, per peer.
    authlog: Arc<crate::ipsec::authlog::AuthLog>,
    authlog_task: Option<tokio::task::JoinHandle<()>>,
    /// When each connection without an SA was last initiated (initiations are paced).
    initiations: Initiations,
    /// Keeps the guard in place on its own, whatever the reconcile is doing.
    guard: guard_keeper::GuardKeeper,
    /// The EVPN control plane (`[evpn] enabled`).
    evpn: Option<crate::evpn::Runtime>,
    /// Reconcile again at once (a discovered site's SA changed what the plan would be).
    again: bool,
    /// The bridge and the OpenFlow numbers of its access ports, as the last reconcile found
    /// them (EVPN advertises the MACs OVS learned on them).
    access_ports: Option<(String, BTreeSet<i64>)>,
}

/// How often bgpd's routes and FRR's daemons are checked (EVPN).
const EVPN_CHECK: Duration = Duration::from_secs(1);

/// First and longest pause between two initiations of one connection that keeps failing.
const INITIATE_MIN: Duration = Duration::from_secs(1);
const INITIATE_MAX: Duration = Duration::from_secs(10);
/// How long a responder leaves a connection without any IKE_SA to its initiator before it
/// initiates itself (its peer's charon may have lost the SA without the initiator noticing
/// yet). Longer than the initiator takes to react to a lost SA, so that both ends never race.
const RESPONDER_GRACE: Duration = Duration::from_secs(5);

/// Paces initiations: a peer that refuses us (a revoked or untrusted certificate, a wrong
/// key) ends every attempt with an IKE_SA going down, which wakes the daemon, which would
/// initiate again at once. Each connection is initiated again only after a pause that
/// doubles (1 s … 10 s) while it stays without an SA, and is forgotten once its SA is up.
///
/// The responder of a pair never races its initiator: it initiates only once the connection
/// has had no IKE_SA for [`RESPONDER_GRACE`]. Two ends initiating at once each keep the newer
/// IKE_SA under `unique = replace` and may each delete the other's: an IKE duel.
#[derive(Default)]
struct Initiations(BTreeMap<String, Pending>);

struct Pending {
    at: Instant,
    wait: Duration,
    /// An initiation was held back at the last reconcile (the daemon wakes for it).
    deferred: bool,
}

impl Initiations {
    fn pace(
        &mut self,
        changes: &mut Vec<crate::plan::Change>,
        sas: &BTreeMap<String, ipsec::SaState>,
        responders: &[&str],
        now: Instant,
    ) {
        use crate::ipsec::IpsecChange;
        use crate::plan::Change;
        self.0
            .retain(|conn, _| !sas.get(conn).is_some_and(|s| s.up()));
        for p in self.0.values_mut() {
            p.deferred = false;
        }
        changes.retain(|c| {
            let Change::Ipsec(IpsecChange::Initiate { name, .. }) = c else {
                return true;
            };
            match self.0.get_mut(name) {
                Some(p) if now < p.at + p.wait => {
                    p.deferred = true;
                    false
                }
                Some(p) => {
                    p.at = now;
                    p.wait = (p.wait * 2).min(INITIATE_MAX);
                    true
                }
                None => {
                    let responder = responders.contains(&name.as_str());
                    let wait = if responder {
                        RESPONDER_GRACE
                    } else {
                        INITIATE_MIN
                    };
                    self.0.insert(
                        name.clone(),
                        Pending {
                            at: now,
                            wait,
                            deferred: responder,
                        },
                    );
                    !responder
                }
            }
        });
    }

    /// When the earliest initiation held back falls due.
    fn next_due(&self) -> Option<Instant> {
        self.0
            .values()
            .filter(|p| p.deferred)
            .map(|p| p.at + p.wait)
            .min()
    }
}

impl Daemon {
    /// Observe, diff and apply once.
    async fn converge(&mut self, cause: &Cause) -> Result<Vec<String>, ApplyError> {
        if let Some(rt) = &mut self.evpn {
            let cfg = &self.cfg;
            tokio::task::block_in_place(|| rt.refresh(cfg, true));
        }
        let cfg = self.effective();
        if self.sys.is_none() {
            let mut sys = System::connect(&cfg).await?;
            sys.replica = Some(self.replica.clone());
            self.sys = Some(sys);
        }
        let Some(sys) = &self.sys else {
            return Err(ApplyError::NotConnected);
        };
        let opts = DiffOptions {
            wait_for_missing_ports: true,
        };
        let mut p = apply::prepare_with(&cfg, sys, opts).await?;
        // A starting daemon keeps the discovered sites an earlier run left until bgpd's
        // routes are complete: the plan is made again with them.
        let cfg = match &mut self.evpn {
            Some(rt) if !rt.adopted() => {
                let (found, up) = apply::evpn::on_the_system(&self.cfg, &p.actual);
                if rt.adopt(found, up) {
                    let cfg = crate::evpn::view::effective(&self.cfg, &rt.current(), &rt.sa_up);
                    p = apply::prepare_with(&cfg, sys, opts).await?;
                    cfg
                } else {
                    cfg
                }
            }
            _ => cfg,
        };
        self.guard
            .keep(p.desired.security.as_ref().map(|s| s.guard.clone()));
        let responders: Vec<&str> = p
            .desired
            .security
            .iter()
            .flat_map(|s| &s.conns)
            .filter(|c| c.role == ipsec::Role::Responder)
            .map(|c| c.name.as_str())
            .collect();
        self.initiations.pace(
            &mut p.plan.changes,
            &p.actual.ipsec.sas,
            &responders,
            Instant::now(),
        );
        sys.note_storm(&p.desired, &p.actual);
        self.vtep = Some(p.facts.vtep_ip);
        if self.access_mtu != p.desired.access_mtu {
            self.refused_base = status::refused_frames(&p.actual);
        }
        self.access_mtu = p.desired.access_mtu;
        let waiting: Vec<String> = p.plan.waiting.iter().map(|c| c.to_string()).collect();
        for w in waiting.iter().filter(|w| !self.waiting.contains(w)) {
            warn!("{w} (its port waits for it)");
        }
        self.waiting = waiting;
        if p.plan.is_empty() {
            self.refresh_metrics(&p.actual, sys.vici.as_ref()).await;
            self.judge(&p.actual);
            self.note_discovered_sas(&cfg, &p.actual);
            return Ok(vec![]);
        }
        let changes: Vec<String> = p.plan.changes.iter().map(|c| c.to_string()).collect();
        match cause {
            Cause::Repair(trigger) => {
                for c in &changes {
                    warn!(after = %trigger, "repairing drift: {c}");
                    record_repair(&mut self.recent, &mut self.stats, &self.metrics, trigger, c);
                }
            }
            _ if changes.len() <= LOG_EACH_CHANGE => {
                for c in &changes {
                    info!(cause = %cause.describe(), "{c}");
                }
            }
            _ => {
                let count = |p: &str| changes.iter().filter(|c| c.starts_with(p)).count();
                info!(
                    cause = %cause.describe(),
                    "{} changes: {} to add, {} to change, {} to remove (each at debug level)",
                    changes.len(),
                    count("+"),
                    count("~"),
                    count("-")
                );
                for c in &changes {
                    debug!(cause = %cause.describe(), "{c}");
                }
            }
        }
        let report = apply::execute(sys, &p.plan, &p.actual).await?;
        if let Some(cfg) = report.ovs_cfg {
            // Observation reads the replica: let it see ovs-vswitchd apply our change.
            if !self.replica.caught_up(cfg, REPLICA_CATCH_UP).await {
                debug!(
                    cfg,
                    "the OVSDB replica is behind; OVSDB is read until it catches up"
                );
            }
        }
        // Judge the data plane as the changes left it, not as it was before them.
        let after = sys.observe(&cfg).await?;
        self.refresh_metrics(&after, sys.vici.as_ref()).await;
        self.judge(&after);
        self.note_discovered_sas(&cfg, &after);
        Ok(changes)
    }

    /// The config the plan is made from: the file's, plus the peers EVPN brings.
    fn effective(&self) -> SiteConfig {
        match &self.evpn {
            Some(rt) => crate::evpn::view::effective(&self.cfg, &rt.current(), &rt.sa_up),
            None => self.cfg.clone(),
        }
    }

    /// Which discovered sites have their SA up now; when that changed, the flood lists must
    /// follow at once (a site's entries wait for its SA, and go with it). And which of the
    /// bridge's ports are access ports (their MACs are advertised).
    fn note_discovered_sas(&mut self, cfg: &SiteConfig, actual: &ActualState) {
        let Some(rt) = &mut self.evpn else {
            return;
        };
        self.access_ports = actual.switch.bridge.as_ref().map(|b| {
            let ofports = b
                .ports
                .values()
                .filter(|p| p.role == Some(crate::ovs::switch::PortRole::Access))
                .filter_map(|p| p.iface.ofport)
                .collect();
            (b.name.clone(), ofports)
        });
        if rt.note_sas(apply::evpn::discovered_sas_up(cfg, actual)) {
            self.again = true;
        }
    }

    /// EVPN: advertise the MACs OVS learned on the access ports (see
    /// [`crate::evpn::Runtime::advertise_local`]).
    async fn advertise_macs(&mut self) {
        let site = self
            .cfg
            .evpn
            .as_ref()
            .is_some_and(|e| e.role == crate::config::EvpnRole::Site);
        let (Some(rt), Some((bridge, ofports)), true) = (&mut self.evpn, &self.access_ports, site)
        else {
            // (A reflector has no access ports: nothing to read each second.)
            return;
        };
        let table = match crate::ovs::unixctl::socket(&self.cfg.switch.ovsdb) {
            Ok(socket) => crate::ovs::unixctl::call(&socket, "fdb/show", &[bridge]).await,
            Err(e) => Err(e),
        };
        let rows = match table {
            Ok(t) => crate::ovs::unixctl::parse_fdb(&t),
            Err(e) => {
                debug!("EVPN: OVS's MAC table: {e}");
                return;
            }
        };
        let vni: BTreeMap<u16, u32> = self.cfg.vlans.iter().map(|v| (v.id, v.vni)).collect();
        let seen: BTreeMap<(u32, String), u64> = rows
            .into_iter()
            .filter(|r| ofports.contains(&r.ofport))
            .filter_map(|r| Some(((*vni.get(&r.vlan)?, r.mac.to_ascii_lowercase()), r.age_secs)))
            .collect();
        tokio::task::block_in_place(|| rt.advertise_local(&seen));
    }

    /// Count a change made to undo drift, and keep it among the recent ones status shows.
    fn record_repair(&mut self, trigger: &str, change: &str) {
        record_repair(
            &mut self.recent,
            &mut self.stats,
            &self.metrics,
            trigger,
            change,
        );
    }

    /// The metrics' snapshot of the system, from the reconcile's own observation (a scrape
    /// reads only this).
    async fn refresh_metrics(
        &self,
        actual: &ActualState,
        vici: Option<&crate::ipsec::vici::Client>,
    ) {
        if self.cfg.metrics.is_none() {
            return;
        }
        let s = self
            .status_of(actual, actual.ipsec.reachable_sas(), vici, vec![])
            .await;
        self.metrics.observe(&s, &self.events);
    }

    /// Bind the probe port once the VTEP address is known (and start probing), and keep the
    /// probed peers and the full-size frame in step with the config.
    async fn configure_probes(&mut self) {
        let (Some(interval), Some(vtep)) = (self.cfg.daemon.probe_interval, self.vtep) else {
            return;
        };
        if self.paths.is_none() {
            match NetworkPaths::bind(vtep, self.cfg.vxlan_port).await {
                Ok(paths) => {
                    self.probe_task = Some(tokio::spawn(paths.clone().run(interval)));
                    self.paths = Some(paths);
                }
                Err(e) => {
                    warn!(error = %e, "cannot bind the path probe port; probing later");
                    return;
                }
            }
        }
        if let Some(paths) = &self.paths {
            paths.configure(self.cfg.peer_addresses(), self.access_mtu);
        }
    }

    /// Judge each VLAN's data path from an observation; log when that judgement changes.
    fn judge(&mut self, actual: &ActualState) {
        let health = health::vlans(&self.cfg, actual, actual.ipsec.reachable_sas());
        for (id, why) in &health {
            let before = self.health.get(id);
            if before == Some(why) {
                continue;
            }
            if why.is_empty() {
                if before.is_some() {
                    info!(vlan = id, "VLAN data path is up again");
                }
            } else {
                warn!(vlan = id, "VLAN data path is degraded: {}", why.join("; "));
            }
        }
        self.health = health;
    }

    async fn reconcile(&mut self, cause: Cause) -> Result<Vec<String>, ApplyError> {
        let t = Instant::now();
        let r = self.converge(&cause).await;
        self.configure_probes().await;
        // An observation at thousands of VLANs is tens of megabytes for a moment: hand them
        // back, or the daemon would hold its largest reconcile for ever.
        release_memory();
        let elapsed = t.elapsed();
        self.metrics
            .reconcile_seconds
            .observe(elapsed.as_secs_f64());
        self.stats.reconciles += 1;
        self.stats.last_reconcile = Some(ReconcileRecord {
            at_unix: unix_now(),
            duration_ms: elapsed.as_secs_f64() * 1e3,
            trigger: cause.describe(),
            changes: r.as_ref().map(Clone::clone).unwrap_or_default(),
            error: r.as_ref().err().map(ToString::to_string),
        });
        match &r {
            Ok(c) if !c.is_empty() => info!(
                changes = c.len(),
                ms = elapsed.as_secs_f64() * 1e3,
                "converged"
            ),
            Ok(_) => {}
            Err(e) => {
                self.metrics.reconcile_failures.inc();
                // The snapshot must not keep saying what was true before the failure.
                if self.cfg.metrics.is_some() {
                    let s = self.status().await;
                    self.metrics.observe(&s, &self.events);
                }
                // A backend that failed may be gone: reconnect everything next time.
                if !matches!(e, ApplyError::Config(_) | ApplyError::Conflicts(_)) {
                    self.sys = None;
                }
            }
        }
        r
    }

    /// Re-read the config; apply it if valid, keep the running one otherwise.
    async fn reload(
        &mut self,
        via: &'static str,
        watchers: &mut Watchers,
        tx: &watch::Triggers,
    ) -> Reply {
        let refuse = |d: &mut Daemon, msg: String| {
            d.stats.reloads_failed += 1;
            d.stats.last_reload_error = Some(msg.clone());
            error!(
                via,
                "reload refused; the running config stays in force: {msg}"
            );
            Reply::error(format!(
                "reload refused; the running config stays in force:\n{msg}"
            ))
        };
        let new = match SiteConfig::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => return refuse(self, e.to_string()),
        };
        if let Some(why) = needs_restart(&self.cfg, &new) {
            return refuse(self, why);
        }
        for w in &new.warnings {
            warn!(via, "{w}");
        }
        let rewatch = watch::Interest::of(&self.cfg) != watch::Interest::of(&new)
            || self.cfg.ipsec.enabled != new.ipsec.enabled;
        let old = std::mem::replace(&mut self.cfg, new);
        let t = Instant::now();
        match self.reconcile(Cause::Reload(via)).await {
            Ok(changes) => {
                self.stats.reloads += 1;
                self.stats.last_reload_error = None;
                self.metrics.reloads.inc();
                if rewatch {
                    *watchers = Watchers::start(
                        &self.cfg,
                        tx.clone(),
                        self.events.clone(),
                        self.replica.clone(),
                    );
                }
                self.listen_to_charon_log();
                info!(via, changes = changes.len(), "config reloaded");
                Reply {
                    ok: true,
                    reload: Some(ReloadOutcome {
                        changes,
                        duration_ms: t.elapsed().as_secs_f64() * 1e3,
                    }),
                    ..Default::default()
                }
            }
            Err(e) => {
                // Nothing of a refused plan was applied (conflicts, config issues) or it was
                // rolled back; the next reconcile converges back to the running config.
                self.cfg = old;
                refuse(self, e.to_string())
            }
        }
    }

    /// (Re)start listening to charon's log for authentication failures, for the peers of
    /// the config in force.
    fn listen_to_charon_log(&mut self) {
        if let Some(t) = self.authlog_task.take() {
            t.abort();
        }
        if !self.cfg.ipsec.enabled {
            return;
        }
        let peers = self.cfg.peer_addresses();
        self.authlog_task = Some(tokio::spawn(crate::ipsec::authlog::listen(
            self.cfg.ipsec.vici.clone(),
            self.cfg.switch.bridge.clone(),
            peers,
            self.authlog.clone(),
        )));
    }

    fn daemon_status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            config: self.config_path.display().to_string(),
            started_unix: self.started_unix,
            uptime_secs: self.started.elapsed().as_secs(),
            reconcile_interval_secs: self.cfg.daemon.reconcile_interval.as_secs(),
            recent_repairs: self.recent.iter().cloned().collect(),
            rekeys: self.events.ike_rekeys.load(Ordering::Relaxed)
                + self.events.child_rekeys.load(Ordering::Relaxed),
            ..self.stats.clone()
        }
    }

    /// The system as it is now, plus what only the daemon knows.
    async fn status(&self) -> Status {
        let mut warnings = vec![];
        let cfg = self.effective();
        let lenient;
        let sys = match &self.sys {
            Some(s) => Some(s),
            None => match System::connect_lenient(&cfg).await {
                Ok(s) => {
                    lenient = s;
                    Some(&lenient)
                }
                Err(e) => {
                    warnings.push(format!("cannot read the system: {e}"));
                    None
                }
            },
        };
        let (actual, sas) = match sys {
            Some(sys) => match sys.observe(&cfg).await {
                Ok(a) => {
                    let sas = a.ipsec.reachable_sas().cloned();
                    (a, sas)
                }
                Err(e) => {
                    // The switch cannot be read; charon may still answer for the SAs.
                    warnings.push(format!("cannot read the system: {e}"));
                    let sas = match &sys.vici {
                        Some(v) => v.list_sas(None).await.ok().map(|l| ipsec::sa_states(&l)),
                        None => None,
                    };
                    (ActualState::default(), sas)
                }
            },
            None => (ActualState::default(), None),
        };
        self.status_of(
            &actual,
            sas.as_ref(),
            sys.and_then(|s| s.vici.as_ref()),
            warnings,
        )
        .await
    }

    /// Status from an observation already made, plus what only the daemon knows.
    async fn status_of(
        &self,
        actual: &ActualState,
        sas: Option<&BTreeMap<String, ipsec::SaState>>,
        vici: Option<&crate::ipsec::vici::Client>,
        warnings: Vec<String>,
    ) -> Status {
        let cfg = self.effective();
        let mut s = status::build(&cfg, actual, sas);
        s.source = "daemon".into();
        s.evpn = self.evpn.as_ref().and_then(|rt| rt.status(&self.cfg));
        if let Some(v) = vici {
            if self.cfg.ipsec.enabled {
                // Observation read them already when CRLs are configured: not twice.
                let certs = match &actual.ipsec.peer_certs {
                    Some(c) => c.clone(),
                    None => {
                        let mut unknown = vec![];
                        let c = crate::ipsec::credentials::peer_certs(v, &cfg, &mut unknown).await;
                        s.warnings.extend(
                            unknown
                                .into_iter()
                                .map(|u| format!("charon cannot tell {u}")),
                        );
                        c
                    }
                };
                let mut problems: BTreeMap<String, String> = self
                    .authlog
                    .failures()
                    .into_iter()
                    .map(|(p, f)| {
                        (
                            p,
                            format!(
                                "authentication failed {} ago: {}",
                                status::duration(unix_now().saturating_sub(f.at_unix)),
                                f.lines.join("; ")
                            ),
                        )
                    })
                    .collect();
                problems.extend(actual.ipsec.revoked.clone());
                s.add_peer_auth(&certs, &problems);
            }
        }
        s.warn_refused_frames(Some((
            &self.refused_base,
            "the daemon last set the access MTU",
        )));
        if let Some(paths) = &self.paths {
            s.add_paths(&paths.results());
        }
        s.warnings.extend(warnings);
        s.warnings.extend(self.waiting.iter().cloned());
        if let Some(e) = self.last_error() {
            s.warnings
                .push(format!("last reconcile failed (retrying): {e}"));
        }
        s.daemon = Some(self.daemon_status());
        s
    }

    /// The error of the last reconcile, if it failed.
    fn last_error(&self) -> Option<String> {
        self.stats.last_reconcile.as_ref()?.error.clone()
    }

    fn notify_status(&self) {
        let text = match self.last_error() {
            Some(e) => format!("not converged: {e}"),
            None if self.health.values().all(Vec::is_empty) => format!(
                "converged: {} VLAN(s) up, {} peer(s), {} repair(s)",
                self.cfg.vlans.len(),
                self.cfg.peers.len(),
                self.stats.repairs_total
            ),
            None => format!("degraded: {}", health::summary(&self.health)),
        };
        let line = text.lines().next().unwrap_or_default().to_string();
        let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
    }
}

fn record_repair(
    recent: &mut VecDeque<RepairRecord>,
    stats: &mut DaemonStatus,
    metrics: &Metrics,
    trigger: &str,
    change: &str,
) {
    recent.push_back(RepairRecord {
        at_unix: unix_now(),
        trigger: trigger.to_string(),
        change: change.to_string(),
    });
    if recent.len() > RECENT_REPAIRS {
        recent.pop_front();
    }
    stats.repairs_total += 1;
    metrics.repairs.inc();
}

/// Give the heap a reconcile freed back to the system: glibc keeps it otherwise.
fn release_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim(3) only hands free heap pages back to the kernel.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One malloc arena per worker thread would keep one reconcile's peak each: two suffice for
/// a daemon whose work is one loop.
fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) with M_ARENA_MAX only bounds how many arenas glibc creates.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        // Large buffers (a dump's worth) straight from mmap, so that freeing returns them.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

/// When to retry after a failed reconcile: 0.25 s, doubling up to 5 s, reset by a success.
struct Retry {
    wait: Duration,
    at: Option<tokio::time::Instant>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            wait: RETRY_MIN,
            at: None,
        }
    }
}

impl Retry {
    fn after(&mut self, ok: bool) {
        if ok {
            *self = Retry::default();
        } else {
            self.at = Some(tokio::time::Instant::now() + self.wait);
            self.wait = (self.wait * 2).min(RETRY_MAX);
        }
    }
}

/// Settings a running daemon cannot take over: they name its own sockets and the objects it
/// owns.
fn needs_restart(old: &SiteConfig, new: &SiteConfig) -> Option<String> {
    let mut why = vec![];
    if old.switch.bridge != new.switch.bridge {
        why.push("[switch] bridge");
    }
    if old.switch.ovsdb != new.switch.ovsdb {
        why.push("[switch] ovsdb");
    }
    if old.ipsec.vici != new.ipsec.vici {
        why.push("[ipsec] vici");
    }
    if old.daemon.control_socket != new.daemon.control_socket {
        why.push("[daemon] control_socket");
    }
    if old.metrics != new.metrics {
        why.push("[metrics] listen");
    }
    if old.evpn.as_ref().map(|e| e.role) != new.evpn.as_ref().map(|e| e.role) {
        why.push("[evpn] enabled or role");
    }
    (!why.is_empty()).then(|| {
        format!(
            "changing {} needs a restart of the daemon (systemctl restart l2s-vnf)",
            why.join(", ")
        )
    })
}

/// Describe a batch of triggers: `netlink: link l2s-vx101 deleted; ovsdb: Port: 1 row(s)`.
fn describe(triggers: &[Trigger]) -> String {
    // What vanished says most about what was wrong: put it first.
    let mut ordered: Vec<&Trigger> = triggers.iter().collect();
    ordered.sort_by_key(|t| {
        !["deleted", "lost", "went away", "down"]
            .iter()
            .any(|w| t.detail.contains(w))
    });
    let mut seen: Vec<String> = vec![];
    for t in ordered {
        let s = format!("{}: {}", t.source, t.detail);
        if !seen.contains(&s) {
            seen.push(s);
        }
    }
    let more = seen.len().saturating_sub(3);
    seen.truncate(3);
    let mut s = seen.join("; ");
    if more > 0 {
        s.push_str(&format!(" (+{more} more)"));
    }
    s
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct DaemonError {
    what: String,
    reason: String,
}

fn fatal(what: &str, e: impl std::fmt::Display) -> DaemonError {
    DaemonError {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Run the daemon until SIGTERM/SIGINT.
pub async fn run(config_path: PathBuf, cfg: SiteConfig) -> Result<(), DaemonError> {
    limit_arenas();
    let lock_file = lock::lock_path(&cfg.daemon.control_socket);
    let _lock = lock::InstanceLock::acquire(&lock_file).map_err(|e| fatal("cannot start", e))?;
    let listener =
        control::bind(&cfg.daemon.control_socket).map_err(|e| fatal("cannot start", e))?;
    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(16);
    let control_task = tokio::spawn(control::serve(listener, jobs_tx.clone()));
    let metrics = Metrics::new();
    let events = Arc::new(IpsecEvents::default());
    let metrics_task = match cfg.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| fatal(&format!("cannot listen for metrics on {addr}"), e))?;
            info!("metrics at http://{addr}/metrics");
            Some(tokio::spawn(metrics::serve(l, metrics.clone())))
        }
        None => None,
    };
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| fatal("signals", e))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| fatal("signals", e))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| fatal("signals", e))?;

    let (tx, mut triggers) = mpsc::unbounded_channel::<Trigger>();
    let replica = Arc::new(Replica::default());
    let mut watchers = Watchers::start(&cfg, tx.clone(), events.clone(), replica.clone());
    info!(
        config = %config_path.display(),
        control = %cfg.daemon.control_socket.display(),
        interval = ?cfg.daemon.reconcile_interval,
        "l2s-vnf daemon starting"
    );
    // The guard stands on its own from the first moment: the spec the last run left in
    // place (or the strictest this config can want) until a reconcile plans one.
    let table = crate::guard::table_name(&cfg.switch.bridge);
    let (keeper_tx, mut keeper_repairs) = mpsc::unbounded_channel();
    let guard = guard_keeper::GuardKeeper::start(table.clone(), keeper_tx);
    let listed = tokio::task::spawn_blocking(move || crate::guard::observe(&table))
        .await
        .ok()
        .flatten();
    guard.keep(guard_keeper::fallback(&cfg, listed.as_deref()));
    let mut periodic = tokio::time::interval(cfg.daemon.reconcile_interval);
    periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    periodic.tick().await;
    let mut d = Daemon {
        config_path,
        cfg,
        sys: None,
        started: Instant::now(),
        started_unix: unix_now(),
        stats: DaemonStatus::default(),
        recent: VecDeque::new(),
        waiting: vec![],
        metrics,
        events,
        health: BTreeMap::new(),
        replica,
        paths: None,
        probe_task: None,
        vtep: None,
        access_mtu: 0,
        refused_base: BTreeMap::new(),
        authlog: Arc::default(),
        authlog_task: None,
        initiations: Initiations::default(),
        guard,
        evpn: None,
        again: false,
        access_ports: None,
    };
    if d.cfg.evpn.is_some() {
        d.evpn = Some(crate::evpn::Runtime::new(&d.cfg));
    }
    d.listen_to_charon_log();
    let mut retry = Retry::default();
    match d.reconcile(Cause::Start).await {
        Ok(c) => info!(changes = c.len(), "converged; watching for drift"),
        Err(e) => error!("cannot converge yet (retrying): {e}"),
    }
    retry.after(d.last_error().is_none());
    let _ = sd_notify::notify(&[NotifyState::Ready]);
    d.notify_status();
    // EVPN: bgpd's routes are read every second (FRR has no event l2s-vnf could wait on).
    let mut evpn_tick = tokio::time::interval(EVPN_CHECK);
    evpn_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // systemd's watchdog is told from a task of its own while the loop keeps turning: told
    // from a branch of the loop's `select!`, it starved behind other ready branches when
    // turns were long (EVPN under emulation), and systemd killed a working daemon. The loop
    // turns at least every `heartbeat` (the branch below); a turn stuck longer than the
    // watchdog's timeout stops the notices, and systemd restarts the daemon.
    let watchdog = sd_notify::watchdog_enabled();
    let turned = Arc::new(TurnClock::default());
    let watchdog_task = watchdog.map(|limit| tokio::spawn(watchdog_keeper(turned.clone(), limit)));
    let mut heartbeat =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |t| t / 4));

    loop {
        turned.stamp();
        let initiation_due = d.initiations.next_due();
        // Whether this turn ran a reconcile (its outcome is in `last_reconcile`).
        let reconciled = tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                d.reload("SIGHUP", &mut watchers, &tx).await;
                true
            }
            Some((req, back)) = jobs.recv() => {
                let reload = req == Request::Reload;
                let reply = match req {
                    Request::Status => Reply {
                        ok: true,
                        status: Some(Box::new(d.status().await)),
                        ..Default::default()
                    },
                    Request::Reload => d.reload("control socket", &mut watchers, &tx).await,
                    // Probes take seconds: measured beside the loop, answered from there.
                    Request::Probe { peer, secs, throughput } => {
                        match d.paths.clone() {
                            Some(paths) => {
                                tokio::spawn(async move {
                                    let reply = match paths.measure(peer.as_deref(), secs, throughput).await {
                                        Ok(r) => Reply { ok: true, probe: Some(r), ..Default::default() },
                                        Err(e) => Reply::error(e),
                                    };
                                    let _ = back.send(reply);
                                });
                            }
                            None => {
                                let _ = back.send(Reply::error(
                                    "path probes are not running: [daemon] probe_interval is \"off\", or the probe port could not be bound (see the log)",
                                ));
                            }
                        }
                        continue;
                    }
                };
                let _ = back.send(reply);
                reload
            }
            Some(first) = triggers.recv() => {
                let mut batch = vec![first];
                tokio::time::sleep(DEBOUNCE).await;
                while let Ok(t) = triggers.try_recv() {
                    batch.push(t);
                }
                let _ = d.reconcile(Cause::Repair(describe(&batch))).await;
                true
            }
            _ = periodic.tick() => {
                let _ = d.reconcile(Cause::Repair("periodic check".into())).await;
                true
            }
            _ = tokio::time::sleep_until(retry.at.unwrap_or_else(tokio::time::Instant::now)), if retry.at.is_some() => {
                let _ = d.reconcile(Cause::Repair("retry".into())).await;
                true
            }
            _ = tokio::time::sleep_until(initiation_due.map_or_else(tokio::time::Instant::now, Into::into)), if initiation_due.is_some() => {
                let _ = d.reconcile(Cause::Repair("an initiation held back is due".into())).await;
                true
            }
            Some((woke, change)) = keeper_repairs.recv() => {
                d.record_repair(&woke, &change);
                false
            }
            _ = std::future::ready(()), if d.again => {
                d.again = false;
                let _ = d.reconcile(Cause::Evpn("a discovered site's SA changed")).await;
                true
            }
            _ = evpn_tick.tick(), if d.evpn.is_some() => {
                let changed = match (&mut d.evpn, &d.cfg) {
                    (Some(rt), cfg) => tokio::task::block_in_place(|| rt.refresh(cfg, false)),
                    _ => false,
                };
                if changed {
                    let _ = d.reconcile(Cause::Evpn("the routes changed")).await;
                }
                d.advertise_macs().await;
                changed
            }
            _ = heartbeat.tick(), if watchdog.is_some() => false,
        };
        if reconciled {
            let error = d.last_error();
            if let Some(e) = &error {
                warn!("reconcile failed (retrying): {e}");
            }
            retry.after(error.is_none());
            d.notify_status();
        }
    }
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    info!("stopping; the bridge, VTEPs, IPsec connections and the guard stay in place");
    drop(watchers);
    if let Some(t) = &d.probe_task {
        t.abort();
    }
    control_task.abort();
    if let Some(t) = watchdog_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    let _ = std::fs::remove_file(&d.cfg.daemon.control_socket);
    Ok(())
}

/// When the main loop last began a turn, in milliseconds since the clock's creation.
#[derive(Debug)]
struct TurnClock {
    origin: std::time::Instant,
    last: std::sync::atomic::AtomicU64,
}

impl Default for TurnClock {
    fn default() -> Self {
        TurnClock {
            origin: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl TurnClock {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn stamp(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long ago the loop last began a turn.
    fn since_last(&self) -> Duration {
        let last = self.last.load(Ordering::Relaxed);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

/// Tells systemd's watchdog, every quarter of its timeout, that the loop is alive — as long
/// as its last turn began within the timeout.
async fn watchdog_keeper(turned: Arc<TurnClock>, limit: Duration) {
    let mut tick = tokio::time::interval(limit / 4);
    let mut silent = false;
    loop {
        tick.tick().await;
        let since = turned.since_last();
        if since < limit {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            silent = false;
        } else if !silent {
            error!(
                stuck_secs = since.as_secs(),
                "the main loop is stuck; the watchdog is no longer told (systemd restarts the daemon)"
            );
            silent = true;
        }
    }
}

#[cfg(test)]
mod watchdog_tests {
    use super::*;

    #[test]
    fn the_turn_clock_measures_from_the_last_stamp() {
        let c = TurnClock::default();
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.since_last() >= Duration::from_millis(30));
        c.stamp();
        assert!(c.since_last() < Duration::from_millis(30));
    }
}

#[cfg(test)]
mod pacing_tests {
    use super::*;
    use crate::ipsec::IpsecChange;
    use crate::plan::Change;

    fn initiate() -> Vec<Change> {
        vec![Change::Ipsec(IpsecChange::Initiate {
            name: "l2s-vnf:l2s0:site-c".into(),
            child: "vxlan-1".into(),
        })]
    }

    #[test]
    fn a_refusing_peer_is_initiated_with_growing_pauses() {
        let mut p = Initiations::default();
        let t0 = Instant::now();
        let none = BTreeMap::new();
        let mut at = |secs: f64| {
            let mut c = initiate();
            p.pace(&mut c, &none, &[], t0 + Duration::from_secs_f64(secs));
            !c.is_empty()
        };
        // 1 s, then 2 s, 4 s, 8 s, then every 10 s.
        let sent: Vec<f64> = (0..400)
            .map(|i| f64::from(i) * 0.1)
            .filter(|t| at(*t))
            .collect();
        assert_eq!(sent.len(), 7, "{sent:?}");
        assert!(
            (sent[1] - 1.0).abs() < 0.15 && (sent[2] - 3.0).abs() < 0.15,
            "{sent:?}"
        );
        assert!(
            (sent[5] - 25.0).abs() < 0.15 && (sent[6] - 35.0).abs() < 0.15,
            "{sent:?}"
        );
        // Once up, the next loss is initiated at once.
        let mut up = BTreeMap::new();
        up.insert(
            "l2s-vnf:l2s0:site-c".to_string(),
            ipsec::SaState {
                ike_state: Some("ESTABLISHED".into()),
                child_state: Some("INSTALLED".into()),
                ..Default::default()
            },
        );
        let mut c = vec![];
        p.pace(&mut c, &up, &[], t0 + Duration::from_secs(41));
        let mut c = initiate();
        p.pace(&mut c, &none, &[], t0 + Duration::from_secs_f64(41.1));
        assert_eq!(c.len(), 1);
    }

    /// A responder leaves the first move to its initiator: it initiates only after the
    /// connection had no IKE_SA for the grace period, and the daemon knows when to wake for it.
    #[test]
    fn a_responder_initiates_only_after_the_grace_period() {
        let mut p = Initiations::default();
        let t0 = Instant::now();
        let none = BTreeMap::new();
        let responders = ["l2s-vnf:l2s0:site-c"];
        let mut at = |secs: f64| {
            let mut c = initiate();
            p.pace(
                &mut c,
                &none,
                &responders,
                t0 + Duration::from_secs_f64(secs),
            );
            !c.is_empty()
        };
        assert!(!at(0.0), "a responder initiated at once");
        assert!(!at(4.9));
        assert!(at(5.0), "the responder never initiated after the grace");
        assert!(!at(6.0));
        assert_eq!(p.next_due(), Some(t0 + Duration::from_secs(15)));
        // An SA came up: nothing is due any more.
        let mut c = vec![];
        p.pace(&mut c, &none, &responders, t0 + Duration::from_secs(7));
        assert_eq!(p.next_due(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> SiteConfig {
        SiteConfig::from_str_at(
            std::path::Path::new("t.toml"),
            &format!("[site]\nname = \"a\"\nunderlay = \"eth1\"\n[ipsec]\nenabled = false\ninsecure = true\n{extra}"),
        )
        .unwrap()
    }

    #[test]
    fn sockets_and_bridge_need_a_restart_vlans_do_not() {
        let a = cfg("");
        assert_eq!(needs_restart(&a, &cfg("[[vlan]]\nid = 5\n")), None);
        let why = needs_restart(
            &a,
            &cfg("[switch]\nbridge = \"br9\"\n[metrics]\nlisten = \"127.0.0.1:9\"\n"),
        )
        .unwrap();
        assert!(
            why.contains("[switch] bridge") && why.contains("[metrics] listen"),
            "{why}"
        );
    }

    #[test]
    fn triggers_are_described_once_each_and_capped() {
        let t = |s: &'static str, d: &str| Trigger {
            source: s,
            detail: d.into(),
        };
        let batch = [
            t("netlink", "link l2s-vx101 deleted"),
            t("netlink", "link l2s-vx101 deleted"),
            t("ovsdb", "Port: 1 row(s)"),
            t("nftables", "table x changed"),
            t("charon", "IKE_SA down"),
        ];
        assert_eq!(
            describe(&batch),
            "netlink: link l2s-vx101 deleted; charon: IKE_SA down; ovsdb: Port: 1 row(s) (+1 more)"
        );
    }
}
