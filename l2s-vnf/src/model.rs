//! The desired state: what the config plus the discovered facts of this machine say should
//! exist, assembled from every backend's part (VXLAN specs for `linux`, ports and storm
//! limits for `ovs`, connections and credentials for `ipsec`, the guard's spec). The names
//! and ownership marks it uses are in `base::names`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::base::kinds::{BackendChoice, Datapath, DatapathChoice, IpsecBackend};
use crate::base::mtu::{self, EspMode, Family, MtuInputs, MtuResult, Protection};
use crate::base::mtu::{max_access_mtu, mtu_too_large};
use crate::base::names::{vxlan_alias, vxlan_device_name};
use crate::config::{ConfigIssue, MtuSetting, SiteConfig};
use crate::guard::{self, GuardSpec};
use crate::ipsec::{self, DesiredConn};
use crate::linux::{Facts, VxlanSpec};
use crate::ovs::storm::StormLimit;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVlan {
    pub id: u16,
    pub vni: u32,
    pub vxlan: VxlanSpec,
    pub access_ports: BTreeSet<String>,
    /// Peer VTEP addresses that get an all-zero FDB entry (head-end replication).
    pub flood: BTreeMap<IpAddr, String>,
    /// Remote MACs EVPN placed (MAC → the peer's VTEP and name): FDB entries marked as
    /// externally learned, only towards a peer in the flood list.
    pub macs: BTreeMap<String, (IpAddr, String)>,
}

/// IPsec and the guard as they should be (absent in insecure lab mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSecurity {
    pub backend: IpsecBackend,
    pub guard: GuardSpec,
    /// The libipsec policy rule: (VXLAN port, IPv6).
    pub vxlan_rule: Option<(u16, bool)>,
    /// EVPN with libipsec: BGP's policy rules (IPv6?).
    pub bgp_rule: Option<bool>,
    pub conns: Vec<DesiredConn>,
    /// This site's certificate, key, CAs and CRLs (when some peer uses certificates).
    pub creds: Option<ipsec::DesiredCreds>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub owner: String,
    pub bridge: String,
    pub datapath: Datapath,
    pub datapath_reason: String,
    pub access_mtu: u32,
    pub mtu: MtuResult,
    pub vlans: BTreeMap<u16, DesiredVlan>,
    pub security: Option<DesiredSecurity>,
    /// Storm-control limits of the access ports, in port-name order (see `storm`).
    pub storm: Vec<StormLimit>,
}

/// Whether a VTEP with this MTU can be bound to the underlay device: Linux caps a bound VXLAN
/// device at the underlay's MTU less the encapsulation (50 bytes over IPv4, 70 over IPv6).
/// Only an access MTU above that (`outer_fragmentation`) leaves the VTEP unbound.
pub fn vxlan_binds_underlay(access_mtu: u32, facts: &Facts) -> bool {
    let headroom = Family::of(&facts.vtep_ip).header() + mtu::VXLAN_OVERHEAD;
    access_mtu + headroom <= facts.underlay_mtu
}

