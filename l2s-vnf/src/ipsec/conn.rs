//! The desired IKEv2 connections, one per peer, and the VICI messages that load them.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::base::kinds::IpsecBackend;
use crate::base::names::POLICY_PRIORITY;
use crate::config::{AuthMethod, EvpnRole, PeerKind, SiteConfig};
use crate::ipsec::vici::Section;

pub const CONN_PREFIX: &str = "l2s-vnf:";
pub const CHILD_PREFIX: &str = "vxlan-";

/// IKE SA lifetimes: rekey (not reauthenticate) so traffic is never dropped.
pub const IKE_REKEY: &str = "4h";
pub const CHILD_REKEY: &str = "1h";
pub const DPD_DELAY: &str = "10s";

pub fn conn_name(bridge: &str, peer: &str) -> String {
    format!("{CONN_PREFIX}{bridge}:{peer}")
}

/// Whether a charon connection name is owned by the instance managing `bridge`.
pub fn owned_conn(name: &str, bridge: &str) -> bool {
    // Bridge names cannot contain ':', so the first ':' ends the bridge part.
    name.strip_prefix(CONN_PREFIX)
        .and_then(|r| r.split_once(':'))
        .is_some_and(|(b, _)| b == bridge)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
    /// Accepts only, from addresses it cannot name (a reflector's sites): never initiates.
    Listener,
}

/// What a connection's SAs carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carries {
    /// VXLAN and the path probes: all UDP between the two VTEPs.
    Vxlan,
    /// A site's BGP session to a route reflector: all TCP between the two.
    BgpToReflector,
    /// A reflector's BGP sessions with any site its CA vouches for inside `range`.
    BgpFromSites { range: String },
}

/// The name of a reflector's one connection for all its sites.
pub const SITES_CONN_PEER: &str = "evpn-sites";

/// One peer's connection as it should be in charon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConn {
    pub name: String,
    pub peer: String,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub local_id: String,
    pub remote_id: String,
    pub psk_file: PathBuf,
    /// A short digest of the PSK file's key as it is now (`None`: not read, or not PSK): part
    /// of the id the key has in charon, so that a changed key is seen as a change.
    pub psk_digest: Option<String>,
    /// How both ends authenticate (the peer's `auth`, else `[ipsec] auth`).
    pub auth: AuthMethod,
    pub backend: IpsecBackend,
    pub role: Role,
    pub ike_proposals: Vec<String>,
    pub esp_proposals: Vec<String>,
    /// Timing overrides for tests (`None` = the defaults above).
    pub lifetimes: Lifetimes,
    pub carries: Carries,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetimes {
    pub ike_rekey: String,
    pub child_rekey: String,
    pub dpd_delay: String,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ike_rekey: IKE_REKEY.into(),
            child_rekey: CHILD_REKEY.into(),
            dpd_delay: DPD_DELAY.into(),
        }
    }
}

/// The lower VTEP address initiates.
pub fn role(local: IpAddr, remote: IpAddr) -> Role {
    if local < remote {
        Role::Initiator
    } else {
        Role::Responder
    }
}

impl Lifetimes {
    pub fn from_config(cfg: &SiteConfig) -> Self {
        let secs = |d: std::time::Duration| format!("{}s", d.as_secs());
        Lifetimes {
            ike_rekey: secs(cfg.ipsec.ike_rekey_time),
            child_rekey: secs(cfg.ipsec.child_rekey_time),
            dpd_delay: secs(cfg.ipsec.dpd_delay),
        }
    }
}

pub fn desired_conns(cfg: &SiteConfig, vtep: IpAddr, backend: IpsecBackend) -> Vec<DesiredConn> {
    let lifetimes = Lifetimes::from_config(cfg);
    let esp = cfg.ipsec.esp_proposal_names();
    let reflector = cfg
        .evpn
        .as_ref()
        .filter(|e| e.role == EvpnRole::Reflector)
        .map(|e| DesiredConn {
            name: conn_name(&cfg.switch.bridge, SITES_CONN_PEER),
            peer: SITES_CONN_PEER.into(),
            local: vtep,
            remote: if vtep.is_ipv4() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                IpAddr::from([0u16; 8])
            },
            local_id: cfg.site.id.clone(),
            remote_id: "%any".into(),
            psk_file: cfg.ipsec.psk_file.clone(),
            psk_digest: None,
            auth: AuthMethod::Pubkey,
            backend,
            role: Role::Listener,
            ike_proposals: cfg.ipsec.ike_proposals.clone(),
            esp_proposals: esp.clone(),
            lifetimes: lifetimes.clone(),
            carries: Carries::BgpFromSites {
                range: e
                    .listen_range
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| vtep.to_string()),
            },
        });
    cfg.peers
        .iter()
        .map(|p| DesiredConn {
            name: conn_name(&cfg.switch.bridge, &p.name),
            peer: p.name.clone(),
            local: vtep,
            remote: p.address,
            local_id: cfg.site.id.clone(),
            remote_id: p.id.clone(),
            psk_file: p.psk_file.clone(),
            psk_digest: (p.auth == AuthMethod::Psk)
                .then(|| psk_digest(&p.psk_file))
                .flatten(),
            auth: p.auth,
            backend,
            // A site always opens its session to a reflector (which cannot name it).
            role: match p.kind {
                PeerKind::Reflector => Role::Initiator,
                PeerKind::Listed | PeerKind::Discovered => role(vtep, p.address),
            },
            ike_proposals: cfg.ipsec.ike_proposals.clone(),
            esp_proposals: esp.clone(),
            lifetimes: lifetimes.clone(),
            carries: match p.kind {
                PeerKind::Reflector => Carries::BgpToReflector,
                PeerKind::Listed | PeerKind::Discovered => Carries::Vxlan,
            },
        })
        .chain(reflector)
        .collect()
}

