//! The Linux side of a plan, over rtnetlink: VXLAN devices (one per VLAN), their all-zero FDB
//! entries (head-end replication towards each peer), link MTU and state, and the facts about
//! the underlay (address, MTU) that the desired state needs.
//!
//! A netlink socket belongs to the network namespace it was opened in: the daemon runs inside
//! its site's namespace and opens its socket there. The large dumps of an observation are
//! read by [`dump`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec};

pub mod change;
pub mod discover;
pub mod dump;
pub mod links;
pub mod rule;
pub mod vxlan;

pub use change::LinkChange;
pub use discover::Facts;
pub use rule::{diff_bgp_rules, diff_vxlan_rules, BgpSide};
pub use vxlan::{fdb_limit, mac_limit_of, VxlanSpec};

/// The link group VXLAN devices are moved into just before they are deleted together (an
/// ownership mark held for one request: "L2SV").
pub const REMOVAL_GROUP: u32 = 0x4c32_5356;

/// An address of the underlay interface, and whether it may carry the VTEP: not an IPv6
/// temporary (privacy) or IPv4 secondary address, not tentative, deprecated or failed DAD
/// (such an address comes and goes, and a VTEP on it would move with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayAddress {
    pub ip: IpAddr,
    pub stable: bool,
}

/// IFA_F_TEMPORARY (= IFA_F_SECONDARY), IFA_F_OPTIMISTIC, IFA_F_DADFAILED, IFA_F_DEPRECATED,
/// IFA_F_TENTATIVE.
const UNSTABLE_ADDRESS: u32 = 0x01 | 0x04 | 0x08 | 0x20 | 0x40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanAttrs {
    pub vni: Option<u32>,
    pub local: Option<IpAddr>,
    pub port: Option<u16>,
    pub underlay_index: Option<u32>,
    pub learning: bool,
    /// How many remote MACs the device may learn (`None`: the kernel sets no limit).
    pub mac_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub alias: Option<String>,
    pub kind: Option<String>,
    pub vxlan: Option<VxlanAttrs>,
    /// For VXLAN devices: destinations of all-zero FDB entries.
    pub flood: BTreeSet<IpAddr>,
    /// For VXLAN devices: the MACs it learned (FDB entries other than the flood entry).
    pub learned_macs: usize,
    /// For VXLAN devices: the remote MACs EVPN placed (externally learned entries), with
    /// their VTEP.
    pub placed: BTreeMap<String, IpAddr>,
    /// The device's counters, when the kernel reported them.
    pub stats: Option<LinkStats>,
}

/// The counters of a device that status reports (from `struct rtnl_link_stats64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Frames refused for their length (NICs count a frame above the MTU here).
    pub rx_length_errors: u64,
    pub rx_over_errors: u64,
}

