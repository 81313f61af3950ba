//! Semantic validation of a raw config: ranges, uniqueness, references, names, addresses,
//! files. Every check records its problem and validation carries on, so one run reports all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::Locations;
use super::raw::{RawConfig, RawMtuAccess};
use super::*;
use crate::base::mtu;
use crate::base::names::{vxlan_device_name, VXLAN_DEVICE_PREFIX};

pub const VLAN_ID_RANGE: std::ops::RangeInclusive<i64> = 1..=4094;
pub const VNI_RANGE: std::ops::RangeInclusive<i64> = 1..=16_777_215;
pub const UNDERLAY_MTU_RANGE: std::ops::RangeInclusive<i64> = 576..=65_535;
pub const RECONCILE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

struct Checker<'a> {
    locs: &'a Locations,
    issues: &'a mut Vec<ConfigIssue>,
}

impl Checker<'_> {
    fn err(&mut self, key: &str, msg: impl Into<String>) {
        self.issues.push(self.locs.issue_at_value(key, msg));
    }
}

/// Linux `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("interface name is empty".into());
    }
    if name.len() > 15 {
        return Some(format!(
            "interface name `{name}` is {} bytes; Linux allows at most 15",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("`{name}` is not a valid interface name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Some(format!(
            "interface name `{name}` contains {c:?}; '/', ':' and whitespace are not allowed"
        ));
    }
    None
}

fn unix_socket_path(value: &str, scheme: &str) -> Option<PathBuf> {
    let rest = value.strip_prefix(scheme)?;
    let p = Path::new(rest);
    (p.is_absolute()).then(|| p.to_path_buf())
}

fn identity_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(|c| c.is_control() || c == '"')
}

