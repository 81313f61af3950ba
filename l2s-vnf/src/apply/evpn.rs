//! The config `apply` and the daemon converge when `[evpn]` is on: the file's, with the peers
//! EVPN brings (`evpn::view`), and each discovered site in its VLANs' flood lists once its
//! SA is up. Both use these functions, so both reach the same state.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::base::names::vxlan_device_name;
use crate::config::{PeerKind, SiteConfig};
use crate::evpn::{self, Discovered};
use crate::ipsec;
use crate::plan::ActualState;

use super::{ApplyError, System};

/// The discovered sites of `cfg` (an effective config) whose SA is up in `actual`.
pub fn discovered_sas_up(cfg: &SiteConfig, actual: &ActualState) -> BTreeSet<IpAddr> {
    cfg.peers
        .iter()
        .filter(|p| p.kind == PeerKind::Discovered)
        .filter(|p| {
            actual
                .ipsec
                .sas
                .get(&ipsec::conn_name(&cfg.switch.bridge, &p.name))
                .is_some_and(ipsec::SaState::up)
        })
        .map(|p| p.address)
        .collect()
}

/// The discovered sites an earlier run left on the system: each `evpn-<VTEP>` connection of
/// this instance, with the VNIs whose VXLAN device floods to it (a site without a flood entry
/// had no data path to keep), and those whose SA is up.
pub fn on_the_system(cfg: &SiteConfig, actual: &ActualState) -> (Discovered, BTreeSet<IpAddr>) {
    let mut found = Discovered::default();
    let mut up = BTreeSet::new();
    let prefix = ipsec::conn_name(&cfg.switch.bridge, evpn::view::discovered_name_prefix());
    for conn in actual.ipsec.conns.iter().flatten() {
        let Some(vtep) = conn
            .name
            .strip_prefix(&prefix)
            .and_then(|a| a.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let vnis: BTreeSet<u32> = cfg
            .vlans
            .iter()
            .map(|v| v.vni)
            .filter(|vni| {
                actual
                    .links
                    .links
                    .get(&vxlan_device_name(*vni))
                    .is_some_and(|l| l.flood.contains(&vtep))
            })
            .collect();
        if vnis.is_empty() {
            continue;
        }
        // Its remote MACs stay placed too.
        for v in cfg.vlans.iter().filter(|v| vnis.contains(&v.vni)) {
            let placed = actual.links.links.get(&vxlan_device_name(v.vni));
            for (mac, at) in placed.iter().flat_map(|l| &l.placed) {
                if *at == vtep {
                    found.macs.insert((v.vni, mac.clone()), vtep);
                }
            }
        }
        found.vteps.insert(vtep, vnis);
        if actual
            .ipsec
            .sas
            .get(&conn.name)
            .is_some_and(ipsec::SaState::up)
        {
            up.insert(vtep);
        }
    }
    (found, up)
}

/// For `apply` and `plan`: the routes the instance's running bgpd holds, and the SAs up now.
/// An EVPN site's FRR runs under its daemon; without it, `apply` would drop every discovered
/// site, so it refuses and changes nothing. While bgpd's routes are not complete (see
/// [`evpn::runtime::complete`]) the sites found on the system are kept, as the daemon keeps
/// them.
pub async fn effective_for_apply(cfg: &SiteConfig, sys: &System) -> Result<SiteConfig, ApplyError> {
    let Some(e) = &cfg.evpn else {
        return Ok(cfg.clone());
    };
    let (mut learned, complete) = match e.role {
        crate::config::EvpnRole::Reflector => (Discovered::default(), true),
        crate::config::EvpnRole::Site => {
            let own: IpAddr = cfg.site.id.parse().map_err(|_| {
                ApplyError::Evpn("the site's identity is not its VTEP address".into())
            })?;
            let frr = evpn::Frr::new(
                crate::base::names::evpn_dir(&cfg.daemon.control_socket),
                None,
            );
            let refused = |err: evpn::EvpnError| {
                ApplyError::Evpn(format!(
                    "this site's bgpd does not answer ({err}); an EVPN site's FRR runs under its daemon (`l2s-vnf run`), and without its routes `apply` would remove every discovered site; nothing was changed"
                ))
            };
            let sessions = frr.sessions().map_err(refused)?;
            let learned = frr.discovered(e.asn, own).map_err(refused)?;
            (learned, evpn::runtime::complete(&sessions))
        }
    };
    // (Observation takes every connection of this instance, whichever peers `first` names.)
    let first = evpn::view::effective(cfg, &learned, &BTreeSet::new());
    let actual = sys.observe(&first).await?;
    if !complete {
        learned.absorb(on_the_system(cfg, &actual).0);
    }
    let discovered = evpn::view::effective(cfg, &learned, &BTreeSet::new());
    let up = discovered_sas_up(&discovered, &actual);
    Ok(evpn::view::effective(cfg, &learned, &up))
}
