//! The kernel's IPsec policies (XFRM), read to tell whether VXLAN to a peer leaves through
//! its SA or would be diverted around it.
//!
//! charon installs l2s-vnf's policies with a fixed priority ([`crate::base::names::POLICY_PRIORITY`])
//! that beats the automatic ones of pass ("bypass") policies — such as those of charon's
//! stock `bypass-lan` plugin, which exempts the underlay's own subnet from IPsec. A policy
//! that still wins over ours (a pass or drop policy with an even higher priority, or another
//! IPsec policy) would send VXLAN around the SA, where the guard drops it: the VLAN is dead
//! although the SA is up. [`bypass`] says so, naming the policy.
//!
//! On the kernel path the guard has a second layer here, which an nftables flush cannot
//! remove: [`Block`] policies that drop VXLAN and the probes, in and out, from and to any
//! address — far behind the per-peer policies, so they decide only where no SA of ours does
//! (charon stopped, a connection unloaded, a forged sender).

use std::net::IpAddr;

use rtnetlink::sys::{Socket, SocketAddr};

use crate::base::names::BLOCK_PRIORITY;

const NETLINK_XFRM: isize = 6;
const XFRM_MSG_NEWPOLICY: u16 = 0x13;
const XFRM_MSG_GETPOLICY: u16 = 0x15;
const XFRM_MSG_DELPOLICY: u16 = 0x14;
const XFRM_MSG_UPDPOLICY: u16 = 0x19;
const NLM_F_ACK: u16 = 4;
const XFRM_POLICY_IN: u8 = 0;
const XFRM_POLICY_BLOCK: u8 = 1;
/// No limit, in `struct xfrm_lifetime_cfg`.
const XFRM_INF: u64 = u64::MAX;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const XFRM_POLICY_OUT: u8 = 1;
const XFRM_POLICY_ALLOW: u8 = 0;
const XFRMA_TMPL: u16 = 5;
const XFRMA_POLICY_TYPE: u16 = 16;
const XFRMA_MARK: u16 = 21;
const XFRMA_IF_ID: u16 = 31;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_UDP: u8 = 17;
/// `struct xfrm_userpolicy_info`, padded to 8 bytes.
const POLICY_INFO_LEN: usize = 168;
/// `struct xfrm_user_tmpl`.
const TMPL_LEN: usize = 64;

/// One XFRM policy, as much of it as deciding a match takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub dir: u8,
    pub action: u8,
    pub priority: u32,
    pub src: IpAddr,
    pub src_len: u8,
    pub dst: IpAddr,
    pub dst_len: u8,
    /// 0: any protocol.
    pub proto: u8,
    pub dport: u16,
    pub dport_mask: u16,
    pub ifindex: i32,
    /// Whether it applies an ESP transform (otherwise it passes or drops).
    pub esp: bool,
    /// Policies with a mark, an xfrm interface id or of the sub type never match plain VXLAN.
    pub special: bool,
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} policy {}/{} -> {}/{}{} priority {}",
            if self.esp {
                "an IPsec"
            } else if self.action == XFRM_POLICY_ALLOW {
                "a pass"
            } else {
                "a drop"
            },
            self.src,
            self.src_len,
            self.dst,
            self.dst_len,
            match self.proto {
                0 => String::new(),
                p => format!(" proto {p}"),
            },
            self.priority
        )
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn addr(b: &[u8], at: usize, family: u16) -> Option<IpAddr> {
    let raw = b.get(at..at + 16)?;
    match family {
        2 => Some(IpAddr::from(<[u8; 4]>::try_from(&raw[..4]).ok()?)),
        10 => Some(IpAddr::from(<[u8; 16]>::try_from(raw).ok()?)),
        _ => None,
    }
}

