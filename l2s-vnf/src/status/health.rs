//! Is each VLAN's data path usable? That the objects exist is not enough: a VTEP whose OVS
//! port ovs-vswitchd holds on a device that was re-created, a peer sharing the VLAN without an
//! SA, a VTEP that is down — each leaves the VLAN dead while every object is in place.
//!
//! [`vlans`] judges every configured VLAN from what was observed and gives the reasons it is
//! degraded; `status` shows them, the daemon's "converged" means none, and the metrics export
//! `l2s_vnf_vlan_up{vlan}`.

use std::collections::BTreeMap;

use std::net::IpAddr;

use crate::base::kinds::BackendChoice;
use crate::base::names::vxlan_device_name;
use crate::base::names::POLICY_PRIORITY;
use crate::config::SiteConfig;
use crate::ipsec::{conn_name, SaState};
use crate::ovs::switch::ObservedPort;
use crate::plan::{stale_binding, ActualState};

/// Why one OVS port cannot carry traffic, if it cannot.
fn port_problem(
    what: &str,
    port: Option<&ObservedPort>,
    vlan: u16,
    index: Option<u32>,
) -> Option<String> {
    let Some(p) = port else {
        return Some(format!("{what} is not on the bridge"));
    };
    if p.tag != Some(vlan) {
        return Some(format!(
            "{what} is tagged {}, not {vlan}",
            p.tag.map_or("nothing".to_string(), |t| t.to_string())
        ));
    }
    if let Some(why) = stale_binding(p, index) {
        return Some(format!("{what} is unusable: {why}"));
    }
    p.iface
        .problem()
        .map(|e| format!("{what} is unusable: ovs-vswitchd: {e}"))
}

/// The reasons each configured VLAN is degraded (an empty list: its data path is up).
/// `sas` are charon's SA states (`None`: charon could not be asked).
pub fn vlans(
    cfg: &SiteConfig,
    actual: &ActualState,
    sas: Option<&BTreeMap<String, SaState>>,
) -> BTreeMap<u16, Vec<String>> {
    let links = &actual.links.links;
    let bridge = actual.switch.bridge.as_ref();
    let port = |name: &str| bridge.and_then(|b| b.ports.get(name));
    let mut out = BTreeMap::new();
    for v in &cfg.vlans {
        let mut why = vec![];
        let dev = vxlan_device_name(v.vni);
        let link = links.get(&dev);
        if bridge.is_none() {
            why.push(format!("bridge {} is missing", cfg.switch.bridge));
        }
        match link {
            None => why.push(format!("VXLAN device {dev} is missing")),
            Some(l) => {
                if !l.up {
                    why.push(format!("VXLAN device {dev} is down"));
                }
                for name in &v.peers {
                    if let Some(p) = cfg.peer(name) {
                        if !l.flood.contains(&p.address) {
                            why.push(format!(
                                "no flood entry towards {name}: broadcast and multicast do not reach it"
                            ));
                        }
                    }
                }
            }
        }
        if bridge.is_some() {
            if let Some(p) = port_problem(
                &format!("VTEP port {dev}"),
                port(&dev),
                v.id,
                link.map(|l| l.index),
            ) {
                why.push(p);
            }
        }
        for name in &v.ports {
            match links.get(name) {
                None => why.push(format!("access port {name} is missing")),
                Some(l) => {
                    if !l.up {
                        why.push(format!("access port {name} is down"));
                    }
                    if bridge.is_some() {
                        if let Some(p) = port_problem(
                            &format!("access port {name}"),
                            port(name),
                            v.id,
                            Some(l.index),
                        ) {
                            why.push(p);
                        }
                    }
                }
            }
        }
        if cfg.ipsec.enabled {
            for name in &v.peers {
                match sas {
                    None => why.push(format!("no SA known with {name}: charon is not reachable")),
                    Some(sas) => {
                        let conn = conn_name(&cfg.switch.bridge, name);
                        if !sas.get(&conn).is_some_and(SaState::up) {
                            why.push(format!("no SA with {name}"));
                        }
                    }
                }
                let vtep = link.and_then(|l| l.vxlan.as_ref());
                let underlay = vtep.and_then(|x| x.underlay_index);
                let (Some(peer), Some(local)) = (cfg.peer(name), vtep.and_then(|x| x.local)) else {
                    continue;
                };
                // Kernel SPD policies matter with the kernel backend: configured so, or shown
                // by our own policies being there.
                let kernel = cfg.ipsec.backend == BackendChoice::Kernel
                    || actual
                        .ipsec
                        .policies
                        .iter()
                        .any(|p| p.esp && p.dst == peer.address);
                if kernel {
                    if let Some(b) = bypass_reason(
                        &actual.ipsec.policies,
                        local,
                        underlay,
                        &peer.name,
                        peer.address,
                        cfg.vxlan_port,
                    ) {
                        why.push(b);
                    }
                }
            }
        }
        out.insert(v.id, why);
    }
    out
}