pub fn validate(
    raw: RawConfig,
    locs: &Locations,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SiteConfig> {
    let mut c = Checker { locs, issues };

    // [site]
    if !identity_ok(&raw.site.name) {
        c.err("site.name", "site name must be 1–255 printable characters");
    }
    let (site_id, site_id_key) = match raw.site.id.clone() {
        Some(id) => (id, "site.id"),
        None => (raw.site.name.clone(), "site.name"),
    };
    if raw.site.id.is_some() && !identity_ok(&site_id) {
        c.err("site.id", "IKE identity must be 1–255 printable characters");
    }
    if let Some(p) = interface_name_problem(&raw.site.underlay) {
        c.err("site.underlay", p);
    }
    let vtep_ip = raw
        .site
        .vtep_ip
        .as_deref()
        .and_then(|s| match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                c.err(
                    "site.vtep_ip",
                    format!("`{s}` cannot be a VTEP address (unspecified or multicast)"),
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                c.err(
                    "site.vtep_ip",
                    format!("`{s}` is not an IPv4 or IPv6 address"),
                );
                None
            }
        });
    let underlay_mtu = raw.site.underlay_mtu.and_then(|m| {
        if UNDERLAY_MTU_RANGE.contains(&m) {
            Some(m as u32)
        } else {
            c.err(
                "site.underlay_mtu",
                format!(
                    "{m} is out of range; allowed: {}..={}",
                    UNDERLAY_MTU_RANGE.start(),
                    UNDERLAY_MTU_RANGE.end()
                ),
            );
            None
        }
    });

    // [switch]
    let bridge = raw.switch.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into());
    if let Some(p) = interface_name_problem(&bridge) {
        c.err("switch.bridge", p);
    } else if bridge.starts_with(VXLAN_DEVICE_PREFIX) {
        c.err("switch.bridge", format!("bridge name must not start with `{VXLAN_DEVICE_PREFIX}` (reserved for VXLAN devices)"));
    }
    let datapath = match raw.switch.datapath.as_deref().unwrap_or("auto") {
        "auto" => DatapathChoice::Auto,
        "system" => DatapathChoice::System,
        "netdev" => DatapathChoice::Netdev,
        other => {
            c.err(
                "switch.datapath",
                format!("unknown datapath `{other}`; allowed: auto, system, netdev"),
            );
            DatapathChoice::Auto
        }
    };
    let ovsdb_s = raw.switch.ovsdb.unwrap_or_else(|| DEFAULT_OVSDB.into());
    let ovsdb = unix_socket_path(&ovsdb_s, "unix:").unwrap_or_else(|| {
        c.err(
            "switch.ovsdb",
            format!("`{ovsdb_s}` is not supported; use `unix:/absolute/path/db.sock`"),
        );
        PathBuf::new()
    });

    let bum_limit_pps = raw
        .switch
        .bum_limit_pps
        .and_then(|v| bum_limit(&mut c, "switch.bum_limit_pps", v));
    let mac_limit = raw
        .switch
        .mac_limit
        .and_then(|v| mac_limit_checked(&mut c, "switch.mac_limit", v));

    // [vxlan]
    // The path probes travel on the next port: it must exist and must not be IKE's either.
    let vxlan_port = match raw.vxlan.port {
        None => DEFAULT_VXLAN_PORT,
        Some(p @ (500 | 4500)) => {
            c.err(
                "vxlan.port",
                format!("{p} is IKE's port; pick another (default 4789)"),
            );
            DEFAULT_VXLAN_PORT
        }
        Some(p @ (499 | 4499)) => {
            c.err(
                "vxlan.port",
                format!(
                    "{p} puts the path probes on {}, IKE's port; pick another (default 4789)",
                    p + 1
                ),
            );
            DEFAULT_VXLAN_PORT
        }
        Some(65535) => {
            c.err(
                "vxlan.port",
                "65535 leaves no port for the path probes (they use the next one); allowed: 1..=65534",
            );
            DEFAULT_VXLAN_PORT
        }
        Some(p) if (1..=65534).contains(&p) => p as u16,
        Some(p) => {
            c.err(
                "vxlan.port",
                format!("{p} is out of range; allowed: 1..=65535"),
            );
            DEFAULT_VXLAN_PORT
        }
    };

    // [ipsec]
    let ri = raw.ipsec;
    let enabled = ri.enabled.unwrap_or(true);
    let insecure = ri.insecure.unwrap_or(false);
    if !enabled && !insecure {
        c.err("ipsec.enabled", "IPsec is disabled but `insecure = true` is not set: clear-text VXLAN is refused unless you opt in (lab use only)");
    }
    let backend = match ri.backend.as_deref().unwrap_or("auto") {
        "auto" => BackendChoice::Auto,
        "kernel" => BackendChoice::Kernel,
        "libipsec" => BackendChoice::Libipsec,
        other => {
            c.err(
                "ipsec.backend",
                format!("unknown backend `{other}`; allowed: auto, kernel, libipsec"),
            );
            BackendChoice::Auto
        }
    };
    let vici_s = ri.vici.unwrap_or_else(|| DEFAULT_VICI.into());
    let vici = unix_socket_path(&vici_s, "unix://").unwrap_or_else(|| {
        c.err(
            "ipsec.vici",
            format!("`{vici_s}` is not supported; use `unix:///absolute/path/charon.vici`"),
        );
        PathBuf::new()
    });
    let psk_default_explicit = ri.psk_file.is_some();
    let psk_file = PathBuf::from(ri.psk_file.unwrap_or_else(|| DEFAULT_PSK_FILE.into()));
    let ike_proposals = ri.ike_proposals.unwrap_or_else(|| {
        DEFAULT_IKE_PROPOSALS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if ike_proposals.is_empty() {
        c.err(
            "ipsec.ike_proposals",
            "at least one IKE proposal is required",
        );
    }
    for (i, p) in ike_proposals.iter().enumerate() {
        if let Err(e) = mtu::check_ike_proposal(p) {
            c.err(
                &format!("ipsec.ike_proposals[{i}]"),
                format!("IKE proposal `{p}`: {e}"),
            );
        }
    }
    let esp_raw = ri.esp_proposals.unwrap_or_else(|| {
        DEFAULT_ESP_PROPOSALS
            .iter()
            .map(|s| s.to_string())
            .collect()
    });
    if esp_raw.is_empty() {
        c.err(
            "ipsec.esp_proposals",
            "at least one ESP proposal is required",
        );
    }
    let mut esp_proposals = Vec::new();
    for (i, p) in esp_raw.iter().enumerate() {
        match mtu::parse_esp_proposal(p) {
            Ok(e) => esp_proposals.push(e),
            Err(e) => c.err(
                &format!("ipsec.esp_proposals[{i}]"),
                format!("ESP proposal `{p}`: {e}"),
            ),
        }
    }

    let mut duration = |key: &str,
                        v: Option<String>,
                        default: Duration,
                        range: std::ops::RangeInclusive<Duration>| match v {
        None => default,
        Some(s) => match humantime::parse_duration(&s) {
            Ok(d) if range.contains(&d) => d,
            Ok(_) => {
                c.err(
                    key,
                    format!(
                        "`{s}` is out of range; allowed: {}..={}",
                        humantime::format_duration(*range.start()),
                        humantime::format_duration(*range.end())
                    ),
                );
                default
            }
            Err(e) => {
                c.err(
                    key,
                    format!("`{s}` is not a duration ({e}); write e.g. \"1h\" or \"30s\""),
                );
                default
            }
        },
    };
    let ike_rekey_time = duration(
        "ipsec.ike_rekey_time",
        ri.ike_rekey_time,
        DEFAULT_IKE_REKEY,
        Duration::from_secs(10)..=Duration::from_secs(7 * 86400),
    );
    let child_rekey_time = duration(
        "ipsec.child_rekey_time",
        ri.child_rekey_time,
        DEFAULT_CHILD_REKEY,
        Duration::from_secs(10)..=Duration::from_secs(86400),
    );
    let dpd_delay = duration(
        "ipsec.dpd_delay",
        ri.dpd_delay,
        DEFAULT_DPD_DELAY,
        Duration::from_secs(1)..=Duration::from_secs(3600),
    );

    let auth = auth_method(&mut c, "ipsec.auth", ri.auth.as_deref()).unwrap_or(AuthMethod::Psk);
    let pki_files = crate::pki::PkiFiles {
        cert: PathBuf::from(ri.cert.unwrap_or_else(|| DEFAULT_CERT_FILE.into())),
        key: PathBuf::from(ri.key.unwrap_or_else(|| DEFAULT_KEY_FILE.into())),
        cacerts: ri
            .cacerts
            .unwrap_or_else(|| vec![DEFAULT_CA_FILE.into()])
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        crls: ri
            .crls
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
    };

    // [mtu]
    let mtu_access = match raw.mtu.access {
        None => MtuSetting::Auto,
        Some(RawMtuAccess::Word(w)) if w == "auto" => MtuSetting::Auto,
        Some(RawMtuAccess::Word(w)) => {
            c.err(
                "mtu.access",
                format!("`{w}` is not allowed; use \"auto\" or a number of bytes"),
            );
            MtuSetting::Auto
        }
        Some(RawMtuAccess::Number(n)) if n >= mtu::MIN_ACCESS_MTU as i64 && n <= 65_535 => {
            MtuSetting::Fixed(n as u32)
        }
        Some(RawMtuAccess::Number(n)) => {
            c.err(
                "mtu.access",
                format!(
                    "{n} is out of range; allowed: {}..=65535 (and no more than the path allows)",
                    mtu::MIN_ACCESS_MTU
                ),
            );
            MtuSetting::Auto
        }
    };

    // [[peer]]
    let mut peers = Vec::new();
    let mut peer_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut peer_addrs: BTreeMap<IpAddr, usize> = BTreeMap::new();
    let mut family: Option<(mtu::Family, String)> =
        vtep_ip.map(|ip| (mtu::Family::of(&ip), "site.vtep_ip".to_string()));
    for (i, rp) in raw.peer.into_iter().enumerate() {
        let key = |k: &str| format!("peer[{i}].{k}");
        if !identity_ok(&rp.name) {
            c.err(&key("name"), "peer name must be 1–255 printable characters");
        } else if rp.name == raw.site.name {
            c.err(
                &key("name"),
                format!("peer `{}` has this site's own name", rp.name),
            );
        } else if let Some(first) = peer_names.insert(rp.name.clone(), i) {
            c.err(
                &key("name"),
                format!("duplicate peer name `{}` (also peer[{first}])", rp.name),
            );
        }
        let address = match rp.address.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() => {
                c.err(
                    &key("address"),
                    format!("`{ip}` cannot be a peer VTEP address"),
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                c.err(
                    &key("address"),
                    format!("`{}` is not an IPv4 or IPv6 address", rp.address),
                );
                None
            }
        };
        if let Some(ip) = address {
            if Some(ip) == vtep_ip {
                c.err(
                    &key("address"),
                    format!("`{ip}` is this site's own VTEP address"),
                );
            }
            if let Some(first) = peer_addrs.insert(ip, i) {
                c.err(
                    &key("address"),
                    format!("address `{ip}` is already used by peer[{first}]"),
                );
            }
            match &family {
                Some((f, from)) if *f != mtu::Family::of(&ip) => c.err(
                    &key("address"),
                    format!("`{ip}` is {} but the VTEP family is {f} (from {from}); all VTEPs must be one family", mtu::Family::of(&ip)),
                ),
                Some(_) => {}
                None => family = Some((mtu::Family::of(&ip), key("address"))),
            }
        }
        let id_given = rp.id.is_some();
        let id = rp.id.unwrap_or_else(|| rp.name.clone());
        let peer_auth = auth_method(&mut c, &key("auth"), rp.auth.as_deref()).unwrap_or(auth);
        if !identity_ok(&id) {
            c.err(
                &key("id"),
                "IKE identity must be 1–255 printable characters",
            );
        } else if let (true, Err(e)) = (enabled, crate::pki::Identity::parse(&id)) {
            c.err(&key(if id_given { "id" } else { "name" }), e);
        }
        let own_psk = rp.psk_file.is_some();
        let psk = rp
            .psk_file
            .map(PathBuf::from)
            .unwrap_or_else(|| psk_file.clone());
        // A peer's own PSK file is always checked; the default one only when IPsec is on
        // and the peer authenticates with it.
        if own_psk || (enabled && peer_auth == AuthMethod::Psk) {
            let k = if own_psk {
                key("psk_file")
            } else {
                "ipsec.psk_file".to_string()
            };
            if let Some(problem) = psk_file_problem(&psk) {
                c.err(&k, problem);
            }
        }
        peers.push(Peer {
            name: rp.name,
            address: address.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            psk_file: psk,
            id,
            auth: peer_auth,
            kind: PeerKind::Listed,
        });
    }
    // Certificates: read and checked when some peer authenticates with them.
    let mut warnings = vec![];
    let evpn_on = raw.evpn.as_ref().and_then(|e| e.enabled).unwrap_or(false);
    let pki = if enabled
        && (peers.iter().any(|p| p.auth == AuthMethod::Pubkey)
            || ((peers.is_empty() || evpn_on) && auth == AuthMethod::Pubkey))
    {
        if let Err(e) = crate::pki::Identity::parse(&site_id) {
            c.err(site_id_key, e);
        }
        let (creds, findings) = crate::pki::check(
            &pki_files,
            &site_id,
            site_id_key,
            crate::base::clock::unix_now_signed(),
        );
        for f in findings {
            if f.warning {
                warnings.push(c.locs.issue_at_value(&f.key, f.message));
            } else {
                c.err(&f.key, f.message);
            }
        }
        creds.map(|creds| Pki {
            files: pki_files,
            creds,
        })
    } else {
        None
    };
    if psk_default_explicit && !enabled {
        if let Some(problem) = psk_file_problem(&psk_file) {
            c.err("ipsec.psk_file", problem);
        }
    }
    // Report a bad default PSK once, not once per peer.
    dedup_issues(c.issues);

    // [[vlan]]
    let mut vlans = Vec::new();
    let mut vlan_ids: BTreeMap<i64, usize> = BTreeMap::new();
    let mut vnis: BTreeMap<i64, usize> = BTreeMap::new();
    let mut port_owner: BTreeMap<String, usize> = BTreeMap::new();
    for (i, rv) in raw.vlan.into_iter().enumerate() {
        let key = |k: &str| format!("vlan[{i}].{k}");
        if !VLAN_ID_RANGE.contains(&rv.id) {
            c.err(
                &key("id"),
                format!("VLAN id {} is out of range; allowed: 1..=4094", rv.id),
            );
        } else if let Some(first) = vlan_ids.insert(rv.id, i) {
            c.err(
                &key("id"),
                format!("duplicate VLAN id {} (also vlan[{first}])", rv.id),
            );
        }
        let vni = rv.vni.unwrap_or(rv.id);
        let vni_key = if rv.vni.is_some() {
            key("vni")
        } else {
            key("id")
        };
        if rv.vni.is_none() && !VLAN_ID_RANGE.contains(&rv.id) {
            // Already reported as a bad VLAN id.
        } else if !VNI_RANGE.contains(&vni) {
            c.err(
                &vni_key,
                format!("VNI {vni} is out of range; allowed: 1..=16777215"),
            );
        } else if let Some(first) = vnis.insert(vni, i) {
            c.err(
                &vni_key,
                format!("VNI {vni} is already used by vlan[{first}]; VNIs must be unique"),
            );
        }
        let mut seen_here = BTreeSet::new();
        for (j, port) in rv.ports.iter().enumerate() {
            let pk = format!("vlan[{i}].ports[{j}]");
            if let Some(p) = interface_name_problem(port) {
                c.err(&pk, p);
                continue;
            }
            if port == &raw.site.underlay {
                c.err(
                    &pk,
                    format!("`{port}` is the underlay interface; it cannot be an access port"),
                );
            } else if port == &bridge {
                c.err(&pk, format!("`{port}` is the bridge's own name"));
            } else if port.starts_with(VXLAN_DEVICE_PREFIX) {
                c.err(&pk, format!("`{port}` starts with `{VXLAN_DEVICE_PREFIX}`, reserved for l2s-vnf's VXLAN devices"));
            } else if !seen_here.insert(port.clone()) {
                c.err(&pk, format!("`{port}` is listed twice in this VLAN"));
            } else if let Some(first) = port_owner.insert(port.clone(), i) {
                c.err(&pk, format!("`{port}` is already an access port of vlan[{first}]; an interface belongs to at most one VLAN"));
            }
        }
        let vlan_peers = match rv.peers {
            None => peers.iter().map(|p| p.name.clone()).collect(),
            Some(list) => {
                let mut seen = BTreeSet::new();
                for (j, name) in list.iter().enumerate() {
                    let pk = format!("vlan[{i}].peers[{j}]");
                    if !peer_names.contains_key(name) {
                        let known: Vec<&str> = peer_names.keys().map(String::as_str).collect();
                        c.err(
                            &pk,
                            format!(
                                "unknown peer `{name}`; defined peers: {}",
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    } else if !seen.insert(name.clone()) {
                        c.err(&pk, format!("peer `{name}` is listed twice"));
                    }
                }
                list
            }
        };
        let vlan_limit = rv
            .bum_limit_pps
            .and_then(|v| bum_limit(&mut c, &key("bum_limit_pps"), v));
        let vlan_mac_limit = rv
            .mac_limit
            .and_then(|v| mac_limit_checked(&mut c, &key("mac_limit"), v));
        vlans.push(Vlan {
            id: rv.id.clamp(0, 4095) as u16,
            vni: vni.clamp(0, 16_777_215) as u32,
            ports: rv.ports,
            peers: vlan_peers,
            bum_limit_pps: vlan_limit,
            mac_limit: vlan_mac_limit,
            remote_macs: Default::default(),
        });
    }
    // The generated VXLAN names must not collide with anything configured.
    for v in &vlans {
        let dev = vxlan_device_name(v.vni);
        if dev == raw.site.underlay {
            c.err(
                "site.underlay",
                format!("`{dev}` is the name of VLAN {}'s VXLAN device", v.id),
            );
        }
    }

    // [evpn]
    let evpn = raw.evpn.and_then(|re| {
        evpn_section(
            &mut c,
            re,
            EvpnContext {
                site_id: &site_id,
                site_id_key,
                ipsec: enabled,
                auth,
                vtep_ip,
                vlans: vlans.len(),
                peers: peers.len(),
            },
        )
    });

    // [daemon]
    let control_socket = PathBuf::from(
        raw.daemon
            .control_socket
            .unwrap_or_else(|| DEFAULT_CONTROL_SOCKET.into()),
    );
    if !control_socket.is_absolute() {
        c.err(
            "daemon.control_socket",
            format!("`{}` must be an absolute path", control_socket.display()),
        );
    }
    let reconcile_interval = match raw.daemon.reconcile_interval {
        None => DEFAULT_RECONCILE_INTERVAL,
        Some(s) => match humantime::parse_duration(&s) {
            Ok(d) if RECONCILE_RANGE.contains(&d) => d,
            Ok(_) => {
                c.err(
                    "daemon.reconcile_interval",
                    format!("`{s}` is out of range; allowed: 1s..=1h"),
                );
                DEFAULT_RECONCILE_INTERVAL
            }
            Err(e) => {
                c.err(
                    "daemon.reconcile_interval",
                    format!("`{s}` is not a duration ({e}); write e.g. \"30s\" or \"2m\""),
                );
                DEFAULT_RECONCILE_INTERVAL
            }
        },
    };

    let probe_interval = match raw.daemon.probe_interval.as_deref() {
        None => Some(DEFAULT_PROBE_INTERVAL),
        Some("off") => None,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if RECONCILE_RANGE.contains(&d) => Some(d),
            Ok(_) => {
                c.err(
                    "daemon.probe_interval",
                    format!("`{s}` is out of range; allowed: 1s..=1h, or \"off\""),
                );
                Some(DEFAULT_PROBE_INTERVAL)
            }
            Err(e) => {
                c.err(
                    "daemon.probe_interval",
                    format!("`{s}` is not a duration ({e}); write e.g. \"30s\", or \"off\""),
                );
                Some(DEFAULT_PROBE_INTERVAL)
            }
        },
    };

    // [metrics]
    let metrics = raw
        .metrics
        .and_then(|m| match m.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.err(
                    "metrics.listen",
                    format!(
                        "`{}` is not an address:port, e.g. \"127.0.0.1:9417\"",
                        m.listen
                    ),
                );
                None
            }
        });
    if let Some(a) = metrics.filter(|a| a.ip().is_unspecified()) {
        warnings.push(c.locs.issue_at_value(
            "metrics.listen",
            format!(
                "{a} serves the metrics on every interface, the untrusted underlay included; bind a management address (e.g. \"127.0.0.1:{}\")",
                a.port()
            ),
        ));
    }

    let outer_fragmentation = raw.mtu.outer_fragmentation.unwrap_or(false);
    if outer_fragmentation && mtu_access == MtuSetting::Auto {
        c.err(
            "mtu.outer_fragmentation",
            "outer_fragmentation = true needs a number for `access` (e.g. access = 1500, what the VNFs keep); with \"auto\" nothing is larger than the path",
        );
    }
    // An explicit access MTU checked against the configured underlay MTU (the discovered one
    // is checked when planning), unless fragmenting after encapsulation is allowed.
    if let (MtuSetting::Fixed(want), Some(u), false) =
        (mtu_access, underlay_mtu, outer_fragmentation)
    {
        let fam = family.as_ref().map(|(f, _)| *f).unwrap_or(mtu::Family::V4);
        let max = crate::base::mtu::max_access_mtu(u, fam, enabled, backend, &esp_proposals);
        if let Some(max) = max.filter(|m| want > m.access_mtu) {
            c.err(
                "mtu.access",
                crate::base::mtu::mtu_too_large(want, u, max.access_mtu),
            );
        }
    }
    if let Some(u) = underlay_mtu {
        let fam = family.as_ref().map(|(f, _)| *f).unwrap_or(mtu::Family::V4);
        if mtu::compute(&mtu::MtuInputs {
            underlay_mtu: u,
            family: fam,
            protection: mtu::Protection::None,
        })
        .is_none()
        {
            c.err(
                "site.underlay_mtu",
                format!("{u} leaves no room for VXLAN over {fam}"),
            );
        }
    }

    Some(SiteConfig {
        site: Site {
            name: raw.site.name,
            id: site_id,
            underlay: raw.site.underlay,
            vtep_ip,
            underlay_mtu,
        },
        switch: Switch {
            bridge,
            datapath,
            ovsdb,
            bum_limit_pps,
            mac_limit,
        },
        vxlan_port,
        ipsec: Ipsec {
            enabled,
            insecure,
            backend,
            vici,
            psk_file,
            ike_proposals,
            esp_proposals,
            ike_rekey_time,
            child_rekey_time,
            dpd_delay,
            auth,
            pki,
        },
        mtu_access,
        outer_fragmentation,
        peers,
        vlans,
        daemon: Daemon {
            control_socket,
            reconcile_interval,
            probe_interval,
        },
        metrics,
        evpn,
        locations: locs.clone(),
        warnings,
    })
}