/// 32 bits of a SHA-256 over the key (domain-separated): enough to tell one key from the
/// next, too little to say anything about a key of at least 16 bytes. The key is wiped.
pub fn psk_digest(path: &std::path::Path) -> Option<String> {
    let raw = crate::pki::Secret::new(std::fs::read(path).ok()?);
    let mut h = openssl::sha::Sha256::new();
    h.update(b"l2s-vnf psk\0");
    h.update(raw.expose().trim_ascii_end());
    Some(h.finish()[..4].iter().map(|b| format!("{b:02x}")).collect())
}

fn host_ts(ip: IpAddr, proto: &str) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}[{proto}]")
}

impl Carries {
    /// The protocol the traffic selectors cover.
    fn proto(&self) -> &'static str {
        match self {
            Carries::Vxlan => "udp",
            Carries::BgpToReflector | Carries::BgpFromSites { .. } => "tcp",
        }
    }
}

impl DesiredConn {
    /// The CHILD_SA section (without name).
    fn child(&self) -> Section {
        let initiator = self.role == Role::Initiator;
        Section::new()
            .kv(
                "mode",
                match self.backend {
                    IpsecBackend::Kernel => "transport",
                    IpsecBackend::Libipsec => "tunnel",
                },
            )
            .list("local_ts", [host_ts(self.local, self.carries.proto())])
            .list(
                "remote_ts",
                [match &self.carries {
                    // Whichever site it is: transport mode between the two hosts.
                    Carries::BgpFromSites { .. } => "dynamic[tcp]".to_string(),
                    c => host_ts(self.remote, c.proto()),
                }],
            )
            .list("esp_proposals", &self.esp_proposals)
            .kv("rekey_time", &self.lifetimes.child_rekey)
            .kv("priority", POLICY_PRIORITY.to_string())
            .kv("start_action", if initiator { "start" } else { "none" })
            .kv("dpd_action", if initiator { "restart" } else { "clear" })
            .kv("close_action", "none")
    }

    fn ike(&self, child_name: &str) -> Section {
        let initiator = self.role == Role::Initiator;
        let mut s = Section::new()
            .kv("version", "2")
            .list("local_addrs", [self.local.to_string()])
            .list(
                "remote_addrs",
                [match &self.carries {
                    Carries::BgpFromSites { range } => range.clone(),
                    _ => self.remote.to_string(),
                }],
            )
            .list("proposals", &self.ike_proposals)
            .kv("rekey_time", &self.lifetimes.ike_rekey)
            .kv("reauth_time", "0")
            .kv("dpd_delay", &self.lifetimes.dpd_delay)
            .kv("unique", "replace")
            .kv("mobike", "no")
            .kv("keyingtries", if initiator { "0" } else { "1" });
        if self.backend == IpsecBackend::Libipsec {
            // kernel-libipsec always encapsulates ESP in UDP 4500.
            s = s.kv("encap", "yes");
        }
        // With certificates, charon picks this site's certificate by its identity among the
        // ones loaded over VICI (the newest first) and checks the peer's against the loaded
        // CAs and CRLs. No certificate is named here: a rotation or CA rollover then changes
        // credentials only, never the connection, and established SAs stay untouched.
        let auth = self.auth.to_string();
        s.section(
            "local",
            Section::new().kv("auth", &auth).kv("id", &self.local_id),
        )
        .section(
            "remote",
            Section::new().kv("auth", &auth).kv("id", &self.remote_id),
        )
        .section("children", Section::new().section(child_name, self.child()))
    }

    /// A short, stable hash of every parameter (FNV-1a over the rendered message).
    pub fn fingerprint(&self) -> String {
        crate::base::names::short_hash(&self.ike("vxlan").to_string())
    }

    /// The id of this connection's PSK in charon: the connection's name, and the key's
    /// digest when known (`l2s-vnf:l2s0:site-b#1a2b3c4d`).
    pub fn shared_key_id(&self) -> String {
        match &self.psk_digest {
            Some(d) => format!("{}#{d}", self.name),
            None => self.name.clone(),
        }
    }

    pub fn child_name(&self) -> String {
        format!("{CHILD_PREFIX}{}", self.fingerprint())
    }

    /// The `load-conn` body: a section named after the connection.
    pub fn message(&self) -> Section {
        self.ike(&self.child_name())
    }
}