/// Why VXLAN to a peer would not enter its SA on the kernel backend: a policy that wins over
/// ours (see [`crate::xfrm`]).
pub fn bypass_reason(
    policies: &[crate::xfrm::Policy],
    local: IpAddr,
    underlay: Option<u32>,
    peer: &str,
    remote: IpAddr,
    port: u16,
) -> Option<String> {
    crate::xfrm::bypass(policies, local, remote, port, underlay, POLICY_PRIORITY).map(|p| {
        format!(
            "VXLAN to {peer} bypasses its SA: {p} wins over l2s-vnf's (priority {POLICY_PRIORITY}); remove that policy or give it a priority value above {POLICY_PRIORITY}"
        )
    })
}

/// One line for logs and systemd: `all 2 VLAN(s) up` or `vlan 101: no SA with site-b; …`.
pub fn summary(health: &BTreeMap<u16, Vec<String>>) -> String {
    let bad: Vec<String> = health
        .iter()
        .filter(|(_, why)| !why.is_empty())
        .map(|(id, why)| format!("vlan {id}: {}", why.join(", ")))
        .collect();
    if bad.is_empty() {
        format!("all {} VLAN(s) up", health.len())
    } else {
        bad.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::kinds::Datapath;
    use crate::linux::ObservedLink;
    use crate::ovs::switch::{ObservedBridge, ObservedIface, PortRole};
    use std::collections::BTreeSet;

    fn cfg(ipsec: bool) -> SiteConfig {
        let sec = if ipsec {
            "[ipsec]\nbackend = \"kernel\"\npsk_file = \"PSK\"\n"
        } else {
            "[ipsec]\nenabled = false\ninsecure = true\n"
        };
        let dir = tempfile::tempdir().unwrap();
        let psk = dir.path().join("psk");
        std::fs::write(&psk, "a-sixteen-byte-key").unwrap();
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let text = format!(
            "[site]\nname = \"a\"\nunderlay = \"eth1\"\n{}[[peer]]\nname = \"b\"\naddress = \"192.0.2.2\"\n[[vlan]]\nid = 101\nports = [\"acc\"]\n",
            sec.replace("PSK", &psk.display().to_string())
        );
        SiteConfig::from_str_at(std::path::Path::new("t.toml"), &text).unwrap()
    }

    fn link(name: &str, index: u32, flood: &[&str]) -> ObservedLink {
        ObservedLink {
            index,
            name: name.into(),
            mtu: 1450,
            up: true,
            alias: None,
            kind: None,
            vxlan: None,
            flood: flood
                .iter()
                .map(|a| a.parse().unwrap())
                .collect::<BTreeSet<_>>(),
            learned_macs: 0,
            placed: Default::default(),
            stats: None,
        }
    }

    fn port(name: &str, bound: u32) -> ObservedPort {
        ObservedPort {
            uuid: format!("u-{name}"),
            name: name.into(),
            tag: Some(101),
            role: Some(PortRole::Access),
            orig_mtu: None,
            bound_ifindex: Some(bound),
            iface: ObservedIface {
                ofport: Some(1),
                error: None,
            },
        }
    }

    fn healthy() -> ActualState {
        let mut a = ActualState::default();
        a.links
            .links
            .insert("l2s-vx101".into(), link("l2s-vx101", 10, &["192.0.2.2"]));
        a.links.links.insert("acc".into(), link("acc", 5, &[]));
        a.switch.bridge = Some(ObservedBridge {
            uuid: "b".into(),
            name: "l2s0".into(),
            datapath: Datapath::Netdev,
            owner: Some("a".into()),
            ports: [port("l2s-vx101", 10), port("acc", 5)]
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
        });
        a
    }

    #[test]
    fn a_complete_data_path_is_up() {
        let h = vlans(&cfg(false), &healthy(), None);
        assert_eq!(h[&101], Vec::<String>::new());
        assert_eq!(summary(&h), "all 1 VLAN(s) up");
    }

    #[test]
    fn a_port_bound_to_a_replaced_device_is_degraded() {
        let mut a = healthy();
        a.links
            .links
            .insert("l2s-vx101".into(), link("l2s-vx101", 11, &["192.0.2.2"]));
        let h = vlans(&cfg(false), &a, None);
        assert_eq!(
            h[&101],
            vec!["VTEP port l2s-vx101 is unusable: device re-created: ifindex 10 -> 11"]
        );
    }

    #[test]
    fn missing_flood_entry_down_vtep_and_missing_sa_are_reasons() {
        let mut a = healthy();
        let mut l = link("l2s-vx101", 10, &[]);
        l.up = false;
        a.links.links.insert("l2s-vx101".into(), l);
        let h = vlans(&cfg(true), &a, Some(&BTreeMap::new()));
        let text = h[&101].join("; ");
        assert!(text.contains("VXLAN device l2s-vx101 is down"), "{text}");
        assert!(text.contains("no flood entry towards b"), "{text}");
        assert!(text.contains("no SA with b"), "{text}");
        assert!(summary(&h).starts_with("vlan 101: "));
    }

    #[test]
    fn an_absent_bridge_degrades_every_vlan() {
        let mut a = healthy();
        a.switch.bridge = None;
        let h = vlans(&cfg(false), &a, None);
        assert_eq!(h[&101], vec!["bridge l2s0 is missing"]);
    }
}
