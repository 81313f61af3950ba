//! What bgpd has learned, read from its JSON (`vtysh -c "show bgp l2vpn evpn … json"`): the
//! VTEPs each VNI's type-3 (IMET) routes announce, the remote MACs type-2 (MAC/IP) routes
//! place behind a VTEP, and the state of each BGP session.
//!
//! The VNI of a route is its route target `ASN:VNI` (FRR derives it so for every VNI of
//! `advertise-all-vni`); a route whose target names another AS is not the federation's and is
//! ignored, as are routes bgpd did not select (invalid next hop, not the best path).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

/// VTEPs found through EVPN, with the VNIs each announced, and the remote MACs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub vteps: BTreeMap<IpAddr, BTreeSet<u32>>,
    /// Each remote MAC (VNI, MAC in lower case) with the VTEP bgpd's best route places it
    /// behind (MAC mobility's sequence numbers already chose it).
    pub macs: BTreeMap<(u32, String), IpAddr>,
}

impl Discovered {
    /// Add `other`'s VTEPs and VNIs to these (nothing is taken away); its MACs are newer.
    pub fn absorb(&mut self, other: Discovered) {
        for (v, vnis) in other.vteps {
            self.vteps.entry(v).or_default().extend(vnis);
        }
        self.macs.extend(other.macs);
    }

