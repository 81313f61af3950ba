//! The EVPN control plane as one instance runs it: the control namespace, FRR's daemons, and
//! the last routes bgpd gave (kept while FRR is away: the data plane never empties because
//! bgpd died; stale routes go once bgpd answers again and no longer has them).
//!
//! bgpd's answer is taken whole only once it is *complete* ([`complete`]): a session has been
//! established for [`SETTLE`] and two reads in a row agree. Until then (a daemon just started,
//! a bgpd just restarted, the reflectors out of reach) routes are only added, never taken
//! away, and a starting daemon first adopts the discovered sites an earlier run left on the
//! system ([`Runtime::adopt`]): a restart of the daemon or of FRR never empties the data plane,
//! and the sites that left meanwhile go once the routes are complete.
//!
//! A route withdrawn is followed only after [`WITHDRAW_GRACE`]: a site whose bgpd restarts
//! loses its session (and the reflector withdraws its routes at once), yet its data plane and
//! SAs are fine; its routes are back within the grace and nothing moved. A site that really
//! left is gone from the flood lists `hold_time` + the grace after it vanished.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::base::names::{evpn_dir, evpn_netns};
use crate::config::{EvpnRole, SiteConfig};

use super::{frr_config, BgpSession, ControlNs, Discovered, Frr, FrrState};

/// One discovered VTEP as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredPeer {
    pub vtep: IpAddr,
    pub vnis: Vec<u32>,
    /// Its SA is up, so its flood entries are in place.
    pub sa_up: bool,
    /// Its routes were withdrawn this many seconds ago; it is kept for the grace period.
    #[serde(default)]
    pub withdrawn_secs: Option<u64>,
}

/// How long a withdrawn route is still followed (a restarting bgpd is back well within it).
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(5);

/// What `status` says about EVPN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvpnStatus {
    pub role: EvpnRole,
    pub asn: u32,
    pub frr: FrrState,
    pub sessions: Vec<BgpSession>,
    pub discovered: Vec<DiscoveredPeer>,
    /// Seconds since bgpd last answered (the routes shown are that old).
    pub routes_age_secs: Option<u64>,
    /// How many times bgpd's route table was read (each second only while it may have
    /// changed).
    #[serde(default)]
    pub route_reads: u64,
    /// Remote MACs in this site's VNIs (type-2 routes), placed behind their sites once those
    /// sites' SAs are up.
    #[serde(default)]
    pub remote_macs: usize,
    /// MACs of this site's access ports advertised (type-2 routes).
    #[serde(default)]
    pub local_macs: usize,
    /// Why the routes are not current, when they are not.
    pub problem: Option<String>,
}

pub struct Runtime {
    ctl: Option<ControlNs>,
    frr: Frr,
    /// The last routes bgpd gave.
    learned: Discovered,
    /// Routes bgpd no longer has, with when they went (followed until the grace is over).
    withdrawn: BTreeMap<(IpAddr, u32), Instant>,
    /// bgpd's previous answer (two alike in a row, with a settled session: complete).
    last_read: Option<Discovered>,
    /// Whether bgpd's last answer was complete; until then routes are only added.
    complete: bool,
    /// Whether what an earlier run left on the system was looked at.
    adopted: bool,
    /// The UPDATEs bgpd had received at the last check, and its sessions then.
    updates: Option<u64>,
    sessions_seen: Option<Vec<(IpAddr, bool, u64)>>,
    /// When those last moved.
    moved_at: Option<Instant>,
    /// How many times the route table was read.
    route_reads: u64,
    learned_at: Option<Instant>,
    /// When the routes held were last known to be bgpd's (read, or nothing came since).
    current_at: Option<Instant>,
    sessions: Vec<BgpSession>,
    frr_state: FrrState,
    problem: Option<String>,
    /// What the last check of the control namespace found wrong.
    ctl_problem: Option<String>,
    /// Discovered VTEPs whose SA was up at the last reconcile.
    pub sa_up: BTreeSet<IpAddr>,
    /// Each remote MAC with its VTEP, when bgpd's best route first put it there, and whether
    /// this site advertised it then.
    remote_since: BTreeMap<(u32, String), RemoteMac>,
    /// The MACs this site advertises (put on the shadow access ports).
    advertised: Option<BTreeSet<(u32, String)>>,
    /// Whether the shadow access ports must be read before they are trusted to hold
    /// `advertised`.
    ports_stale: bool,
    /// Why this site's MACs could not be advertised, last time.
    mac_problem: Option<String>,
    /// Each local MAC's age at the last read of OVS's table (and when that read was), and for
    /// a MAC OVS was seen to refresh (its age went down between two reads: a frame from it
    /// arrived), the read before: the frame came after that moment, for certain.
    ages: BTreeMap<(u32, String), u64>,
    ages_read: Option<Instant>,
    refreshed: BTreeMap<(u32, String), Instant>,
}

