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
/// EVPN with libipsec: BGP to and from the reflectors looks up charon's table (its TUN)
/// before the VXLAN rule sends everything else to `main`.
pub const BGP_RULE_PRIORITY: u32 = 99;
/// charon's routing table (kernel-libipsec's routes into its TUN).
pub const CHARON_TABLE: u32 = 220;
pub const BGP_PORT: u16 = 179;

/// Which port of a BGP packet a rule matches: a site's packets go *to* 179, a reflector's
/// answers come *from* it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BgpSide {
    Dport,
    Sport,
}

impl std::fmt::Display for BgpSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BgpSide::Dport => "dport",
            BgpSide::Sport => "sport",
        })
    }
}

pub fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// The policy rules of ours in one family.
#[derive(Default)]
pub struct OwnedRules {
    /// VXLAN rules, with the destination ports each covers.
    pub vxlan: Vec<((u16, u16), RuleMessage)>,
    /// BGP rules (EVPN with libipsec), with the side each matches.
    pub bgp: Vec<(BgpSide, RuleMessage)>,
}

/// Our mark on a rule, and its priority.
fn ours_at(r: &RuleMessage, priority: u32) -> bool {
    r.attributes
        .contains(&RuleAttribute::Protocol(RouteProtocol::Other(
            VXLAN_RULE_PROTOCOL,
        )))
        && r.attributes.contains(&RuleAttribute::Priority(priority))
}

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

    /// Our rules (marked with our protocol), from one dump of the family's rules: the VXLAN
    /// rules with the destination ports each covers, and the BGP rules with their side.
    pub async fn owned_rules(&self, v6: bool) -> Result<OwnedRules, NetlinkError> {
        let mut out = OwnedRules::default();
        for r in self.rules(v6).await? {
            if ours_at(&r, VXLAN_RULE_PRIORITY) {
                let ports = r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::DestinationPortRange(p) => Some((p.start, p.end)),
                    _ => None,
                });
                if let Some(ports) = ports {
                    out.vxlan.push((ports, r));
                }
            } else if ours_at(&r, BGP_RULE_PRIORITY) {
                let side = r.attributes.iter().find_map(|a| match a {
                    RuleAttribute::DestinationPortRange(_) => Some(BgpSide::Dport),
                    RuleAttribute::SourcePortRange(_) => Some(BgpSide::Sport),
                    _ => None,
                });
                if let Some(side) = side {
                    out.bgp.push((side, r));
                }
            }
        }
        Ok(out)
    }

    /// Add one rule of ours: `priority`, to `table`, with `mark` adding its selectors (our
    /// protocol mark is added here).
    async fn add_rule(
        &self,
        priority: u32,
        table: u32,
        v6: bool,
        what: String,
        mark: impl Fn(&mut RuleMessage),
    ) -> Result<(), NetlinkError> {
        let add = self
            .handle
            .rule()
            .add()
            .priority(priority)
            .table_id(table)
            .action(RuleAction::ToTable);
        let mark = |m: &mut RuleMessage| {
            mark(m);
            m.attributes
                .push(RuleAttribute::Protocol(RouteProtocol::Other(
                    VXLAN_RULE_PROTOCOL,
                )));
        };
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

    /// `ip rule add pref 100 not ipproto udp dport PORT-PORT+1 lookup main proto 0x4c`: VXLAN
    /// and the path probes (the next port) go to charon's table, nothing else.
    pub async fn add_vxlan_rule(&self, port: u16, v6: bool) -> Result<(), NetlinkError> {
        let what = format!("add policy rule for VXLAN port {port}");
        self.add_rule(VXLAN_RULE_PRIORITY, MAIN_TABLE, v6, what, |m| {
            m.header.flags |= RuleFlags::Invert;
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Udp));
            m.attributes
                .push(RuleAttribute::DestinationPortRange(RulePortRange {
                    start: port,
                    end: crate::base::names::probe_port(port),
                }));
        })
        .await
    }

    /// `ip rule add pref 99 ipproto tcp dport|sport 179 lookup 220 proto 0x4c`.
    pub async fn add_bgp_rule(&self, side: BgpSide, v6: bool) -> Result<(), NetlinkError> {
        let what = format!(
            "add policy rule for BGP ({side} {BGP_PORT}, {})",
            family(v6)
        );
        self.add_rule(BGP_RULE_PRIORITY, CHARON_TABLE, v6, what, |m| {
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::Tcp));
            let range = RulePortRange {
                start: BGP_PORT,
                end: BGP_PORT,
            };
            m.attributes.push(match side {
                BgpSide::Dport => RuleAttribute::DestinationPortRange(range),
                BgpSide::Sport => RuleAttribute::SourcePortRange(range),
            });
        })
        .await
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

/// The BGP rules' changes (EVPN with libipsec): `want` is the family (IPv6?) when wanted.
pub fn diff_bgp_rules(
    want: Option<bool>,
    observed: &[(BgpSide, bool)],
) -> (Vec<LinkChange>, Vec<LinkChange>) {
    let wanted: Vec<(BgpSide, bool)> = want
        .map(|v6| vec![(BgpSide::Dport, v6), (BgpSide::Sport, v6)])
        .unwrap_or_default();
    let add = wanted
        .iter()
        .filter(|w| !observed.contains(w))
        .map(|&(side, v6)| LinkChange::AddBgpRule { side, v6 })
        .collect();
    let remove = observed
        .iter()
        .filter(|r| !wanted.contains(r))
        .map(|&(side, v6)| LinkChange::RemoveBgpRule { side, v6 })
        .collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_rules_are_added_both_ways_and_removed_when_unwanted() {
        let (add, remove) = diff_bgp_rules(Some(false), &[(BgpSide::Dport, false)]);
        assert_eq!(
            add,
            vec![LinkChange::AddBgpRule {
                side: BgpSide::Sport,
                v6: false
            }]
        );
        assert!(remove.is_empty());
        let (add, remove) = diff_bgp_rules(None, &[(BgpSide::Sport, true)]);
        assert!(add.is_empty());
        assert_eq!(remove.len(), 1);
        assert_eq!(
            remove[0].to_string(),
            "- rule: pref 99 tcp sport 179 lookup 220 (IPv6)"
        );
    }
}
