//! Site configuration: parse ([`load`]) and validate ([`validate`]) into a [`SiteConfig`].
//!
//! An invalid file yields a [`ConfigError`] listing every problem with file, line, column and
//! key path; nothing on the system is touched before a config is valid.

pub mod evpn;
mod load;
mod raw;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use evpn::{Evpn, EvpnRole};
pub use load::Locations;

pub use crate::base::kinds::{BackendChoice, DatapathChoice};

use crate::base::mtu::EspOverhead;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/l2s-vnf/site.toml";
pub const DEFAULT_BRIDGE: &str = "l2s0";
pub const DEFAULT_OVSDB: &str = "unix:/run/openvswitch/db.sock";
pub const DEFAULT_VICI: &str = "unix:///run/charon.vici";
pub const DEFAULT_PSK_FILE: &str = "/etc/l2s-vnf/psk";
pub const DEFAULT_CERT_FILE: &str = "/etc/l2s-vnf/site.crt";
pub const DEFAULT_KEY_FILE: &str = "/etc/l2s-vnf/site.key";
pub const DEFAULT_CA_FILE: &str = "/etc/l2s-vnf/ca.crt";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/l2s-vnf/control.sock";
pub const DEFAULT_VXLAN_PORT: u16 = 4789;
pub const DEFAULT_IKE_PROPOSALS: &[&str] = &["aes256gcm16-prfsha384-x25519"];
/// With a key exchange: every CHILD_SA rekey is keyed afresh (perfect forward secrecy); the
/// first CHILD_SA, made with IKE_AUTH, uses the IKE_SA's keys.
pub const DEFAULT_ESP_PROPOSALS: &[&str] = &["aes256gcm16-x25519"];
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_IKE_REKEY: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_CHILD_REKEY: Duration = Duration::from_secs(3600);
pub const DEFAULT_DPD_DELAY: Duration = Duration::from_secs(10);
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Key path, e.g. `vlan[1].id` (arrays counted from 0); empty for syntax errors.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    let mut s = format!(
        "invalid configuration ({} error{}):",
        issues.len(),
        if issues.len() == 1 { "" } else { "s" }
    );
    for i in issues {
        s.push_str("\n  ");
        s.push_str(&i.to_string());
    }
    s
}

impl ConfigError {
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(v) => v,
            ConfigError::Read { .. } => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MtuSetting {
    Auto,
    Fixed(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    /// This site's IKE identity (`[site] id`, default the name).
    pub id: String,
    pub underlay: String,
    pub vtep_ip: Option<IpAddr>,
    pub underlay_mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub bridge: String,
    pub datapath: DatapathChoice,
    /// Path of the OVSDB unix socket.
    pub ovsdb: PathBuf,
    /// Default storm-control limit of every VLAN's access ports (broadcast, multicast and
    /// unknown unicast, packets per second per port).
    pub bum_limit_pps: Option<u32>,
    /// Default limit on the remote MACs each VLAN's VXLAN device learns.
    pub mac_limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipsec {
    pub enabled: bool,
    pub insecure: bool,
    pub backend: BackendChoice,
    /// Path of charon's VICI unix socket.
    pub vici: PathBuf,
    pub psk_file: PathBuf,
    pub ike_proposals: Vec<String>,
    pub esp_proposals: Vec<EspOverhead>,
    /// IKE_SA rekey interval (IKEv2 rekeying; never reauthentication).
    pub ike_rekey_time: Duration,
    pub child_rekey_time: Duration,
    pub dpd_delay: Duration,
    /// The default authentication of every peer.
    pub auth: AuthMethod,
    /// Certificates, key, CAs and CRLs, read and checked (when any peer uses `pubkey`).
    pub pki: Option<Pki>,
}

impl Ipsec {
    /// The ESP proposals as charon reads them.
    pub fn esp_proposal_names(&self) -> Vec<String> {
        self.esp_proposals
            .iter()
            .map(|e| e.proposal.clone())
            .collect()
    }
}

/// How a peer is authenticated in IKE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    Psk,
    Pubkey,
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMethod::Psk => "psk",
            AuthMethod::Pubkey => "pubkey",
        })
    }
}

