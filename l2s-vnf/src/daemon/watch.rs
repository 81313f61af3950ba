//! Event sources that wake the daemon: OVSDB `monitor`, rtnetlink (links, flood entries,
//! policy rules, addresses), nftables (our table) and charon (IKE/CHILD up, down, rekey; and,
//! as charon sends no event for it, a connection of ours unloaded, read every
//! [`CONNS_CHECK`]).
//!
//! Each watcher only says *that* something it cares about happened (a [`Trigger`]); the
//! daemon then reconciles the whole state, so an event can never be half-handled. Every
//! watcher reconnects on its own when its source goes away, and says so when it is back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::neighbour::NeighbourAttribute;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::MulticastGroup;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::base::names::{vxlan_device_name, ALIAS_PREFIX, VXLAN_DEVICE_PREFIX};
use crate::config::SiteConfig;
use crate::guard;
use crate::ipsec;
use crate::ipsec::vici::{self, Item, Section};
use crate::ovs::replica::Replica;

/// Something changed that may need a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub source: &'static str,
    pub detail: String,
}

pub type Triggers = mpsc::UnboundedSender<Trigger>;

fn fire(tx: &Triggers, source: &'static str, detail: impl Into<String>) {
    let _ = tx.send(Trigger {
        source,
        detail: detail.into(),
    });
}

/// IPsec events seen on owned connections (for status and metrics).
#[derive(Debug, Default)]
pub struct IpsecEvents {
    pub ike_rekeys: AtomicU64,
    pub child_rekeys: AtomicU64,
    pub ups: AtomicU64,
    pub downs: AtomicU64,
}

/// How long a watcher waits before reconnecting to a source that went away.
const RECONNECT: Duration = Duration::from_millis(250);

