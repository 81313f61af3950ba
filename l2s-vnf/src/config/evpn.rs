//! `[evpn]`: finding the peer sites through BGP EVPN (RFC 7432/8365) instead of listing them.
//!
//! Validated here as every other section is; what it turns into on the system (FRR's daemons,
//! their config) is in the `evpn` backend.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// Seconds BGP may stay silent before a site's routes are withdrawn, when the config does not
/// say (three keepalives of 3 s).
pub const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(9);
/// The federation's AS number when the config does not say (a private one).
pub const DEFAULT_ASN: u32 = 65000;
/// BGP allows 0 (no keepalives: a dead site is never withdrawn, refused here) or 3..=65535 s.
pub const HOLD_TIME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(3)..=Duration::from_secs(65_535);

/// What this instance is in the federation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvpnRole {
    /// A site: its VLANs' flood lists come from the routes it learns through the reflectors.
    Site,
    /// A route reflector: BGP and IPsec only, no bridge, no VLANs; it names no site.
    Reflector,
}

impl fmt::Display for EvpnRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EvpnRole::Site => "site",
            EvpnRole::Reflector => "reflector",
        })
    }
}

/// An address prefix (`listen_range`): where sites may connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address prefix, e.g. \"198.51.100.0/24\"");
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("`{s}`: an {} prefix is at most /{max}", fam(addr)));
        }
        let p = Prefix { addr, len };
        // Host bits set are a typo more often than an intent: say which network is meant.
        let net = Prefix {
            addr: p.network(),
            len,
        };
        if net.addr != addr {
            return Err(format!("`{s}` has host bits set; did you mean \"{net}\"?"));
        }
        Ok(p)
    }
}

impl Prefix {
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }
}

fn fam(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// A validated `[evpn]` section (present only when `enabled = true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evpn {
    pub role: EvpnRole,
    pub asn: u32,
    /// Site: the reflectors it peers with.
    pub reflectors: Vec<IpAddr>,
    /// Reflector: where sites may connect from.
    pub listen_range: Option<Prefix>,
    pub hold_time: Duration,
}

impl Evpn {
    /// BGP's keepalive interval: a third of the hold time, as RFC 4271 suggests.
    pub fn keepalive(&self) -> Duration {
        (self.hold_time / 3).max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_contain_and_refuse_host_bits() {
        let p: Prefix = "198.51.100.0/24".parse().unwrap();
        assert!(p.contains("198.51.100.77".parse().unwrap()));
        assert!(!p.contains("198.51.101.1".parse().unwrap()));
        assert!(!p.contains("2001:db8::1".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Prefix = "2001:db8:1::/48".parse().unwrap();
        assert!(v6.contains("2001:db8:1:ff::2".parse().unwrap()));
        assert!(!v6.contains("2001:db8:2::2".parse().unwrap()));
        assert_eq!(
            "198.51.100.1/24".parse::<Prefix>().unwrap_err(),
            "`198.51.100.1/24` has host bits set; did you mean \"198.51.100.0/24\"?"
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Prefix>().unwrap_err(),
            "`10.0.0.0/33`: an IPv4 prefix is at most /32"
        );
        assert!("10.0.0.0".parse::<Prefix>().is_err());
    }
}
