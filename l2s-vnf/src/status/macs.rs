//! `l2s-vnf macs`: the MAC table of the switch that spans the sites, as an operator reads it
//! on any switch — each MAC by VLAN, behind a local access port or a peer site.
//!
//! Two tables make it: ovs-vswitchd's learning table (`fdb/show`) says on which port of the
//! bridge a MAC was seen; for a VXLAN port, the VXLAN device's own learned entry says which
//! site's VTEP it came from. Both learn again when a MAC moves, and age out what went quiet.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::apply::{ApplyError, System};
use crate::config::SiteConfig;
use crate::linux::dump::{self, Learned};
use crate::ovs::switch::{ObservedPort, PortRole};
use crate::ovs::unixctl;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacEntry {
    pub vlan: u16,
    pub mac: String,
    /// The local access port, when the MAC is at this site.
    pub port: Option<String>,
    /// The peer site, when the MAC is behind another site.
    pub peer: Option<String>,
    /// Seconds since the switch last saw it (0 for a MAC EVPN placed that the switch has not
    /// seen yet).
    pub age_secs: u64,
    /// Behind its site because a type-2 route of EVPN says so (not learned from traffic).
    #[serde(default)]
    pub evpn: bool,
}

/// Why the MAC table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MacsError {
    #[error("VLAN {vlan} is not configured at this site; configured: {configured}")]
    UnknownVlan { vlan: u16, configured: String },
    #[error("cannot list learned MACs: {0}")]
    Learned(std::io::Error),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Ovsdb(#[from] crate::ovs::OvsdbError),
}

/// The table, optionally for one VLAN (which must be configured).
pub async fn table(
    cfg: &SiteConfig,
    sys: &System,
    vlan: Option<u16>,
) -> Result<Vec<MacEntry>, MacsError> {
    if let Some(v) = vlan {
        if !cfg.vlans.iter().any(|x| x.id == v) {
            let known: Vec<String> = cfg.vlans.iter().map(|x| x.id.to_string()).collect();
            return Err(MacsError::UnknownVlan {
                vlan: v,
                configured: if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                },
            });
        }
    }
    let actual = sys.observe(cfg).await?;
    let Some(bridge) = &actual.switch.bridge else {
        return Ok(vec![]);
    };
    let socket = unixctl::socket(&cfg.switch.ovsdb)?;
    let text = unixctl::call(&socket, "fdb/show", &[&bridge.name]).await?;
    let learned: Vec<Learned> = dump::learned().await.map_err(MacsError::Learned)?;
    let remote: HashMap<(u32, String), (IpAddr, bool)> = learned
        .into_iter()
        .map(|l| {
            (
                (l.ifindex, crate::base::mac::text(&l.mac)),
                (l.dst, l.placed),
            )
        })
        .collect();
    let by_ofport: HashMap<i64, &ObservedPort> = bridge
        .ports
        .values()
        .filter_map(|p| Some((p.iface.ofport?, p)))
        .collect();
    let peer_of: BTreeMap<IpAddr, &str> = cfg
        .peers
        .iter()
        .map(|p| (p.address, p.name.as_str()))
        .collect();
    let site = |ip: &IpAddr| {
        peer_of
            .get(ip)
            .map(|n| n.to_string())
            .unwrap_or_else(|| ip.to_string())
    };
    let mut out = vec![];
    for row in unixctl::parse_fdb(&text) {
        if vlan.is_some_and(|v| v != row.vlan) {
            continue;
        }
        let Some(p) = by_ofport.get(&row.ofport) else {
            continue;
        };
        let (port, peer, evpn) = match p.role {
            Some(PortRole::Access) => (Some(p.name.clone()), None, false),
            Some(PortRole::Vtep) => {
                let dst = actual
                    .links
                    .links
                    .get(&p.name)
                    .and_then(|l| remote.get(&(l.index, row.mac.clone())));
                match dst {
                    Some((ip, placed)) => (None, Some(site(ip)), *placed),
                    // Not (yet) in the VXLAN device's table: some peer of that VLAN.
                    None => (None, Some("?".to_string()), false),
                }
            }
            None => continue,
        };
        out.push(MacEntry {
            vlan: row.vlan,
            mac: row.mac,
            port,
            peer,
            age_secs: row.age_secs,
            evpn,
        });
    }
    // MACs EVPN placed that the switch has not seen (yet).
    for v in cfg.vlans.iter().filter(|v| vlan.is_none_or(|x| x == v.id)) {
        let Some(l) = actual
            .links
            .links
            .get(&crate::base::names::vxlan_device_name(v.vni))
        else {
            continue;
        };
        for (mac, ip) in &l.placed {
            if !out.iter().any(|e| e.vlan == v.id && e.mac == *mac) {
                out.push(MacEntry {
                    vlan: v.id,
                    mac: mac.clone(),
                    port: None,
                    peer: Some(site(ip)),
                    age_secs: 0,
                    evpn: true,
                });
            }
        }
    }
    out.sort_by(|a, b| (a.vlan, &a.mac).cmp(&(b.vlan, &b.mac)));
    Ok(out)
}

/// The table as text, one MAC a line.
pub fn render(entries: &[MacEntry]) -> String {
    let mut s = format!(
        "{:>4}  {:<17}  {:<24}  {:>5}\n",
        "vlan", "mac", "where", "age"
    );
    for e in entries {
        let place = match (&e.port, &e.peer) {
            (Some(p), _) => format!("port {p}"),
            (None, Some(p)) if e.evpn => format!("site {p} (evpn)"),
            (None, Some(p)) => format!("site {p}"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:>4}  {:<17}  {:<24}  {:>4}s\n",
            e.vlan, e.mac, place, e.age_secs
        ));
    }
    s
}
