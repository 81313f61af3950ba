//! Storm control: a limit on the broadcast and multicast frames each access port may send into
//! the switch, in packets per second (`bum_limit_pps`).
//!
//! ovs-vswitchd enforces it with OpenFlow meters — one per limited port, a single drop band —
//! and one flow per port ahead of the bridge's NORMAL flow: frames from the port whose
//! destination has the group bit set go through the port's meter, then NORMAL. Meters and flows
//! work on both datapaths. They live in ovs-vswitchd only (not in OVSDB): a restarted
//! ovs-vswitchd or a re-created bridge loses them, and the next reconcile puts them back.
//! Everything is set and read with `ovs-ofctl` over the bridge's management socket; our flows
//! carry the cookie prefix `0x4c3253` ("L2S"), and meter `N` belongs to the `N`th limited port
//! in name order.
//!
//! Unknown unicast is not limited: NORMAL decides it is unknown only after the meter.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ovs::switch::ObservedPort;

/// Our flows' cookie ("L2S" in the top 24 bits), and the mask that selects them.
pub const COOKIE: u64 = 0x4c32_5300_0000_0000;
const COOKIE_MASK: u64 = 0xffff_ff00_0000_0000;
/// Above the bridge's default NORMAL flow (priority 0).
const PRIORITY: u16 = 100;
/// Destination MAC with the group bit set: broadcast and multicast.
const GROUP_DST: &str = "01:00:00:00:00:00/01:00:00:00:00:00";

/// One limited access port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormLimit {
    pub port: String,
    pub vlan: u16,
    pub pps: u32,
}

/// A meter on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    pub pps: u32,
    /// Packets its drop band discarded since it was made.
    pub dropped: u64,
}

/// What ovs-vswitchd holds of storm control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedStorm {
    /// Our flows: OpenFlow port number → meter id.
    pub flows: BTreeMap<i64, u32>,
    /// Every meter on the bridge (ours: the bridge is ours).
    pub meters: BTreeMap<u32, Meter>,
}

impl ObservedStorm {
    /// Nothing of ours in force.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.meters.is_empty()
    }

    /// Packets storm control dropped from this port.
    pub fn limited(&self, p: &ObservedPort) -> u64 {
        p.iface
            .ofport
            .and_then(|of| self.flows.get(&of))
            .and_then(|id| self.meters.get(id))
            .map_or(0, |m| m.dropped)
    }

    /// Whether exactly `want` is in force: a flow from each port's current OpenFlow number to
    /// its meter, each meter at its rate, nothing else of ours.
    pub fn matches(&self, want: &[StormLimit], ports: &BTreeMap<String, ObservedPort>) -> bool {
        if self.flows.len() != want.len() || self.meters.len() != want.len() {
            return false;
        }
        want.iter().enumerate().all(|(i, w)| {
            let id = meter_id(i);
            let of = ports.get(&w.port).and_then(|p| p.iface.ofport);
            of.is_some_and(|of| self.flows.get(&of) == Some(&id))
                && self.meters.get(&id).is_some_and(|m| m.pps == w.pps)
        })
    }
}

fn meter_id(position: usize) -> u32 {
    position as u32 + 1
}

/// ovs-ofctl's address of the bridge: its management socket in ovs-vswitchd's run directory,
/// which is where the OVSDB socket lives.
pub fn target(ovsdb: &Path, bridge: &str) -> String {
    let dir = ovsdb.parent().unwrap_or(Path::new("/run/openvswitch"));
    format!("unix:{}/{bridge}.mgmt", dir.display())
}

/// Whether `ovs-ofctl` can be run at all.
pub fn available() -> bool {
    // Found once, found for good: every reconcile with limits asks, and a process started
    // from the async reconcile blocks its worker. Not found is asked again (it may be
    // installed later).
    static FOUND: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if FOUND.get().is_some() {
        return true;
    }
    let ok = Command::new("ovs-ofctl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = FOUND.set(());
    }
    ok
}

/// How long one ovs-ofctl call may take (`--timeout`).
const OFCTL_TIMEOUT: &str = "--timeout=3";

/// Why storm control could not be read or put in force.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    #[error("cannot run ovs-ofctl (package openvswitch-common): {0}")]
    Run(std::io::Error),
    #[error("ovs-ofctl {verb}: {source}")]
    Io {
        verb: String,
        source: std::io::Error,
    },
    #[error("ovs-ofctl {verb} failed: {stderr}")]
    Failed { verb: String, stderr: String },
    #[error("storm control on {port}: {source}")]
    Port {
        port: String,
        source: Box<StormError>,
    },
}

