//! Which algorithms the configured proposals need from charon, and whether the running charon
//! has them (VICI `get-algorithms`).
//!
//! A charon without, say, the x25519 implementation fails every IKE_SA with "configured DH
//! group CURVE_25519 not supported", and the fail-closed guard then drops everything: a dead
//! site that looks configured. Checking before anything is loaded turns that into a clear
//! error naming the proposal, the algorithm and what provides it.
//!
//! charon computes IKE itself, and the DH group of an ESP proposal (PFS). ESP's cipher and
//! integrity are the kernel's with the kernel backend, and charon's own with kernel-libipsec.

use std::collections::{BTreeMap, BTreeSet};

use crate::base::kinds::IpsecBackend;
use crate::ipsec::vici::{Item, Section};

/// One algorithm a proposal needs: the `get-algorithms` section and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Needed {
    pub kind: &'static str,
    pub name: String,
    /// The proposal token it comes from (`x25519`).
    pub token: String,
}

fn need(kind: &'static str, name: impl Into<String>, token: &str) -> Needed {
    Needed {
        kind,
        name: name.into(),
        token: token.to_string(),
    }
}

/// The AEAD or plain cipher behind a token (`aes256gcm16` → aead AES_GCM_16).
fn cipher(t: &str) -> Option<Needed> {
    if t == "chacha20poly1305" {
        return Some(need("aead", "CHACHA20_POLY1305", t));
    }
    let (family, rest) = if let Some(r) = t.strip_prefix("aes") {
        ("AES", r)
    } else {
        ("CAMELLIA", t.strip_prefix("camellia")?)
    };
    let mode = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let icv = |m: &str| match m {
        "" | "16" | "128" => Some("16"),
        "12" | "96" => Some("12"),
        "8" | "64" => Some("8"),
        _ => None,
    };
    Some(match mode {
        "" => need("encryption", format!("{family}_CBC"), t),
        "ctr" => need("encryption", format!("{family}_CTR"), t),
        m if m.starts_with("gcm") => need("aead", format!("AES_GCM_{}", icv(&m[3..])?), t),
        m if m.starts_with("ccm") => need("aead", format!("{family}_CCM_{}", icv(&m[3..])?), t),
        _ => return None,
    })
}

fn integrity(t: &str) -> Option<&'static str> {
    Some(match t {
        "sha1" => "HMAC_SHA1_96",
        "sha256" | "sha2_256" | "sha256_128" | "sha2_256_128" => "HMAC_SHA2_256_128",
        "sha256_96" | "sha2_256_96" => "HMAC_SHA2_256_96",
        "sha384" | "sha2_384" | "sha384_192" | "sha2_384_192" => "HMAC_SHA2_384_192",
        "sha512" | "sha2_512" | "sha512_256" | "sha2_512_256" => "HMAC_SHA2_512_256",
        "aescmac" => "AES_CMAC_96",
        "aesxcbc" => "AES_XCBC_96",
        _ => return None,
    })
}

/// The PRF an IKE proposal gets from an integrity token when it names none.
fn prf_of_integrity(t: &str) -> Option<&'static str> {
    Some(match integrity(t)? {
        "HMAC_SHA1_96" => "PRF_HMAC_SHA1",
        "HMAC_SHA2_256_128" | "HMAC_SHA2_256_96" => "PRF_HMAC_SHA2_256",
        "HMAC_SHA2_384_192" => "PRF_HMAC_SHA2_384",
        "HMAC_SHA2_512_256" => "PRF_HMAC_SHA2_512",
        "AES_CMAC_96" => "PRF_AES128_CMAC",
        _ => "PRF_AES128_XCBC",
    })
}

fn prf(t: &str) -> Option<&'static str> {
    Some(match t {
        "prfsha1" => "PRF_HMAC_SHA1",
        "prfsha256" => "PRF_HMAC_SHA2_256",
        "prfsha384" => "PRF_HMAC_SHA2_384",
        "prfsha512" => "PRF_HMAC_SHA2_512",
        "prfaescmac" => "PRF_AES128_CMAC",
        "prfaesxcbc" => "PRF_AES128_XCBC",
        _ => return None,
    })
}

fn dh(t: &str) -> Option<String> {
    Some(match t {
        "x25519" | "curve25519" => "CURVE_25519".into(),
        "x448" | "curve448" => "CURVE_448".into(),
        "modp2048s256" => "MODP_2048_256".into(),
        _ if t.starts_with("modp") => format!("MODP_{}", &t[4..]),
        _ if t.starts_with("ecp") && t.ends_with("bp") => {
            format!("ECP_{}_BP", &t[3..t.len() - 2])
        }
        _ if t.starts_with("ecp") => format!("ECP_{}", &t[3..]),
        _ => return None,
    })
}

/// What charon must implement for one proposal.
pub fn needed(proposal: &str, ike: bool, backend: IpsecBackend) -> Vec<Needed> {
    let tokens: Vec<String> = proposal
        .split('-')
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let charon_does_esp = backend == IpsecBackend::Libipsec;
    let mut out = vec![];
    let mut has_prf = false;
    for t in &tokens {
        if let Some(g) = dh(t) {
            out.push(need("dh", g, t));
        } else if !ike && !charon_does_esp {
            // ESP's cipher and integrity run in the kernel.
        } else if let Some(c) = cipher(t) {
            out.push(c);
        } else if let Some(i) = integrity(t) {
            out.push(need("integrity", i, t));
        } else if let Some(p) = prf(t).filter(|_| ike) {
            has_prf = true;
            out.push(need("prf", p, t));
        }
    }
    if ike && !has_prf {
        if let Some(t) = tokens.iter().find(|t| integrity(t).is_some()) {
            if let Some(p) = prf_of_integrity(t) {
                out.push(need("prf", p, t));
            }
        }
    }
    out
}

