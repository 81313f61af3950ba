//! `status`: what l2s-vnf owns on this system right now — read directly from OVSDB, netlink
//! and charon, or (with a running daemon) asked from the daemon, which adds what only it
//! knows: its reconciles, repairs and reloads.
//!
//! The JSON form is a stable schema (`schema` = 1): fields are only ever added. The README's
//! "Status schema" section documents every field.

pub mod health;
pub mod macs;
pub mod probe;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::base::clock::unix_now;
use crate::base::names::{alias_owned_by, EXT_OWNER};
use crate::config::SiteConfig;
use crate::ipsec::{conn_name, SaState};
use crate::linux::LinkStats;
use crate::ovs::switch::PortRole;
use crate::plan::ActualState;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    /// `system` (read directly; no daemon answered) or `daemon`.
    pub source: String,
    pub site: String,
    pub bridge: Option<BridgeStatus>,
    pub vlans: Vec<VlanStatus>,
    pub access_mtu: Option<u32>,
    pub ipsec: IpsecStatus,
    pub peers: Vec<PeerStatus>,
    pub warnings: Vec<String>,
    /// Present when a running daemon answered.
    #[serde(default)]
    pub daemon: Option<DaemonStatus>,
    /// The EVPN control plane, when the daemon runs it.
    #[serde(default)]
    pub evpn: Option<crate::evpn::EvpnStatus>,
}