fn ofctl(args: &[&str], stdin: Option<&str>) -> Result<String, StormError> {
    let mut cmd = Command::new("ovs-ofctl");
    // A stopped or wedged ovs-vswitchd accepts the connection and never answers: bounded, so
    // a reconcile notices it instead of hanging on it.
    cmd.args(["-O", "OpenFlow13", OFCTL_TIMEOUT]).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(StormError::Run)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes())
            .map_err(|source| StormError::Io {
                verb: args[0].to_string(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| StormError::Io {
        verb: args[0].to_string(),
        source,
    })?;
    if !out.status.success() {
        return Err(StormError::Failed {
            verb: args[0].to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cookie_filter() -> String {
    format!("cookie={COOKIE:#x}/{COOKIE_MASK:#x}")
}

/// Read our flows and the bridge's meters. `None` when ovs-vswitchd cannot be asked (no
/// bridge yet, no ovs-ofctl, ovs-vswitchd down).
pub fn observe(target: &str) -> Option<ObservedStorm> {
    let flows = parse_flows(
        &ofctl(
            &["--no-names", "dump-flows", target, &cookie_filter()],
            None,
        )
        .ok()?,
    );
    let mut obs = ObservedStorm {
        flows,
        meters: BTreeMap::new(),
    };
    let config = ofctl(&["dump-meters", target], None).ok()?;
    if config.contains("meter=") {
        let stats = ofctl(&["meter-stats", target], None).ok()?;
        obs.meters = parse_meters(&config, &stats);
    }
    Some(obs)
}

/// Put exactly `want` in force, without a moment in which a port that stays limited is not:
/// its meter is added or changed in place first, then every wanted flow is (re)written — an
/// OpenFlow add of the same match and priority replaces that flow's actions atomically —
/// and only then are flows of ports no longer limited, and meters no longer used, deleted.
/// (Deleting everything and adding it back left every port unlimited for as long as the
/// ovs-ofctl calls took, and each reconcile that found drift did it again.)
pub fn ensure(target: &str, want: &[StormLimit]) -> Result<(), StormError> {
    // The meters' rates only: flows are rewritten whatever they were, and drop counts do
    // not matter here.
    let meters = parse_meters(&ofctl(&["dump-meters", target], None)?, "");
    for (i, w) in want.iter().enumerate() {
        let id = meter_id(i);
        let verb = match meters.get(&id) {
            None => "add-meter",
            Some(m) if m.pps != w.pps => "mod-meter",
            Some(_) => continue,
        };
        let meter = format!(
            "meter={id},pktps,burst,stats,bands=type=drop,rate={},burst_size={}",
            w.pps,
            burst(w.pps)
        );
        ofctl(&[verb, target, &meter], None).map_err(|e| StormError::Port {
            port: w.port.clone(),
            source: Box::new(e),
        })?;
    }
    if !want.is_empty() {
        let flows: String = want
            .iter()
            .enumerate()
            .map(|(i, w)| {
                format!(
                    "{}\n",
                    flow_match(&format!("\"{}\"", w.port), w.vlan, Some(meter_id(i)))
                )
            })
            .collect();
        ofctl(&["add-flows", target, "-"], Some(&flows))?;
    }
    // Flows of ours on ports no longer limited (named as ovs-vswitchd names them, or by
    // number when the port is gone).
    let wanted: BTreeSet<&str> = want.iter().map(|w| w.port.as_str()).collect();
    let listed = ofctl(&["--names", "dump-flows", target, &cookie_filter()], None)?;
    for in_port in in_ports(&listed) {
        if !wanted.contains(in_port.trim_matches('"')) {
            ofctl(
                &[
                    "--strict",
                    "del-flows",
                    target,
                    &flow_match(&in_port, 0, None),
                ],
                None,
            )?;
        }
    }
    for id in meters.keys().filter(|id| **id as usize > want.len()) {
        ofctl(&["del-meter", target, &format!("meter={id}")], None)?;
    }
    Ok(())
}

/// Our flow for a port (`in_port` as ovs-ofctl takes it: a quoted name or a number); with a
/// meter, the flow to add (its cookie carries the VLAN), without, the match to delete.
fn flow_match(in_port: &str, vlan: u16, meter: Option<u32>) -> String {
    let m = format!("priority={PRIORITY},in_port={in_port},dl_dst={GROUP_DST}");
    match meter {
        Some(id) => format!(
            "cookie={:#x},{m},actions=meter:{id},NORMAL",
            COOKIE | u64::from(vlan)
        ),
        None => m,
    }
}

/// The `in_port` of each flow in a `dump-flows` listing, as printed.
fn in_ports(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| field(l, "in_port=").map(str::to_string))
        .collect()
}

/// A tenth of a second's worth of frames may pass at once (at least one).
fn burst(pps: u32) -> u32 {
    (pps / 10).max(1)
}

/// `dump-flows` lines of our cookie: `… priority=100,in_port=3,dl_dst=… actions=meter:2,NORMAL`.
fn parse_flows(text: &str) -> BTreeMap<i64, u32> {
    text.lines()
        .filter_map(|l| {
            let of = field(l, "in_port=")?.parse().ok()?;
            let meter = field(l, "meter:")?.parse().ok()?;
            Some((of, meter))
        })
        .collect()
}

/// The value after `key` up to the next `,` or space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    Some(rest.split([',', ' ']).next().unwrap_or(rest))
}

/// `dump-meters` (`meter=1 pktps stats bands=` then `type=drop rate=500`) and `meter-stats`
/// (`meter:1 flow_count:1 …` then `0: packet_count:7 byte_count:…`).
fn parse_meters(config: &str, stats: &str) -> BTreeMap<u32, Meter> {
    let mut meters = BTreeMap::new();
    let mut current = None;
    for l in config.lines() {
        if let Some(id) = field(l, "meter=").and_then(|v| v.parse::<u32>().ok()) {
            current = Some(id);
        }
        if let (Some(id), Some(rate)) = (current, field(l, "rate=")) {
            if let Ok(pps) = rate.parse() {
                meters.insert(id, Meter { pps, dropped: 0 });
            }
        }
    }
    let mut current = None;
    for l in stats.lines() {
        if let Some(id) = field(l, "meter:").and_then(|v| v.parse::<u32>().ok()) {
            current = Some(id);
        }
        if let (Some(id), Some(n)) = (current, field(l, "packet_count:")) {
            if l.trim_start().starts_with("0:") {
                if let (Some(m), Ok(n)) = (meters.get_mut(&id), n.parse()) {
                    m.dropped = n;
                }
            }
        }
    }
    meters
}

/// Replace storm control in ovs-vswitchd with exactly these limits (none: remove ours).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StormChange {
    pub bridge: String,
    pub limits: Vec<StormLimit>,
}

impl fmt::Display for StormChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StormChange { bridge, limits } = self;
        if limits.is_empty() {
            return write!(f, "- storm control on {bridge}");
        }
        write!(
            f,
            "~ storm control on {bridge}: {}",
            limits
                .iter()
                .map(|l| format!("{} {} pps", l.port, l.pps))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: &str = "OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x4c32530000000065, duration=0.008s, table=0, n_packets=0, n_bytes=0, priority=100,in_port=1,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=meter:1,NORMAL
 cookie=0x4c32530000000066, duration=0.008s, table=0, n_packets=9, n_bytes=0, priority=100,in_port=4,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=meter:2,NORMAL
";
    const CONFIG: &str = "OFPST_METER_CONFIG reply (OF1.3) (xid=0x2):
meter=1 pktps burst stats bands=
type=drop rate=500 burst_size=50
meter=2 pktps burst stats bands=
type=drop rate=2000 burst_size=200
";
    const STATS: &str = "OFPST_METER reply (OF1.3) (xid=0x2):
meter:1 flow_count:1 packet_in_count:0 byte_in_count:0 duration:0.044s bands:
0: packet_count:0 byte_count:0
meter:2 flow_count:1 packet_in_count:90 byte_in_count:0 duration:0.044s bands:
0: packet_count:77 byte_count:4620
";

    fn port(name: &str, ofport: i64) -> ObservedPort {
        ObservedPort {
            uuid: String::new(),
            name: name.into(),
            tag: Some(101),
            role: None,
            orig_mtu: None,
            bound_ifindex: None,
            iface: crate::ovs::switch::ObservedIface {
                ofport: Some(ofport),
                error: None,
            },
        }
    }

    fn observed() -> ObservedStorm {
        ObservedStorm {
            flows: parse_flows(FLOWS),
            meters: parse_meters(CONFIG, STATS),
        }
    }

    #[test]
    fn ovs_ofctl_listings_are_read() {
        let o = observed();
        assert_eq!(o.flows, BTreeMap::from([(1, 1), (4, 2)]));
        assert_eq!(
            o.meters[&1],
            Meter {
                pps: 500,
                dropped: 0
            }
        );
        assert_eq!(
            o.meters[&2],
            Meter {
                pps: 2000,
                dropped: 77
            }
        );
        assert_eq!(o.limited(&port("ens5", 4)), 77);
        assert_eq!(o.limited(&port("ens9", 9)), 0);
    }

    #[test]
    fn flows_are_written_and_deleted_by_the_same_match() {
        assert_eq!(
            flow_match("\"acc101\"", 101, Some(2)),
            "cookie=0x4c32530000000065,priority=100,in_port=\"acc101\",dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=meter:2,NORMAL"
        );
        assert_eq!(
            flow_match("7", 0, None),
            "priority=100,in_port=7,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00"
        );
        let named = FLOWS.replace("in_port=1,", "in_port=acc101,");
        assert_eq!(in_ports(&named), ["acc101", "4"]);
    }

    #[test]
    fn a_limit_is_in_force_only_as_asked() {
        let ports: BTreeMap<String, ObservedPort> = [port("ens4", 1), port("ens5", 4)]
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let want = |a: u32, b: u32| {
            vec![
                StormLimit {
                    port: "ens4".into(),
                    vlan: 101,
                    pps: a,
                },
                StormLimit {
                    port: "ens5".into(),
                    vlan: 102,
                    pps: b,
                },
            ]
        };
        let o = observed();
        assert!(o.matches(&want(500, 2000), &ports));
        assert!(!o.matches(&want(500, 1000), &ports), "another rate");
        assert!(!o.matches(&want(500, 2000)[..1], &ports), "a flow too many");
        let mut moved = ports.clone();
        moved.get_mut("ens5").unwrap().iface.ofport = Some(7);
        assert!(
            !o.matches(&want(500, 2000), &moved),
            "port re-added under another number"
        );
        assert!(ObservedStorm::default().matches(&[], &ports));
    }
}