/// Compute the access MTU for a config on this machine, with its derivation.
pub fn access_mtu(cfg: &SiteConfig, facts: &Facts) -> Result<(u32, MtuResult), ConfigIssue> {
    let family = Family::of(&facts.vtep_ip);
    let backend = match (cfg.ipsec.backend, facts.ipsec_backend) {
        (BackendChoice::Auto, Some(IpsecBackend::Kernel)) | (BackendChoice::Kernel, _) => {
            BackendChoice::Kernel
        }
        (BackendChoice::Auto, Some(IpsecBackend::Libipsec)) | (BackendChoice::Libipsec, _) => {
            BackendChoice::Libipsec
        }
        (BackendChoice::Auto, None) => BackendChoice::Auto,
    };
    let Some(best) = max_access_mtu(
        facts.underlay_mtu,
        family,
        cfg.ipsec.enabled,
        backend,
        &cfg.ipsec.esp_proposals,
    ) else {
        return Err(cfg.issue(
            "site.underlay_mtu",
            format!(
                "underlay MTU {} leaves no room for the encapsulation",
                facts.underlay_mtu
            ),
        ));
    };
    let mut best = best;
    if backend == BackendChoice::Kernel && cfg.ipsec.enabled {
        let plain = mtu::compute(&MtuInputs {
            underlay_mtu: facts.underlay_mtu,
            family,
            protection: Protection::Esp {
                proposals: cfg.ipsec.esp_proposals.clone(),
                mode: EspMode::Transport,
                nat_t: false,
                tun_mtu: None,
            },
        });
        if let Some(plain) = plain.filter(|p| p.access_mtu > best.access_mtu) {
            best.derivation.push(format!(
                "kernel ESP counts NAT-T's {} bytes: charon moves ESP into UDP 4500 when it finds a NAT between the sites, and the access MTU must not change then; without a NAT the wire carries plain ESP (IP protocol 50) and {} would fit",
                mtu::UDP_HEADER,
                plain.access_mtu
            ));
        }
    }
    if backend == BackendChoice::Auto && cfg.ipsec.enabled {
        best.derivation.push(
            "backend `auto` not resolved yet (charon not asked): the smaller of kernel and libipsec is used".into(),
        );
    }
    match cfg.mtu_access {
        MtuSetting::Auto => Ok((best.access_mtu, best)),
        MtuSetting::Fixed(m) if m <= best.access_mtu => {
            best.derivation
                .push(format!("configured access MTU {m} (fits)"));
            Ok((m, best))
        }
        MtuSetting::Fixed(m) if cfg.outer_fragmentation => {
            best.derivation.push(format!(
                "configured access MTU {m} is above {}: outer_fragmentation = true, so frames larger than {} are fragmented on the underlay after encapsulation (slower, but VNFs keep their MTU)",
                best.access_mtu, best.access_mtu
            ));
            Ok((m, best))
        }
        MtuSetting::Fixed(m) => Err(cfg.issue(
            "mtu.access",
            mtu_too_large(m, facts.underlay_mtu, best.access_mtu),
        )),
    }
}