/// Parse the payload of one `XFRM_MSG_NEWPOLICY`.
fn parse(p: &[u8]) -> Option<Policy> {
    // struct xfrm_selector: daddr 0, saddr 16, dport 32, dport_mask 34, sport 36,
    // sport_mask 38, family 40, prefixlen_d 42, prefixlen_s 43, proto 44, ifindex 48.
    let family = u16_at(p, 40)?;
    let mut pol = Policy {
        dst: addr(p, 0, family)?,
        src: addr(p, 16, family)?,
        dport: be16_at(p, 32)?,
        dport_mask: be16_at(p, 34)?,
        dst_len: *p.get(42)?,
        src_len: *p.get(43)?,
        proto: *p.get(44)?,
        ifindex: i32::from_ne_bytes(p.get(48..52)?.try_into().ok()?),
        // After the selector (56) and two lifetime structs (64 + 32): priority, index, dir,
        // action.
        priority: u32_at(p, 152)?,
        dir: *p.get(160)?,
        action: *p.get(161)?,
        esp: false,
        special: false,
    };
    let mut at = POLICY_INFO_LEN;
    while at + 4 <= p.len() {
        let len = usize::from(u16_at(p, at)?);
        let ty = u16_at(p, at + 2)? & 0x3fff;
        if len < 4 || at + len > p.len() {
            break;
        }
        let data = &p[at + 4..at + len];
        match ty {
            XFRMA_TMPL => {
                // struct xfrm_user_tmpl: id.proto at 20.
                pol.esp |= data
                    .chunks(TMPL_LEN)
                    .any(|t| t.get(20) == Some(&IPPROTO_ESP));
            }
            XFRMA_MARK => pol.special |= u32_at(data, 0)? != 0,
            XFRMA_IF_ID => pol.special |= u32_at(data, 0)? != 0,
            XFRMA_POLICY_TYPE => pol.special |= data.first() != Some(&0),
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Some(pol)
}

/// Open an XFRM netlink socket and send one message on it (`NLM_F_REQUEST` | `flags`).
fn send(ty: u16, flags: u16, payload: &[u8]) -> std::io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_XFRM)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let len = 16 + payload.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&ty.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(payload);
    sock.send(&msg, 0)?;
    Ok(sock)
}

/// Every XFRM policy of this network namespace.
pub fn dump() -> std::io::Result<Vec<Policy>> {
    // A zeroed struct xfrm_userpolicy_id (64 bytes) asks for every policy.
    let sock = send(XFRM_MSG_GETPOLICY, NLM_F_DUMP, &[0u8; 64])?;
    let mut out = vec![];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut at = 0;
        while at + 16 <= n {
            let mlen = u32_at(&buf, at).unwrap_or(0) as usize;
            let ty = u16_at(&buf, at + 4).unwrap_or(0);
            if mlen < 16 || at + mlen > n {
                return Ok(out);
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    // A short error message reads as success, never as an index out of bounds.
                    let code = buf
                        .get(at + 16..at + 20)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, i32::from_ne_bytes);
                    if code != 0 {
                        return Err(std::io::Error::from_raw_os_error(-code));
                    }
                }
                XFRM_MSG_NEWPOLICY => out.extend(parse(&buf[at + 16..at + mlen])),
                _ => {}
            }
            at += (mlen + 3) & !3;
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

/// One block policy of the guard's second layer: UDP to `port`, from and to any address of
/// a family, in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    pub v6: bool,
    pub inbound: bool,
    pub port: u16,
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {} udp dport {} ({})",
            if self.inbound { "in" } else { "out" },
            self.port,
            if self.v6 { "IPv6" } else { "IPv4" }
        )
    }
}

/// The block policies for these ports: both families, both directions.
pub fn blocks(ports: &[u16]) -> Vec<Block> {
    let mut out = vec![];
    for &port in ports {
        for v6 in [false, true] {
            for inbound in [false, true] {
                out.push(Block { v6, inbound, port });
            }
        }
    }
    out.sort();
    out
}

/// The block policies of ours the kernel holds (known by their priority and shape).
pub fn held_blocks(policies: &[Policy]) -> std::collections::BTreeSet<Block> {
    policies
        .iter()
        .filter(|p| {
            p.priority == BLOCK_PRIORITY
                && p.action == XFRM_POLICY_BLOCK
                && p.proto == IPPROTO_UDP
                && p.src_len == 0
                && p.dst_len == 0
                && p.dport_mask == 0xffff
                && p.ifindex == 0
                && !p.esp
                && !p.special
                && matches!(p.dir, XFRM_POLICY_IN | XFRM_POLICY_OUT)
        })
        .map(|p| Block {
            v6: p.src.is_ipv6(),
            inbound: p.dir == XFRM_POLICY_IN,
            port: p.dport,
        })
        .collect()
}

