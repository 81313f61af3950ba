//! The config `apply` and the daemon converge when `[evpn]` is on: the file's, with the peers
//! EVPN brings (`evpn::view`), and each discovered site in its VLANs' flood lists once its
//! SA is up. Both use these functions, so both reach the same state.

use std::collections::BTreeSet;
use std::net::IpAddr;

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

/// For `apply`: the routes the instance's running bgpd holds, and the SAs up now. An EVPN
/// site's FRR runs under its daemon; without it, `apply` would drop every discovered site,
/// so it refuses and changes nothing.
pub async fn effective_for_apply(cfg: &SiteConfig, sys: &System) -> Result<SiteConfig, ApplyError> {
    let Some(e) = &cfg.evpn else {
        return Ok(cfg.clone());
    };
    let learned = match e.role {
        crate::config::EvpnRole::Reflector => Discovered::default(),
        crate::config::EvpnRole::Site => {
            let own: IpAddr = cfg.site.id.parse().map_err(|_| {
                ApplyError::Evpn("the site's identity is not its VTEP address".into())
            })?;
            let frr = evpn::Frr::new(
                crate::base::names::evpn_dir(&cfg.daemon.control_socket),
                None,
            );
            frr.discovered(e.asn, own).map_err(|err| {
                ApplyError::Evpn(format!(
                    "this site's bgpd does not answer ({err}); an EVPN site's FRR runs under its daemon (`l2s-vnf run`), and without its routes `apply` would remove every discovered site; nothing was changed"
                ))
            })?
        }
    };
    let first = evpn::view::effective(cfg, &learned, &BTreeSet::new());
    let actual = sys.observe(&first).await?;
    let up = discovered_sas_up(&first, &actual);
    Ok(evpn::view::effective(cfg, &learned, &up))
}
