//! `status`: what l2s-vnf owns on this system right now, read directly from OVSDB and netlink.
//! The JSON form is a stable schema (`schema` = 1): fields are only ever added.

use std::net::IpAddr;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::config::SiteConfig;
use crate::ipsec::{conn_name, SaState};
use crate::model::{alias_owned_by, EXT_OWNER};
use crate::plan::{ActualState, PortRole};

#[derive(Debug, Serialize)]
pub struct Status {
    pub schema: u32,
    pub source: &'static str,
    pub site: String,
    pub bridge: Option<BridgeStatus>,
    pub vlans: Vec<VlanStatus>,
    pub access_mtu: Option<u32>,
    pub ipsec: IpsecStatus,
    pub peers: Vec<PeerStatus>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct IpsecStatus {
    pub enabled: bool,
    /// Whether the fail-closed nftables table is installed.
    pub guard: bool,
    /// Whether charon answered.
    pub charon: bool,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: IpAddr,
    pub connection: String,
    pub loaded: bool,
    pub up: bool,
    pub sa: Option<SaState>,
}

#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub datapath: String,
    pub owned: bool,
}

#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub name: String,
    pub exists: bool,
    pub up: bool,
    pub mtu: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct VlanStatus {
    pub id: u16,
    pub vni: Option<u32>,
    pub vtep: Option<String>,
    pub vtep_up: bool,
    pub vtep_mtu: Option<u32>,
    pub local: Option<IpAddr>,
    pub flood: Vec<IpAddr>,
    pub access_ports: Vec<PortStatus>,
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
            access_ports: vec![],
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
                        v.vni = l.vxlan.as_ref().and_then(|x| x.vni);
                        v.local = l.vxlan.as_ref().and_then(|x| x.local);
                        v.flood = l.flood.iter().copied().collect();
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
                    v.access_ports.push(PortStatus {
                        name: p.name.clone(),
                        exists: l.is_some(),
                        up: l.is_some_and(|l| l.up),
                        mtu: l.map(|l| l.mtu),
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
    let access_mtu = vlans.values().filter_map(|v| v.vtep_mtu).min();
    let loaded: Vec<&str> = actual
        .security
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
            }
        })
        .collect();
    if cfg.ipsec.enabled {
        if actual.security.guard.is_none() {
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
        for p in peers.iter().filter(|p| !p.up) {
            warnings.push(format!(
                "no established SA with peer {} ({})",
                p.name, p.address
            ));
        }
    }
    Status {
        ipsec: IpsecStatus {
            enabled: cfg.ipsec.enabled,
            guard: actual.security.guard.is_some(),
            charon: sas.is_some(),
        },
        peers,
        schema: 1,
        source: "system",
        site: site.to_string(),
        bridge: b.map(|b| BridgeStatus {
            name: b.name.clone(),
            datapath: b.datapath.to_string(),
            owned: b.owner.is_some(),
        }),
        vlans: vlans.into_values().collect(),
        access_mtu,
        warnings,
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "site {} (read from the system; no daemon asked)",
            self.site
        )?;
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
                "vlan {:>4}  vni {:<8} vtep {} ({}, mtu {}, local {})",
                v.id,
                v.vni.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
                v.vtep.as_deref().unwrap_or("-"),
                if v.vtep_up { "up" } else { "DOWN" },
                v.vtep_mtu
                    .map(|x| x.to_string())
                    .unwrap_or_else(|| "?".into()),
                v.local.map(|x| x.to_string()).unwrap_or_else(|| "?".into()),
            )?;
            let flood: Vec<String> = v.flood.iter().map(|a| a.to_string()).collect();
            writeln!(
                f,
                "           flood to: {}",
                if flood.is_empty() {
                    "-".into()
                } else {
                    flood.join(", ")
                }
            )?;
            for p in &v.access_ports {
                writeln!(
                    f,
                    "           port {} ({}{})",
                    p.name,
                    if !p.exists {
                        "MISSING"
                    } else if p.up {
                        "up"
                    } else {
                        "down"
                    },
                    p.mtu.map(|m| format!(", mtu {m}")).unwrap_or_default()
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
        for p in &self.peers {
            match &p.sa {
                Some(sa) => writeln!(
                    f,
                    "peer {:<12} {:<16} IKE {} CHILD {} up {}s  in {} B/{} pkts  out {} B/{} pkts",
                    p.name,
                    p.address.to_string(),
                    sa.ike_state.as_deref().unwrap_or("-"),
                    sa.child_state.as_deref().unwrap_or("-"),
                    sa.established_secs.unwrap_or(0),
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
        }
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}