/// `struct xfrm_selector` of a block: any address of the family, UDP to the port.
fn selector(b: &Block) -> [u8; 56] {
    let mut s = [0u8; 56];
    s[32..34].copy_from_slice(&b.port.to_be_bytes());
    s[34..36].copy_from_slice(&0xffffu16.to_be_bytes());
    s[40..42].copy_from_slice(&(if b.v6 { 10u16 } else { 2u16 }).to_ne_bytes());
    s[44] = IPPROTO_UDP;
    s
}

fn dir(b: &Block) -> u8 {
    if b.inbound {
        XFRM_POLICY_IN
    } else {
        XFRM_POLICY_OUT
    }
}

/// `struct xfrm_userpolicy_info` of a block policy.
fn policy_info(b: &Block) -> Vec<u8> {
    let mut p = Vec::with_capacity(POLICY_INFO_LEN);
    p.extend_from_slice(&selector(b));
    // struct xfrm_lifetime_cfg: four limits (none), four expiry times (never).
    for _ in 0..4 {
        p.extend_from_slice(&XFRM_INF.to_ne_bytes());
    }
    p.resize(56 + 64 + 32, 0); // … and struct xfrm_lifetime_cur, zero.
    p.extend_from_slice(&BLOCK_PRIORITY.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes()); // index: the kernel picks one
    p.push(dir(b));
    p.push(XFRM_POLICY_BLOCK);
    p.resize(POLICY_INFO_LEN, 0);
    p
}

/// `struct xfrm_userpolicy_id` of a block policy (to delete it).
fn policy_id(b: &Block) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend_from_slice(&selector(b));
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.push(dir(b));
    p.resize(64, 0);
    p
}

/// A block policy as a dump would list it (for tests elsewhere).
#[cfg(test)]
pub fn listed(b: &Block) -> Policy {
    parse(&policy_info(b)).expect("a block policy parses")
}

/// Send one request and read its acknowledgement.
fn request(ty: u16, payload: &[u8]) -> std::io::Result<()> {
    let sock = send(ty, NLM_F_ACK, payload)?;
    let mut buf = vec![0u8; 4096];
    let n = sock.recv(&mut &mut buf[..], 0)?;
    match (u16_at(&buf[..n], 4), buf.get(16..20)) {
        (Some(NLMSG_ERROR), Some(code)) => {
            let code = i32::from_ne_bytes(code.try_into().unwrap_or_default());
            if code == 0 {
                Ok(())
            } else {
                Err(std::io::Error::from_raw_os_error(-code))
            }
        }
        _ => Err(std::io::Error::other("no acknowledgement from the kernel")),
    }
}

/// Install (or update in place) each block policy.
pub fn ensure_blocks(want: &[Block]) -> std::io::Result<()> {
    for b in want {
        request(XFRM_MSG_UPDPOLICY, &policy_info(b))
            .map_err(|e| std::io::Error::new(e.kind(), format!("xfrm {b}: {e}")))?;
    }
    Ok(())
}

/// Delete these block policies (one already gone is fine).
pub fn remove_blocks(list: &[Block]) -> std::io::Result<()> {
    for b in list {
        match request(XFRM_MSG_DELPOLICY, &policy_id(b)) {
            Err(e) if e.raw_os_error() != Some(2) => {
                return Err(std::io::Error::new(e.kind(), format!("xfrm {b}: {e}")))
            }
            _ => {}
        }
    }
    Ok(())
}

fn prefix_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len.min(32)))
            };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len.min(128)))
            };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Whether an outbound policy applies to VXLAN (UDP to `port`) from `local` to `remote`
