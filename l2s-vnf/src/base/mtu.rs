//! Access-port MTU: the largest inner IP packet whose frame, after VXLAN and (optionally) ESP
//! encapsulation, still fits the underlay MTU without fragmentation.
//!
//! ## Formula
//!
//! Let `M` be the access MTU (the VNF's IP MTU), `U` the underlay MTU and `H` the outer IP
//! header (20 for IPv4, 40 for IPv6). VXLAN carries the untagged inner Ethernet frame:
//!
//! ```text
//! V = 8 (UDP) + 8 (VXLAN) + 14 (inner Ethernet) + M          the VXLAN datagram
//! clear text:      H + V                                      <= U
//! ESP transport:   H + N + 8 + IV + pad(V + 2, B) + ICV       <= U
//! ESP tunnel:      H + N + 8 + IV + pad(H + V + 2, B) + ICV   <= U
//! TUN cap (libipsec: the packet handed to the TUN is the whole VXLAN packet):
//!                  H + V                                      <= T
//! ```
//!
//! `8` is the ESP header (SPI, sequence number), `+ 2` the ESP trailer (pad length, next
//! header), `pad(x, B)` rounds `x` up to the cipher's block size `B` (4 for AEAD/stream modes,
//! 16 for AES-CBC), `N` is 8 when ESP is UDP-encapsulated (NAT-T; kernel-libipsec always does
//! it), `IV` and `ICV` come from the ESP proposal. With several proposals the smallest result
//! wins, since any of them may be negotiated. Example (the paper's): IPv4, `U` = 1500, VXLAN
//! only: `M = 1500 − 20 − 8 − 8 − 14 = 1450`.

use std::fmt;

use super::kinds::{BackendChoice, IpsecBackend};

