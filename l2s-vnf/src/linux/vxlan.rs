//! Where VXLAN devices are made: one per VLAN (`l2s-vx<VNI>`, with our alias), their FDB limit,
//! and the all-zero FDB entries that flood to each peer VTEP (head-end replication).

use std::net::IpAddr;

use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkUnspec, LinkVxlan};

use super::{req, Netlink, NetlinkError, ZERO_MAC};

/// One VXLAN device as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: IpAddr,
    pub port: u16,
    /// The underlay device the VTEP is bound to. `None` when the access MTU is above what a
    /// bound VXLAN device allows (underlay MTU − headroom; only with `outer_fragmentation`):
    /// the kernel then routes the encapsulated frames and fragments them on the way out.
    pub underlay_index: Option<u32>,
    pub mtu: u32,
    pub alias: String,
    /// How many remote MACs it may learn (the kernel refuses to learn more).
    pub mac_limit: u32,
}

/// The kernel's limit on a VXLAN device's FDB (`IFLA_VXLAN_LIMIT`) counts every entry,
/// the one all-zero flood entry (whatever its number of destinations) included: a device
/// that may learn `mac_limit` MACs holds one entry more.
pub fn fdb_limit(mac_limit: u32) -> u32 {
    mac_limit.saturating_add(1)
}

/// The MAC limit a device's FDB limit leaves (0: no limit).
pub fn mac_limit_of(fdb_limit: u32) -> Option<u32> {
    (fdb_limit > 0).then(|| fdb_limit - 1)
}

impl Netlink {
    /// Create a VXLAN device, up (the guard is in place before any is made, and a device
    /// that is up before OVS takes it spares ovs-vswitchd a reconfiguration per device),
    /// then mark it as ours with its alias. A device that cannot be marked is removed again.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<(), NetlinkError> {
        let mut b = LinkVxlan::new(&spec.name, spec.vni)
            .port(spec.port)
            .learning(true)
            .limit(fdb_limit(spec.mac_limit));
        if let Some(dev) = spec.underlay_index {
            b = b.dev(dev);
        }
        b = match spec.local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        let msg = b.mtu(spec.mtu).up().build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(req(format!(
                "create VXLAN device {} (vni {})",
                spec.name, spec.vni
            )))?;
        let alias = LinkUnspec::new_with_name(&spec.name)
            .alias(spec.alias.clone())
            .build();
        if let Err(e) = self.handle.link().set(alias).execute().await {
            // Never leave an unmarked device behind.
            let _ = self.delete_named(&spec.name).await;
            return Err(req(format!("mark {} as owned (alias)", spec.name))(e));
        }
        Ok(())
    }
    /// One bridge-family FDB entry of a VXLAN device (`self`), permanent.
    fn fdb_entry(
        index: u32,
        mac: [u8; 6],
        flags: NeighbourFlags,
        dst: Option<IpAddr>,
    ) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = flags;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        if let Some(dst) = dst {
            m.attributes
                .push(NeighbourAttribute::Destination(match dst {
                    IpAddr::V4(a) => NeighbourAddress::Inet(a),
                    IpAddr::V6(a) => NeighbourAddress::Inet6(a),
                }));
        }
        m
    }

    /// A flood (all-zero MAC) entry towards `dst`.
    fn fdb_message(index: u32, dst: IpAddr) -> NeighbourMessage {
        Self::fdb_entry(index, ZERO_MAC, NeighbourFlags::Own, Some(dst))
    }

    /// An EVPN remote MAC's entry: permanent (never aged, never moved by learning) and marked
    /// as externally learned (ours, and not the kernel's).
    fn mac_message(index: u32, mac: [u8; 6], dst: Option<IpAddr>) -> NeighbourMessage {
        Self::fdb_entry(
            index,
            mac,
            NeighbourFlags::Own | NeighbourFlags::ExtLearned,
            dst,
        )
    }

    fn mac_bytes(mac: &str) -> Result<[u8; 6], NetlinkError> {
        crate::base::mac::parse(mac)
            .ok_or_else(|| NetlinkError::Invalid(format!("{mac:?} is not a MAC address")))
    }

    /// `bridge fdb replace MAC dev DEV dst PEER extern_learn`: frames to MAC go to PEER only.
    pub async fn place_mac(
        &self,
        index: u32,
        dev: &str,
        mac: &str,
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::NewNeighbour(Self::mac_message(
            index,
            Self::mac_bytes(mac)?,
            Some(dst),
        ));
        self.send(
            msg,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            format!("place MAC {mac} on {dev} -> {dst}"),
        )
        .await
    }

    pub async fn remove_mac(&self, index: u32, dev: &str, mac: &str) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::DelNeighbour(Self::mac_message(
            index,
            Self::mac_bytes(mac)?,
            None,
        ));
        self.send(
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
            format!("remove MAC {mac} from {dev}"),
        )
        .await
    }

    /// `bridge fdb append 00:00:00:00:00:00 dev DEV dst PEER`: flood BUM traffic to PEER.
    pub async fn add_flood(&self, index: u32, dev: &str, dst: IpAddr) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::NewNeighbour(Self::fdb_message(index, dst));
        self.send(
            msg,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
            format!("add flood entry {dev} -> {dst}"),
        )
        .await
    }
    pub async fn remove_flood(
        &self,
        index: u32,
        dev: &str,
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let msg = RouteNetlinkMessage::DelNeighbour(Self::fdb_message(index, dst));
        self.send(
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
            format!("remove flood entry {dev} -> {dst}"),
        )
        .await
    }
}