    /// The VTEPs that announced `vni`.
    pub fn flood_list(&self, vni: u32) -> BTreeSet<IpAddr> {
        self.vteps
            .iter()
            .filter(|(_, vnis)| vnis.contains(&vni))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// Why bgpd's output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("bgpd's JSON could not be parsed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bgpd's JSON has no {0}")]
    Shape(&'static str),
}

/// The VNIs in a route's extended communities that belong to the federation's AS.
fn vnis_of(communities: &str, asn: u32) -> impl Iterator<Item = u32> + '_ {
    communities.split_whitespace().filter_map(move |c| {
        let (a, v) = c.strip_prefix("RT:")?.split_once(':')?;
        (a.parse::<u32>().ok()? == asn).then_some(())?;
        v.parse().ok()
    })
}

/// The paths bgpd selected (valid and best) of one route type, from a `show bgp l2vpn evpn
/// route … json` answer.
fn selected_paths(doc: &Value, route_type: u64) -> Result<Vec<&Value>, RoutesError> {
    let rds = doc
        .as_object()
        .ok_or(RoutesError::Shape("top-level object"))?;
    Ok(rds
        .values()
        .filter_map(Value::as_object)
        .flat_map(|rd| rd.values().filter_map(Value::as_object))
        .filter_map(|route| route.get("paths").and_then(Value::as_array))
        // FRR nests each path in a one-element array.
        .flat_map(|paths| {
            paths
                .iter()
                .flat_map(|p| p.as_array().into_iter().flatten())
        })
        .filter(|p| p["valid"] == true && p["bestpath"] == true && p["routeType"] == route_type)
        .collect())
}

fn address(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

/// Remote VTEPs per VNI from `show bgp l2vpn evpn route type multicast json`; `own` (this
/// site's VTEP) is left out.
pub fn parse_imet(json: &str, asn: u32, own: IpAddr) -> Result<Discovered, RoutesError> {
    let doc: Value = serde_json::from_str(json)?;
    let mut found = Discovered::default();
    for path in selected_paths(&doc, 3)? {
        let Some(ip) = address(&path["ip"]).filter(|ip| *ip != own) else {
            continue;
        };
        let communities = path["extendedCommunity"]["string"].as_str().unwrap_or("");
        let vnis: Vec<u32> = vnis_of(communities, asn).collect();
        if !vnis.is_empty() {
            found.vteps.entry(ip).or_default().extend(vnis);
        }
    }
    Ok(found)
}

/// A type-2 route's MAC mobility sequence number (`MM:<seq>` among its extended
/// communities; none: 0).
fn mobility_seq(communities: &str) -> u32 {
    communities
        .split_whitespace()
        .find_map(|c| c.strip_prefix("MM:"))
        .and_then(|s| s.trim_end_matches(',').parse().ok())
        .unwrap_or(0)
}

/// Remote MACs per VNI from `show bgp l2vpn evpn route type macip json`: each MAC with the
/// VTEP (the route's next hop) it is behind. Each site's route has its own route
/// distinguisher, so while a VNF moves two sites' routes for its MAC coexist: the higher MAC
/// mobility sequence number wins, then the lower VTEP address (RFC 7432, 15.1). A MAC whose
/// winning route is this site's own (`own`) is not remote.
pub fn parse_macs(
    json: &str,
    asn: u32,
    own: IpAddr,
) -> Result<BTreeMap<(u32, String), IpAddr>, RoutesError> {
    let doc: Value = serde_json::from_str(json)?;
    let mut best: BTreeMap<(u32, String), (u32, IpAddr)> = BTreeMap::new();
    for path in selected_paths(&doc, 2)? {
        let vtep = path["nexthops"]
            .as_array()
            .and_then(|n| n.iter().find_map(|h| address(&h["ip"])));
        let (Some(vtep), Some(mac)) = (vtep, path["mac"].as_str()) else {
            continue;
        };
        let communities = path["extendedCommunity"]["string"].as_str().unwrap_or("");
        let seq = mobility_seq(communities);
        for vni in vnis_of(communities, asn) {
            let slot = best
                .entry((vni, mac.to_ascii_lowercase()))
                .or_insert((seq, vtep));
            if seq > slot.0 || (seq == slot.0 && vtep < slot.1) {
                *slot = (seq, vtep);
            }
        }
    }
    Ok(best
        .into_iter()
        .filter(|(_, (_, vtep))| *vtep != own)
        .map(|(k, (_, vtep))| (k, vtep))
        .collect())
}

/// One BGP session, as `status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BgpSession {
    pub peer: IpAddr,
    /// bgpd's word: `Established`, `Active`, `Connect`, `Idle`, …
    pub state: String,
    pub established: bool,
    pub uptime_ms: u64,
    pub prefixes_received: u64,
    /// Dynamic neighbours (a reflector's sites) are marked so by bgpd.
    pub dynamic: bool,
}

/// Sessions from `show bgp l2vpn evpn summary json`.
pub fn parse_summary(json: &str) -> Result<Vec<BgpSession>, RoutesError> {
    let doc: Value = serde_json::from_str(json)?;
    // With no session configured yet, bgpd prints `{}`.
    let Some(peers) = doc.get("peers") else {
        return Ok(vec![]);
    };
    let peers = peers
        .as_object()
        .ok_or(RoutesError::Shape("peers object"))?;
    let mut out = vec![];
    for (name, p) in peers {
        // Dynamic neighbours are keyed `*192.0.2.1` in some versions.
        let Ok(peer) = name.trim_start_matches('*').parse::<IpAddr>() else {
            continue;
        };
        let state = p["state"].as_str().unwrap_or("unknown").to_string();
        out.push(BgpSession {
            peer,
            established: state == "Established",
            state,
            uptime_ms: p["peerUptimeMsec"].as_u64().unwrap_or(0),
            prefixes_received: p["pfxRcd"].as_u64().unwrap_or(0),
            dynamic: p["dynamicPeer"] == true || name.starts_with('*'),
        });
    }
    out.sort_by_key(|s| s.peer);
    Ok(out)
}

/// The UPDATE messages received over all neighbours, from `show bgp neighbors json` (what
/// tells that the routes may have changed; keepalives do not count).
pub fn parse_updates_received(json: &str) -> Result<u64, RoutesError> {
    let doc: Value = serde_json::from_str(json)?;
    let neighbours = doc
        .as_object()
        .ok_or(RoutesError::Shape("neighbours object"))?;
    let mut total = 0;
    for n in neighbours.values() {
        total += n["messageStats"]["updatesRecv"]
            .as_u64()
            .ok_or(RoutesError::Shape("messageStats.updatesRecv"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from FRR 8.4.4 (Debian 12) at site A (192.0.2.1) of a reflector and two sites,
    /// both with VNIs 101 and 102.
    const IMET: &str = include_str!("testdata/imet_routes.json");
    const SUMMARY: &str = include_str!("testdata/summary.json");

    #[test]
    fn remote_vteps_come_from_selected_type3_routes_of_our_as() {
        let own: IpAddr = "192.0.2.1".parse().unwrap();
        let d = parse_imet(IMET, 65000, own).unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(d.vteps.keys().copied().collect::<Vec<_>>(), vec![b]);
        assert_eq!(d.vteps[&b], BTreeSet::from([101, 102]));
        assert_eq!(d.flood_list(101), BTreeSet::from([b]));
        assert!(d.flood_list(103).is_empty());
        // Another AS's route targets are not the federation's.
        assert!(parse_imet(IMET, 65001, own).unwrap().vteps.is_empty());
        // A route bgpd did not select (its next hop unresolved) opens nothing.
        let invalid = IMET.replace(
            "\"valid\":true,\"bestpath\":true,\"selectionReason\":\"First path received\",\"pathFrom\":\"internal\"",
            "\"valid\":false,\"pathFrom\":\"internal\"",
        );
        assert_ne!(invalid, IMET);
        assert!(parse_imet(&invalid, 65000, own).unwrap().vteps.is_empty());
        assert!(parse_imet("[]", 65000, own).is_err());
    }

    /// Captured from FRR 8.4.4 at site A (192.0.2.1) while a VNF's MAC moved between B
    /// (192.0.2.2) and C (192.0.2.3): A's own MAC, C's route for it (MM:1, best) and B's
    /// (MM:2, not selected yet).
    const MACIP: &str = include_str!("testdata/macip_routes.json");

    #[test]
    fn remote_macs_come_from_selected_type2_routes_the_newest_move_winning() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let moved = (101, "36:e5:25:3a:91:b1".to_string());
        let m = parse_macs(MACIP, 65000, ip("192.0.2.1")).unwrap();
        // A's own MAC is not remote; B's route is not selected: C has it.
        assert_eq!(m, BTreeMap::from([(moved.clone(), ip("192.0.2.3"))]));
        // Both selected (each best under its own RD): the higher sequence number wins.
        let both = MACIP.replace(
            "\"valid\":true,\"pathFrom\"",
            "\"valid\":true,\"bestpath\":true,\"pathFrom\"",
        );
        assert_ne!(both, MACIP, "the fixture's unselected path");
        let m = parse_macs(&both, 65000, ip("192.0.2.1")).unwrap();
        assert_eq!(m.get(&moved), Some(&ip("192.0.2.2")));
        // Equal sequence numbers: the lower VTEP address.
        let tied = both.replace("MM:2", "MM:1");
        let m = parse_macs(&tied, 65000, ip("192.0.2.1")).unwrap();
        assert_eq!(m.get(&moved), Some(&ip("192.0.2.2")));
        // Seen from C, whose own route wins while B's is not selected: not remote at C.
        let m = parse_macs(MACIP, 65000, ip("192.0.2.3")).unwrap();
        assert!(!m.contains_key(&moved), "{m:?}");
        assert_eq!(m.len(), 1, "A's MAC is remote at C: {m:?}");
        // Another AS's route targets are not the federation's.
        assert!(parse_macs(MACIP, 65001, ip("192.0.2.1"))
            .unwrap()
            .is_empty());
        assert_eq!(mobility_seq("RT:65000:101 ET:8 MM:2, sticky MAC"), 2);
        assert_eq!(mobility_seq("RT:65000:101 ET:8"), 0);
    }

    #[test]
    fn updates_received_are_summed_over_neighbours() {
        let two = r#"{"192.0.2.10":{"bgpState":"Established","messageStats":{"depthInq":0,"updatesSent":3,"updatesRecv":5,"keepalivesRecv":40}},"192.0.2.11":{"messageStats":{"updatesRecv":7}}}"#;
        assert_eq!(parse_updates_received(two).unwrap(), 12);
        assert_eq!(parse_updates_received("{}").unwrap(), 0);
        // A bgpd that no longer says it: an error (the daemon then reads the routes).
        assert!(parse_updates_received(r#"{"192.0.2.10":{"messageStats":{}}}"#).is_err());
    }

    #[test]
    fn sessions_are_read_with_their_state() {
        let s = parse_summary(SUMMARY).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].peer, "192.0.2.10".parse::<IpAddr>().unwrap());
        assert!(s[0].established);
        assert_eq!(s[0].prefixes_received, 2);
        assert!(!s[0].dynamic);
        assert!(parse_summary("{}").unwrap().is_empty());
    }
}