/// What `[evpn]` is checked against from the rest of the config.
struct EvpnContext<'a> {
    site_id: &'a str,
    site_id_key: &'a str,
    ipsec: bool,
    auth: AuthMethod,
    vtep_ip: Option<IpAddr>,
    vlans: usize,
    peers: usize,
}

fn evpn_section(c: &mut Checker, re: super::raw::RawEvpn, cx: EvpnContext<'_>) -> Option<Evpn> {
    use super::evpn::{Prefix, DEFAULT_ASN, DEFAULT_HOLD_TIME, HOLD_TIME_RANGE};
    let role = match re.role.as_deref().unwrap_or("site") {
        "site" => EvpnRole::Site,
        "reflector" => EvpnRole::Reflector,
        other => {
            c.err(
                "evpn.role",
                format!("unknown role `{other}`; allowed: site, reflector"),
            );
            EvpnRole::Site
        }
    };
    let asn = match re.asn {
        None => DEFAULT_ASN,
        Some(a) if (1..=4_294_967_294).contains(&a) => a as u32,
        Some(a) => {
            c.err(
                "evpn.asn",
                format!("AS number {a} is out of range; allowed: 1..=4294967294"),
            );
            DEFAULT_ASN
        }
    };
    let hold_time = match re.hold_time.as_deref() {
        None => DEFAULT_HOLD_TIME,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if HOLD_TIME_RANGE.contains(&d) && d.subsec_nanos() == 0 => d,
            Ok(_) => {
                c.err(
                    "evpn.hold_time",
                    format!("`{s}` is out of range; allowed: whole seconds, 3s..=65535s (BGP's hold time)"),
                );
                DEFAULT_HOLD_TIME
            }
            Err(e) => {
                c.err(
                    "evpn.hold_time",
                    format!("`{s}` is not a duration ({e}); write e.g. \"9s\""),
                );
                DEFAULT_HOLD_TIME
            }
        },
    };
    let mut reflectors = vec![];
    for (i, r) in re.reflectors.iter().flatten().enumerate() {
        let key = format!("evpn.reflectors[{i}]");
        match r.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                c.err(&key, format!("`{r}` cannot be a reflector's address"));
            }
            Ok(ip) if Some(ip) == cx.vtep_ip => {
                c.err(&key, format!("`{r}` is this site's own VTEP address"));
            }
            Ok(ip) if reflectors.contains(&ip) => {
                c.err(&key, format!("`{r}` is listed twice"));
            }
            Ok(ip) => reflectors.push(ip),
            Err(_) => c.err(&key, format!("`{r}` is not an IPv4 or IPv6 address")),
        }
    }
    let listen_range = re
        .listen_range
        .as_deref()
        .and_then(|s| match s.parse::<Prefix>() {
            Ok(p) => Some(p),
            Err(e) => {
                c.err("evpn.listen_range", e);
                None
            }
        });
    if !re.enabled.unwrap_or(false) {
        return None;
    }
    match (cx.site_id.parse::<IpAddr>(), cx.vtep_ip) {
        (Err(_), _) => c.err(
            cx.site_id_key,
            format!("with EVPN a site is known by its VTEP address: its IKE identity must be that address (`id = \"<VTEP address>\"`), and its certificate must carry it as an IP subjectAltName; `{}` is not an address", cx.site_id),
        ),
        (Ok(id), Some(vtep)) if id != vtep => c.err(
            cx.site_id_key,
            format!("with EVPN the IKE identity must be the VTEP address {vtep}, not {id}"),
        ),
        _ => {}
    }
    if !cx.ipsec {
        c.err(
            "evpn.enabled",
            "EVPN needs IPsec (`[ipsec] enabled = true`): BGP to the reflectors and VXLAN to the sites it finds must never cross the underlay in clear text",
        );
    } else if cx.auth != AuthMethod::Pubkey {
        c.err(
            "evpn.enabled",
            "EVPN needs `[ipsec] auth = \"pubkey\"`: a site found through EVPN was configured by nobody, so a pre-shared key cannot vouch for it; only a certificate from the federation's CA (`cacerts`) carrying the site's VTEP address as an IP subjectAltName can",
        );
    }
    match role {
        EvpnRole::Site => {
            if reflectors.is_empty() && re.reflectors.as_ref().is_none_or(|r| r.is_empty()) {
                c.err(
                    "evpn.enabled",
                    "a site needs at least one route reflector: `reflectors = [\"198.51.100.10\"]`",
                );
            }
            if re.listen_range.is_some() {
                c.err(
                    "evpn.listen_range",
                    "`listen_range` is a reflector's setting; a site connects to its `reflectors`",
                );
            }
        }
        EvpnRole::Reflector => {
            if re.listen_range.is_none() {
                c.err(
                    "evpn.role",
                    "a reflector needs `listen_range`: the prefix sites may connect from, e.g. \"198.51.100.0/24\"",
                );
            }
            if re.reflectors.is_some() {
                c.err(
                    "evpn.reflectors",
                    "a reflector names no reflectors (redundant reflectors are each named by the sites)",
                );
            }
            if cx.vlans > 0 {
                c.err(
                    "evpn.role",
                    "a reflector has no bridge and no VLANs: remove the [[vlan]] tables (or make this a site)",
                );
            }
            if cx.peers > 0 {
                c.err(
                    "evpn.role",
                    "a reflector names no site: remove the [[peer]] tables; any site its CA vouches for inside `listen_range` may connect",
                );
            }
        }
    }
    Some(Evpn {
        role,
        asn,
        reflectors,
        listen_range,
        hold_time,
    })
}