impl LinkStats {
    /// From the `IFLA_STATS64` payload: u64 counters in `rtnl_link_stats64`'s order.
    pub fn from_stats64(b: &[u8]) -> Option<Self> {
        let at = |i: usize| -> Option<u64> {
            Some(u64::from_ne_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        Some(LinkStats {
            rx_packets: at(0)?,
            tx_packets: at(1)?,
            rx_bytes: at(2)?,
            tx_bytes: at(3)?,
            rx_errors: at(4)?,
            tx_errors: at(5)?,
            rx_dropped: at(6)?,
            tx_dropped: at(7)?,
            rx_length_errors: at(10).unwrap_or(0),
            rx_over_errors: at(11).unwrap_or(0),
        })
    }
}

/// What netlink shows that concerns us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedLinks {
    pub links: BTreeMap<String, ObservedLink>,
    /// Destination port ranges of our policy rules (libipsec), per family (false = IPv4).
    pub vxlan_rules: Vec<((u16, u16), bool)>,
    /// Our BGP rules (EVPN with libipsec), per family.
    pub bgp_rules: Vec<(BgpSide, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("netlink: cannot list {0}: {1}")]
    Dump(&'static str, std::io::Error),
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error(
        "underlay interface {dev} has no {family} address; set [site].vtep_ip or add an address"
    )]
    NoAddress { dev: String, family: &'static str },
    #[error("[site].vtep_ip {ip} is not an address of the underlay interface {dev}")]
    VtepNotOnUnderlay { ip: IpAddr, dev: String },
    /// A request made for many objects failed (said once per object).
    #[error("{0}")]
    Batch(String),
    #[error("netlink: {0}")]
    Invalid(String),
}

pub(crate) fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

pub(crate) const ZERO_MAC: [u8; 6] = [0; 6];

pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Open a route-netlink socket in the current network namespace.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// Every link, with VXLAN attributes and flood entries for VXLAN devices. Both dumps are
    /// read as they stream in: at thousands of VLANs × peers, holding the raw messages would
    /// cost tens of megabytes.
    pub async fn observe(&self) -> Result<ObservedLinks, NetlinkError> {
        // Each dump on a socket of its own, the FDB one in a task of its own: the kernel fills
        // a dump inside the reading thread's recvmsg, so only two tasks make it two cores.
        let fdb = tokio::spawn(dump::fdb());
        let links = dump::links().await;
        let fdb = fdb
            .await
            .map_err(|e| NetlinkError::Dump("FDB entries", std::io::Error::other(e)))?;
        let mut links = links.map_err(|e| NetlinkError::Dump("links", e))?;
        let mut fdb = fdb.map_err(|e| NetlinkError::Dump("FDB entries", e))?;
        tracing::debug!(links = links.len(), "links and FDB dumped");
        for l in links.values_mut().filter(|l| l.vxlan.is_some()) {
            if let Some(f) = fdb.remove(&l.index) {
                l.flood = f.flood;
                l.learned_macs = f.learned;
                l.placed = f.placed;
            }
        }
        Ok(ObservedLinks {
            links,
            vxlan_rules: vec![],
            bgp_rules: vec![],
        })
    }

    /// The index, MTU and addresses of one link.
    pub async fn link_facts(
        &self,
        name: &str,
    ) -> Result<(u32, u32, Vec<UnderlayAddress>), NetlinkError> {
        let msgs: Vec<LinkMessage> = match self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await
        {
            Ok(m) => m,
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {
                return Err(NetlinkError::NoSuchLink(name.to_string()))
            }
            Err(e) => return Err(req(format!("look up {name}"))(e)),
        };
        let l = msgs
            .first()
            .and_then(parse_link)
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?;
        let addrs: Vec<UnderlayAddress> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(l.index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(req(format!("list addresses of {name}")))?
            .into_iter()
            .filter_map(|a| {
                let ip = a
                    .attributes
                    .iter()
                    .find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    })
                    .or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                // The full flags when the kernel sends them, else the header's first byte.
                let flags = a
                    .attributes
                    .iter()
                    .find_map(|x| match x {
                        AddressAttribute::Flags(f) => Some(f.bits()),
                        _ => None,
                    })
                    .unwrap_or_else(|| u32::from(a.header.flags.bits()));
                Some(UnderlayAddress {
                    ip,
                    stable: flags & UNSTABLE_ADDRESS == 0,
                })
            })
            .collect();
        Ok((l.index, l.mtu, addrs))
    }

    /// The ifindex of a link, by name.
    pub async fn index_of(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(NetlinkError::NoSuchLink(name.to_string())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc_enodev() => {
                Err(NetlinkError::NoSuchLink(name.to_string()))
            }
            Err(e) => Err(req(format!("look up {name}"))(e)),
        }
    }

    pub async fn delete_link(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(req(format!("delete {name}")))
    }

