//! The fail-closed guard: one nftables table, owned by this instance, that makes clear-text
//! VXLAN on the underlay impossible whatever state charon, the SAs or the daemon are in.
//!
//! - kernel backend (XFRM, transport mode): VXLAN may leave only if its route carries an IPsec
//!   transform (`rt ipsec exists`) and may be accepted only if it was decrypted
//!   (`meta ipsec exists`, listed by nft as such);
//! - libipsec backend: VXLAN may leave and enter only through charon's TUN device (`ipsec0`);
//!   anything else with the VXLAN port to or from a peer is dropped.
//!
//! The table is replaced atomically in one `nft -f -` batch, is in place before any VXLAN
//! device comes up, stays when the daemon stops or crashes, and goes only with `down`.
//!
//! On the kernel path the guard has a second layer that an nftables flush cannot remove:
//! xfrm block policies for VXLAN and the probes, in and out, behind the per-peer policies
//! ([`crate::xfrm::Block`]). Without charon's policies (charon stopped, a connection
//! unloaded) or without an SA's decryption (a forged sender), they drop what the table would.

use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::base::kinds::IpsecBackend;
use crate::base::names::LIBIPSEC_TUN;
use crate::xfrm;

/// nftables table name for an instance (`inet` family).
pub fn table_name(bridge: &str) -> String {
    let safe: String = bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("l2s_vnf_{safe}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSpec {
    pub table: String,
    pub backend: IpsecBackend,
    pub vxlan_port: u16,
    /// The peers' addresses: IKE and NAT-T (UDP 500 and 4500) are accepted from them only.
    pub peers: Vec<std::net::IpAddr>,
    /// Prefixes IKE is accepted from too (a reflector's `listen_range`).
    pub peer_ranges: Vec<crate::config::evpn::Prefix>,
    /// EVPN: BGP (TCP 179, either direction) only through IPsec as well.
    pub bgp: bool,
}

/// The guard a config wants with `backend`.
pub fn spec_for(cfg: &crate::config::SiteConfig, backend: IpsecBackend) -> GuardSpec {
    GuardSpec {
        table: table_name(&cfg.switch.bridge),
        backend,
        vxlan_port: cfg.vxlan_port,
        peers: cfg.peers.iter().map(|p| p.address).collect(),
        peer_ranges: cfg.evpn.iter().filter_map(|e| e.listen_range).collect(),
        bgp: cfg.evpn.is_some(),
    }
}

impl GuardSpec {
    /// The complete ruleset text for the table. Rules are keyed on the VXLAN port only, never
    /// on addresses: a forged clear-text frame from any source (not just a peer) is dropped.
    pub fn ruleset(&self) -> String {
        // VXLAN, and the path probes on the next port (which travel the same SAs).
        let port = format!(
            "{{ {}, {} }}",
            self.vxlan_port,
            crate::base::names::probe_port(self.vxlan_port)
        );
        let (unprotected_out, out_rule, in_rule) = match self.backend {
            IpsecBackend::Kernel => (
                "rt ipsec missing".to_string(),
                format!("udp dport {port} rt ipsec missing counter drop comment \"clear-text VXLAN out\""),
                format!("udp dport {port} meta ipsec missing counter drop comment \"clear-text VXLAN in\""),
            ),
            IpsecBackend::Libipsec => (
                format!("oifname != \"{LIBIPSEC_TUN}\""),
                format!("udp dport {port} oifname != \"{LIBIPSEC_TUN}\" counter drop comment \"VXLAN not through IPsec out\""),
                format!("udp dport {port} iifname != \"{LIBIPSEC_TUN}\" counter drop comment \"VXLAN not through IPsec in\""),
            ),
        };
        // An ICMP error about a decrypted VXLAN or probe packet (port unreachable while a
        // VTEP is being re-created, a probe before the peer listens) quotes that packet —
        // up to ~500 bytes of a VNF's frame — and the SAs cover UDP only: it must not leave
        // unprotected. Matched on the quoted packet: protocol UDP, destination port ours
        // (written as nft lists it, in hex, so the listing compares equal).
        let hex = format!(
            "{{ {:#x}, {:#x} }}",
            self.vxlan_port,
            crate::base::names::probe_port(self.vxlan_port)
        );
        let icmp4 = format!("icmp type {{ destination-unreachable, time-exceeded, parameter-problem }} @th,136,8 0x11 @th,240,16 {hex} {unprotected_out} counter drop comment \"ICMP error quoting VXLAN out\"");
        let icmp6 = format!("icmpv6 type {{ destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} @th,112,8 0x11 @th,400,16 {hex} {unprotected_out} counter drop comment \"ICMPv6 error quoting VXLAN out\"");
        // IKE and NAT-T from outside the federation never reach charon: a flood of
        // IKE_SA_INIT from forged addresses would otherwise take charon's time (and, with
        // libipsec, the ESP it carries). Written as nft lists it (sorted, braces for two or more).
        let ike = |family: &str, v6: bool| {
            let mut addrs: Vec<&std::net::IpAddr> =
                self.peers.iter().filter(|a| a.is_ipv6() == v6).collect();
            addrs.sort();
            let mut list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            list.extend(
                self.peer_ranges
                    .iter()
                    .filter(|r| r.addr.is_ipv6() == v6)
                    .map(|r| r.to_string()),
            );
            let whom = match list.len() {
                0 => format!("meta nfproto {}", if v6 { "ipv6" } else { "ipv4" }),
                1 => format!("{family} saddr != {}", list[0]),
                _ => format!("{family} saddr != {{ {} }}", list.join(", ")),
            };
            format!("udp dport {{ 500, 4500 }} {whom} counter drop comment \"IKE from outside the federation\"")
        };
        let (ike4, ike6) = (ike("ip", false), ike("ip6", true));
        // EVPN: BGP with the reflectors travels the SAs too; clear text either way is dropped.
        let (bgp_out, bgp_in) = if self.bgp {
            let (out_cond, in_cond) = match self.backend {
                IpsecBackend::Kernel => (
                    "rt ipsec missing".to_string(),
                    "meta ipsec missing".to_string(),
                ),
                IpsecBackend::Libipsec => (
                    format!("oifname != \"{LIBIPSEC_TUN}\""),
                    format!("iifname != \"{LIBIPSEC_TUN}\""),
                ),
            };
            let rules = |cond: &str, dir: &str| {
                ["dport", "sport"]
                    .map(|p| format!("\t\ttcp {p} 179 {cond} counter drop comment \"clear-text BGP {dir}\"\n"))
                    .concat()
            };
            (rules(&out_cond, "out"), rules(&in_cond, "in"))
        } else {
            (String::new(), String::new())
        };
        format!(
            "table inet {t} {{\n\tchain output {{\n\t\ttype filter hook output priority filter - 10; policy accept;\n\t\t{out_rule}\n\t\t{icmp4}\n\t\t{icmp6}\n{bgp_out}\t}}\n\tchain input {{\n\t\ttype filter hook input priority filter - 10; policy accept;\n\t\t{in_rule}\n\t\t{ike4}\n\t\t{ike6}\n{bgp_in}\t}}\n}}\n",
            t = self.table
        )
    }

    /// The ports the guard keeps closed outside the SAs: VXLAN, and the probes next to it.
    fn ports(&self) -> [u16; 2] {
        [
            self.vxlan_port,
            crate::base::names::probe_port(self.vxlan_port),
        ]
    }

    /// The second layer: xfrm block policies, on the kernel path only (with libipsec charon
    /// installs no policies, and a block would stop VXLAN on its way to charon's TUN).
    pub fn blocks(&self) -> Vec<xfrm::Block> {
        match self.backend {
            IpsecBackend::Kernel => xfrm::blocks(&self.ports()),
            IpsecBackend::Libipsec => vec![],
        }
    }

    /// Batch that replaces the table atomically (create-if-missing, delete, recreate).
    pub fn batch(&self) -> String {
        format!(
            "table inet {t}\ndelete table inet {t}\n{}",
            self.ruleset(),
            t = self.table
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot run nft (is the nftables package installed?): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the guard table {table}: {stderr}")]
    Nft { table: String, stderr: String },
    #[error("the guard's xfrm block policies: {0}")]
    Xfrm(std::io::Error),
}

fn nft(input: &str, table: &str) -> Result<String, GuardError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GuardError::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(GuardError::Spawn)?;
    }
    let out = child.wait_with_output().map_err(GuardError::Spawn)?;
    if !out.status.success() {
        return Err(GuardError::Nft {
            table: table.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The table as nft lists it now, if it exists.
pub fn observe(table: &str) -> Option<String> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", table])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the installed table is exactly the table of `spec`: every line — chains, their
/// hooks and policies, every rule in order — compared as nft lists it, counter values aside.
/// An `accept` put ahead of the drops, a rule removed or a policy changed is drift.
/// The addresses a listed guard accepts IKE from (the peers of the run that made it).
pub fn ike_peers(listed: &str) -> Vec<std::net::IpAddr> {
    listed
        .lines()
        .filter(|l| l.contains("IKE from outside the federation"))
        .filter_map(|l| l.split_once("saddr != ").map(|(_, rest)| rest))
        .flat_map(|rest| {
            let set = match rest.strip_prefix("{ ") {
                Some(inner) => inner.split(" }").next().unwrap_or(""),
                None => rest.split(' ').next().unwrap_or(""),
            };
            set.split(", ")
                .filter_map(|a| a.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn matches(spec: &GuardSpec, listed: &str) -> bool {
    norm_listing(&spec.ruleset()) == norm_listing(listed)
}

/// A table's lines, trimmed, blank lines dropped, counters without their values.
fn norm_listing(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut l = l.to_string();
            while let Some(i) = l.find("counter packets ") {
                // `counter packets N bytes M` → `counter`
                let rest = &l[i + "counter packets ".len()..];
                let mut words = rest.splitn(4, ' ');
                let (_, bytes, _, tail) = (words.next(), words.next(), words.next(), words.next());
                if bytes != Some("bytes") {
                    break;
                }
                l = format!("{}counter {}", &l[..i], tail.unwrap_or(""))
                    .trim_end()
                    .to_string();
            }
            l
        })
        .collect()
}

/// Whether the kernel holds the xfrm layer `spec` wants on its ports: every block on the
/// kernel path, none with libipsec.
pub fn blocks_match(spec: &GuardSpec, policies: &[xfrm::Policy]) -> bool {
    let ports = spec.ports();
    let held: std::collections::BTreeSet<xfrm::Block> = xfrm::held_blocks(policies)
        .into_iter()
        .filter(|b| ports.contains(&b.port))
        .collect();
    held == spec.blocks().into_iter().collect()
}

/// Install or replace the guard: the table in one atomic batch, then the xfrm layer.
pub fn ensure(spec: &GuardSpec) -> Result<(), GuardError> {
    nft(&spec.batch(), &spec.table)?;
    ensure_blocks(spec)
}

/// Put the xfrm layer as `spec` wants it (with libipsec: none of ours on its ports).
pub fn ensure_blocks(spec: &GuardSpec) -> Result<(), GuardError> {
    match spec.backend {
        IpsecBackend::Kernel => xfrm::ensure_blocks(&spec.blocks()),
        IpsecBackend::Libipsec => xfrm::remove_blocks(&xfrm::blocks(&spec.ports())),
    }
    .map_err(GuardError::Xfrm)
}

/// Remove the guard table (absent is fine), and the xfrm layer with it unless another
/// instance's guard is left on this host (the block policies are the host's, not a bridge's).
pub fn remove(table: &str) -> Result<(), GuardError> {
    nft(
        &format!("table inet {table}\ndelete table inet {table}\n"),
        table,
    )?;
    let others = nft("list tables\n", table)?;
    if others.lines().any(|l| l.contains("inet l2s_vnf_")) {
        return Ok(());
    }
    let held = xfrm::dump().map_err(GuardError::Xfrm)?;
    let ours: Vec<xfrm::Block> = xfrm::held_blocks(&held).into_iter().collect();
    xfrm::remove_blocks(&ours).map_err(GuardError::Xfrm)
}

/// The guard's change, if any: `want` is the guard wanted (`None`: none may stay), `listed`
/// our table as nft lists it, `policies` the kernel's (for the xfrm block layer).
pub fn diff(
    want: Option<&GuardSpec>,
    listed: Option<&str>,
    policies: &[xfrm::Policy],
    bridge: &str,
) -> Option<GuardChange> {
    let Some(spec) = want else {
        return (listed.is_some() || !xfrm::held_blocks(policies).is_empty()).then(|| {
            GuardChange::Remove {
                table: table_name(bridge),
            }
        });
    };
    let why = match listed {
        None => "new",
        Some(listed) if !matches(spec, listed) => "rules differ",
        Some(_) if !blocks_match(spec, policies) => "xfrm block policies differ",
        Some(_) => return None,
    };
    Some(GuardChange::Ensure {
        spec: spec.clone(),
        why,
    })
}

/// One change to the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardChange {
    /// Install or replace the fail-closed nftables guard (before any VXLAN device is up).
    Ensure {
        spec: GuardSpec,
        why: &'static str,
    },
    Remove {
        table: String,
    },
}

impl fmt::Display for GuardChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardChange::Ensure { spec, why } => write!(
                f,
                "{} guard: nftables table inet {} ({:?} backend; {why})",
                if *why == "new" { '+' } else { '~' },
                spec.table,
                spec.backend
            ),
            GuardChange::Remove { table } => write!(f, "- guard: nftables table inet {table}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backend: IpsecBackend) -> GuardSpec {
        GuardSpec {
            table: table_name("l2s0"),
            backend,
            vxlan_port: 4789,
            peers: vec!["192.0.2.3".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            peer_ranges: vec![],
            bgp: false,
        }
    }

    /// Snapshots of both rulesets; `L2S_BLESS=1` rewrites them.
    #[test]
    fn ruleset_snapshots() {
        for (backend, file) in [
            (IpsecBackend::Kernel, "guard-kernel.nft"),
            (IpsecBackend::Libipsec, "guard-libipsec.nft"),
        ] {
            let got = spec(backend).ruleset();
            crate::base::snapshot::assert_snapshot(file, &got);
        }
    }

    /// The kernel ruleset as nft 1.0.6 lists it once installed (hex raw payloads, counters):
    /// still the same guard, or the daemon would replace it at every reconcile.
    #[test]
    fn nfts_own_listing_matches_the_spec() {
        let listed = include_str!("../../tests/snapshots/guard-kernel.nft-listed");
        assert!(matches(&spec(IpsecBackend::Kernel), listed));
        assert!(!matches(&spec(IpsecBackend::Libipsec), listed));
    }

    #[test]
    fn anything_else_in_the_table_is_drift() {
        let s = spec(IpsecBackend::Kernel);
        let listed = include_str!("../../tests/snapshots/guard-kernel.nft-listed");
        assert!(matches(&s, listed));
        // An accept ahead of the drops lets clear text through: drift.
        let accept = listed.replacen(
            "policy accept;\n",
            "policy accept;\n\t\tudp dport 4789 accept\n",
            1,
        );
        assert!(!matches(&s, &accept));
        // A drop rule gone, a policy changed, a rule's comment changed: drift.
        let gone: String = listed
            .lines()
            .filter(|l| !l.contains("ICMP error quoting"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!matches(&s, &gone));
        assert!(!matches(
            &s,
            &listed.replacen("priority filter - 10", "priority filter + 10", 1)
        ));
        assert!(!matches(&s, &listed.replace("clear-text VXLAN in", "x")));
        // Counters are not drift.
        assert!(matches(
            &s,
            &listed.replace("counter packets 0 bytes 0", "counter packets 12 bytes 3456")
        ));
    }

    #[test]
    fn the_xfrm_layer_is_the_kernel_paths_only() {
        let kernel = spec(IpsecBackend::Kernel);
        let all: Vec<xfrm::Policy> = kernel.blocks().iter().map(xfrm::listed).collect();
        assert_eq!(all.len(), 8);
        assert!(blocks_match(&kernel, &all));
        assert!(!blocks_match(&kernel, &all[1..]), "one missing");
        assert!(!blocks_match(&kernel, &[]));
        // Blocks on another port (another instance's) are not this guard's business.
        let other: Vec<xfrm::Policy> = xfrm::blocks(&[8472]).iter().map(xfrm::listed).collect();
        assert!(blocks_match(
            &kernel,
            &[all.clone(), other.clone()].concat()
        ));
        // libipsec: a block on its ports would stop VXLAN on its way to charon's TUN.
        let libipsec = spec(IpsecBackend::Libipsec);
        assert!(libipsec.blocks().is_empty());
        assert!(blocks_match(&libipsec, &other));
        assert!(!blocks_match(&libipsec, &all));
    }

    #[test]
    fn table_names_are_nft_safe() {
        assert_eq!(table_name("l2s0"), "l2s_vnf_l2s0");
        assert_eq!(table_name("br-x.1"), "l2s_vnf_br_x_1");
    }

    #[test]
    fn listed_table_matches_its_spec() {
        let s = spec(IpsecBackend::Libipsec);
        let listed = s
            .ruleset()
            .replace("counter drop", "counter packets 3 bytes 180 drop");
        assert!(matches(&s, &listed));
        let other = spec(IpsecBackend::Kernel);
        assert!(!matches(&other, &listed));
    }
}
#[cfg(test)]
mod evpn_tests {
    use super::*;

    /// A reflector's guard: IKE only from its `listen_range`, BGP only through the SAs both
    /// ways (the listing was checked against nft 1.0.6: it lists these lines as written).
    #[test]
    fn bgp_is_dropped_in_clear_text_and_ike_accepted_from_the_range() {
        for (b, out_cond) in [
            (IpsecBackend::Kernel, "rt ipsec missing"),
            (IpsecBackend::Libipsec, "oifname != \"ipsec0\""),
        ] {
            let s = GuardSpec {
                table: "l2s_vnf_t".into(),
                backend: b,
                vxlan_port: 4789,
                peers: vec![],
                peer_ranges: vec!["192.0.2.0/24".parse().unwrap()],
                bgp: true,
            };
            let r = s.ruleset();
            for line in [
                format!("tcp dport 179 {out_cond} counter drop comment \"clear-text BGP out\""),
                format!("tcp sport 179 {out_cond} counter drop comment \"clear-text BGP out\""),
                "udp dport { 500, 4500 } ip saddr != 192.0.2.0/24 counter drop comment \"IKE from outside the federation\"".to_string(),
            ] {
                assert!(r.lines().any(|l| l.trim() == line), "{line:?} missing:\n{r}");
            }
            assert_eq!(r.matches("clear-text BGP in").count(), 2, "{r}");
            let mut plain = s.clone();
            plain.bgp = false;
            assert!(
                !plain.ruleset().contains("BGP"),
                "no BGP rules without EVPN"
            );
        }
    }
}
