//! Facts about this machine that the desired state depends on: the underlay's index, address
//! and MTU, and whether the kernel has the Open vSwitch datapath.

use std::net::IpAddr;

use rtnetlink::sys::{protocols::NETLINK_GENERIC, Socket, SocketAddr};

use crate::base::kinds::IpsecBackend;
use crate::config::SiteConfig;
use crate::linux::{Netlink, NetlinkError, UnderlayAddress};

/// Facts about this machine that the desired state depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub underlay_index: u32,
    pub vtep_ip: IpAddr,
    pub underlay_mtu: u32,
    pub kernel_has_ovs_datapath: bool,
    /// `None` while charon has not been asked (backend `auto`).
    pub ipsec_backend: Option<IpsecBackend>,
}

/// Discover the facts for a config. Fails clearly when the underlay interface is missing,
/// has no usable address, or does not hold the configured VTEP address.
pub async fn facts(cfg: &SiteConfig, nl: &Netlink) -> Result<Facts, NetlinkError> {
    let dev = &cfg.site.underlay;
    let (index, mtu, addrs) = nl.link_facts(dev).await.map_err(|e| match e {
        NetlinkError::NoSuchLink(_) => NetlinkError::NoSuchLink(format!("{dev} ([site].underlay)")),
        other => other,
    })?;
    let vtep_ip = match cfg.site.vtep_ip {
        Some(ip) if addrs.iter().any(|a| a.ip == ip) => ip,
        Some(ip) => {
            return Err(NetlinkError::VtepNotOnUnderlay {
                ip,
                dev: dev.clone(),
            })
        }
        None => pick_vtep(&stable(&addrs), cfg.peers.first().map(|p| p.address)).ok_or(
            NetlinkError::NoAddress {
                dev: dev.clone(),
                family: match cfg.peers.first().map(|p| p.address) {
                    Some(IpAddr::V6(_)) => "IPv6",
                    Some(IpAddr::V4(_)) => "IPv4",
                    None => "usable",
                },
            },
        )?,
    };
    Ok(Facts {
        underlay_index: index,
        vtep_ip,
        underlay_mtu: cfg.site.underlay_mtu.unwrap_or(mtu),
        kernel_has_ovs_datapath: kernel_has_ovs_datapath(),
        ipsec_backend: None,
    })
}

/// The addresses a VTEP may be chosen from (see [`UnderlayAddress`]).
fn stable(addrs: &[UnderlayAddress]) -> Vec<IpAddr> {
    addrs.iter().filter(|a| a.stable).map(|a| a.ip).collect()
}

/// The first global address of the underlay, of the peers' family when there are peers.
fn pick_vtep(addrs: &[IpAddr], peer: Option<IpAddr>) -> Option<IpAddr> {
    addrs
        .iter()
        .filter(|a| !a.is_loopback() && !is_link_local(a))
        .find(|a| peer.is_none_or(|p| p.is_ipv4() == a.is_ipv4()))
        .copied()
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Ask generic netlink whether the `ovs_datapath` family exists (the kernel OVS datapath).
pub fn kernel_has_ovs_datapath() -> bool {
    genl_family_exists("ovs_datapath").unwrap_or(false)
}

fn genl_family_exists(name: &str) -> std::io::Result<bool> {
    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;

    let mut attr = Vec::new();
    let payload = [name.as_bytes(), &[0]].concat();
    attr.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    attr.extend_from_slice(&CTRL_ATTR_FAMILY_NAME.to_ne_bytes());
    attr.extend_from_slice(&payload);
    while attr.len() % 4 != 0 {
        attr.push(0);
    }
    let len = 16 + 4 + attr.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&GENL_ID_CTRL.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid
    msg.extend_from_slice(&[CTRL_CMD_GETFAMILY, 1, 0, 0]);
    msg.extend_from_slice(&attr);

    let mut sock = Socket::new(NETLINK_GENERIC)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    sock.send(&msg, 0)?;
    let mut buf = vec![0u8; 8192];
    let n = sock.recv(&mut &mut buf[..], 0)?;
    if n < 16 {
        return Ok(false);
    }
    let ty = u16::from_ne_bytes([buf[4], buf[5]]);
    Ok(ty != NLMSG_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_is_first_global_address_of_the_peer_family() {
        let addrs: Vec<IpAddr> = ["fe80::1", "192.0.2.1", "2001:db8::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(pick_vtep(&addrs, None), Some("192.0.2.1".parse().unwrap()));
        // A temporary or tentative IPv6 address listed first never becomes the VTEP.
        let listed = [
            UnderlayAddress {
                ip: "2001:db8::feed".parse().unwrap(),
                stable: false,
            },
            UnderlayAddress {
                ip: "2001:db8::1".parse().unwrap(),
                stable: true,
            },
        ];
        assert_eq!(
            pick_vtep(&stable(&listed), None),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(
            pick_vtep(&addrs, Some("2001:db8::2".parse().unwrap())),
            Some("2001:db8::1".parse().unwrap())
        );
        assert_eq!(pick_vtep(&addrs[..1], None), None);
    }

    #[test]
    fn genl_probe_answers() {
        // nlctrl itself always exists; a made-up family never does.
        assert_eq!(genl_family_exists("nlctrl").ok(), Some(true));
        assert_eq!(genl_family_exists("l2s_no_such_family").ok(), Some(false));
    }
}