impl Runtime {
    pub fn new(cfg: &SiteConfig) -> Self {
        let site = cfg.evpn.as_ref().is_some_and(|e| e.role == EvpnRole::Site);
        let ctl = site.then(|| ControlNs {
            name: evpn_netns(&cfg.daemon.control_socket),
        });
        Runtime {
            frr: Frr::new(
                evpn_dir(&cfg.daemon.control_socket),
                ctl.as_ref().map(|c| c.name.clone()),
            ),
            ctl,
            learned: Discovered::default(),
            withdrawn: BTreeMap::new(),
            last_read: None,
            complete: false,
            adopted: false,
            updates: None,
            sessions_seen: None,
            moved_at: None,
            route_reads: 0,
            learned_at: None,
            current_at: None,
            sessions: vec![],
            frr_state: FrrState::default(),
            problem: None,
            ctl_problem: None,
            sa_up: BTreeSet::new(),
            remote_since: BTreeMap::new(),
            advertised: None,
            ports_stale: true,
            mac_problem: None,
            ages: BTreeMap::new(),
            ages_read: None,
            refreshed: BTreeMap::new(),
        }
    }

    /// Keep FRR running and read what bgpd knows; with `whole`, check the control
    /// namespace's devices too (each reconcile; the one-second check leaves them be: listing
    /// thousands of shadow devices every second would cost more than it finds). Returns
    /// whether the routes changed. Blocking (it runs `ip` and `vtysh`).
    pub fn refresh(&mut self, cfg: &SiteConfig, whole: bool) -> bool {
        let Some(evpn) = &cfg.evpn else {
            return false;
        };
        let Ok(vtep) = cfg.site.id.parse::<IpAddr>() else {
            self.problem = Some("the site's identity is not its VTEP address".into());
            return false;
        };
        if whole {
            // What zebra did to the shadow access ports is read again at each reconcile.
            self.ports_stale = true;
        }
        if let Some(ctl) = self.ctl.as_ref().filter(|_| whole) {
            let vnis: BTreeSet<u32> = cfg.vlans.iter().map(|v| v.vni).collect();
            self.ctl_problem = match ctl.ensure(vtep, &vnis) {
                Ok((0, 0)) => None,
                Ok((added, removed)) => {
                    tracing::info!(
                        added,
                        removed,
                        ns = %ctl.name,
                        "EVPN control namespace: VNIs advertised changed"
                    );
                    None
                }
                Err(e) => Some(match super::frr::sandbox_problem() {
                    Some(why) => format!("control namespace: {e}: {why}"),
                    None => format!("control namespace: {e}"),
                }),
            };
        }
        let mut problem = self.ctl_problem.clone();
        let bgpd = frr_config::bgpd(evpn, &cfg.site.name, vtep, router_id(vtep));
        let zebra = frr_config::zebra(&cfg.site.name);
        if let Err(e) = self.frr.ensure(&bgpd, &zebra, vtep) {
            problem.get_or_insert(format!("FRR: {e}"));
        }
        let before = self.current();
        // Sessions first: a route read after a settled session counts toward completeness.
        let sessions = self.frr.sessions();
        let read = if evpn.role == EvpnRole::Reflector {
            // A reflector has no data path: the routes are never its to follow.
            if sessions.is_ok() {
                self.current_at = Some(Instant::now());
            }
            None
        } else if self.routes_due(whole, sessions.as_deref().ok()) {
            self.route_reads += 1;
            Some(self.frr.discovered(evpn.asn, vtep))
        } else {
            None
        };
        match read {
            None => {}
            Some(Ok(d)) => self.take(d, complete(sessions.as_deref().unwrap_or_default())),
            Some(Err(e)) => {
                self.complete = false;
                problem.get_or_insert(format!(
                    "bgpd does not answer ({e}); holding the last routes"
                ));
            }
        }
        self.withdrawn.retain(|_, at| at.elapsed() < WITHDRAW_GRACE);
        self.note_remote_macs();
        let changed = self.current() != before;
        self.sessions = sessions.unwrap_or_default();
        self.frr_state = self.frr.state();
        if problem.is_none() && evpn.role == EvpnRole::Site {
            if let Some(s) = self.sessions.iter().find(|s| !s.established) {
                problem = Some(format!(
                    "BGP session with reflector {} is {}",
                    s.peer, s.state
                ));
            }
        }
        if problem.is_none() && evpn.role == EvpnRole::Site && !self.complete {
            problem = Some(format!(
                "bgpd's routes are not complete yet (no session settled for {} s); the {} discovered sites known are held",
                SETTLE.as_secs(),
                self.learned.vteps.len()
            ));
        }
        if problem != self.problem {
            match &problem {
                Some(p) => tracing::warn!("EVPN: {p}"),
                None => tracing::info!("EVPN: control plane healthy"),
            }
        }
        self.problem = problem;
        changed
    }