fn auth_method(c: &mut Checker, key: &str, v: Option<&str>) -> Option<AuthMethod> {
    match v? {
        "psk" => Some(AuthMethod::Psk),
        "pubkey" => Some(AuthMethod::Pubkey),
        other => {
            c.err(
                key,
                format!(
                    "unknown authentication `{other}`; allowed: psk, pubkey (X.509 certificates)"
                ),
            );
            None
        }
    }
}

/// Storm-control limits a switch port can meaningfully enforce.
pub const BUM_LIMIT_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

fn bum_limit(c: &mut Checker, key: &str, v: i64) -> Option<u32> {
    limit_in(
        c,
        key,
        v,
        BUM_LIMIT_RANGE,
        |too_low| {
            if too_low {
                "no traffic at all"
            } else {
                "beyond any port's rate"
            }
        },
        "packets per second",
        "leave the key out for no limit",
    )
}

/// Remote MACs one VXLAN device may learn.
pub const MAC_LIMIT_RANGE: std::ops::RangeInclusive<i64> = 1..=1_000_000;

fn mac_limit_checked(c: &mut Checker, key: &str, v: i64) -> Option<u32> {
    limit_in(
        c,
        key,
        v,
        MAC_LIMIT_RANGE,
        |too_low| {
            if too_low {
                "no room for any remote MAC"
            } else {
                "more than a VXLAN device should hold"
            }
        },
        "MACs",
        &format!("default {}", super::DEFAULT_MAC_LIMIT),
    )
}

