//! The two large dumps of an observation — every link, every bridge FDB entry — read
//! straight from the socket buffer, keeping only what observation needs.
//!
//! At the whole VLAN space (4094 VXLAN devices × 16 flood entries) the general-purpose
//! parser builds tens of megabytes of attribute vectors (every link's IPv6 settings
//! included) that queue up faster than they are read, and a no-op reconcile spent most of
//! its time allocating them. Here each message is looked at in place: links become
//! [`ObservedLink`]s, FDB entries only count when they are flood (all-zero MAC) entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

use super::{LinkStats, ObservedLink, VxlanAttrs};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_DUMP_INTR: u16 = 0x10;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const AF_BRIDGE: u8 = 7;
/// `ndm_flags`: an entry put there by a control plane (ours: EVPN's remote MACs).
const NTF_EXT_LEARNED: u8 = 0x10;
const IFF_UP: u32 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_STATS64: u16 = 23;
const IFLA_EXT_MASK: u16 = 29;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LINK: u16 = 3;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_LIMIT: u16 = 9;
const IFLA_VXLAN_PORT: u16 = 15;
const IFLA_VXLAN_LOCAL6: u16 = 17;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_CACHEINFO: u16 = 3;
/// `clock_t` ticks per second in netlink's cache info (USER_HZ).
const USER_HZ: u32 = 100;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes (type, payload) in `b`.
fn attrs(b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, at)?);
        let ty = u16_at(b, at + 2)? & 0x3fff;
        if len < 4 || at + len > b.len() {
            return None;
        }
        let payload = &b[at + 4..at + len];
        at += (len + 3) & !3;
        Some((ty, payload))
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

/// One `RTM_NEWLINK` payload (`struct ifinfomsg` and its attributes).
fn link(p: &[u8]) -> Option<ObservedLink> {
    let index = u32_at(p, 4)?;
    let flags = u32_at(p, 8)?;
    let mut l = ObservedLink {
        index,
        name: String::new(),
        mtu: 0,
        up: flags & IFF_UP != 0,
        alias: None,
        kind: None,
        vxlan: None,
        flood: BTreeSet::new(),
        learned_macs: 0,
        placed: Default::default(),
        stats: None,
    };
    let mut data = None;
    for (ty, v) in attrs(p.get(16..)?) {
        match ty {
            IFLA_IFNAME => l.name = text(v),
            IFLA_MTU => l.mtu = u32_at(v, 0)?,
            IFLA_IFALIAS => l.alias = Some(text(v)).filter(|a| !a.is_empty()),
            IFLA_STATS64 => l.stats = LinkStats::from_stats64(v),
            IFLA_LINKINFO => {
                for (ty, v) in attrs(v) {
                    match ty {
                        IFLA_INFO_KIND => l.kind = Some(text(v)),
                        IFLA_INFO_DATA => data = Some(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if l.kind.as_deref() == Some("vxlan") {
        let mut x = VxlanAttrs {
            vni: None,
            local: None,
            port: None,
            underlay_index: None,
            learning: false,
            mac_limit: None,
        };
        for (ty, v) in data.into_iter().flat_map(attrs) {
            match ty {
                IFLA_VXLAN_ID => x.vni = u32_at(v, 0),
                IFLA_VXLAN_LINK => x.underlay_index = u32_at(v, 0),
                IFLA_VXLAN_LOCAL | IFLA_VXLAN_LOCAL6 => x.local = ip(v),
                IFLA_VXLAN_LEARNING => x.learning = v.first().is_some_and(|b| *b != 0),
                IFLA_VXLAN_LIMIT => x.mac_limit = u32_at(v, 0).and_then(super::mac_limit_of),
                IFLA_VXLAN_PORT => x.port = v.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])),
                _ => {}
            }
        }
        l.vxlan = Some(x);
    }
    (!l.name.is_empty()).then_some(l)
}

/// One entry of a device's FDB, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FdbEntry {
    /// An all-zero MAC entry's destination (one per peer: head-end replication).
    Flood(IpAddr),
    /// A MAC EVPN placed (externally learned), with its VTEP.
    Placed([u8; 6], IpAddr),
    /// Any other MAC (learned, or added by hand).
    Mac,
}

/// Whether an `RTM_NEWNEIGH` payload's `ndm_flags` mark the entry as externally learned.
fn ext_learned(p: &[u8]) -> bool {
    p.get(10).is_some_and(|f| f & NTF_EXT_LEARNED != 0)
}

/// One `RTM_NEWNEIGH` payload of the bridge family: (ifindex, kind) of the entry.
fn fdb_entry(p: &[u8]) -> Option<(u32, FdbEntry)> {
    let ifindex = u32_at(p, 4)?;
    let ext_learned = ext_learned(p);
    let (mut mac, mut dst) = (None, None);
    for (ty, v) in attrs(p.get(12..)?) {
        match ty {
            NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
            NDA_DST => dst = ip(v),
            _ => {}
        }
    }
    match mac? {
        [0, 0, 0, 0, 0, 0] => Some((ifindex, FdbEntry::Flood(dst?))),
        m => match dst {
            Some(d) if ext_learned => Some((ifindex, FdbEntry::Placed(m, d))),
            _ => Some((ifindex, FdbEntry::Mac)),
        },
    }
}

/// What one device's FDB holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFdb {
    /// Destinations of the all-zero entry.
    pub flood: BTreeSet<IpAddr>,
    /// Entries for other MACs (those placed included: the kernel's limit counts them).
    pub learned: usize,
    /// MACs EVPN placed, with their VTEP.
    pub placed: BTreeMap<String, IpAddr>,
}

/// A MAC a VXLAN device learned: where frames from it came from, and how long ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: IpAddr,
    pub age_secs: u64,
    /// Placed by EVPN (externally learned), not learned from traffic.
    pub placed: bool,
}