    /// Whether the route table must be read now. Reading it is what costs (0.55 s at 4 sites
    /// × 4094 VNIs): it is read at each reconcile (`whole`), while the routes are not complete,
    /// while bgpd receives UPDATEs or its sessions change and for [`SETTLING`] after, and at
    /// least every [`REREAD`]; otherwise a second's check asks bgpd only how many UPDATEs it
    /// received.
    fn routes_due(&mut self, whole: bool, sessions: Option<&[BgpSession]>) -> bool {
        let now = Instant::now();
        let updates = self.frr.updates_received().ok();
        let up: Option<Vec<(IpAddr, bool, u64)>> = sessions.map(|s| {
            s.iter()
                .map(|x| (x.peer, x.established, x.prefixes_received))
                .collect()
        });
        let moved = updates.is_none() || updates != self.updates || up != self.sessions_seen;
        self.updates = updates;
        self.sessions_seen = up;
        if moved {
            self.moved_at = Some(now);
        } else {
            // Nothing came since the last read: what was read is still bgpd's table.
            self.current_at = Some(now);
        }
        whole
            || !self.complete
            || self.moved_at.is_none_or(|t| now - t < SETTLING)
            || self.learned_at.is_none_or(|t| now - t >= REREAD)
    }

    /// Take one answer of bgpd's (`settled`: read with a settled session, see [`complete`]).
    fn take(&mut self, d: Discovered, settled: bool) {
        let now = Instant::now();
        let quiet = self.last_read.as_ref() == Some(&d);
        self.last_read = Some(d.clone());
        // Becoming complete takes two reads alike (the table's first transfer is over);
        // staying complete, only the settled session.
        let complete = settled && (quiet || self.complete);
        if complete {
            if !self.complete {
                tracing::info!(
                    sites = d.vteps.len(),
                    "EVPN: bgpd's routes are complete; following them whole"
                );
            }
            for (v, vnis) in &self.learned.vteps {
                for n in vnis {
                    if !d.vteps.get(v).is_some_and(|x| x.contains(n)) {
                        self.withdrawn.entry((*v, *n)).or_insert(now);
                    }
                }
            }
            self.learned = d;
        } else {
            // Not complete: add what came, take nothing away.
            self.learned.absorb(d);
        }
        self.complete = complete;
        let learned = &self.learned;
        self.withdrawn
            .retain(|(v, n), _| !learned.vteps.get(v).is_some_and(|x| x.contains(n)));
        self.learned_at = Some(now);
        self.current_at = Some(now);
    }