/// charon's algorithms by kind (the `get-algorithms` reply).
pub fn available(reply: &Section) -> BTreeMap<String, BTreeSet<String>> {
    reply
        .items
        .iter()
        .filter_map(|(kind, item)| match item {
            Item::Section(s) => Some((
                kind.clone(),
                s.items.iter().map(|(name, _)| name.clone()).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Where Debian gets an algorithm from, for the error's advice.
fn provider(n: &Needed) -> &'static str {
    match n.name.as_str() {
        "CURVE_25519" | "CURVE_448" => "the curve25519 or openssl plugin",
        s if s.starts_with("AES_GCM") || s.starts_with("AES_CCM") => "the gcm or openssl plugin",
        s if s.starts_with("ECP") => "the openssl plugin",
        "CHACHA20_POLY1305" => "the chapoly or openssl plugin",
        _ => "an openssl, aes, sha2, hmac or gmp plugin",
    }
}

/// The configured proposals charon cannot negotiate: (config key, message) for each.
pub fn missing(
    ike: &[String],
    esp: &[String],
    backend: IpsecBackend,
    have: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<(String, String)> {
    let mut out = vec![];
    let lists = [
        ("ipsec.ike_proposals", ike, true),
        ("ipsec.esp_proposals", esp, false),
    ];
    for (key, list, is_ike) in lists {
        for (i, p) in list.iter().enumerate() {
            let lacking: Vec<String> = needed(p, is_ike, backend)
                .into_iter()
                .filter(|n| !have.get(n.kind).is_some_and(|s| s.contains(&n.name)))
                .map(|n| format!("{} ({}, from {})", n.name, n.token, provider(&n)))
                .collect();
            if !lacking.is_empty() {
                out.push((
                    format!("{key}[{i}]"),
                    format!(
                        "the running charon cannot do `{p}`: it has no {}; on Debian install libstrongswan-standard-plugins, or choose algorithms charon has (`swanctl --list-algs`)",
                        lacking.join(", ")
                    ),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(p: &str, ike: bool, b: IpsecBackend) -> Vec<String> {
        needed(p, ike, b)
            .into_iter()
            .map(|n| format!("{}:{}", n.kind, n.name))
            .collect()
    }

    #[test]
    fn the_default_proposals_need_gcm_x25519_and_sha384() {
        assert_eq!(
            names("aes256gcm16-prfsha384-x25519", true, IpsecBackend::Kernel),
            ["aead:AES_GCM_16", "prf:PRF_HMAC_SHA2_384", "dh:CURVE_25519"]
        );
        // Kernel ESP: the cipher is the kernel's; a PFS group is charon's.
        assert_eq!(
            names("aes256gcm16", false, IpsecBackend::Kernel),
            Vec::<String>::new()
        );
        assert_eq!(
            names("aes256gcm16-ecp384", false, IpsecBackend::Kernel),
            ["dh:ECP_384"]
        );
        assert_eq!(
            names("aes128-sha256", false, IpsecBackend::Libipsec),
            ["encryption:AES_CBC", "integrity:HMAC_SHA2_256_128"]
        );
        // A PRF follows from the integrity algorithm when none is named.
        assert_eq!(
            names("aes256-sha512-modp4096", true, IpsecBackend::Kernel),
            [
                "encryption:AES_CBC",
                "integrity:HMAC_SHA2_512_256",
                "dh:MODP_4096",
                "prf:PRF_HMAC_SHA2_512"
            ]
        );
        assert_eq!(
            names(
                "chacha20poly1305-prfsha256-ecp256bp",
                true,
                IpsecBackend::Kernel
            ),
            [
                "aead:CHACHA20_POLY1305",
                "prf:PRF_HMAC_SHA2_256",
                "dh:ECP_256_BP"
            ]
        );
    }

    #[test]
    fn a_charon_without_the_standard_plugins_is_told_what_it_lacks() {
        // What Debian's libstrongswan alone provides (no gcm, openssl or curve25519).
        let mut reply = Section::new();
        for (kind, algs) in [
            ("encryption", &["AES_CBC"][..]),
            ("integrity", &["HMAC_SHA2_256_128", "HMAC_SHA2_384_192"][..]),
            ("prf", &["PRF_HMAC_SHA2_256", "PRF_HMAC_SHA2_384"][..]),
            ("dh", &["MODP_2048", "MODP_3072"][..]),
        ] {
            let mut s = Section::new();
            for a in algs {
                s = s.kv(a, "aes");
            }
            reply = reply.section(kind, s);
        }
        let have = available(&reply);
        let ike = vec!["aes256gcm16-prfsha384-x25519".to_string()];
        let m = missing(&ike, &["aes256gcm16".into()], IpsecBackend::Kernel, &have);
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].0, "ipsec.ike_proposals[0]");
        assert!(
            m[0].1
                .contains("AES_GCM_16 (aes256gcm16, from the gcm or openssl plugin)"),
            "{}",
            m[0].1
        );
        assert!(m[0].1.contains("CURVE_25519 (x25519"), "{}", m[0].1);
        assert!(
            m[0].1.contains("libstrongswan-standard-plugins"),
            "{}",
            m[0].1
        );
        // What it has is fine.
        let ok = vec!["aes256-sha384-modp3072".to_string()];
        assert!(missing(&ok, &[], IpsecBackend::Kernel, &have).is_empty());
    }
}