/// Outer IP header size by family.
pub const IPV4_HEADER: u32 = 20;
pub const IPV6_HEADER: u32 = 40;
/// UDP header (VXLAN's and NAT-T's).
pub const UDP_HEADER: u32 = 8;
pub const VXLAN_HEADER: u32 = 8;
/// Inner Ethernet header: access ports are untagged, so no 802.1Q tag rides inside VXLAN.
pub const INNER_ETHERNET: u32 = 14;
/// ESP header: SPI + sequence number.
pub const ESP_HEADER: u32 = 8;
/// ESP trailer: pad length + next header.
pub const ESP_TRAILER: u32 = 2;
/// The smallest IPv4 MTU Linux accepts on a device; below it nothing works.
pub const MIN_ACCESS_MTU: u32 = 68;
/// kernel-libipsec's TUN device MTU (fixed by charon).
pub const LIBIPSEC_TUN_MTU: u32 = 1400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn header(self) -> u32 {
        match self {
            Family::V4 => IPV4_HEADER,
            Family::V6 => IPV6_HEADER,
        }
    }
    pub fn of(addr: &std::net::IpAddr) -> Self {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What one ESP proposal costs per packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspOverhead {
    /// The proposal as written (for derivations).
    pub proposal: String,
    pub iv: u32,
    pub icv: u32,
    /// Block size the payload + trailer is padded to.
    pub block: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspMode {
    Transport,
    Tunnel,
}

/// How VXLAN leaves the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Clear-text VXLAN (`[ipsec] enabled = false`).
    None,
    Esp {
        proposals: Vec<EspOverhead>,
        mode: EspMode,
        /// UDP encapsulation of ESP (NAT-T).
        nat_t: bool,
        /// MTU of a TUN device the VXLAN packet must pass through first (kernel-libipsec).
        tun_mtu: Option<u32>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuInputs {
    pub underlay_mtu: u32,
    pub family: Family,
    pub protection: Protection,
}

/// The computed MTU and the steps that led to it, for `check` and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtuResult {
    pub access_mtu: u32,
    pub derivation: Vec<String>,
}

/// Largest `M` with `fixed + round_up(inner + M + 2, B) + icv <= U`.
fn max_under_esp(budget: u32, inner_fixed: u32, block: u32) -> Option<u32> {
    // round_up(inner_fixed + M + 2, B) <= budget  <=>  inner_fixed + M + 2 <= floor(budget/B)*B
    let padded_room = (budget / block) * block;
    padded_room.checked_sub(inner_fixed + ESP_TRAILER)
}

/// The VXLAN datagram around an access MTU `M`: UDP + VXLAN + inner Ethernet.
pub const VXLAN_OVERHEAD: u32 = UDP_HEADER + VXLAN_HEADER + INNER_ETHERNET;

/// Compute the largest access MTU for these inputs. `None` when nothing fits at all.
pub fn compute(inputs: &MtuInputs) -> Option<MtuResult> {
    let h = inputs.family.header();
    let u = inputs.underlay_mtu;
    let mut derivation = vec![];
    let clear = u.checked_sub(h + VXLAN_OVERHEAD)?;
    derivation.push(format!(
        "underlay MTU {u} − outer {} header {h} − UDP {UDP_HEADER} − VXLAN {VXLAN_HEADER} − inner Ethernet {INNER_ETHERNET} = {clear} (VXLAN only)",
        inputs.family
    ));
    let best = match &inputs.protection {
        Protection::None => clear,
        Protection::Esp {
            proposals,
            mode,
            nat_t,
            tun_mtu,
        } => {
            let natt = if *nat_t { UDP_HEADER } else { 0 };
            let inner_ip = match mode {
                EspMode::Transport => 0,
                EspMode::Tunnel => h,
            };
            let mut best = u32::MAX;
            for p in proposals {
                let budget = u.checked_sub(h + natt + ESP_HEADER + p.iv + p.icv)?;
                let m = max_under_esp(budget, inner_ip + VXLAN_OVERHEAD, p.block)?;
                derivation.push(format!(
                    "ESP {mode:?} `{}`: {u} − {h} (IP){} − {ESP_HEADER} (ESP) − {} (IV) − {} (ICV) = {budget}, padded to {}-byte blocks with {ESP_TRAILER} trailer bytes{} and VXLAN {VXLAN_OVERHEAD} → {m}",
                    p.proposal,
                    if *nat_t { format!(" − {UDP_HEADER} (NAT-T UDP)") } else { String::new() },
                    p.iv,
                    p.icv,
                    p.block,
                    if inner_ip > 0 { format!(", inner IP {inner_ip}") } else { String::new() },
                ));
                best = best.min(m);
            }
            if let Some(t) = tun_mtu {
                let cap = t.checked_sub(h + VXLAN_OVERHEAD)?;
                derivation.push(format!(
                    "TUN MTU {t} − {h} (IP) − {VXLAN_OVERHEAD} (VXLAN) = {cap} (libipsec cap)"
                ));
                best = best.min(cap);
            }
            best.min(clear)
        }
    };
    if best < MIN_ACCESS_MTU {
        return None;
    }
    derivation.push(format!("access MTU = {best}"));
    Some(MtuResult {
        access_mtu: best,
        derivation,
    })
}

/// Errors parsing an ESP/IKE proposal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposalError {
    #[error("`{0}` is not a known algorithm")]
    Unknown(String),
    #[error(
        "`{0}` is too weak; use e.g. aes256gcm16, aes128gcm16, chacha20poly1305, or aes256-sha256"
    )]
    Weak(String),
    #[error("no encryption algorithm in the proposal")]
    NoCipher,
    #[error("a non-AEAD cipher needs an integrity algorithm (e.g. aes256-sha256)")]
    NoIntegrity,
}

const WEAK: &[&str] = &[
    "des",
    "3des",
    "cast128",
    "blowfish128",
    "blowfish192",
    "blowfish256",
    "null",
    "md5",
    "md5_128",
    "sha1",
    "sha",
    "sha1_160",
    "aesxcbc",
    "modp768",
    "modp1024",
    "modp1536",
    "modp1024s160",
    "modp2048s224",
    "prfmd5",
    "prfsha1",
    "prfaesxcbc",
];

fn dh_group(t: &str) -> bool {
    matches!(
        t,
        "modp2048"
            | "modp3072"
            | "modp4096"
            | "modp6144"
            | "modp8192"
            | "modp2048s256"
            | "ecp256"
            | "ecp384"
            | "ecp521"
            | "ecp256bp"
            | "ecp384bp"
            | "ecp512bp"
            | "x25519"
            | "curve25519"
            | "x448"
            | "curve448"
            | "esn"
            | "noesn"
    ) || t.starts_with("mlkem")
}

/// Integrity algorithm → ICV length.
fn integrity_icv(t: &str) -> Option<u32> {
    Some(match t {
        "sha256" | "sha2_256" | "sha256_128" | "sha2_256_128" => 16,
        "sha384" | "sha2_384" | "sha384_192" | "sha2_384_192" => 24,
        "sha512" | "sha2_512" | "sha512_256" | "sha2_512_256" => 32,
        "sha256_96" | "sha2_256_96" => 12,
        "aescmac" => 12,
        _ => return None,
    })
}

