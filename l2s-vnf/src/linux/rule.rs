//! The libipsec policy rule: with kernel-libipsec, charon routes protected traffic through
//! its table 220 and TUN; this rule makes everything that is not VXLAN (or the path probes)
//! look up `main` first. Marked as ours by its protocol number.

use futures::TryStreamExt;

use super::{req, LinkChange, Netlink, NetlinkError};

use rtnetlink::packet_route::route::RouteProtocol;
use rtnetlink::packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange,
};
use rtnetlink::packet_route::IpProtocol;

/// The policy-routing rule l2s-vnf owns with the libipsec backend: everything that is *not*
/// VXLAN looks up `main` first, so only VXLAN falls through to charon's table 220 and its TUN.
pub const VXLAN_RULE_PRIORITY: u32 = 100;
/// `FRA_PROTOCOL` value that marks the rule as ours.
pub const VXLAN_RULE_PROTOCOL: u8 = 0x4c;
const MAIN_TABLE: u32 = 254;

impl Netlink {
    async fn rules(&self, v6: bool) -> Result<Vec<RuleMessage>, NetlinkError> {
        let ver = if v6 {
            rtnetlink::IpVersion::V6
        } else {
            rtnetlink::IpVersion::V4
        };
        self.handle
            .rule()
            .get(ver)
            .execute()
            .try_collect()
            .await
            .map_err(req("list policy rules"))
    }

    /// Our rules (marked with our protocol), each with the destination ports it covers.
    pub async fn owned_vxlan_rules(
        &self,
        v6: bool,
    ) -> Result<Vec<((u16, u16), RuleMessage)>, NetlinkError> {
        let ours = RuleAttribute::Protocol(RouteProtocol::Other(VXLAN_RULE_PROTOCOL));
        Ok(self
            .rules(v6)
            .await?
            .into_iter()
            .filter(|r| r.attributes.contains(&ours))
            .filter_map(|r| {
                let ports = r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::DestinationPortRange(p) => Some((p.start, p.end)),
                    _ => None,
                })?;
                Some((ports, r))
            })
            .collect())
    }

    /// `ip rule add pref 100 not ipproto udp dport PORT-PORT+1 lookup main proto 0x4c`: VXLAN
    /// and the path probes (the next port) go to charon's table, nothing else.
    pub async fn add_vxlan_rule(&self, port: u16, v6: bool) -> Result<(), NetlinkError> {
        let add = self
            .handle
            .rule()
            .add()
            .priority(VXLAN_RULE_PRIORITY)
            .table_id(MAIN_TABLE)
            .action(RuleAction::ToTable);
        let mark = |m: &mut RuleMessage| {
            m.header.flags |= RuleFlags::Invert;
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            m.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange {
                    start: port,
                    end: crate::base::names::probe_port(port),
                }));
            m.attributes
                .push(RuleAttribute::Protocol(RouteProtocol::Other(
                    VXLAN_RULE_PROTOCOL,
                )));
        };
        let what = format!("add policy rule for VXLAN port {port}");
        if v6 {
            let mut add = add.v6().replace();
            mark(add.message_mut());
            add.execute().await.map_err(req(what))
        } else {
            let mut add = add.v4().replace();
            mark(add.message_mut());
            add.execute().await.map_err(req(what))
        }
    }

    pub async fn remove_rule(&self, rule: RuleMessage) -> Result<(), NetlinkError> {
        self.handle
            .rule()
            .del(rule)
            .execute()
            .await
            .map_err(req("remove policy rule"))
    }
}

/// The libipsec policy rule's changes: the one to add (before any VXLAN device comes up) and
/// those to remove. `want` is (VXLAN port, IPv6); the rule covers the probe port too.
pub fn diff_vxlan_rules(
    want: Option<(u16, bool)>,
    observed: &[((u16, u16), bool)],
) -> (Option<LinkChange>, Vec<LinkChange>) {
    let wanted = want.map(|(port, v6)| ((port, crate::base::names::probe_port(port)), v6));
    let add = wanted
        .filter(|w| !observed.contains(w))
        .map(|((port, _), v6)| LinkChange::AddVxlanRule { port, v6 });
    let remove = observed
        .iter()
        .filter(|&&r| wanted != Some(r))
        .map(|&(ports, v6)| LinkChange::RemoveVxlanRule { ports, v6 })
        .collect();
    (add, remove)
}