/// One `RTM_NEWNEIGH` payload of the bridge family: a learned (not all-zero) entry with a
/// remote destination.
fn learned_entry(p: &[u8]) -> Option<Learned> {
    let ifindex = u32_at(p, 4)?;
    let (mut mac, mut dst, mut age) = (None, None, 0);
    for (ty, v) in attrs(p.get(12..)?) {
        match ty {
            NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
            NDA_DST => dst = ip(v),
            // struct nda_cacheinfo: confirmed, used, updated, refcnt.
            NDA_CACHEINFO => age = u64::from(u32_at(v, 8).unwrap_or(0) / USER_HZ),
            _ => {}
        }
    }
    let mac = mac.filter(|m| m.iter().any(|b| *b != 0))?;
    Some(Learned {
        ifindex,
        mac,
        dst: dst?,
        age_secs: age,
        placed: ext_learned(p),
    })
}

/// The MACs VXLAN devices learned (bridge FDB entries with a remote destination).
pub async fn learned() -> std::io::Result<Vec<Learned>> {
    let mut body = vec![0u8; 12];
    body[0] = AF_BRIDGE;
    let mut out = vec![];
    dump(&request(RTM_GETNEIGH, &body), RTM_NEWNEIGH, |p| {
        out.extend(learned_entry(p))
    })
    .await?;
    Ok(out)
}