fn prf(t: &str) -> bool {
    matches!(t, "prfsha256" | "prfsha384" | "prfsha512" | "prfaescmac")
}

enum Cipher {
    Aead { iv: u32, icv: u32 },
    Block { iv: u32, block: u32 },
}

fn cipher(t: &str) -> Option<Cipher> {
    if t == "chacha20poly1305" {
        return Some(Cipher::Aead { iv: 8, icv: 16 });
    }
    let rest = t
        .strip_prefix("aes")
        .or_else(|| t.strip_prefix("camellia"))?;
    let (bits, mode) = match rest.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !matches!(bits, "" | "128" | "192" | "256") {
        return None;
    }
    match mode {
        "" => Some(Cipher::Block { iv: 16, block: 16 }),
        "ctr" => Some(Cipher::Block { iv: 8, block: 4 }),
        "gcm" | "gcm16" | "gcm128" | "ccm" | "ccm16" | "ccm128" => {
            Some(Cipher::Aead { iv: 8, icv: 16 })
        }
        "gcm12" | "gcm96" | "ccm12" | "ccm96" => Some(Cipher::Aead { iv: 8, icv: 12 }),
        "gcm8" | "gcm64" | "ccm8" | "ccm64" => Some(Cipher::Aead { iv: 8, icv: 8 }),
        _ => None,
    }
}

/// Parse and vet one ESP proposal (strongSwan syntax, e.g. `aes256gcm16-x25519`).
pub fn parse_esp_proposal(proposal: &str) -> Result<EspOverhead, ProposalError> {
    let mut found: Option<Cipher> = None;
    let mut icv: Option<u32> = None;
    for t in proposal.split('-') {
        let t = t.trim().to_ascii_lowercase();
        if WEAK.contains(&t.as_str()) {
            return Err(ProposalError::Weak(t));
        }
        if let Some(c) = cipher(&t) {
            // The first cipher decides the overhead; strongSwan lets you list several, and we
            // take the worst case across them.
            found = Some(match (found, c) {
                (None, c) => c,
                (Some(a), b) => worst(a, b),
            });
        } else if let Some(i) = integrity_icv(&t) {
            icv = Some(icv.map_or(i, |old| old.max(i)));
        } else if !dh_group(&t) {
            return Err(ProposalError::Unknown(t));
        }
    }
    match found {
        None => Err(ProposalError::NoCipher),
        Some(Cipher::Aead { iv, icv: aead_icv }) => Ok(EspOverhead {
            proposal: proposal.to_string(),
            iv,
            icv: aead_icv.max(icv.unwrap_or(0)),
            block: 4,
        }),
        Some(Cipher::Block { iv, block }) => match icv {
            None => Err(ProposalError::NoIntegrity),
            Some(icv) => Ok(EspOverhead {
                proposal: proposal.to_string(),
                iv,
                icv,
                block,
            }),
        },
    }
}

fn worst(a: Cipher, b: Cipher) -> Cipher {
    let cost = |c: &Cipher| match c {
        Cipher::Aead { iv, icv } => iv + icv + 4,
        Cipher::Block { iv, block } => iv + block,
    };
    if cost(&a) >= cost(&b) {
        a
    } else {
        b
    }
}

/// Vet one IKE proposal: a cipher, a PRF or integrity algorithm (for non-AEAD) and a DH group,
/// none of them weak.
pub fn check_ike_proposal(proposal: &str) -> Result<(), ProposalError> {
    let mut has_cipher = false;
    let mut has_prf_or_integ = false;
    for t in proposal.split('-') {
        let t = t.trim().to_ascii_lowercase();
        if WEAK.contains(&t.as_str()) {
            return Err(ProposalError::Weak(t));
        }
        if cipher(&t).is_some() {
            has_cipher = true;
        } else if prf(&t) || integrity_icv(&t).is_some() {
            has_prf_or_integ = true;
        } else if !dh_group(&t) {
            return Err(ProposalError::Unknown(t));
        }
    }
    if !has_cipher {
        return Err(ProposalError::NoCipher);
    }
    if !has_prf_or_integ {
        return Err(ProposalError::NoIntegrity);
    }
    Ok(())
}