/// What the daemon knows beyond the system's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub config: String,
    pub started_unix: u64,
    pub uptime_secs: u64,
    pub reconcile_interval_secs: u64,
    /// Reconciles run since start (start, events, periodic, reloads).
    pub reconciles: u64,
    pub last_reconcile: Option<ReconcileRecord>,
    /// Changes made to undo drift (anything not asked for by a start or a reload).
    pub repairs_total: u64,
    /// The latest repairs, newest last (at most 20).
    pub recent_repairs: Vec<RepairRecord>,
    pub reloads: u64,
    pub reloads_failed: u64,
    pub last_reload_error: Option<String>,
    /// IKE/CHILD rekeys seen on owned connections since start.
    pub rekeys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileRecord {
    pub at_unix: u64,
    pub duration_ms: f64,
    /// What caused it: `start`, `reload`, `periodic`, or the events (e.g. `netlink: link
    /// l2s-vx101 deleted`).
    pub trigger: String,
    /// The changes made, as `plan` prints them.
    pub changes: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepairRecord {
    pub at_unix: u64,
    pub trigger: String,
    pub change: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpsecStatus {
    pub enabled: bool,
    /// Whether the fail-closed nftables table is installed.
    pub guard: bool,
    /// Whether charon answered.
    pub charon: bool,
    /// This site's certificate as handed to charon (when some peer uses certificates).
    #[serde(default)]
    pub certificate: Option<CertStatus>,
}

/// A certificate in status: who it names, who signed it, and how long it has left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_after_unix: i64,
    /// Seconds until it expires (negative once expired).
    pub expires_in_secs: i64,
    pub days_left: i64,
}

impl CertStatus {
    pub fn of(c: &crate::pki::CertInfo, now: i64) -> Self {
        CertStatus {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            serial: c.serial.clone(),
            not_after_unix: c.not_after_unix,
            expires_in_secs: c.expiry_secs(now),
            days_left: c.days_left(now),
        }
    }

    fn text(&self) -> String {
        format!(
            "\"{}\" issued by \"{}\", serial {}, {}",
            self.subject,
            self.issuer,
            self.serial,
            if self.expires_in_secs < 0 {
                format!("EXPIRED {} day(s) ago", -self.days_left)
            } else {
                format!("expires in {} day(s)", self.days_left)
            }
        )
    }

    /// A warning from 30 days before the end of validity.
    fn warning(&self, whose: &str) -> Option<String> {
        (self.expires_in_secs < crate::pki::EXPIRY_WARNING_SECS).then(|| {
            format!(
                "{whose} certificate \"{}\" {} ({}); renew it",
                self.subject,
                if self.expires_in_secs < 0 {
                    "has expired".to_string()
                } else {
                    format!("expires in {} day(s)", self.days_left)
                },
                crate::pki::utc_date(self.not_after_unix)
            )
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: IpAddr,
    pub connection: String,
    pub loaded: bool,
    pub up: bool,
    pub sa: Option<SaState>,
    /// The daemon's latest path probe (RTT, jitter, loss, full-size frames), when it probes.
    #[serde(default)]
    pub path: Option<crate::status::probe::PathHealth>,
    /// `psk` or `pubkey`.
    #[serde(default)]
    pub auth: Option<String>,
    /// The identity the peer must prove.
    #[serde(default)]
    pub id: Option<String>,
    /// The peer's certificate, as charon verified it (`pubkey` peers).
    #[serde(default)]
    pub certificate: Option<CertStatus>,
    /// Why the peer has no SA, when that is known: its certificate revoked by our CRL, or
    /// charon's words about its latest failed authentication.
    #[serde(default)]
    pub problem: Option<String>,
    /// `listed` (a `[[peer]]`), `discovered` (through EVPN) or `reflector`.
    #[serde(default)]
    pub kind: Option<crate::config::PeerKind>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BridgeStatus {
    pub name: String,
    pub datapath: String,
    pub owned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortStatus {
    pub name: String,
    pub exists: bool,
    pub up: bool,
    pub mtu: Option<u32>,
    /// Why ovs-vswitchd cannot use the port, if it cannot.
    #[serde(default)]
    pub problem: Option<String>,
    /// The device's counters (rx: from the VNF into the switch, tx: to the VNF).
    #[serde(default)]
    pub counters: Option<Counters>,
    /// The storm-control limit on broadcast, multicast and unknown unicast from this port.
    #[serde(default)]
    pub bum_limit_pps: Option<u32>,
}

/// Traffic counters of a port or a VLAN: `rx` entered the switch (from a VNF, or from the
/// peer sites for a VTEP), `tx` left it. Kernel counters, from the device's creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the device refused on entry: above its MTU, or no room to queue them.
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames that could not be sent (a datapath counts a frame above the MTU here).
    pub tx_dropped: u64,
    /// Broadcast, multicast and unknown-unicast frames dropped by storm control.
    pub bum_limited: u64,
}

impl Counters {
    pub fn from_link(s: &LinkStats) -> Self {
        Counters {
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            rx_dropped: s.rx_dropped + s.rx_length_errors + s.rx_over_errors,
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            tx_dropped: s.tx_dropped + s.tx_errors,
            bum_limited: 0,
        }
    }

    pub fn add(&mut self, o: &Counters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.rx_dropped += o.rx_dropped;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_dropped += o.tx_dropped;
        self.bum_limited += o.bum_limited;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VlanStatus {
    pub id: u16,
    pub vni: Option<u32>,
    pub vtep: Option<String>,
    pub vtep_up: bool,
    pub vtep_mtu: Option<u32>,
    pub local: Option<IpAddr>,
    pub flood: Vec<IpAddr>,
    /// The configured peers behind `flood` (an address no peer has shows as itself).
    #[serde(default)]
    pub flood_peers: Vec<String>,
    pub access_ports: Vec<PortStatus>,
    /// Whether the VLAN's data path works: VTEP, ports, flood entries and SAs to every peer
    /// that shares it (see `health`).
    #[serde(default)]
    pub up: bool,
    /// Why it does not, when it does not.
    #[serde(default)]
    pub degraded: Vec<String>,
    /// The VLAN's traffic: its access ports and its VTEP together.
    #[serde(default)]
    pub counters: Counters,
    /// The VTEP alone (rx: from the peer sites, tx: to them).
    #[serde(default)]
    pub vtep_counters: Option<Counters>,
    /// The storm-control limit of each of its access ports, if any.
    #[serde(default)]
    pub bum_limit_pps: Option<u32>,
    /// The MACs its VXLAN device learned from the peer sites.
    #[serde(default)]
    pub remote_macs: usize,
    /// How many it may learn (`None`: its device has no limit).
    #[serde(default)]
    pub mac_limit: Option<u32>,
    /// The device is full: frames to MACs it could not learn go to every peer of the VLAN.
    #[serde(default)]
    pub mac_limit_reached: bool,
}

pub fn build(
    cfg: &SiteConfig,
    actual: &ActualState,
    sas: Option<&BTreeMap<String, SaState>>,
) -> Status {
    let (site, bridge) = (cfg.site.name.as_str(), cfg.switch.bridge.as_str());
    let mut warnings = vec![];
    let links = &actual.links.links;
    let b = actual.switch.bridge.as_ref();
    let mut vlans: std::collections::BTreeMap<u16, VlanStatus> = Default::default();
    let entry = |id: u16| -> VlanStatus {
        VlanStatus {
            id,
            vni: None,
            vtep: None,
            vtep_up: false,
            vtep_mtu: None,
            local: None,
            flood: vec![],
            flood_peers: vec![],
            access_ports: vec![],
            up: false,
            degraded: vec![],
            counters: Counters::default(),
            vtep_counters: None,
            bum_limit_pps: cfg
                .vlans
                .iter()
                .find(|v| v.id == id)
                .and_then(|v| v.bum_limit_pps.or(cfg.switch.bum_limit_pps)),
            remote_macs: 0,
            mac_limit: None,
            mac_limit_reached: false,
        }
    };
    if let Some(b) = b {
        for p in b.ports.values() {
            let (Some(role), Some(tag)) = (p.role, p.tag) else {
                continue;
            };
            let v = vlans.entry(tag).or_insert_with(|| entry(tag));
            let l = links.get(&p.name);
            match role {
                PortRole::Vtep => {
                    v.vtep = Some(p.name.clone());
                    if let Some(l) = l {
                        v.vtep_up = l.up;
                        v.vtep_mtu = Some(l.mtu);
                        v.vtep_counters = l.stats.as_ref().map(Counters::from_link);
                        v.vni = l.vxlan.as_ref().and_then(|x| x.vni);
                        v.local = l.vxlan.as_ref().and_then(|x| x.local);
                        v.flood = l.flood.iter().copied().collect();
                        v.remote_macs = l.learned_macs;
                        v.mac_limit = l.vxlan.as_ref().and_then(|x| x.mac_limit);
                        v.mac_limit_reached =
                            v.mac_limit.is_some_and(|n| l.learned_macs >= n as usize);
                        if v.mac_limit_reached {
                            warnings.push(format!(
                                "vlan {tag}: MAC limit reached ({} remote MACs): frames to MACs \
                                 it cannot learn are flooded to every peer of the VLAN",
                                l.learned_macs
                            ));
                        }
                        v.flood_peers = v
                            .flood
                            .iter()
                            .map(|a| {
                                cfg.peers
                                    .iter()
                                    .find(|p| p.address == *a)
                                    .map(|p| p.name.clone())
                                    .unwrap_or_else(|| a.to_string())
                            })
                            .collect();
                    } else {
                        warnings.push(format!("VXLAN device {} of vlan {tag} is missing", p.name));
                    }
                }
                PortRole::Access => {
                    if l.is_none() {
                        warnings.push(format!(
                            "access port {} of vlan {tag} does not exist",
                            p.name
                        ));
                    }
                    let counters = l.and_then(|l| l.stats.as_ref()).map(|s| Counters {
                        bum_limited: actual.storm.as_ref().map_or(0, |o| o.limited(p)),
                        ..Counters::from_link(s)
                    });
                    v.access_ports.push(PortStatus {
                        name: p.name.clone(),
                        exists: l.is_some(),
                        up: l.is_some_and(|l| l.up),
                        mtu: l.map(|l| l.mtu),
                        problem: crate::plan::stale_binding(p, l.map(|l| l.index))
                            .or_else(|| p.iface.problem()),
                        counters,
                        bum_limit_pps: v.bum_limit_pps,
                    });
                }
            }
        }
        if b.owner.is_none() {
            warnings.push(format!(
                "bridge {} exists but is not owned by l2s-vnf ({EXT_OWNER} unset)",
                b.name
            ));
        }
    }
    for l in links.values() {
        if l.vxlan.is_some()
            && alias_owned_by(l.alias.as_deref(), bridge)
            && !vlans
                .values()
                .any(|v| v.vtep.as_deref() == Some(l.name.as_str()))
        {
            warnings.push(format!(
                "owned VXLAN device {} is not attached to the bridge",
                l.name
            ));
        }
    }
    for v in vlans.values_mut() {
        let mut sum = v.vtep_counters.unwrap_or_default();
        for c in v.access_ports.iter().filter_map(|p| p.counters.as_ref()) {
            sum.add(c);
        }
        v.counters = sum;
    }
    let access_mtu = vlans.values().filter_map(|v| v.vtep_mtu).min();
    for (id, why) in crate::status::health::vlans(cfg, actual, sas) {
        let v = vlans.entry(id).or_insert_with(|| entry(id));
        v.up = why.is_empty();
        if !why.is_empty() {
            warnings.push(format!("vlan {id} is degraded: {}", why.join("; ")));
        }
        v.degraded = why;
    }
    let loaded: Vec<&str> = actual
        .ipsec
        .conns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let peers: Vec<PeerStatus> = cfg
        .peers
        .iter()
        .map(|p| {
            let connection = conn_name(bridge, &p.name);
            let sa = sas.and_then(|m| m.get(&connection)).cloned();
            PeerStatus {
                name: p.name.clone(),
                address: p.address,
                loaded: loaded.contains(&connection.as_str()),
                up: sa.as_ref().is_some_and(SaState::up),
                connection,
                sa,
                path: None,
                auth: cfg.ipsec.enabled.then(|| p.auth.to_string()),
                id: cfg.ipsec.enabled.then(|| p.id.clone()),
                certificate: None,
                problem: None,
                kind: Some(p.kind),
            }
        })
        .collect();
    if cfg.ipsec.enabled {
        if actual.guard.is_none() {
            warnings.push(
                "IPsec is enabled but the fail-closed guard is not installed (run apply)".into(),
            );
        }
        if sas.is_none() {
            warnings.push(format!(
                "charon is not reachable at {}",
                cfg.ipsec.vici.display()
            ));
        }
        warnings.extend(
            actual
                .ipsec
                .charon_unknown
                .iter()
                .map(|u| format!("charon cannot tell {u}")),
        );
        for p in peers.iter().filter(|p| !p.up) {
            warnings.push(format!(
                "no established SA with peer {} ({})",
                p.name, p.address
            ));
        }
    }
    let certificate = crate::ipsec::DesiredCreds::from_config(cfg)
        .map(|d| CertStatus::of(&d.creds.cert, crate::base::clock::unix_now_signed()));
    if let Some(w) = certificate.as_ref().and_then(|c| c.warning("this site's")) {
        warnings.push(w);
    }
    Status {
        ipsec: IpsecStatus {
            enabled: cfg.ipsec.enabled,
            guard: actual.guard.is_some(),
            charon: sas.is_some(),
            certificate,
        },
        peers,
        schema: 1,
        source: "system".into(),
        site: site.to_string(),
        bridge: b.map(|b| BridgeStatus {
            name: b.name.clone(),
            datapath: b.datapath.to_string(),
            owned: b.owner.is_some(),
        }),
        vlans: vlans.into_values().collect(),
        access_mtu,
        warnings,
        daemon: None,
        evpn: None,
    }
}

impl Status {
    /// Warn about access ports that refuse frames: almost always a VNF whose MTU is above the
    /// access MTU, whose large frames vanish there. Counted since `since` (a baseline and
    /// what it marks), else since each device was created.
    pub fn warn_refused_frames(&mut self, since: Option<(&BTreeMap<String, u64>, &str)>) {
        for v in &self.vlans {
            for p in &v.access_ports {
                let (Some(c), Some(mtu)) = (&p.counters, p.mtu) else {
                    continue;
                };
                let base = since
                    .and_then(|(b, _)| b.get(&p.name))
                    .copied()
                    .filter(|b| *b <= c.rx_dropped)
                    .unwrap_or(0);
                let n = c.rx_dropped - base;
                if n == 0 {
                    continue;
                }
                self.warnings.push(format!(
                    "access port {} (vlan {}) refused {n} incoming frame(s) since {}; a VNF sending frames larger than the access MTU does this: it needs MTU {mtu} on that link (or set [mtu] access = 1500 with outer_fragmentation = true)",
                    p.name,
                    v.id,
                    since.map_or("the device was created", |(_, what)| what)
                ));
            }
        }
    }

    /// The peers' certificates (as charon verified them) and why a peer without an SA has
    /// none, when that is known; a warning for a peer certificate about to expire.
    pub fn add_peer_auth(
        &mut self,
        certs: &BTreeMap<String, crate::pki::CertInfo>,
        problems: &BTreeMap<String, String>,
    ) {
        let now = crate::base::clock::unix_now_signed();
        for p in &mut self.peers {
            p.certificate = certs.get(&p.name).map(|c| CertStatus::of(c, now));
            if let Some(w) = p
                .certificate
                .as_ref()
                .and_then(|c| c.warning(&format!("peer {}'s", p.name)))
            {
                self.warnings.push(w);
            }
            if !p.up {
                p.problem = problems.get(&p.name).cloned();
                if let Some(why) = &p.problem {
                    self.warnings.push(format!("peer {}: {why}", p.name));
                }
            }
        }
    }

    /// The daemon's path probes, per peer, with an alarm for a path that stopped carrying
    /// full-size frames.
    pub fn add_paths(&mut self, paths: &BTreeMap<String, crate::status::probe::PathHealth>) {
        for p in &mut self.peers {
            p.path = paths.get(&p.name).cloned();
            if let Some(h) = &p.path {
                if h.loss_pct < 100.0 && !h.mtu_ok {
                    self.warnings.push(format!(
                        "MTU alarm on the path to {}: packets of {} bytes (a full frame at the access MTU) do not pass; {} do",
                        p.name,
                        h.mtu_size,
                        h.mtu_passes
                            .map(|b| format!("{b} bytes"))
                            .unwrap_or_else(|| "no size".into())
                    ));
                }
            }
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.daemon {
            Some(d) => writeln!(
                f,
                "site {} (daemon pid {}, up {}, l2s-vnf {}, config {})",
                self.site,
                d.pid,
                duration(d.uptime_secs),
                d.version,
                d.config
            )?,
            None => writeln!(
                f,
                "site {} (no daemon running: read from the system directly)",
                self.site
            )?,
        }
        match &self.bridge {
            None => writeln!(f, "bridge: absent")?,
            Some(b) => writeln!(
                f,
                "bridge {} datapath {}{}",
                b.name,
                b.datapath,
                if b.owned { "" } else { " (NOT owned)" }
            )?,
        }
        if let Some(m) = self.access_mtu {
            writeln!(f, "access MTU {m}")?;
        }
        for v in &self.vlans {
            writeln!(
                f,
                "vlan {:>4}  {}  vni {:<8} vtep {} ({}, mtu {}, local {})",
                v.id,
                if v.up { "UP" } else { "DEGRADED" },
                v.vni.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                v.vtep.as_deref().unwrap_or("-"),
                if v.vtep_up { "up" } else { "DOWN" },
                v.vtep_mtu
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "?".into()),
                v.local.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
            )?;
            let flood: Vec<String> = v
                .flood
                .iter()
                .zip(
                    v.flood_peers
                        .iter()
                        .map(Some)
                        .chain(std::iter::repeat(None)),
                )
                .map(|(a, p)| match p {
                    Some(p) if *p != a.to_string() => format!("{p} ({a})"),
                    _ => a.to_string(),
                })
                .collect();
            writeln!(
                f,
                "           flood to: {}",
                if flood.is_empty() {
                    "-".into()
                } else {
                    flood.join(", ")
                }
            )?;
            for why in &v.degraded {
                writeln!(f, "           ! {why}")?;
            }
            writeln!(
                f,
                "           traffic: {}{}",
                counters_text(&v.counters),
                v.bum_limit_pps
                    .map(|l| format!("; storm limit {l} pps per port"))
                    .unwrap_or_default()
            )?;
            writeln!(
                f,
                "           remote MACs: {}{}",
                v.remote_macs,
                match (v.mac_limit, v.mac_limit_reached) {
                    (Some(n), true) => format!(" of {n} (LIMIT REACHED)"),
                    (Some(n), false) => format!(" of {n}"),
                    (None, _) => " (no limit)".into(),
                }
            )?;
            for p in &v.access_ports {
                writeln!(
                    f,
                    "           port {} ({}{}){}",
                    p.name,
                    if !p.exists {
                        "MISSING"
                    } else if p.up {
                        "up"
                    } else {
                        "down"
                    },
                    p.mtu.map(|m| format!(", mtu {m}")).unwrap_or_default(),
                    p.counters
                        .as_ref()
                        .map(|c| format!(": {}", counters_text(c)))
                        .unwrap_or_default()
                )?;
            }
        }
        writeln!(
            f,
            "ipsec: {}, guard {}, charon {}",
            if self.ipsec.enabled {
                "enabled"
            } else {
                "DISABLED (insecure lab mode)"
            },
            if self.ipsec.guard {
                "installed"
            } else {
                "absent"
            },
            if self.ipsec.charon {
                "reachable"
            } else {
                "not reachable"
            }
        )?;
        if let Some(c) = &self.ipsec.certificate {
            writeln!(f, "certificate: {}", c.text())?;
        }
        for p in &self.peers {
            match &p.sa {
                Some(sa) => writeln!(
                    f,
                    "peer {:<12} {:<16} IKE {} CHILD {}, established {} ago, rekey in {} (IKE {})\n                                  in {} B/{} pkts  out {} B/{} pkts",
                    p.name,
                    p.address.to_string(),
                    sa.ike_state.as_deref().unwrap_or("-"),
                    sa.child_state.as_deref().unwrap_or("-"),
                    opt_duration(sa.established_secs),
                    opt_duration(sa.child_rekey_in_secs),
                    opt_duration(sa.ike_rekey_in_secs),
                    sa.bytes_in,
                    sa.packets_in,
                    sa.bytes_out,
                    sa.packets_out
                )?,
                None => writeln!(
                    f,
                    "peer {:<12} {:<16} {}",
                    p.name,
                    p.address.to_string(),
                    if p.loaded { "loaded, no SA" } else { "no SA" }
                )?,
            }
            if let Some(h) = &p.path {
                writeln!(
                    f,
                    "                                  path: {}",
                    path_text(h)
                )?;
            }
            if let Some(c) = &p.certificate {
                writeln!(
                    f,
                    "                                  certificate: {}",
                    c.text()
                )?;
            } else if p.auth.as_deref() == Some("pubkey") {
                writeln!(
                    f,
                    "                                  certificate: (not seen yet; identity {})",
                    p.id.as_deref().unwrap_or("-")
                )?;
            }
            if let Some(why) = &p.problem {
                writeln!(f, "                                  why no SA: {why}")?;
            }
            match p.kind {
                Some(crate::config::PeerKind::Discovered) => writeln!(
                    f,
                    "                                  discovered through EVPN"
                )?,
                Some(crate::config::PeerKind::Reflector) => writeln!(
                    f,
                    "                                  route reflector (BGP inside IPsec)"
                )?,
                _ => {}
            }
        }
        if let Some(e) = &self.evpn {
            writeln!(
                f,
                "evpn: {} in AS {}, bgpd {}{}, routes {}",
                e.role,
                e.asn,
                if e.frr.bgpd_running {
                    "running"
                } else {
                    "NOT RUNNING"
                },
                match e.frr.zebra_running {
                    Some(true) => ", zebra running",
                    Some(false) => ", zebra NOT RUNNING",
                    None => "",
                },
                match e.routes_age_secs {
                    Some(a) => format!("read {a} s ago"),
                    None => "never read".into(),
                }
            )?;
            for b in &e.sessions {
                writeln!(
                    f,
                    "  BGP {:<16} {}{}, {} route(s) received",
                    b.peer.to_string(),
                    b.state,
                    if b.dynamic { " (dynamic)" } else { "" },
                    b.prefixes_received
                )?;
            }
            for d in &e.discovered {
                writeln!(
                    f,
                    "  discovered {:<16} VNIs {:?}, SA {}",
                    d.vtep.to_string(),
                    d.vnis,
                    if d.sa_up {
                        "up (flooding)"
                    } else {
                        "not up (no flood entry yet)"
                    }
                )?;
            }
            if e.role == crate::config::EvpnRole::Site {
                writeln!(
                    f,
                    "  MACs: {} remote placed behind discovered sites, {} of this site's advertised (`l2s-vnf macs` lists them)",
                    e.remote_macs, e.local_macs
                )?;
            }
            if e.frr.restarts > 0 {
                writeln!(
                    f,
                    "  FRR restarted {} time(s); last: {}",
                    e.frr.restarts,
                    e.frr.last_exit.as_deref().unwrap_or("-")
                )?;
            }
            if let Some(p) = &e.problem {
                writeln!(f, "  PROBLEM: {p}")?;
            }
        }
        if let Some(d) = &self.daemon {
            match &d.last_reconcile {
                Some(r) => writeln!(
                    f,
                    "last reconcile {} ago ({}): {:.1} ms, {}{}",
                    duration(unix_now().saturating_sub(r.at_unix)),
                    r.trigger,
                    r.duration_ms,
                    match r.changes.len() {
                        0 => "no changes".to_string(),
                        n => format!("{n} change(s)"),
                    },
                    r.error
                        .as_ref()
                        .map(|e| format!(", FAILED: {e}"))
                        .unwrap_or_default()
                )?,
                None => writeln!(f, "last reconcile: none yet")?,
            }
            writeln!(
                f,
                "reconciles {}, repairs {}, reloads {} ({} refused), rekeys {}, periodic every {}",
                d.reconciles,
                d.repairs_total,
                d.reloads,
                d.reloads_failed,
                d.rekeys,
                duration(d.reconcile_interval_secs)
            )?;
            for r in d.recent_repairs.iter().rev().take(5) {
                writeln!(
                    f,
                    "  repaired {} ago: {} (after {})",
                    duration(unix_now().saturating_sub(r.at_unix)),
                    r.change.trim_start(),
                    r.trigger
                )?;
            }
            if let Some(e) = &d.last_reload_error {
                writeln!(f, "last refused reload: {e}")?;
            }
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// `in 12 pkts/3.4 kB, out 10 pkts/2.1 kB, dropped 0/0, storm-limited 5`.
fn counters_text(c: &Counters) -> String {
    let mut s = format!(
        "in {} pkts/{}, out {} pkts/{}, dropped {} in/{} out",
        c.rx_packets,
        bytes_text(c.rx_bytes),
        c.tx_packets,
        bytes_text(c.tx_bytes),
        c.rx_dropped,
        c.tx_dropped
    );
    if c.bum_limited > 0 {
        s.push_str(&format!(", storm-limited {}", c.bum_limited));
    }
    s
}

fn bytes_text(b: u64) -> String {
    match b {
        b if b >= 10_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 10_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 10_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

/// Frames each access port has refused on entry so far (a baseline for
/// [`Status::warn_refused_frames`]).
pub fn refused_frames(actual: &ActualState) -> BTreeMap<String, u64> {
    let Some(b) = &actual.switch.bridge else {
        return BTreeMap::new();
    };
    b.ports
        .values()
        .filter(|p| p.role == Some(PortRole::Access))
        .filter_map(|p| {
            let s = actual.links.links.get(&p.name)?.stats.as_ref()?;
            Some((p.name.clone(), Counters::from_link(s).rx_dropped))
        })
        .collect()
}

/// `3h02m`, `4m10s`, `12s`.
/// `3m 20s`-style text of a number of seconds.
pub fn duration(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn opt_duration(secs: Option<u64>) -> String {
    secs.map(duration).unwrap_or_else(|| "-".into())
}

/// One line for a path probe: `rtt 0.4 ms (0.3–0.6), jitter 0.1 ms, loss 0%, full-size ok`.
pub fn path_text(h: &crate::status::probe::PathHealth) -> String {
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    let mut s = format!(
        "rtt {} ms ({}–{}), jitter {} ms, loss {:.0}%, ",
        ms(h.rtt_ms),
        ms(h.rtt_min_ms),
        ms(h.rtt_max_ms),
        ms(h.jitter_ms),
        h.loss_pct
    );
    s.push_str(&match (h.loss_pct >= 100.0, h.mtu_ok, h.mtu_passes) {
        (true, _, _) => "no answer".to_string(),
        (false, true, _) => format!("full-size {} B ok", h.mtu_size),
        (false, false, Some(p)) => format!("MTU ALARM: {} B lost, {p} B pass", h.mtu_size),
        (false, false, None) => format!("MTU ALARM: {} B lost", h.mtu_size),
    });
    if let Some(t) = h.throughput_mbps {
        s.push_str(&format!(", {t:.0} Mbit/s"));
    }
    s
}