    /// Take the discovered sites an earlier run left on the system (their VTEPs, the VNIs
    /// whose flood lists hold them, those whose SA is up) as known, once, before bgpd's routes
    /// are complete. Returns whether anything was taken.
    pub fn adopt(&mut self, found: Discovered, up: BTreeSet<IpAddr>) -> bool {
        if self.adopted || self.complete {
            self.adopted = true;
            return false;
        }
        self.adopted = true;
        if found.vteps.is_empty() {
            return false;
        }
        tracing::info!(
            sites = found.vteps.len(),
            "EVPN: holding the discovered sites found on the system until bgpd's routes are complete"
        );
        self.learned.absorb(found);
        self.sa_up.extend(up);
        true
    }

    /// Keep, for each remote MAC, since when its best route places it behind its VTEP, and
    /// whether this site was advertising it when that route came.
    fn note_remote_macs(&mut self) {
        let now = Instant::now();
        let macs = &self.learned.macs;
        self.remote_since
            .retain(|k, r| macs.get(k) == Some(&r.vtep));
        for (k, vtep) in macs {
            let ours = self.advertised.as_ref().is_some_and(|a| a.contains(k));
            self.remote_since.entry(k.clone()).or_insert(RemoteMac {
                vtep: *vtep,
                since: now,
                was_ours: ours,
            });
        }
    }

    /// Advertise this site's MACs: `seen` holds each MAC OVS learned on an access port (by VNI)
    /// with how many seconds ago it was last seen there. A MAC goes on its VNI's shadow access
    /// port, where zebra finds it and advertises a type-2 route, unless it moved away: a
    /// remote route placed it at another site after it was last seen here (see
    /// [`advertised_macs`]). What fails is logged when it starts and stops failing, and
    /// status shows it. Blocking (it runs `bridge`).
    pub fn advertise_local(&mut self, seen: &BTreeMap<(u32, String), u64>) {
        let result = self.put_local_macs(seen).err().map(|e| e.to_string());
        if result != self.mac_problem {
            match &result {
                Some(e) => tracing::warn!("EVPN: cannot advertise this site's MACs: {e}"),
                None => tracing::info!("EVPN: this site's MACs are advertised again"),
            }
        }
        self.mac_problem = result;
    }

    fn put_local_macs(
        &mut self,
        seen: &BTreeMap<(u32, String), u64>,
    ) -> Result<(), super::EvpnError> {
        let Some(ctl) = &self.ctl else {
            return Ok(());
        };
        let now = Instant::now();
        if let Some(before) = self.ages_read {
            for (k, age) in seen {
                if self.ages.get(k).is_some_and(|a| age < a) {
                    self.refreshed.insert(k.clone(), before);
                }
            }
        }
        self.ages = seen.clone();
        self.ages_read = Some(now);
        self.refreshed.retain(|k, _| seen.contains_key(k));
        let want = advertised_macs(seen, &self.refreshed, &self.remote_since, now);
        if !self.ports_stale && self.advertised.as_ref() == Some(&want) {
            return Ok(());
        }
        // Something to change: read what the ports hold now (zebra takes a MAC off the port
        // itself when a newer remote route moves it).
        self.ports_stale = true;
        let have = ctl.local_macs()?;
        let add: BTreeSet<_> = want.difference(&have).cloned().collect();
        let remove: BTreeSet<_> = have.difference(&want).cloned().collect();
        if !add.is_empty() || !remove.is_empty() {
            tracing::debug!(
                added = add.len(),
                removed = remove.len(),
                "EVPN: this site's advertised MACs"
            );
            ctl.set_local_macs(&add, &remove)?;
        }
        self.advertised = Some(want);
        self.ports_stale = false;
        Ok(())
    }

