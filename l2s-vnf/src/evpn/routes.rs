//! What bgpd has learned, read from its JSON (`vtysh -c "show bgp l2vpn evpn … json"`): the
//! VTEPs each VNI's type-3 (IMET) routes announce, and the state of each BGP session.
//!
//! The VNI of a route is its route target `ASN:VNI` (FRR derives it so for every VNI of
//! `advertise-all-vni`); a route whose target names another AS is not the federation's and is
//! ignored, as are routes bgpd did not select (invalid next hop, not the best path).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde_json::Value;

/// VTEPs found through EVPN, with the VNIs each announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovered {
    pub vteps: BTreeMap<IpAddr, BTreeSet<u32>>,
}

impl Discovered {
    /// Add `other`'s VTEPs and VNIs to these (nothing is taken away).
    pub fn absorb(&mut self, other: Discovered) {
        for (v, vnis) in other.vteps {
            self.vteps.entry(v).or_default().extend(vnis);
        }
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

/// Remote VTEPs per VNI from `show bgp l2vpn evpn route type multicast json`; `own` (this
/// site's VTEP) is left out.
pub fn parse_imet(json: &str, asn: u32, own: IpAddr) -> Result<Discovered, RoutesError> {
    let doc: Value = serde_json::from_str(json)?;
    let rds = doc
        .as_object()
        .ok_or(RoutesError::Shape("top-level object"))?;
    let mut found = Discovered::default();
    for rd in rds.values().filter_map(Value::as_object) {
        for route in rd.values().filter_map(Value::as_object) {
            let Some(paths) = route.get("paths").and_then(Value::as_array) else {
                continue;
            };
            // FRR nests each path in a one-element array.
            for path in paths
                .iter()
                .flat_map(|p| p.as_array().into_iter().flatten())
            {
                let selected = path["valid"] == true && path["bestpath"] == true;
                if !selected || path["routeType"] != 3 {
                    continue;
                }
                let Some(ip) = path["ip"].as_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if ip == own {
                    continue;
                }
                let communities = path["extendedCommunity"]["string"].as_str().unwrap_or("");
                let vnis: Vec<u32> = vnis_of(communities, asn).collect();
                if !vnis.is_empty() {
                    found.vteps.entry(ip).or_default().extend(vnis);
                }
            }
        }
    }
    Ok(found)
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