fn esp_protection(backend: IpsecBackend, esp: &[EspOverhead]) -> Protection {
    match backend {
        IpsecBackend::Kernel => Protection::Esp {
            proposals: esp.to_vec(),
            mode: EspMode::Transport,
            // Conservative: a NAT between sites makes charon float ESP into UDP 4500.
            nat_t: true,
            tun_mtu: None,
        },
        IpsecBackend::Libipsec => Protection::Esp {
            proposals: esp.to_vec(),
            mode: EspMode::Tunnel,
            nat_t: true,
            tun_mtu: Some(LIBIPSEC_TUN_MTU),
        },
    }
}

/// The MTU inputs for a config; several when the backend is not yet known (the smallest wins).
fn mtu_inputs(
    underlay_mtu: u32,
    family: Family,
    ipsec_enabled: bool,
    backend: BackendChoice,
    esp: &[EspOverhead],
) -> Vec<MtuInputs> {
    let protections = if !ipsec_enabled {
        vec![Protection::None]
    } else {
        match backend {
            BackendChoice::Kernel => vec![esp_protection(IpsecBackend::Kernel, esp)],
            BackendChoice::Libipsec => vec![esp_protection(IpsecBackend::Libipsec, esp)],
            BackendChoice::Auto => vec![
                esp_protection(IpsecBackend::Kernel, esp),
                esp_protection(IpsecBackend::Libipsec, esp),
            ],
        }
    };
    protections
        .into_iter()
        .map(|protection| MtuInputs {
            underlay_mtu,
            family,
            protection,
        })
        .collect()
}

/// The largest access MTU for these inputs, with its derivation: the smallest over the
/// candidate backends. `None` when nothing fits.
pub fn max_access_mtu(
    underlay_mtu: u32,
    family: Family,
    ipsec_enabled: bool,
    backend: BackendChoice,
    esp: &[EspOverhead],
) -> Option<MtuResult> {
    mtu_inputs(underlay_mtu, family, ipsec_enabled, backend, esp)
        .iter()
        .filter_map(compute)
        .min_by_key(|r| r.access_mtu)
}