/// This site's X.509 credentials: where they are and what they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    pub files: crate::pki::PkiFiles,
    pub creds: crate::pki::Credentials,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub address: IpAddr,
    /// Effective PSK file (the peer's own, else `[ipsec].psk_file`). Never read for logging.
    pub psk_file: PathBuf,
    pub id: String,
    pub auth: AuthMethod,
    pub kind: PeerKind,
}

/// Where a peer comes from, and what its connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// A `[[peer]]` of the config: VXLAN to a site.
    Listed,
    /// A site found through EVPN: VXLAN, authenticated by its certificate's IP address.
    Discovered,
    /// A route reflector of `[evpn] reflectors`: BGP only, never in a flood list.
    Reflector,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vlan {
    pub id: u16,
    pub vni: u32,
    pub ports: Vec<String>,
    /// Names of the peers sharing this VLAN (resolved: all peers when not given).
    pub peers: Vec<String>,
    /// This VLAN's own storm-control limit (overrides `[switch] bum_limit_pps`).
    pub bum_limit_pps: Option<u32>,
    /// This VLAN's own limit on learned remote MACs (overrides `[switch] mac_limit`).
    pub mac_limit: Option<u32>,
    /// Remote MACs EVPN places behind a peer (MAC in lower case → peer name); never read from
    /// the file (`evpn::view` fills it in).
    pub remote_macs: std::collections::BTreeMap<String, String>,
}

/// Remote MACs a VLAN's VXLAN device learns when neither `[switch]` nor the VLAN says.
pub const DEFAULT_MAC_LIMIT: u32 = 4096;

impl Vlan {
    /// The storm-control limit that applies to this VLAN's access ports.
    pub fn bum_limit(&self, switch: &Switch) -> Option<u32> {
        self.bum_limit_pps.or(switch.bum_limit_pps)
    }

    /// How many remote MACs this VLAN's VXLAN device may learn; beyond it, frames to an
    /// unlearned MAC are flooded to the VLAN's peers.
    pub fn mac_limit(&self, switch: &Switch) -> u32 {
        self.mac_limit
            .or(switch.mac_limit)
            .unwrap_or(DEFAULT_MAC_LIMIT)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub control_socket: PathBuf,
    pub reconcile_interval: Duration,
    /// How often the daemon probes each peer's path (`None`: "off").
    pub probe_interval: Option<Duration>,
}

/// The control socket a config names, read leniently (for `reload` and `status`, which must
/// reach the daemon even when the file on disk has just been broken). The default when the
/// file cannot say.
pub fn control_socket_hint(path: &Path) -> PathBuf {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("daemon")?
                .get("control_socket")?
                .as_str()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// A validated site configuration.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub site: Site,
    pub switch: Switch,
    pub vxlan_port: u16,
    pub ipsec: Ipsec,
    pub mtu_access: MtuSetting,
    /// `access` may exceed what fits: the encapsulated packets are fragmented on the underlay.
    pub outer_fragmentation: bool,
    pub peers: Vec<Peer>,
    pub vlans: Vec<Vlan>,
    pub daemon: Daemon,
    pub metrics: Option<SocketAddr>,
    /// `[evpn]` when enabled: peers found through BGP EVPN.
    pub evpn: Option<Evpn>,
    /// Where each key is in the file, for errors found later (e.g. MTU vs. the real underlay).
    pub locations: Locations,
    /// What is valid but needs the operator's attention soon (a certificate expiring).
    pub warnings: Vec<ConfigIssue>,
}

impl SiteConfig {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_str_at(path, &text)
    }

    /// Validate config text as if it came from `path` (used by tests and `load`).
    pub fn from_str_at(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let (raw, locations, mut issues) = load::parse(path, text)?;
        let cfg = raw.and_then(|raw| validate::validate(raw, &locations, &mut issues));
        match cfg {
            Some(cfg) if issues.is_empty() => Ok(cfg),
            _ => {
                issues.sort_by_key(|i| (i.line, i.column));
                Err(ConfigError::Invalid(issues))
            }
        }
    }

    /// Each peer's name and VTEP address.
    pub fn peer_addresses(&self) -> Vec<(String, IpAddr)> {
        self.peers
            .iter()
            .map(|p| (p.name.clone(), p.address))
            .collect()
    }

    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// A located issue about a key of this config (for checks that need the live system).
    pub fn issue(&self, key: &str, message: impl Into<String>) -> ConfigIssue {
        self.locations.issue_at_value(key, message)
    }
}