impl DesiredState {
    /// Build the desired state. Fails (with a located config issue) when the config does not
    /// fit this machine (MTU, VTEP family).
    pub fn build(cfg: &SiteConfig, facts: &Facts) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = vec![];
        let family = Family::of(&facts.vtep_ip);
        for (i, p) in cfg.peers.iter().enumerate() {
            if Family::of(&p.address) != family {
                issues.push(cfg.issue(
                    &format!("peer[{i}].address"),
                    format!(
                        "`{}` is {} but this site's VTEP {} is {family}",
                        p.address,
                        Family::of(&p.address),
                        facts.vtep_ip
                    ),
                ));
            }
            if p.address == facts.vtep_ip {
                issues.push(cfg.issue(
                    &format!("peer[{i}].address"),
                    format!("`{}` is this site's own VTEP address", p.address),
                ));
            }
        }
        let mtu = access_mtu(cfg, facts);
        let (access_mtu, mtu) = match mtu {
            Ok(x) => x,
            Err(e) => {
                issues.push(e);
                return Err(issues);
            }
        };
        if !issues.is_empty() {
            return Err(issues);
        }
        let (datapath, datapath_reason) = match cfg.switch.datapath {
            DatapathChoice::System => (Datapath::System, "configured".to_string()),
            DatapathChoice::Netdev => (Datapath::Netdev, "configured".to_string()),
            DatapathChoice::Auto if facts.kernel_has_ovs_datapath => (
                Datapath::System,
                "auto: the kernel has the Open vSwitch datapath".to_string(),
            ),
            DatapathChoice::Auto => (
                Datapath::Netdev,
                "auto: the kernel has no Open vSwitch datapath, using the userspace one"
                    .to_string(),
            ),
        };
        let vlans = cfg
            .vlans
            .iter()
            .map(|v| {
                let flood = v
                    .peers
                    .iter()
                    .filter_map(|name| cfg.peer(name).map(|p| (p.address, p.name.clone())))
                    .collect::<BTreeMap<IpAddr, String>>();
                // At most the VLAN's MAC limit (the kernel refuses more): beyond it, frames
                // to the other MACs are flooded, as unknown ones are.
                let macs = v
                    .remote_macs
                    .iter()
                    .filter_map(|(mac, name)| {
                        let p = cfg.peer(name)?;
                        flood
                            .contains_key(&p.address)
                            .then(|| (mac.clone(), (p.address, p.name.clone())))
                    })
                    .take(v.mac_limit(&cfg.switch) as usize)
                    .collect();
                let vxlan = VxlanSpec {
                    name: vxlan_device_name(v.vni),
                    vni: v.vni,
                    local: facts.vtep_ip,
                    port: cfg.vxlan_port,
                    underlay_index: vxlan_binds_underlay(access_mtu, facts)
                        .then_some(facts.underlay_index),
                    mtu: access_mtu,
                    alias: vxlan_alias(&cfg.switch.bridge, v.id),
                    mac_limit: v.mac_limit(&cfg.switch),
                };
                (
                    v.id,
                    DesiredVlan {
                        id: v.id,
                        vni: v.vni,
                        vxlan,
                        access_ports: v.ports.iter().cloned().collect(),
                        flood,
                        macs,
                    },
                )
            })
            .collect();
        let security = match (cfg.ipsec.enabled, facts.ipsec_backend) {
            (false, _) => None,
            (true, None) => {
                return Err(vec![cfg.issue(
                    "ipsec.backend",
                    "the IPsec backend could not be determined (charon not asked)",
                )])
            }
            (true, Some(backend)) => Some(DesiredSecurity {
                backend,
                guard: guard::spec_for(cfg, backend),
                vxlan_rule: (backend == IpsecBackend::Libipsec)
                    .then_some((cfg.vxlan_port, facts.vtep_ip.is_ipv6())),
                bgp_rule: (backend == IpsecBackend::Libipsec && cfg.evpn.is_some())
                    .then_some(facts.vtep_ip.is_ipv6()),
                conns: ipsec::desired_conns(cfg, facts.vtep_ip, backend),
                creds: ipsec::DesiredCreds::from_config(cfg),
            }),
        };
        let mut storm: Vec<StormLimit> = cfg
            .vlans
            .iter()
            .filter_map(|v| Some((v, v.bum_limit(&cfg.switch)?)))
            .flat_map(|(v, pps)| {
                v.ports.iter().map(move |p| StormLimit {
                    port: p.clone(),
                    vlan: v.id,
                    pps,
                })
            })
            .collect();
        storm.sort_by(|a, b| a.port.cmp(&b.port));
        Ok(DesiredState {
            storm,
            security,
            owner: cfg.site.name.clone(),
            bridge: cfg.switch.bridge.clone(),
            datapath,
            datapath_reason,
            access_mtu,
            mtu,
            vlans,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vteps_stay_bound_to_the_underlay_unless_the_access_mtu_cannot_fit() {
        let mut facts = Facts {
            underlay_index: 7,
            vtep_ip: "192.0.2.1".parse().unwrap(),
            underlay_mtu: 1500,
            kernel_has_ovs_datapath: false,
            ipsec_backend: None,
        };
        assert!(vxlan_binds_underlay(1450, &facts));
        assert!(!vxlan_binds_underlay(1451, &facts));
        assert!(!vxlan_binds_underlay(1500, &facts));
        facts.vtep_ip = "2001:db8::1".parse().unwrap();
        assert!(vxlan_binds_underlay(1430, &facts));
        assert!(!vxlan_binds_underlay(1431, &facts));
    }

    #[test]
    fn device_names_fit_ifnamsiz() {
        assert!(vxlan_device_name(16_777_215).len() <= 15);
    }
}