/// The error for an explicit `mtu.access` the path cannot carry.
pub fn mtu_too_large(want: u32, underlay_mtu: u32, max: u32) -> String {
    format!(
        "{want} is too large for this path: with underlay MTU {underlay_mtu} the largest access MTU that does not fragment is {max}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_up(x: u32, block: u32) -> u32 {
        x.div_ceil(block) * block
    }

    fn esp(p: &str) -> EspOverhead {
        match parse_esp_proposal(p) {
            Ok(e) => e,
            Err(e) => panic!("{p}: {e}"),
        }
    }

    fn m(u: u32, family: Family, protection: Protection) -> Option<u32> {
        compute(&MtuInputs {
            underlay_mtu: u,
            family,
            protection,
        })
        .map(|r| r.access_mtu)
    }

    fn esp_prot(p: &str, mode: EspMode, nat_t: bool, tun: Option<u32>) -> Protection {
        Protection::Esp {
            proposals: vec![esp(p)],
            mode,
            nat_t,
            tun_mtu: tun,
        }
    }

    /// Brute force: the largest M whose encapsulated size fits, straight from the definition.
    fn brute(u: u32, family: Family, prot: &Protection) -> Option<u32> {
        let h = family.header();
        (MIN_ACCESS_MTU..=u).rev().find(|&mm| {
            let v = VXLAN_OVERHEAD + mm;
            if h + v > u {
                return false;
            }
            match prot {
                Protection::None => true,
                Protection::Esp {
                    proposals,
                    mode,
                    nat_t,
                    tun_mtu,
                } => {
                    let n = if *nat_t { 8 } else { 0 };
                    let inner = if *mode == EspMode::Tunnel { h } else { 0 };
                    tun_mtu.is_none_or(|t| h + v <= t)
                        && proposals.iter().all(|p| {
                            h + n + 8 + p.iv + round_up(inner + v + 2, p.block) + p.icv <= u
                        })
                }
            }
        })
    }

    #[test]
    fn papers_case_vxlan_only() {
        assert_eq!(m(1500, Family::V4, Protection::None), Some(1450));
    }

    #[test]
    fn table() {
        use EspMode::*;
        use Family::*;
        let cases: &[(u32, Family, Protection, u32)] = &[
            (1500, V6, Protection::None, 1430),
            (9000, V4, Protection::None, 8950),
            // transport, GCM16: 1500-20-8-8-16 = 1448 → floor4 1448 − 2 − 30 = 1416
            (
                1500,
                V4,
                esp_prot("aes256gcm16", Transport, false, None),
                1416,
            ),
            // + NAT-T: 1440 → 1440 − 32 = 1408
            (
                1500,
                V4,
                esp_prot("aes256gcm16", Transport, true, None),
                1408,
            ),
            // tunnel, NAT-T: 1408 − 20 = 1388
            (1500, V4, esp_prot("aes256gcm16", Tunnel, true, None), 1388),
            // libipsec: TUN 1400 caps at 1350
            (
                1500,
                V4,
                esp_prot("aes256gcm16", Tunnel, true, Some(1400)),
                1350,
            ),
            // CBC + sha256: 1500-20-8-16-16 = 1440 → floor16 1440 − 32 = 1408
            (
                1500,
                V4,
                esp_prot("aes256-sha256", Transport, false, None),
                1408,
            ),
            // IPv6 transport GCM16: 1500-40-8-8-16 = 1428 → 1428 − 32 = 1396
            (
                1500,
                V6,
                esp_prot("aes128gcm16", Transport, false, None),
                1396,
            ),
        ];
        for (u, fam, prot, want) in cases {
            assert_eq!(m(*u, *fam, prot.clone()), Some(*want), "{u} {fam} {prot:?}");
        }
    }

    #[test]
    fn closed_form_matches_brute_force() {
        let protections = [
            Protection::None,
            esp_prot("aes256gcm16", EspMode::Transport, false, None),
            esp_prot("aes256gcm12", EspMode::Tunnel, true, None),
            esp_prot("aes128-sha384", EspMode::Transport, true, None),
            esp_prot("aes256ctr-sha512", EspMode::Tunnel, false, None),
            esp_prot("chacha20poly1305", EspMode::Tunnel, true, Some(1400)),
        ];
        for u in (576..=1600).chain([9000]) {
            for fam in [Family::V4, Family::V6] {
                for p in &protections {
                    assert_eq!(m(u, fam, p.clone()), brute(u, fam, p), "{u} {fam} {p:?}");
                }
            }
        }
    }

    #[test]
    fn several_proposals_take_the_worst() {
        let prot = Protection::Esp {
            proposals: vec![esp("aes256gcm16"), esp("aes256-sha512")],
            mode: EspMode::Transport,
            nat_t: false,
            tun_mtu: None,
        };
        // sha512 ICV 32, CBC IV 16: 1500-20-8-16-32 = 1424 → floor16 1424 − 32 = 1392
        assert_eq!(m(1500, Family::V4, prot), Some(1392));
    }

    #[test]
    fn too_small_underlay_gives_none() {
        assert_eq!(m(100, Family::V4, Protection::None), None);
        assert_eq!(m(60, Family::V6, Protection::None), None);
    }

    #[test]
    fn derivation_names_each_step() {
        let r = compute(&MtuInputs {
            underlay_mtu: 1500,
            family: Family::V4,
            protection: Protection::None,
        });
        let r = r.map(|r| r.derivation.join("\n")).unwrap_or_default();
        assert!(r.contains("underlay MTU 1500"), "{r}");
        assert!(r.contains("= 1450"), "{r}");
    }

    #[test]
    fn proposals_are_vetted() {
        assert!(parse_esp_proposal("aes256gcm16").is_ok());
        assert!(parse_esp_proposal("aes256gcm16-x25519-esn").is_ok());
        assert_eq!(
            parse_esp_proposal("3des-sha1"),
            Err(ProposalError::Weak("3des".into()))
        );
        assert_eq!(
            parse_esp_proposal("aes256"),
            Err(ProposalError::NoIntegrity)
        );
        assert_eq!(
            parse_esp_proposal("foo"),
            Err(ProposalError::Unknown("foo".into()))
        );
        assert!(check_ike_proposal("aes256gcm16-prfsha384-x25519").is_ok());
        assert!(check_ike_proposal("aes256-sha256-modp2048").is_ok());
        assert_eq!(
            check_ike_proposal("aes256-sha256-modp1024"),
            Err(ProposalError::Weak("modp1024".into()))
        );
        assert_eq!(
            check_ike_proposal("aes256gcm16-x25519"),
            Err(ProposalError::NoIntegrity)
        );
    }
}
