//! The site config exactly as written in TOML: every key of SPEC.md, nothing else.
//!
//! Numbers are read wide (`i64`) and enums as strings so that validation can say precisely
//! what is wrong and what is allowed; `validate.rs` turns this into a [`super::SiteConfig`].

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub site: RawSite,
    #[serde(default)]
    pub switch: RawSwitch,
    #[serde(default)]
    pub vxlan: RawVxlan,
    #[serde(default)]
    pub ipsec: RawIpsec,
    #[serde(default)]
    pub mtu: RawMtu,
    #[serde(default)]
    pub peer: Vec<RawPeer>,
    #[serde(default)]
    pub vlan: Vec<RawVlan>,
    #[serde(default)]
    pub daemon: RawDaemon,
    pub metrics: Option<RawMetrics>,
    pub evpn: Option<RawEvpn>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub name: String,
    pub id: Option<String>,
    pub underlay: String,
    pub vtep_ip: Option<String>,
    pub underlay_mtu: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSwitch {
    pub bridge: Option<String>,
    pub datapath: Option<String>,
    pub ovsdb: Option<String>,
    pub bum_limit_pps: Option<i64>,
    pub mac_limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVxlan {
    pub port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpsec {
    pub enabled: Option<bool>,
    pub insecure: Option<bool>,
    pub backend: Option<String>,
    pub vici: Option<String>,
    pub psk_file: Option<String>,
    pub ike_proposals: Option<Vec<String>>,
    pub esp_proposals: Option<Vec<String>>,
    pub ike_rekey_time: Option<String>,
    pub child_rekey_time: Option<String>,
    pub dpd_delay: Option<String>,
    pub auth: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub cacerts: Option<Vec<String>>,
    pub crls: Option<Vec<String>>,
}

/// `access = "auto"` or `access = 1400`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMtuAccess {
    Number(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMtu {
    pub access: Option<RawMtuAccess>,
    pub outer_fragmentation: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeer {
    pub name: String,
    pub address: String,
    pub psk_file: Option<String>,
    pub id: Option<String>,
    pub auth: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVlan {
    pub id: i64,
    pub vni: Option<i64>,
    #[serde(default)]
    pub ports: Vec<String>,
    pub peers: Option<Vec<String>>,
    pub bum_limit_pps: Option<i64>,
    pub mac_limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub control_socket: Option<String>,
    pub reconcile_interval: Option<String>,
    pub probe_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvpn {
    pub enabled: Option<bool>,
    pub role: Option<String>,
    pub asn: Option<i64>,
    pub reflectors: Option<Vec<String>>,
    pub listen_range: Option<String>,
    pub hold_time: Option<String>,
}