/// The watchers of one config; aborted when dropped (a reload starts new ones).
pub struct Watchers {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Watchers {
    pub fn start(
        cfg: &SiteConfig,
        tx: Triggers,
        events: Arc<IpsecEvents>,
        replica: Arc<Replica>,
    ) -> Self {
        let mut tasks = vec![
            tokio::spawn(ovsdb_watch(cfg.switch.ovsdb.clone(), tx.clone(), replica)),
            tokio::spawn(netlink_watch(Interest::of(cfg), tx.clone())),
            tokio::spawn(nftables_watch(
                guard::table_name(&cfg.switch.bridge),
                tx.clone(),
            )),
        ];
        if cfg.ipsec.enabled {
            tasks.push(tokio::spawn(conns_watch(
                cfg.ipsec.vici.clone(),
                cfg.switch.bridge.clone(),
                tx.clone(),
            )));
            tasks.push(tokio::spawn(vici_watch(
                cfg.ipsec.vici.clone(),
                cfg.switch.bridge.clone(),
                tx,
                events,
            )));
        }
        Watchers { tasks }
    }
}

/// `Bridge: 1 row(s), Port: 2 row(s)` for a monitor update.
fn summarize_update(update: &Value) -> String {
    let Some(tables) = update.as_object() else {
        return "update".into();
    };
    tables
        .iter()
        .map(|(t, rows)| {
            format!(
                "{t}: {} row(s)",
                rows.as_object().map(|r| r.len()).unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The OVSDB monitor: keeps the replica current and wakes the loop on every change that may
/// be drift (after the replica has it, so the reconcile sees it).
async fn ovsdb_watch(path: PathBuf, tx: Triggers, replica: Arc<Replica>) {
    let mut lost = false;
    loop {
        match crate::ovs::Client::connect(&path).await {
            Ok(client) => match client.monitor("l2s-vnf-watch", Replica::request()).await {
                Ok((initial, mut updates)) => {
                    replica.reset(&initial);
                    if lost {
                        info!("ovsdb-server is reachable again");
                        fire(&tx, "ovsdb", "ovsdb-server is back");
                    }
                    while let Some(u) = updates.recv().await {
                        if replica.update(&u) {
                            fire(&tx, "ovsdb", summarize_update(&u));
                        }
                    }
                    replica.lost();
                    warn!(path = %path.display(), "lost the connection to ovsdb-server; reconnecting");
                    fire(&tx, "ovsdb", "connection to ovsdb-server lost");
                    lost = true;
                }
                Err(e) => debug!(error = %e, "OVSDB monitor"),
            },
            Err(e) => {
                if !lost {
                    warn!(error = %e, "ovsdb-server is not reachable; retrying");
                    lost = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// The links whose events matter: access ports, VTEPs (by name, prefix or alias) and the
/// underlay; and the addresses: the underlay's only (where the VTEP address lives).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    names: BTreeSet<String>,
    underlay: String,
    /// The underlay's ifindex, once a link message has named it (until then every address
    /// event counts: one too many reconciles, never one too few).
    underlay_index: Option<u32>,
}

impl Interest {
    pub fn of(cfg: &SiteConfig) -> Self {
        let mut names: BTreeSet<String> = cfg
            .vlans
            .iter()
            .flat_map(|v| v.ports.iter().cloned())
            .collect();
        names.extend(cfg.vlans.iter().map(|v| vxlan_device_name(v.vni)));
        names.insert(cfg.site.underlay.clone());
        Interest {
            names,
            underlay: cfg.site.underlay.clone(),
            underlay_index: None,
        }
    }

    /// Learn the underlay's ifindex from a link message about it (it may be re-created).
    fn learn(&mut self, msg: &RouteNetlinkMessage) {
        if let RouteNetlinkMessage::NewLink(m) = msg {
            let named = m
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == self.underlay));
            if named {
                self.underlay_index = Some(m.header.index);
            }
        }
    }

    fn address(&self, index: u32) -> bool {
        self.underlay_index.is_none_or(|u| u == index)
    }

    fn link(&self, m: &LinkMessage) -> Option<String> {
        let mut name = None;
        let mut ours = false;
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::IfAlias(a) if a.starts_with(ALIAS_PREFIX) => ours = true,
                _ => {}
            }
        }
        let name = name?;
        (ours || name.starts_with(VXLAN_DEVICE_PREFIX) || self.names.contains(&name))
            .then_some(name)
    }
}

/// What a route-netlink notification means for us, if anything.
pub fn classify(msg: &RouteNetlinkMessage, interest: &Interest) -> Option<String> {
    use RouteNetlinkMessage as M;
    match msg {
        M::NewLink(l) => interest.link(l).map(|n| format!("link {n} changed")),
        M::DelLink(l) => interest.link(l).map(|n| format!("link {n} deleted")),
        M::NewNeighbour(n) | M::DelNeighbour(n) if n.header.family == AddressFamily::Bridge => {
            let flood = n.attributes.iter().any(
                |a| matches!(a, NeighbourAttribute::LinkLayerAddress(mac) if mac.iter().all(|b| *b == 0)),
            );
            flood.then(|| {
                format!(
                    "flood entry on ifindex {} {}",
                    n.header.ifindex,
                    if matches!(msg, M::DelNeighbour(_)) {
                        "deleted"
                    } else {
                        "added"
                    }
                )
            })
        }
        M::NewRule(_) => Some("policy rule added".into()),
        M::DelRule(_) => Some("policy rule deleted".into()),
        M::NewAddress(a) | M::DelAddress(a) => interest
            .address(a.header.index)
            .then(|| format!("an address of {} changed", interest.underlay)),
        _ => None,
    }
}

async fn netlink_watch(mut interest: Interest, tx: Triggers) {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    loop {
        // Where the underlay is now (a dump: no event may have named it yet).
        if let Ok(index) = nix::net::if_::if_nametoindex(interest.underlay.as_str()) {
            interest.underlay_index = Some(index);
        }
        match rtnetlink::new_multicast_connection(&groups) {
            Ok((conn, _handle, mut messages)) => {
                // The connection runs in this task (not spawned), so that stopping the
                // watcher closes its socket.
                let events = async {
                    while let Some((m, _)) = messages.next().await {
                        if let NetlinkPayload::InnerMessage(inner) = &m.payload {
                            interest.learn(inner);
                            if let Some(what) = classify(inner, &interest) {
                                fire(&tx, "netlink", what);
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = conn => {}
                    _ = events => {}
                }
                warn!("the netlink event socket closed; reopening");
            }
            Err(e) => warn!(error = %e, "cannot open a netlink event socket; retrying"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// nfnetlink's multicast group for nf_tables changes (`NFNLGRP_NFTABLES`).
const NFNLGRP_NFTABLES: u32 = 7;

async fn nftables_watch(table: String, tx: Triggers) {
    nft_table_events(table, move |why| fire(&tx, "nftables", why)).await;
}

/// Call `on` for every nf_tables notification about `table` (and when events were lost, so
/// that the caller looks at everything); never returns.
pub async fn nft_table_events(table: String, on: impl Fn(String)) {
    // Every nf_tables notification about our table carries the table's name (NUL-ended) in
    // its attributes: that is all we need to know.
    let mut needle = table.clone().into_bytes();
    needle.push(0);
    loop {
        let sock = TokioSocket::new(netlink_sys::protocols::NETLINK_NETFILTER).and_then(|mut s| {
            s.socket_mut()
                .bind(&SocketAddr::new(0, 1 << (NFNLGRP_NFTABLES - 1)))?;
            Ok(s)
        });
        match sock {
            Ok(s) => loop {
                match s.recv_from_full().await {
                    Ok((buf, _)) => {
                        if buf.windows(needle.len()).any(|w| w == needle.as_slice()) {
                            on(format!("table {table} changed"));
                        }
                    }
                    Err(e) => {
                        // ENOBUFS: events were lost; look at everything.
                        on(format!("event socket: {e}"));
                        break;
                    }
                }
            },
            Err(e) => warn!(error = %e, "cannot open an nftables event socket; retrying"),
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// The owned connection names an event is about (its top-level sections are IKE_SA names).
fn event_conns(msg: &Section, bridge: &str) -> Vec<String> {
    msg.items
        .iter()
        .filter_map(|(name, item)| match item {
            Item::Section(_) if ipsec::owned_conn(name, bridge) => Some(name.clone()),
            _ => None,
        })
        .collect()
}

/// How often charon's connections are read: an unloaded connection is no event in charon,
/// and at a responder its IKE_SA stays up, so nothing else would show it before the periodic
/// reconcile (a new IKE_SA from the peer would be refused meanwhile).
pub const CONNS_CHECK: Duration = Duration::from_secs(1);

/// The connections of ours that were listed before and are not now.
fn unloaded(before: &BTreeSet<String>, now: &BTreeSet<String>) -> Vec<String> {
    before.difference(now).cloned().collect()
}

async fn conns_watch(path: PathBuf, bridge: String, tx: Triggers) {
    let mut before: Option<BTreeSet<String>> = None;
    let mut client: Option<vici::Client> = None;
    loop {
        tokio::time::sleep(CONNS_CHECK).await;
        if client.is_none() {
            client = vici::Client::connect(&path).await.ok();
        }
        let Some(c) = &client else {
            // charon's absence is vici_watch's to report.
            before = None;
            continue;
        };
        let now: BTreeSet<String> = match c.list_conns().await {
            Ok(list) => list
                .into_iter()
                .map(|(name, _)| name)
                .filter(|name| ipsec::owned_conn(name, &bridge))
                .collect(),
            Err(e) => {
                debug!(error = %e, "cannot list charon's connections; reconnecting");
                client = None;
                before = None;
                continue;
            }
        };
        if let Some(gone) = before.as_ref().map(|b| unloaded(b, &now)) {
            if !gone.is_empty() {
                fire(
                    &tx,
                    "charon",
                    format!("connection unloaded: {}", gone.join(", ")),
                );
            }
        }
        before = Some(now);
    }
}

pub const VICI_EVENTS: &[&str] = &["ike-updown", "child-updown", "ike-rekey", "child-rekey"];

async fn vici_watch(path: PathBuf, bridge: String, tx: Triggers, events: Arc<IpsecEvents>) {
    let mut lost = false;
    loop {
        match vici::subscribe(&path, VICI_EVENTS).await {
            Ok(mut rx) => {
                if lost {
                    info!("charon is reachable again");
                    fire(&tx, "charon", "charon is back");
                }
                while let Some((name, msg)) = rx.recv().await {
                    let conns = event_conns(&msg, &bridge);
                    if conns.is_empty() {
                        continue;
                    }
                    let up = msg.str("up").as_deref() == Some("yes");
                    let what = match name.as_str() {
                        "ike-rekey" => {
                            events.ike_rekeys.fetch_add(1, Ordering::Relaxed);
                            "IKE_SA rekeyed"
                        }
                        "child-rekey" => {
                            events.child_rekeys.fetch_add(1, Ordering::Relaxed);
                            "CHILD_SA rekeyed"
                        }
                        "ike-updown" | "child-updown" if up => {
                            events.ups.fetch_add(1, Ordering::Relaxed);
                            if name == "ike-updown" {
                                "IKE_SA up"
                            } else {
                                "CHILD_SA up"
                            }
                        }
                        _ => {
                            events.downs.fetch_add(1, Ordering::Relaxed);
                            if name == "ike-updown" {
                                "IKE_SA down"
                            } else {
                                "CHILD_SA down"
                            }
                        }
                    };
                    info!(conn = %conns.join(","), "{what}");
                    // Down: something to repair; up: the VLANs' health changes.
                    if what.ends_with("down") || what.ends_with("up") {
                        fire(&tx, "charon", format!("{what}: {}", conns.join(", ")));
                    }
                }
                warn!(path = %path.display(), "lost charon's VICI socket; reconnecting");
                fire(&tx, "charon", "charon went away");
                lost = true;
            }
            Err(e) => {
                if !lost {
                    warn!(error = %e, "charon is not reachable; retrying");
                    lost = true;
                }
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::neighbour::NeighbourMessage;

    fn cfg() -> SiteConfig {
        SiteConfig::from_str_at(
            std::path::Path::new("t.toml"),
            "[site]\nname = \"a\"\nunderlay = \"eth1\"\nvtep_ip = \"192.0.2.1\"\nunderlay_mtu = 1500\n[ipsec]\nenabled = false\ninsecure = true\n[[peer]]\nname = \"b\"\naddress = \"192.0.2.2\"\n[[vlan]]\nid = 101\nports = [\"acc101\"]\n",
        )
        .unwrap()
    }

    fn link(name: &str, alias: Option<&str>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        if let Some(a) = alias {
            m.attributes.push(LinkAttribute::IfAlias(a.into()));
        }
        m
    }

    #[test]
    fn only_links_we_care_about_wake_the_daemon() {
        let i = Interest::of(&cfg());
        let c = |m| classify(&m, &i);
        assert_eq!(
            c(RouteNetlinkMessage::DelLink(link("l2s-vx101", None))).as_deref(),
            Some("link l2s-vx101 deleted")
        );
        assert!(c(RouteNetlinkMessage::NewLink(link("acc101", None))).is_some());
        assert!(c(RouteNetlinkMessage::NewLink(link("eth1", None))).is_some());
        assert!(c(RouteNetlinkMessage::NewLink(link(
            "renamed",
            Some("l2s-vnf bridge=l2s0 vlan=101")
        )))
        .is_some());
        assert_eq!(c(RouteNetlinkMessage::NewLink(link("veth9", None))), None);
    }

    #[test]
    fn only_the_underlays_addresses_wake_the_daemon() {
        use rtnetlink::packet_route::address::AddressMessage;
        let mut i = Interest::of(&cfg());
        let addr = |index: u32| {
            let mut a = AddressMessage::default();
            a.header.index = index;
            RouteNetlinkMessage::NewAddress(a)
        };
        // Before the underlay's index is known, any address counts.
        assert!(classify(&addr(9), &i).is_some());
        let mut eth1 = link("eth1", None);
        eth1.header.index = 3;
        i.learn(&RouteNetlinkMessage::NewLink(eth1));
        assert_eq!(
            classify(&addr(3), &i).as_deref(),
            Some("an address of eth1 changed")
        );
        assert_eq!(
            classify(&addr(9), &i),
            None,
            "a VNF-side or other device's address"
        );
        let mut veth = link("veth9", None);
        veth.header.index = 9;
        i.learn(&RouteNetlinkMessage::NewLink(veth));
        assert_eq!(classify(&addr(9), &i), None);
    }

    #[test]
    fn only_flood_entries_among_neighbours() {
        let i = Interest::default();
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Bridge;
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        assert!(classify(&RouteNetlinkMessage::DelNeighbour(n.clone()), &i)
            .unwrap()
            .contains("deleted"));
        n.attributes = vec![NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1])];
        assert_eq!(classify(&RouteNetlinkMessage::NewNeighbour(n), &i), None);
        let mut arp = NeighbourMessage::default();
        arp.header.family = AddressFamily::Inet;
        arp.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        assert_eq!(classify(&RouteNetlinkMessage::NewNeighbour(arp), &i), None);
    }

    #[test]
    fn monitor_updates_are_summarized() {
        let u = serde_json::json!({"Port": {"u1": {}, "u2": {}}, "Bridge": {"u3": {}}});
        assert_eq!(summarize_update(&u), "Bridge: 1 row(s), Port: 2 row(s)");
    }

    #[test]
    fn only_a_connection_listed_before_and_gone_now_is_unloaded() {
        let set = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let before = set(&["l2s-vnf:l2s0:a", "l2s-vnf:l2s0:b"]);
        assert_eq!(
            unloaded(&before, &set(&["l2s-vnf:l2s0:b"])),
            vec!["l2s-vnf:l2s0:a"]
        );
        assert!(unloaded(
            &before,
            &set(&["l2s-vnf:l2s0:a", "l2s-vnf:l2s0:b", "l2s-vnf:l2s0:c"])
        )
        .is_empty());
    }

    #[test]
    fn events_of_other_bridges_are_ignored() {
        let mut m = Section::default();
        m.items.push((
            "l2s-vnf:l2s0:site-b".into(),
            Item::Section(Section::default()),
        ));
        m.items.push((
            "l2s-vnf:other:site-b".into(),
            Item::Section(Section::default()),
        ));
        m.items.push(("up".into(), Item::Value(b"yes".to_vec())));
        assert_eq!(event_conns(&m, "l2s0"), vec!["l2s-vnf:l2s0:site-b"]);
    }
}