    /// Delete many links at once: each is moved into [`REMOVAL_GROUP`], then the group is
    /// deleted in one request. The kernel then waits for one RCU grace period for them all
    /// instead of one per device (deleting 300 VTEPs one by one took 9 s; creating them 0.4 s).
    /// Falls back to one request per link when another device sits in the group.
    pub async fn delete_links(&self, links: &[(u32, &str)]) -> Vec<Result<(), NetlinkError>> {
        if links.len() < 2 || !self.removal_group_is_free(links).await {
            let mut out = vec![];
            for (index, name) in links {
                out.push(self.delete_link(*index, name).await);
            }
            return out;
        }
        let moved = futures::stream::iter(links.iter().map(|(index, name)| async move {
            let mut msg = LinkUnspec::new_with_index(*index).build();
            msg.attributes.push(LinkAttribute::Group(REMOVAL_GROUP));
            self.handle
                .link()
                .set(msg)
                .execute()
                .await
                .map_err(req(format!("mark {name} for removal")))
        }))
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
        let mut del = self.handle.link().del(0);
        del.message_mut()
            .attributes
            .push(LinkAttribute::Group(REMOVAL_GROUP));
        let all = del
            .execute()
            .await
            .map_err(req(format!("delete {} VXLAN devices", links.len())));
        moved
            .into_iter()
            .map(|m| match (m, &all) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(())) => Ok(()),
                (Ok(()), Err(e)) => Err(NetlinkError::Batch(e.to_string())),
            })
            .collect()
    }

    /// Whether no device but `ours` is in [`REMOVAL_GROUP`].
    async fn removal_group_is_free(&self, ours: &[(u32, &str)]) -> bool {
        let Ok(all) = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect::<Vec<LinkMessage>>()
            .await
        else {
            return false;
        };
        !all.iter().any(|l| {
            l.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Group(g) if *g == REMOVAL_GROUP))
                && !ours.iter().any(|(i, _)| *i == l.header.index)
        })
    }

    /// Delete a link by name.
    pub async fn delete_named(&self, name: &str) -> Result<(), NetlinkError> {
        let mut del = self.handle.link().del(0);
        del.message_mut()
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        del.execute().await.map_err(req(format!("delete {name}")))
    }

    pub async fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(format!("set MTU {mtu} on {name}")))
    }

    pub async fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_name(name).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(req(format!("set {name} up")))
    }

    pub(crate) async fn send(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: String,
    ) -> Result<(), NetlinkError> {
        let mut req_msg = NetlinkMessage::from(msg);
        req_msg.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req_msg).map_err(req(what.clone()))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(NetlinkError::Request {
                    what,
                    source: rtnetlink::Error::NetlinkError(e),
                });
            }
        }
        Ok(())
    }
}

fn libc_enodev() -> i32 {
    nix::errno::Errno::ENODEV as i32
}

fn parse_link(m: &LinkMessage) -> Option<ObservedLink> {
    let mut name = None;
    let mut mtu = 0;
    let mut alias = None;
    let mut kind = None;
    let mut vxlan = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::IfAlias(s) => alias = Some(s.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => vxlan = Some(parse_vxlan(attrs)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if kind.as_deref() == Some(&InfoKind::Vxlan.to_string()) && vxlan.is_none() {
        vxlan = Some(parse_vxlan(&[]));
    }
    Some(ObservedLink {
        index: m.header.index,
        name: name?,
        mtu,
        up: m.header.flags.contains(LinkFlags::Up),
        alias,
        kind,
        vxlan,
        flood: BTreeSet::new(),
        learned_macs: 0,
        placed: Default::default(),
        stats: None,
    })
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanAttrs {
    let mut v = VxlanAttrs {
        vni: None,
        local: None,
        port: None,
        underlay_index: None,
        learning: false,
        mac_limit: None,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = Some(*id),
            InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) => v.port = Some(*p),
            InfoVxlan::Link(i) => v.underlay_index = Some(*i),
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Limit(n) => v.mac_limit = mac_limit_of(*n),
            _ => {}
        }
    }
    v
}
