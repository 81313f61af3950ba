//! The Linux backend's typed change: VXLAN devices, their flood entries, MTUs and link state,
//! and the libipsec policy rule. Executed by [`super::links`].

use std::fmt;
use std::net::IpAddr;

use super::VxlanSpec;
use crate::base::names::probe_port;

/// One change to a link, a flood entry or a policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkChange {
    CreateVxlan {
        spec: VxlanSpec,
    },
    /// Immutable attributes differ: delete and create again (its OVS port is re-added too).
    ReplaceVxlan {
        index: u32,
        spec: VxlanSpec,
        why: String,
    },
    DeleteVxlan {
        index: u32,
        name: String,
    },
    AddFlood {
        dev: String,
        peer: String,
        address: IpAddr,
    },
    RemoveFlood {
        dev: String,
        address: IpAddr,
    },
    /// EVPN: a remote MAC behind a peer's VTEP (`was`: the VTEP it was placed behind until
    /// now, if any).
    PlaceMac {
        dev: String,
        mac: String,
        address: IpAddr,
        peer: String,
        was: Option<IpAddr>,
    },
    /// EVPN: a remote MAC no route places any more (`address`: where it was).
    RemoveMac {
        dev: String,
        mac: String,
        address: IpAddr,
    },
    SetMtu {
        dev: String,
        index: u32,
        from: u32,
        to: u32,
    },
    SetUp {
        dev: String,
    },
    /// Give an access port back its MTU from before l2s-vnf took it.
    RestoreMtu {
        dev: String,
        to: u32,
    },
    /// libipsec: only VXLAN may reach charon's routing table (and its TUN).
    AddVxlanRule {
        port: u16,
        v6: bool,
    },
    RemoveVxlanRule {
        ports: (u16, u16),
        v6: bool,
    },
    /// EVPN with libipsec: BGP with the reflectors goes through charon's TUN too.
    AddBgpRule {
        side: super::rule::BgpSide,
        v6: bool,
    },
    RemoveBgpRule {
        side: super::rule::BgpSide,
        v6: bool,
    },
}

impl fmt::Display for LinkChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkChange::CreateVxlan { spec } => write!(
                f,
                "+ vxlan {} (vni {}, local {}, dstport {}, mtu {})",
                spec.name, spec.vni, spec.local, spec.port, spec.mtu
            ),
            LinkChange::ReplaceVxlan { spec, why, .. } => {
                write!(f, "~ vxlan {} recreated ({why})", spec.name)
            }
            LinkChange::DeleteVxlan { name, .. } => write!(f, "- vxlan {name}"),
            LinkChange::AddFlood { dev, peer, address } => {
                write!(f, "+ flood {dev} -> {address} ({peer})")
            }
            LinkChange::RemoveFlood { dev, address } => write!(f, "- flood {dev} -> {address}"),
            LinkChange::PlaceMac {
                dev,
                mac,
                address,
                peer,
                was,
            } => match was {
                None => write!(f, "+ mac {dev} {mac} -> {address} ({peer})"),
                Some(w) => write!(f, "~ mac {dev} {mac}: {w} -> {address} ({peer})"),
            },
            LinkChange::RemoveMac { dev, mac, address } => {
                write!(f, "- mac {dev} {mac} -> {address}")
            }
            LinkChange::SetMtu { dev, from, to, .. } => write!(f, "~ mtu {dev}: {from} -> {to}"),
            LinkChange::SetUp { dev } => write!(f, "~ link {dev} up"),
            LinkChange::RestoreMtu { dev, to } => write!(f, "~ mtu {dev} restored to {to}"),
            LinkChange::AddVxlanRule { port, v6 } => {
                write!(
                    f,
                    "+ rule: pref 100 not udp dport {port}-{} lookup main ({})",
                    probe_port(*port),
                    if *v6 { "IPv6" } else { "IPv4" }
                )
            }
            LinkChange::AddBgpRule { side, v6 } | LinkChange::RemoveBgpRule { side, v6 } => {
                write!(
                    f,
                    "{} rule: pref {} tcp {side} {} lookup {} ({})",
                    if matches!(self, LinkChange::AddBgpRule { .. }) {
                        "+"
                    } else {
                        "-"
                    },
                    super::rule::BGP_RULE_PRIORITY,
                    super::rule::BGP_PORT,
                    super::rule::CHARON_TABLE,
                    super::rule::family(*v6)
                )
            }
            LinkChange::RemoveVxlanRule { ports, v6 } => {
                write!(
                    f,
                    "- rule: pref 100 not udp dport {}-{} lookup main ({})",
                    ports.0,
                    ports.1,
                    if *v6 { "IPv6" } else { "IPv4" }
                )
            }
        }
    }
}