/// A limit within `range`, or an error that says what the value would mean.
fn limit_in(
    c: &mut Checker,
    key: &str,
    v: i64,
    range: std::ops::RangeInclusive<i64>,
    meaning: impl Fn(bool) -> &'static str,
    unit: &str,
    hint: &str,
) -> Option<u32> {
    if range.contains(&v) {
        return u32::try_from(v).ok();
    }
    c.err(
        key,
        format!(
            "{v} {unit} is {}; allowed: {}..={} ({hint})",
            meaning(v < *range.start()),
            range.start(),
            range.end()
        ),
    );
    None
}

fn dedup_issues(issues: &mut Vec<ConfigIssue>) {
    let mut seen = BTreeSet::new();
    issues.retain(|i| seen.insert((i.line, i.column, i.key.clone(), i.message.clone())));
}

/// A PSK file must exist, be a non-empty regular file, and not be readable by group/others.
/// Its content is never read into anything that could be logged.
pub fn psk_file_problem(path: &Path) -> Option<String> {
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!(
                "PSK file {shown} does not exist; create it with mode 0600"
            ))
        }
        Err(e) => return Some(format!("PSK file {shown} cannot be read: {e}")),
    };
    if !meta.is_file() {
        return Some(format!("PSK file {shown} is not a regular file"));
    }
    if meta.len() == 0 {
        return Some(format!("PSK file {shown} is empty"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Some(format!(
            "PSK file {shown} has mode {mode:04o}; it must not be accessible by group or others (chmod 600)"
        ));
    }
    // The key itself is read only to be measured, then wiped.
    let key = match std::fs::read(path) {
        Ok(k) => crate::pki::Secret::new(k),
        Err(e) => return Some(format!("PSK file {shown} cannot be read: {e}")),
    };
    let len = key.expose().trim_ascii_end().len();
    if len < MIN_PSK_BYTES {
        return Some(format!(
            "PSK file {shown} holds a {len}-byte key; a pre-shared key needs at least {MIN_PSK_BYTES} bytes (e.g. head -c 32 /dev/urandom | base64 > FILE)"
        ));
    }
    None
}

/// A pre-shared key shorter than this is refused (a guessable key gives an attacker the SAs).
pub const MIN_PSK_BYTES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn issues(text: &str) -> Vec<String> {
        match SiteConfig::from_str_at(Path::new("site.toml"), text) {
            Ok(_) => vec![],
            Err(e) => e.issues().iter().map(|i| i.to_string()).collect(),
        }
    }

    const HEAD: &str = "[site]\nname = \"site-a\"\nunderlay = \"eth1\"\nvtep_ip = \"192.0.2.1\"\nunderlay_mtu = 1500\n";

    #[test]
    fn metrics_on_every_interface_are_a_warning() {
        let text = format!(
            "{HEAD}[ipsec]\nenabled = false\ninsecure = true\n[metrics]\nlisten = \"0.0.0.0:9417\"\n"
        );
        let cfg = SiteConfig::from_str_at(Path::new("t.toml"), &text).unwrap();
        let w: Vec<String> = cfg.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(w, vec!["t.toml:10:10: metrics.listen: 0.0.0.0:9417 serves the metrics on every interface, the untrusted underlay included; bind a management address (e.g. \"127.0.0.1:9417\")"]);
        let local = text.replace("0.0.0.0", "127.0.0.1");
        let cfg = SiteConfig::from_str_at(Path::new("t.toml"), &local).unwrap();
        assert!(cfg.warnings.is_empty());
    }

    #[test]
    fn certificates_are_checked_where_the_config_names_them_and_no_psk_is_needed() {
        let text = format!(
            "{HEAD}[ipsec]\nauth = \"pubkey\"\ncert = \"/nonexistent/site.crt\"\nkey = \"/nonexistent/site.key\"\ncacerts = [\"/nonexistent/ca.crt\"]\npsk_file = \"/nonexistent/psk\"\n[[peer]]\nname = \"site-b\"\naddress = \"192.0.2.2\"\n[[peer]]\nname = \"site-c\"\naddress = \"192.0.2.3\"\nid = \"%any\"\n"
        );
        let got = issues(&text);
        let want = [
            "site.toml:8:8: ipsec.cert: certificate file /nonexistent/site.crt does not exist",
            "site.toml:9:7: ipsec.key: private key file /nonexistent/site.key does not exist",
            "site.toml:10:12: ipsec.cacerts[0]: CA certificate file /nonexistent/ca.crt does not exist",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert!(
            got.iter()
                .any(|g| g.starts_with("site.toml:18:6: peer[1].id:") && g.contains("%any")),
            "{got:#?}"
        );
        assert!(
            !got.iter().any(|g| g.contains("PSK file")),
            "no peer uses the PSK: {got:#?}"
        );
        // A peer on PSK brings the PSK check back; an unknown method is named.
        let text = text.replace("name = \"site-b\"\n", "name = \"site-b\"\nauth = \"psk\"\n")
            + "[[peer]]\nname = \"site-d\"\naddress = \"192.0.2.4\"\nauth = \"certs\"\n";
        let got = issues(&text);
        assert!(
            got.iter()
                .any(|g| g.contains("PSK file /nonexistent/psk does not exist")),
            "{got:#?}"
        );
        assert!(
            got.iter()
                .any(|g| g.contains("peer[2].auth: unknown authentication `certs`")),
            "{got:#?}"
        );
    }
}