/// leaving through `underlay` (an ifindex).
/// `underlay` is the device VXLAN leaves by, `None` when the VTEP is not bound to one (the
/// route decides, so a policy on any device may apply).
fn covers(p: &Policy, local: IpAddr, remote: IpAddr, port: u16, underlay: Option<u32>) -> bool {
    p.dir == XFRM_POLICY_OUT
        && !p.special
        && (p.ifindex == 0 || underlay.is_none_or(|u| u32::try_from(p.ifindex).ok() == Some(u)))
        && matches!(p.proto, 0 | IPPROTO_UDP)
        && port & p.dport_mask == p.dport & p.dport_mask
        && prefix_contains(p.src, p.src_len, local)
        && prefix_contains(p.dst, p.dst_len, remote)
}

/// Whether this is l2s-vnf's own policy towards `remote` (ESP, exactly the two VTEPs, our
/// priority).
fn ours(p: &Policy, local: IpAddr, remote: IpAddr, priority: u32) -> bool {
    let host = if local.is_ipv4() { 32 } else { 128 };
    p.esp
        && p.priority == priority
        && p.src == local
        && p.dst == remote
        && p.src_len == host
        && p.dst_len == host
}

/// A policy that wins (or ties) over l2s-vnf's for VXLAN to `remote`, if any: the kernel
/// takes the lowest priority value, so any other matching policy at or below `priority`
/// decides where VXLAN goes instead of our SA.
pub fn bypass(
    policies: &[Policy],
    local: IpAddr,
    remote: IpAddr,
    port: u16,
    underlay: Option<u32>,
    priority: u32,
) -> Option<&Policy> {
    policies
        .iter()
        .filter(|p| covers(p, local, remote, port, underlay))
        .filter(|p| !ours(p, local, remote, priority) && p.priority <= priority)
        .min_by_key(|p| p.priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_policy_reads_back_as_ours() {
        for b in blocks(&[4789, 4790]) {
            let p = parse(&policy_info(&b)).unwrap();
            assert_eq!(
                (p.priority, p.action, p.proto, p.dport, p.dport_mask),
                (
                    BLOCK_PRIORITY,
                    XFRM_POLICY_BLOCK,
                    IPPROTO_UDP,
                    b.port,
                    0xffff
                )
            );
            assert_eq!(held_blocks(&[p]).into_iter().collect::<Vec<_>>(), [b]);
        }
        assert_eq!(blocks(&[4789, 4790]).len(), 8);
        // Another priority is not ours.
        let mut p = parse(&policy_info(&blocks(&[4789])[0])).unwrap();
        p.priority = 1000;
        assert!(held_blocks(&[p]).is_empty());
    }

    /// In a network namespace of its own (a thread's, root only): the blocks are installed,
    /// read back, stop a datagram to the VXLAN port and no other, and go again.
    #[test]
    fn block_policies_stop_vxlan_in_a_namespace_of_their_own() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) on this thread only; it touches no memory of ours.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) needs root: {}",
                std::io::Error::last_os_error()
            );
            // A device to send through (loopback skips xfrm: `disable_xfrm`). Processes
            // started from this thread live in its namespace.
            for args in [
                &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
                &["addr", "add", "192.0.2.1/24", "dev", "v0"],
                &["link", "set", "v0", "up"],
                &["link", "set", "v1", "up"],
            ] {
                let ok = std::process::Command::new("ip").args(args).status();
                assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
            }
            let want = blocks(&[4789, 4790]);
            ensure_blocks(&want).unwrap();
            ensure_blocks(&want).unwrap(); // updating in place is idempotent
            let held = held_blocks(&dump().unwrap());
            assert_eq!(held.into_iter().collect::<Vec<_>>(), want);
            let sock = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
            let sent = |port: u16| sock.send_to(b"x", ("192.0.2.2", port));
            let e = sent(4789).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            assert!(sent(4790).is_err(), "the probe port");
            sent(4791).unwrap();
            remove_blocks(&want).unwrap();
            remove_blocks(&want).unwrap(); // already gone is fine
            assert!(held_blocks(&dump().unwrap()).is_empty());
            sent(4789).unwrap();
        })
        .join()
        .unwrap();
    }

    fn policy(src: &str, src_len: u8, dst: &str, dst_len: u8, prio: u32, esp: bool) -> Policy {
        Policy {
            dir: XFRM_POLICY_OUT,
            action: XFRM_POLICY_ALLOW,
            priority: prio,
            src: src.parse().unwrap(),
            src_len,
            dst: dst.parse().unwrap(),
            dst_len,
            proto: if esp { IPPROTO_UDP } else { 0 },
            dport: 0,
            dport_mask: 0,
            ifindex: 0,
            esp,
            special: false,
        }
    }

    #[test]
    fn a_bypass_that_loses_to_our_priority_is_no_problem() {
        let l: IpAddr = "198.51.100.1".parse().unwrap();
        let r: IpAddr = "198.51.100.2".parse().unwrap();
        let ours = policy("198.51.100.1", 32, "198.51.100.2", 32, 1000, true);
        // charon's bypass-lan: the subnet, automatic pass priority (~175k).
        let lan = policy("198.51.100.0", 24, "198.51.100.0", 24, 175_423, false);
        assert_eq!(
            bypass(&[ours.clone(), lan], l, r, 4789, Some(2), 1000),
            None
        );
        // A pass policy someone installed above ours diverts VXLAN.
        let high = policy("198.51.100.0", 24, "198.51.100.0", 24, 100, false);
        let both = [ours.clone(), high.clone()];
        assert_eq!(bypass(&both, l, r, 4789, Some(2), 1000), Some(&high));
        assert_eq!(
            high.to_string(),
            "a pass policy 198.51.100.0/24 -> 198.51.100.0/24 priority 100"
        );
        // One for another subnet, or with a mark, is irrelevant.
        let other = policy("203.0.113.0", 24, "203.0.113.0", 24, 1, false);
        let mut marked = high.clone();
        marked.special = true;
        assert_eq!(
            bypass(&[ours, other, marked], l, r, 4789, Some(2), 1000),
            None
        );
    }

    #[test]
    fn port_and_protocol_restrictions_count() {
        let l: IpAddr = "192.0.2.1".parse().unwrap();
        let r: IpAddr = "192.0.2.2".parse().unwrap();
        let mut ike_only = policy("192.0.2.1", 32, "192.0.2.2", 32, 10, false);
        ike_only.proto = IPPROTO_UDP;
        ike_only.dport = 500;
        ike_only.dport_mask = 0xffff;
        assert_eq!(bypass(&[ike_only.clone()], l, r, 4789, Some(2), 1000), None);
        ike_only.dport = 4789;
        assert!(bypass(&[ike_only], l, r, 4789, Some(2), 1000).is_some());
    }

    #[test]
    fn parses_a_policy_message() {
        let mut p = vec![0u8; POLICY_INFO_LEN];
        p[0..4].copy_from_slice(&[198, 51, 100, 0]);
        p[16..20].copy_from_slice(&[198, 51, 100, 0]);
        p[40..42].copy_from_slice(&2u16.to_ne_bytes());
        p[42] = 24;
        p[43] = 24;
        p[152..156].copy_from_slice(&175_423u32.to_ne_bytes());
        p[160] = XFRM_POLICY_OUT;
        // One ESP template.
        let mut attr = vec![0u8; 4 + TMPL_LEN];
        attr[0..2].copy_from_slice(&((4 + TMPL_LEN) as u16).to_ne_bytes());
        attr[2..4].copy_from_slice(&XFRMA_TMPL.to_ne_bytes());
        attr[4 + 20] = IPPROTO_ESP;
        p.extend(attr);
        let pol = parse(&p).unwrap();
        assert_eq!(pol.src, "198.51.100.0".parse::<IpAddr>().unwrap());
        assert_eq!((pol.src_len, pol.dst_len, pol.priority), (24, 24, 175_423));
        assert!(pol.esp && !pol.special);
    }

    #[test]
    fn the_kernel_answers_a_dump() {
        // In a namespace without IPsec the dump is simply empty (or lists what is there).
        assert!(dump().is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// Policy messages from the kernel, random: parsed or skipped, no panic.
            #[test]
            fn random_policies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
            }
        }
    }
}