/// Send one dump request and hand each message of type `kind` to `each`. A dump the kernel
/// marks as interrupted (the table changed under it) is read again, once.
async fn dump(request: &[u8], kind: u16, mut each: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
    sock.socket_mut().bind_auto()?;
    sock.socket_mut().connect(&SocketAddr::new(0, 0))?;
    sock.socket_mut().set_rx_buf_sz(1 << 20)?;
    sock.send(request).await?;
    loop {
        let (buf, _) = sock.recv_from_full().await?;
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32_at(&buf, at).unwrap_or(0) as usize;
            let ty = u16_at(&buf, at + 4).unwrap_or(0);
            let flags = u16_at(&buf, at + 6).unwrap_or(0);
            if len < 16 || at + len > buf.len() {
                break;
            }
            if flags & NLM_F_DUMP_INTR != 0 {
                return Err(std::io::Error::other("dump interrupted"));
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = u32_at(&buf, at + 16).unwrap_or(0) as i32;
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                t if t == kind => each(&buf[at + 16..at + len]),
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

fn request(ty: u16, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

/// Every link of this network namespace, by name (statistics not asked for).
pub async fn links() -> std::io::Result<BTreeMap<String, ObservedLink>> {
    // struct ifinfomsg, then IFLA_EXT_MASK.
    let mut body = vec![0u8; 16];
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&IFLA_EXT_MASK.to_ne_bytes());
    body.extend_from_slice(&RTEXT_FILTER_SKIP_STATS.to_ne_bytes());
    let req = request(RTM_GETLINK, &body);
    for attempt in 0..2 {
        let mut out = BTreeMap::new();
        match dump(&req, RTM_NEWLINK, |p| {
            if let Some(l) = link(p) {
                out.insert(l.name.clone(), l);
            }
        })
        .await
        {
            Ok(()) => return Ok(out),
            Err(e) if attempt == 0 && e.to_string().contains("interrupted") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("link dump interrupted twice"))
}

/// The bridge FDB by ifindex: flood (all-zero MAC) destinations and how many other MACs.
pub async fn fdb() -> std::io::Result<BTreeMap<u32, DeviceFdb>> {
    // struct ndmsg of the bridge family.
    let mut body = vec![0u8; 12];
    body[0] = AF_BRIDGE;
    let req = request(RTM_GETNEIGH, &body);
    for attempt in 0..2 {
        let mut out: BTreeMap<u32, DeviceFdb> = BTreeMap::new();
        match dump(&req, RTM_NEWNEIGH, |p| match fdb_entry(p) {
            Some((i, FdbEntry::Flood(d))) => {
                out.entry(i).or_default().flood.insert(d);
            }
            Some((i, FdbEntry::Mac)) => out.entry(i).or_default().learned += 1,
            Some((i, FdbEntry::Placed(m, d))) => {
                let f = out.entry(i).or_default();
                f.learned += 1;
                f.placed.insert(crate::base::mac::text(&m), d);
            }
            None => {}
        })
        .await
        {
            Ok(()) => return Ok(out),
            Err(e) if attempt == 0 && e.to_string().contains("interrupted") => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("FDB dump interrupted twice"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = vec![];
        a.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn a_vxlan_link_message_is_read() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&42u32.to_ne_bytes());
        p[8..12].copy_from_slice(&(IFF_UP | 0x40).to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"l2s-vx101\0"));
        p.extend(attr(IFLA_MTU, &1450u32.to_ne_bytes()));
        p.extend(attr(IFLA_IFALIAS, b"l2s-vnf bridge=l2s0 vlan=101"));
        let mut data = attr(IFLA_VXLAN_ID, &101u32.to_ne_bytes());
        data.extend(attr(IFLA_VXLAN_LINK, &2u32.to_ne_bytes()));
        data.extend(attr(IFLA_VXLAN_LOCAL, &[192, 0, 2, 1]));
        data.extend(attr(IFLA_VXLAN_LEARNING, &[1]));
        data.extend(attr(IFLA_VXLAN_PORT, &4789u16.to_be_bytes()));
        data.extend(attr(IFLA_VXLAN_LIMIT, &4097u32.to_ne_bytes()));
        let mut info = attr(IFLA_INFO_KIND, b"vxlan\0");
        info.extend(attr(IFLA_INFO_DATA | 0x8000, &data));
        p.extend(attr(IFLA_LINKINFO | 0x8000, &info));
        let l = link(&p).unwrap();
        assert_eq!(
            (l.index, l.name.as_str(), l.mtu, l.up),
            (42, "l2s-vx101", 1450, true)
        );
        assert_eq!(l.alias.as_deref(), Some("l2s-vnf bridge=l2s0 vlan=101"));
        let x = l.vxlan.unwrap();
        assert_eq!(
            (x.vni, x.underlay_index, x.port, x.learning),
            (Some(101), Some(2), Some(4789), true)
        );
        assert_eq!(x.local, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            x.mac_limit,
            Some(4096),
            "the flood entry counts in the kernel's limit"
        );
    }

    #[test]
    fn all_zero_entries_are_flood_entries_and_others_macs() {
        let entry = |mac: [u8; 6]| {
            let mut p = vec![0u8; 12];
            p[0] = AF_BRIDGE;
            p[4..8].copy_from_slice(&7u32.to_ne_bytes());
            p.extend(attr(NDA_LLADDR, &mac));
            p.extend(attr(NDA_DST, &[198, 51, 100, 2]));
            p
        };
        assert_eq!(
            fdb_entry(&entry([0; 6])),
            Some((7, FdbEntry::Flood("198.51.100.2".parse().unwrap())))
        );
        assert_eq!(
            fdb_entry(&entry([2, 0, 0, 0, 0, 1])),
            Some((7, FdbEntry::Mac))
        );
        // Marked as externally learned: a remote MAC EVPN placed, with its VTEP.
        let mut placed = entry([2, 0, 0, 0, 0, 1]);
        placed[10] = NTF_EXT_LEARNED;
        assert_eq!(
            fdb_entry(&placed),
            Some((
                7,
                FdbEntry::Placed([2, 0, 0, 0, 0, 1], "198.51.100.2".parse().unwrap())
            ))
        );
        assert!(learned_entry(&placed).unwrap().placed);
        assert!(!learned_entry(&entry([2, 0, 0, 0, 0, 1])).unwrap().placed);
    }

    #[test]
    fn a_learned_entry_has_its_destination_and_age() {
        let mut p = vec![0u8; 12];
        p[0] = AF_BRIDGE;
        p[4..8].copy_from_slice(&9u32.to_ne_bytes());
        p.extend(attr(NDA_LLADDR, &[2, 0, 0, 0, 0, 3]));
        p.extend(attr(NDA_DST, &[192, 0, 2, 3]));
        let mut ci = vec![0u8; 16];
        ci[8..12].copy_from_slice(&450u32.to_ne_bytes());
        p.extend(attr(NDA_CACHEINFO, &ci));
        let l = learned_entry(&p).unwrap();
        assert_eq!((l.ifindex, l.mac, l.age_secs), (9, [2, 0, 0, 0, 0, 3], 4));
        assert_eq!(l.dst, "192.0.2.3".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn this_namespace_can_be_dumped() {
        let l = links().await.unwrap();
        assert!(l.contains_key("lo"), "{:?}", l.keys().collect::<Vec<_>>());
        assert!(fdb().await.is_ok());
    }

    /// Link and neighbour messages, random or a real one mutated: parsed or skipped, no panic.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn random_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = link(&bytes);
                let _ = fdb_entry(&bytes);
                let _ = learned_entry(&bytes);
            }

            #[test]
            fn mutated_link_messages_never_panic(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                cut in any::<usize>(),
            ) {
                let mut p = vec![0u8; 16];
                p.extend(attr(IFLA_IFNAME, b"l2s-vx101\0"));
                p.extend(attr(IFLA_MTU, &1450u32.to_ne_bytes()));
                let mut data = attr(IFLA_VXLAN_ID, &101u32.to_ne_bytes());
                data.extend(attr(IFLA_VXLAN_LOCAL, &[192, 0, 2, 1]));
                let mut info = attr(IFLA_INFO_KIND, b"vxlan\0");
                info.extend(attr(IFLA_INFO_DATA | 0x8000, &data));
                p.extend(attr(IFLA_LINKINFO | 0x8000, &info));
                for (at, b) in flips {
                    let n = p.len();
                    p[at % n] = b;
                }
                let keep = cut % (p.len() + 1);
                let _ = link(&p[..keep]);
                let _ = learned_entry(&p[..keep]);
            }
        }
    }
}