    /// Whether what an earlier run left was looked at.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// What the plan follows: the routes bgpd has, and those withdrawn within the grace.
    pub fn current(&self) -> Discovered {
        let mut d = self.learned.clone();
        for (v, n) in self.withdrawn.keys() {
            d.vteps.entry(*v).or_default().insert(*n);
        }
        d
    }

    pub fn status(&self, cfg: &SiteConfig) -> Option<EvpnStatus> {
        let evpn = cfg.evpn.as_ref()?;
        let ours: BTreeSet<u32> = cfg.vlans.iter().map(|v| v.vni).collect();
        Some(EvpnStatus {
            role: evpn.role,
            asn: evpn.asn,
            frr: self.frr_state.clone(),
            sessions: self.sessions.clone(),
            discovered: self
                .current()
                .vteps
                .iter()
                .map(|(vtep, vnis)| DiscoveredPeer {
                    vtep: *vtep,
                    vnis: vnis.intersection(&ours).copied().collect(),
                    sa_up: self.sa_up.contains(vtep),
                    withdrawn_secs: self
                        .withdrawn
                        .iter()
                        .filter(|((v, _), _)| v == vtep)
                        .map(|(_, at)| at.elapsed().as_secs())
                        .min(),
                })
                .filter(|d| !d.vnis.is_empty())
                .collect(),
            routes_age_secs: self.current_at.map(|t| t.elapsed().as_secs()),
            route_reads: self.route_reads,
            remote_macs: self
                .learned
                .macs
                .keys()
                .filter(|(v, _)| ours.contains(v))
                .count(),
            local_macs: self.advertised.as_ref().map_or(0, BTreeSet::len),
            problem: self.problem.clone().or_else(|| {
                self.mac_problem
                    .as_ref()
                    .map(|e| format!("this site's MACs are not advertised: {e}"))
            }),
        })
    }

    /// Counts for the metrics: (routes, discovered peers, established sessions, sessions).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let routes = self.learned.vteps.values().map(BTreeSet::len).sum();
        (
            routes,
            self.learned.vteps.len(),
            self.sessions.iter().filter(|s| s.established).count(),
            self.sessions.len(),
        )
    }

    /// The discovered VTEPs whose SA is up (their flood entries may be installed). Returns
    /// whether that changed.
    pub fn note_sas(&mut self, up: BTreeSet<IpAddr>) -> bool {
        let changed = up != self.sa_up;
        self.sa_up = up;
        changed
    }
}

/// How long after bgpd last received an UPDATE the routes are still read every second.
pub const SETTLING: Duration = Duration::from_secs(5);
/// How often the routes are read when nothing moved (a safety net).
pub const REREAD: Duration = Duration::from_secs(30);

/// How long a session must have been established before its routes count as complete.
pub const SETTLE: Duration = Duration::from_secs(5);

/// Whether routes read with these sessions may be taken whole (what is missing from them is
/// really withdrawn): one session established for [`SETTLE`].
pub fn complete(sessions: &[BgpSession]) -> bool {
    sessions
        .iter()
        .any(|s| s.established && s.uptime_ms >= SETTLE.as_millis() as u64)
}

/// A remote MAC as the mobility rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMac {
    pub vtep: IpAddr,
    /// When bgpd's best route first placed it behind `vtep`.
    pub since: Instant,
    /// Whether this site advertised it at that moment (the route took it from us).
    pub was_ours: bool,
}

/// How close to a remote route's arrival a local sighting is a tie (OVS reports ages in
/// whole seconds, bgpd's routes are read each second).
pub const MOVE_MARGIN: Duration = Duration::from_secs(1);

