//! The peers EVPN brings, folded into the config the plan is made from: every backend then
//! treats a discovered site exactly as a listed one, except that its flood entries wait for
//! its SA.
//!
//! - each reflector of `[evpn] reflectors` becomes a peer whose connection carries BGP;
//! - each VTEP that announced one of this site's VNIs becomes a peer authenticated by its
//!   certificate's IP address (never a PSK), whatever it calls itself;
//! - a discovered VTEP joins a VLAN's flood list only once its SA is up (`sa_up`): a forged
//!   route, or a site without a federation certificate, opens no path;
//! - a remote MAC (type-2 route) is placed behind its VTEP under the same condition.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::{AuthMethod, EvpnRole, Peer, PeerKind, SiteConfig};

use super::Discovered;

/// The name a discovered site's peer gets (its connection's name follows from it).
pub fn discovered_name(vtep: IpAddr) -> String {
    format!("{}{vtep}", discovered_name_prefix())
}

/// What every discovered site's peer name starts with.
pub fn discovered_name_prefix() -> &'static str {
    "evpn-"
}

/// The name a reflector's peer gets.
pub fn reflector_name(addr: IpAddr) -> String {
    format!("reflector-{addr}")
}

fn synthetic(cfg: &SiteConfig, name: String, address: IpAddr, kind: PeerKind) -> Peer {
    Peer {
        name,
        address,
        psk_file: cfg.ipsec.psk_file.clone(),
        id: address.to_string(),
        auth: AuthMethod::Pubkey,
        kind,
    }
}

/// The config as the plan should see it, given what EVPN learned and which discovered VTEPs
/// have their SA up.
pub fn effective(cfg: &SiteConfig, learned: &Discovered, sa_up: &BTreeSet<IpAddr>) -> SiteConfig {
    let Some(evpn) = cfg.evpn.as_ref().filter(|e| e.role == EvpnRole::Site) else {
        return cfg.clone();
    };
    let mut out = cfg.clone();
    let listed: BTreeSet<IpAddr> = cfg.peers.iter().map(|p| p.address).collect();
    let own: IpAddr = match cfg.site.id.parse() {
        Ok(ip) => ip,
        Err(_) => return out,
    };
    for r in &evpn.reflectors {
        out.peers
            .push(synthetic(cfg, reflector_name(*r), *r, PeerKind::Reflector));
    }
    let ours: BTreeSet<u32> = cfg.vlans.iter().map(|v| v.vni).collect();
    for (vtep, vnis) in &learned.vteps {
        let shared = vnis.iter().any(|v| ours.contains(v));
        if !shared || *vtep == own || listed.contains(vtep) || evpn.reflectors.contains(vtep) {
            continue;
        }
        out.peers.push(synthetic(
            cfg,
            discovered_name(*vtep),
            *vtep,
            PeerKind::Discovered,
        ));
        if !sa_up.contains(vtep) {
            continue;
        }
        for v in out.vlans.iter_mut().filter(|v| vnis.contains(&v.vni)) {
            v.peers.push(discovered_name(*vtep));
            let macs = learned
                .macs
                .iter()
                .filter(|((vni, _), at)| *vni == v.vni && *at == vtep);
            for ((_, mac), _) in macs {
                v.remote_macs.insert(mac.clone(), discovered_name(*vtep));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg() -> SiteConfig {
        let text = "[site]\nname = \"a\"\nunderlay = \"eth1\"\nvtep_ip = \"192.0.2.1\"\n[ipsec]\nenabled = false\ninsecure = true\n[[peer]]\nname = \"listed\"\naddress = \"192.0.2.5\"\n[[vlan]]\nid = 101\n[[vlan]]\nid = 102\npeers = []\n";
        let mut c = SiteConfig::from_str_at(Path::new("t.toml"), text).unwrap();
        // (validation refuses EVPN without IPsec and certificates; the view does not care)
        c.site.id = "192.0.2.1".into();
        c.evpn = Some(crate::config::Evpn {
            role: EvpnRole::Site,
            asn: 65000,
            reflectors: vec!["192.0.2.10".parse().unwrap()],
            listen_range: None,
            hold_time: std::time::Duration::from_secs(9),
        });
        c
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn discovered_sites_get_a_certificate_peer_and_flood_only_once_their_sa_is_up() {
        let c = cfg();
        let mut learned = Discovered::default();
        learned.vteps.insert(ip("192.0.2.2"), [101, 102].into());
        learned.vteps.insert(ip("192.0.2.3"), [101, 999].into());
        // Not ours to follow: our own VTEP, a listed peer, a VTEP sharing no VNI with us.
        learned.vteps.insert(ip("192.0.2.1"), [101].into());
        learned.vteps.insert(ip("192.0.2.5"), [101].into());
        learned.vteps.insert(ip("192.0.2.4"), [999].into());
        for (vni, mac, at) in [
            (101, "02:00:00:00:00:02", "192.0.2.2"),
            (102, "02:00:00:00:00:22", "192.0.2.2"),
            (101, "02:00:00:00:00:03", "192.0.2.3"),
            (999, "02:00:00:00:00:04", "192.0.2.4"),
        ] {
            learned.macs.insert((vni, mac.into()), ip(at));
        }
        let e = effective(&c, &learned, &BTreeSet::from([ip("192.0.2.2")]));
        let names: Vec<(&str, PeerKind)> =
            e.peers.iter().map(|p| (p.name.as_str(), p.kind)).collect();
        assert_eq!(
            names,
            vec![
                ("listed", PeerKind::Listed),
                ("reflector-192.0.2.10", PeerKind::Reflector),
                ("evpn-192.0.2.2", PeerKind::Discovered),
                ("evpn-192.0.2.3", PeerKind::Discovered),
            ]
        );
        let d = e.peer("evpn-192.0.2.3").unwrap();
        assert_eq!((d.auth, d.id.as_str()), (AuthMethod::Pubkey, "192.0.2.3"));
        // B's SA is up: in both its VLANs' flood lists. C's is not: in none yet.
        assert_eq!(e.vlans[0].peers, vec!["listed", "evpn-192.0.2.2"]);
        assert_eq!(e.vlans[1].peers, vec!["evpn-192.0.2.2"]);
        // B's MACs are placed in their VLANs; C's wait for its SA like its flood entries.
        let macs = |i: usize| {
            e.vlans[i]
                .remote_macs
                .clone()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            macs(0),
            vec![(
                "02:00:00:00:00:02".to_string(),
                "evpn-192.0.2.2".to_string()
            )]
        );
        assert_eq!(
            macs(1),
            vec![(
                "02:00:00:00:00:22".to_string(),
                "evpn-192.0.2.2".to_string()
            )]
        );
        // Nothing learned: only the listed peer and the reflector.
        let e = effective(&c, &Discovered::default(), &BTreeSet::new());
        assert_eq!(e.peers.len(), 2);
        assert_eq!(e.vlans[0].peers, vec!["listed"]);
    }
}