/// The MACs this site advertises (the MAC-mobility rule): each MAC seen on an access port
/// (`seen`: seconds since it was last seen there; `refreshed`: a moment after which OVS
/// certainly refreshed it), unless bgpd's best route places it at another site and it is not this site's
/// now:
///
/// - the route took it from us (we advertised it when the route came: the VNF moved away, and
///   the other site's route won with a higher sequence number): ours again only once seen
///   here after that route came — OVS refreshed it since, or its age says so clearly (it
///   moved back);
/// - the route was there before we advertised it (the VNF's old site, or a MAC merely
///   remembered by OVS): ours once seen here since that route came, a tie included (the VNF
///   arrived here; zebra raises the sequence number and our route wins everywhere).
///
/// So the site a VNF left stops advertising it even while its OVS still remembers the MAC,
/// and no two sites take a MAC from each other in turns.
pub fn advertised_macs(
    seen: &BTreeMap<(u32, String), u64>,
    refreshed: &BTreeMap<(u32, String), Instant>,
    remote: &BTreeMap<(u32, String), RemoteMac>,
    now: Instant,
) -> BTreeSet<(u32, String)> {
    seen.iter()
        .filter(|(k, age)| {
            let Some(r) = remote.get(*k) else {
                return true;
            };
            let Some(last_seen) = now.checked_sub(Duration::from_secs(**age)) else {
                return false;
            };
            if r.was_ours {
                refreshed.get(*k).is_some_and(|t| *t >= r.since)
                    || last_seen > r.since + MOVE_MARGIN
            } else {
                last_seen + MOVE_MARGIN >= r.since
            }
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// bgpd's router id: the VTEP address, or (over IPv6) an IPv4 id derived from it.
pub fn router_id(vtep: IpAddr) -> IpAddr {
    match vtep {
        IpAddr::V4(_) => vtep,
        IpAddr::V6(a) => {
            let o = a.octets();
            IpAddr::from([o[12], o[13], o[14], o[15]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn site() -> Runtime {
        let text = "[site]\nname = \"a\"\nunderlay = \"eth1\"\nvtep_ip = \"192.0.2.1\"\n[ipsec]\nenabled = false\ninsecure = true\n[[vlan]]\nid = 101\n";
        let cfg = SiteConfig::from_str_at(Path::new("t.toml"), text).unwrap();
        Runtime::new(&cfg)
    }

    fn routes(v: &[(&str, &[u32])]) -> Discovered {
        let mut d = Discovered::default();
        for (ip, vnis) in v {
            d.vteps
                .insert(ip.parse().unwrap(), vnis.iter().copied().collect());
        }
        d
    }

    fn session(established: bool, uptime_ms: u64) -> BgpSession {
        BgpSession {
            peer: "192.0.2.10".parse().unwrap(),
            state: if established { "Established" } else { "Active" }.into(),
            established,
            uptime_ms,
            prefixes_received: 0,
            dynamic: false,
        }
    }

    #[test]
    fn a_mac_is_advertised_unless_a_remote_route_took_it_or_holds_it() {
        let now = Instant::now() + Duration::from_secs(100);
        let k = |m: &str| (101u32, m.to_string());
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let seen = BTreeMap::from([(k("02:00:00:00:00:01"), 0), (k("02:00:00:00:00:02"), 10)]);
        let r = |secs_ago: u64, was_ours: bool| RemoteMac {
            vtep: b,
            since: now - Duration::from_secs(secs_ago),
            was_ours,
        };
        let one = || BTreeSet::from([k("02:00:00:00:00:01")]);
        let none = BTreeMap::new();
        let both =
            |r1, r2| BTreeMap::from([(k("02:00:00:00:00:01"), r1), (k("02:00:00:00:00:02"), r2)]);
        // No remote route: both are this site's.
        assert_eq!(
            advertised_macs(&seen, &none, &BTreeMap::new(), now).len(),
            2
        );
        // Routes 30 s old, there before we advertised the MACs: both were seen here since
        // (VNFs that arrived here).
        let all = advertised_macs(&seen, &none, &both(r(30, false), r(30, false)), now);
        assert_eq!(all.len(), 2);
        // The second's route came 5 s ago and took it from us; it was last seen here 10 s
        // ago: it moved away. The first is still active here.
        assert_eq!(
            advertised_macs(&seen, &none, &both(r(30, false), r(5, true)), now),
            one()
        );
        // A MAC OVS merely remembers (last seen 10 s ago) behind a route that came after:
        // not ours.
        assert_eq!(
            advertised_macs(&seen, &none, &both(r(30, false), r(5, false)), now),
            one()
        );
        let all = advertised_macs(&seen, &none, &both(r(30, false), r(11, false)), now);
        assert_eq!(all.len(), 2);
        // A tie (seen just as the route came): ours if the route was another site's before
        // (the VNF arrived here), not if it took the MAC from us (it left).
        let seen = BTreeMap::from([(k("02:00:00:00:00:01"), 1)]);
        let tie = |was_ours| BTreeMap::from([(k("02:00:00:00:00:01"), r(1, was_ours))]);
        assert_eq!(advertised_macs(&seen, &none, &tie(false), now), one());
        assert!(advertised_macs(&seen, &none, &tie(true), now).is_empty());
        // ... unless OVS certainly refreshed it after the route came (it moved back at once,
        // said one word, and went quiet): the read before the refresh was after the route.
        let after = BTreeMap::from([(k("02:00:00:00:00:01"), now - Duration::from_millis(500))]);
        assert_eq!(advertised_macs(&seen, &after, &tie(true), now), one());
        // A refresh first seen by the read after the route, but the read before it came
        // before the route: the frame may be the VNF's last words here (it left).
        let before = BTreeMap::from([(k("02:00:00:00:00:01"), now - Duration::from_secs(2))]);
        assert!(advertised_macs(&seen, &before, &tie(true), now).is_empty());
    }

    #[test]
    fn routes_count_as_complete_only_with_a_session_settled() {
        assert!(!complete(&[]));
        assert!(!complete(&[session(false, 0)]));
        assert!(!complete(&[session(true, 1_000)]));
        assert!(complete(&[session(false, 0), session(true, 5_000)]));
    }

    #[test]
    fn until_the_routes_are_complete_sites_are_only_added_then_followed_whole() {
        let mut rt = site();
        // A restarted daemon adopts what the earlier run left: B, with its SA up.
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(rt.adopt(
            routes(&[("192.0.2.2", &[101]), ("192.0.2.3", &[101])]),
            [b].into()
        ));
        assert!(
            !rt.adopt(routes(&[("192.0.2.9", &[101])]), BTreeSet::new()),
            "only once"
        );
        assert!(rt.sa_up.contains(&b));
        // bgpd, just started, knows nothing yet; then only D: nothing is taken away.
        rt.take(Discovered::default(), false);
        rt.take(routes(&[("192.0.2.4", &[101])]), false);
        assert_eq!(rt.current().vteps.len(), 3);
        // A settled session, but the table is still coming (this read differs from the last).
        rt.take(
            routes(&[("192.0.2.2", &[101]), ("192.0.2.4", &[101])]),
            true,
        );
        assert!(!rt.complete);
        assert_eq!(rt.current().vteps.len(), 3);
        // Two reads alike with a settled session: complete. C left meanwhile: withdrawn (held
        // for the grace), the others followed.
        rt.take(
            routes(&[("192.0.2.2", &[101]), ("192.0.2.4", &[101])]),
            true,
        );
        assert!(rt.complete);
        assert_eq!(rt.learned.vteps.len(), 2);
        assert!(rt
            .withdrawn
            .contains_key(&("192.0.2.3".parse().unwrap(), 101)));
        // Complete, a route goes: withdrawn at once (no second read needed).
        rt.take(routes(&[("192.0.2.2", &[101])]), true);
        assert!(rt
            .withdrawn
            .contains_key(&("192.0.2.4".parse().unwrap(), 101)));
        // bgpd restarted (its session not settled): an empty answer takes nothing away.
        rt.take(Discovered::default(), false);
        assert!(!rt.complete);
        assert_eq!(rt.learned.vteps.len(), 1);
        // Too late to adopt once the routes were complete.
        let mut rt2 = site();
        rt2.take(routes(&[]), true);
        rt2.take(routes(&[]), true);
        assert!(!rt2.adopt(routes(&[("192.0.2.2", &[101])]), BTreeSet::new()));
    }
}
