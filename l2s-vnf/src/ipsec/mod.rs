//! IPsec between sites: one IKEv2 connection per peer through charon's VICI.
//!
//! Each connection protects exactly the VXLAN traffic between the two VTEPs (traffic selectors
//! `local/32[udp]` ↔ `remote/32[udp]`; `[udp/4789]` would miss fragments). Mode is transport
//! with the kernel backend and tunnel with kernel-libipsec (which cannot do transport).
//!
//! Ownership: connections are named `l2s-vnf:<bridge>:<peer>`; shared keys carry the same id.
//! Nothing else in charon is touched. The CHILD_SA is named `vxlan-<fingerprint>`, a hash of
//! every connection parameter (never of the PSK), so that a config change is visible as a
//! change and an unchanged config is left alone.
//!
//! Initiator rule: the site with the lower VTEP address initiates (`start_action = start`,
//! retrying forever, restarting on DPD timeout); the other only responds. A peer that comes
//! later is reached by the initiator's retries; `unique = replace` removes duplicate IKE_SAs
//! should both ever initiate.
//!
//! No end restarts an IKE_SA that its peer closed (`close_action = none`): a peer deletes
//! one of two duplicate IKE_SAs under `unique = replace`, and a restart on that delete makes
//! a new duplicate, which the peer replaces again — an IKE duel that never ends. The daemon
//! initiates instead, and only when a connection has no IKE_SA at all: the initiator at once,
//! the responder only after the initiator had time to (see `daemon::Initiations`).

pub mod algorithms;
pub mod authlog;
pub mod credentials;
pub mod execute;
pub mod observed;
pub mod vici;

pub use credentials::IpsecError;
pub use execute::execute;
pub use observed::ObservedIpsec;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::base::kinds::IpsecBackend;
use crate::base::names::POLICY_PRIORITY;
use crate::config::{AuthMethod, SiteConfig};
use crate::ipsec::vici::Section;
use crate::pki::Credentials;

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
}

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
            role: role(vtep, p.address),
            ike_proposals: cfg.ipsec.ike_proposals.clone(),
            esp_proposals: cfg
                .ipsec
                .esp_proposals
                .iter()
                .map(|e| e.proposal.clone())
                .collect(),
            lifetimes: lifetimes.clone(),
        })
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

fn host_ts(ip: IpAddr) -> String {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    format!("{ip}/{bits}[udp]")
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
            .list("local_ts", [host_ts(self.local)])
            .list("remote_ts", [host_ts(self.remote)])
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
            .list("remote_addrs", [self.remote.to_string()])
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
        let text = self.ike("vxlan").to_string();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{:08x}", h as u32)
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

/// This site's certificate credentials as they should be in charon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredCreds {
    pub bridge: String,
    pub creds: Credentials,
}

impl DesiredCreds {
    pub fn from_config(cfg: &SiteConfig) -> Option<Self> {
        let pki = cfg.ipsec.pki.as_ref()?;
        cfg.peers
            .iter()
            .any(|p| p.auth == AuthMethod::Pubkey)
            .then(|| DesiredCreds {
                bridge: cfg.switch.bridge.clone(),
                creds: pki.creds.clone(),
            })
    }

    /// The charon authority of each trusted CA, named after its content (a CA added or
    /// removed is an authority loaded or unloaded; the others stay as they are).
    pub fn authorities(&self) -> Vec<(String, &crate::pki::CaCert)> {
        self.creds
            .cas
            .iter()
            .map(|ca| (authority_name(&self.bridge, &ca.digest), ca))
            .collect()
    }
}

pub fn authority_name(bridge: &str, digest: &str) -> String {
    format!("{CONN_PREFIX}{bridge}:ca-{digest}")
}

/// What charon holds of this site's credentials (each `None`: not known).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeldCreds<'a> {
    /// Our certification authorities.
    pub authorities: Option<&'a [String]>,
    /// Ids of the private keys loaded over VICI.
    pub key_ids: Option<&'a [String]>,
    /// The certificates charon holds for this site's identity (DER): ours now, and earlier
    /// ones (charon cannot forget a certificate).
    pub own_certs: Option<&'a [Vec<u8>]>,
    /// The revocation lists charon holds (DER).
    pub crls: Option<&'a [Vec<u8>]>,
}

/// Credential changes, from what charon holds: everything is (re)loaded when charon lacks our
/// key, one of our CAs, our certificate (a rotation or renewal) or one of our CRLs (a newer
/// list); authorities no longer configured are unloaded, and so are the keys of this site's
/// earlier certificates (a retired key must not authenticate us).
pub fn diff_creds(
    desired: Option<&DesiredCreds>,
    held: HeldCreds<'_>,
    bridge: &str,
) -> (Vec<IpsecChange>, Vec<IpsecChange>) {
    let (mut load, mut unload) = (vec![], vec![]);
    let authorities = held.authorities.unwrap_or(&[]);
    if let Some(d) = desired {
        let wanted = d.authorities();
        let missing_key = held.key_ids.is_some_and(|k| !k.contains(&d.creds.key_id));
        let missing_ca = wanted.iter().any(|(n, _)| !authorities.contains(n));
        let missing_cert = held
            .own_certs
            .is_some_and(|c| !c.contains(&d.creds.cert_der));
        let missing_crl = held.crls.is_some_and(|held| {
            d.creds
                .crls
                .iter()
                .any(|ours| !held.iter().any(|h| crate::pki::crl_covers(h, ours)))
        });
        let why = if missing_key {
            Some("private key not in charon")
        } else if missing_ca {
            Some("CA not in charon")
        } else if missing_cert {
            Some("certificate not in charon")
        } else if missing_crl {
            Some("CRL not in charon")
        } else {
            None
        };
        if let Some(why) = why {
            load.push(IpsecChange::LoadCreds {
                creds: Box::new(d.clone()),
                why,
            });
        }
    }
    let wanted: Vec<String> = desired
        .map(|d| d.authorities().into_iter().map(|(n, _)| n).collect())
        .unwrap_or_default();
    for a in authorities {
        if owned_conn(a, bridge) && !wanted.contains(a) {
            unload.push(IpsecChange::UnloadAuthority { name: a.clone() });
        }
    }
    if let (Some(keys), Some(certs)) = (held.key_ids, held.own_certs) {
        let ours = desired.map(|d| d.creds.key_id.as_str());
        let mut retired: Vec<String> = certs
            .iter()
            .filter_map(|c| crate::pki::key_id_of_cert(c))
            .filter(|id| Some(id.as_str()) != ours && keys.contains(id))
            .collect();
        retired.sort();
        retired.dedup();
        unload.extend(retired.into_iter().map(|id| IpsecChange::UnloadKey { id }));
    }
    (load, unload)
}

/// How an IKE_SA is authenticated again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reauth {
    /// charon's own re-authentication, the new IKE_SA built before the old one goes: this
    /// site's key changed, and the peers accept the new one.
    InPlace,
    /// The IKE_SA ended first, then started again by the initiator (`initiate`: the child to
    /// start, at the initiator only): a peer that holds only the old pre-shared key must be
    /// shut out, which a make-before-break re-authentication that fails would not do (the old
    /// IKE_SA would stay).
    EndFirst { initiate: Option<String> },
}

/// A connection as charon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedConn {
    pub name: String,
    pub children: Vec<String>,
}

/// State of a peer's SAs, from `list-sas`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SaState {
    pub ike_state: Option<String>,
    pub child_state: Option<String>,
    pub established_secs: Option<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
    /// Seconds until charon rekeys the IKE_SA.
    pub ike_rekey_in_secs: Option<u64>,
    /// Seconds until charon rekeys the installed CHILD_SA.
    pub child_rekey_in_secs: Option<u64>,
}

impl SaState {
    pub fn up(&self) -> bool {
        self.ike_state.as_deref() == Some("ESTABLISHED")
            && self.child_state.as_deref() == Some("INSTALLED")
    }
}

/// Summaries of `list-sas` events per connection name: the state of the best IKE_SA (and its
/// best child), the traffic of all of them.
pub fn sa_states(sas: &[(String, Section)]) -> BTreeMap<String, SaState> {
    let mut out: BTreeMap<String, SaState> = BTreeMap::new();
    for (conn, ike) in sas {
        let num = |s: &Section, k: &str| s.str(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let mut st = SaState {
            ike_state: ike.str("state"),
            established_secs: ike.str("established").and_then(|v| v.parse().ok()),
            ike_rekey_in_secs: ike.str("rekey-time").and_then(|v| v.parse().ok()),
            ..Default::default()
        };
        if let Some(children) = ike.sub("child-sas") {
            for (_, item) in &children.items {
                if let crate::ipsec::vici::Item::Section(c) = item {
                    let cs = c.str("state");
                    if st.child_state.as_deref() != Some("INSTALLED") {
                        st.child_rekey_in_secs = c.str("rekey-time").and_then(|v| v.parse().ok());
                        st.child_state = cs;
                    }
                    st.bytes_in += num(c, "bytes-in");
                    st.bytes_out += num(c, "bytes-out");
                    st.packets_in += num(c, "packets-in");
                    st.packets_out += num(c, "packets-out");
                }
            }
        }
        // Two IKE_SAs may briefly serve one peer (a make-before-break reauthentication, both
        // ends initiating at once): the state is the best one's, the traffic is everything
        // the peer's SAs carried.
        let entry = out.entry(conn.clone()).or_default();
        let carried = (
            entry.bytes_in + st.bytes_in,
            entry.bytes_out + st.bytes_out,
            entry.packets_in + st.packets_in,
            entry.packets_out + st.packets_out,
        );
        if !entry.up() {
            *entry = st;
        }
        (
            entry.bytes_in,
            entry.bytes_out,
            entry.packets_in,
            entry.packets_out,
        ) = carried;
    }
    out
}

/// One IPsec step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpsecChange {
    Load {
        conn: Box<DesiredConn>,
        why: &'static str,
    },
    /// No IKE_SA exists for a loaded connection (the peer was not ready when the initiator
    /// tried, or the SA died): start one.
    Initiate {
        name: String,
        child: String,
    },
    Unload {
        name: String,
    },
    /// The connection is loaded but charon lacks its pre-shared key (lost, or changed in its
    /// file).
    LoadKey {
        conn: Box<DesiredConn>,
    },
    /// A key charon holds for one of our connections that is not the one in its file now.
    UnloadSharedKey {
        id: String,
    },
    /// The connection's IKE_SA authenticated with a key that changed (its pre-shared key, or
    /// this site's private key): authenticate again, so that whoever holds only the old key
    /// is shut out now, not at the next rekey (there is none: `reauth_time = 0`).
    Reauthenticate {
        name: String,
        why: &'static str,
        how: Reauth,
    },
    /// Hand charon this site's certificate, key, CAs and CRLs.
    LoadCreds {
        creds: Box<DesiredCreds>,
        why: &'static str,
    },
    /// A CA no longer configured.
    UnloadAuthority {
        name: String,
    },
    /// The private key of one of this site's earlier certificates (rotated away).
    UnloadKey {
        id: String,
    },
    /// A peer whose certificate one of our CRLs revokes still has an IKE_SA: end it (charon
    /// refuses the peer at every new authentication).
    TerminateRevoked {
        name: String,
        why: String,
    },
}

impl fmt::Display for IpsecChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpsecChange::Load { conn, why } => {
                let sign = if *why == "new" { '+' } else { '~' };
                write!(
                    f,
                    "{sign} ipsec {} -> {} ({}, {:?}, {why})",
                    conn.name,
                    conn.remote,
                    match conn.backend {
                        IpsecBackend::Kernel => "transport",
                        IpsecBackend::Libipsec => "tunnel",
                    },
                    conn.role
                )
            }
            IpsecChange::Initiate { name, .. } => write!(f, "~ ipsec {name}: initiate (no SA)"),
            IpsecChange::Unload { name } => write!(f, "- ipsec {name}"),
            IpsecChange::LoadKey { conn } => {
                write!(f, "~ ipsec {}: pre-shared key loaded again", conn.name)
            }
            IpsecChange::LoadCreds { creds, why } => write!(
                f,
                "+ ipsec credentials: certificate \"{}\" (serial {}), its key, {} CA{}, {} CRL{} ({why})",
                creds.creds.cert.subject,
                creds.creds.cert.serial,
                creds.creds.cas.len(),
                if creds.creds.cas.len() == 1 { "" } else { "s" },
                creds.creds.crls.len(),
                if creds.creds.crls.len() == 1 { "" } else { "s" },
            ),
            IpsecChange::UnloadAuthority { name } => write!(f, "- ipsec CA {name}"),
            IpsecChange::UnloadSharedKey { id } => {
                let name = id.split('#').next().unwrap_or(id);
                write!(f, "- ipsec {name}: its earlier pre-shared key")
            }
            IpsecChange::Reauthenticate { name, why, .. } => {
                write!(f, "~ ipsec {name}: re-authenticate ({why})")
            }
            IpsecChange::UnloadKey { id } => {
                write!(f, "- ipsec private key {id} (of an earlier certificate)")
            }
            IpsecChange::TerminateRevoked { name, why } => {
                write!(f, "- ipsec {name}: IKE_SA ended ({why})")
            }
        }
    }
}

/// Diff desired connections against what charon has loaded (owned ones only) and the IKE_SAs
/// that exist (`with_sa`: connection names with an IKE_SA in any state).
pub fn diff(
    desired: &[DesiredConn],
    observed: &[ObservedConn],
    with_sa: &[String],
    keys: Option<&[String]>,
    bridge: &str,
) -> Vec<IpsecChange> {
    let mut out = vec![];
    for d in desired {
        let initiate = IpsecChange::Initiate {
            name: d.name.clone(),
            child: d.child_name(),
        };
        let has_sa = with_sa.contains(&d.name);
        let loaded = observed
            .iter()
            .any(|o| o.name == d.name && o.children.contains(&d.child_name()));
        // A key cleared in charon (`swanctl --load-creds --clear`) breaks the next IKE
        // authentication; a loaded connection gets its key back. A key changed in its file
        // has another id: loaded, the earlier one taken away, the IKE_SA re-authenticated.
        let want_key = d.shared_key_id();
        let earlier: Vec<&String> = match (d.auth, keys) {
            (AuthMethod::Psk, Some(k)) => k
                .iter()
                .filter(|id| {
                    **id != want_key
                        && (**id == d.name
                            || id.strip_prefix(&d.name).is_some_and(|r| r.starts_with('#')))
                })
                .collect(),
            _ => vec![],
        };
        if loaded && d.auth == AuthMethod::Psk && keys.is_some_and(|k| !k.contains(&want_key)) {
            out.push(IpsecChange::LoadKey {
                conn: Box::new(d.clone()),
            });
        }
        let changed_key = loaded && !earlier.is_empty();
        out.extend(
            earlier
                .into_iter()
                .map(|id| IpsecChange::UnloadSharedKey { id: id.clone() }),
        );
        if changed_key && has_sa {
            out.push(IpsecChange::Reauthenticate {
                name: d.name.clone(),
                why: "its pre-shared key changed",
                how: Reauth::EndFirst {
                    initiate: (d.role == Role::Initiator).then(|| d.child_name()),
                },
            });
        }
        match observed.iter().find(|o| o.name == d.name) {
            None => {
                out.push(IpsecChange::Load {
                    conn: Box::new(d.clone()),
                    why: "new",
                });
                // The initiator's load starts it; a responder kicks once in case the
                // initiator already gave up on us.
                if d.role == Role::Responder && !has_sa {
                    out.push(initiate);
                }
            }
            Some(o) if !o.children.contains(&d.child_name()) => {
                out.push(IpsecChange::Load {
                    conn: Box::new(d.clone()),
                    why: "config changed",
                });
                if d.role == Role::Responder && !has_sa {
                    out.push(initiate);
                }
            }
            Some(_) if !has_sa => out.push(initiate),
            Some(_) => {}
        }
    }
    for o in observed {
        if owned_conn(&o.name, bridge) && !desired.iter().any(|d| d.name == o.name) {
            out.push(IpsecChange::Unload {
                name: o.name.clone(),
            });
        }
    }
    out
}

/// Every IPsec change for this site: `desired` is the connections and credentials wanted
/// (`None`: insecure lab mode, nothing of ours may stay). Credentials come before the
/// connections that use them, stale CAs and keys after.
pub fn diff_site(
    desired: Option<(&[DesiredConn], Option<&DesiredCreds>)>,
    obs: &ObservedIpsec,
    bridge: &str,
) -> Vec<IpsecChange> {
    let mut out = vec![];
    let Some((conns, creds)) = desired else {
        if let Some(observed) = &obs.conns {
            out.extend(diff(&[], observed, &[], None, bridge));
        }
        let (_, unload) = diff_creds(None, obs.held_creds(), bridge);
        out.extend(unload);
        return out;
    };
    let (load, unload) = diff_creds(creds, obs.held_creds(), bridge);
    out.extend(load);
    let observed = obs.conns.as_deref().unwrap_or(&[]);
    let with_sa: Vec<String> = obs.sas.keys().cloned().collect();
    out.extend(diff(conns, observed, &with_sa, obs.keys.as_deref(), bridge));
    // A revoked peer's IKE_SA ends now: its CRL matters to charon only at the next
    // authentication.
    for (peer, why) in &obs.revoked {
        let name = conn_name(bridge, peer);
        if obs.sas.contains_key(&name) {
            out.push(IpsecChange::TerminateRevoked {
                name,
                why: why.clone(),
            });
        }
    }
    // This site's key was replaced (a rotation): the IKE_SAs it authenticated are
    // authenticated again once the old key has left charon — with both keys held,
    // charon may well sign with the old one and present the old certificate.
    let rotated = unload
        .iter()
        .any(|c| matches!(c, IpsecChange::UnloadKey { .. }));
    out.extend(unload);
    if rotated {
        for c in conns.iter().filter(|c| c.auth == AuthMethod::Pubkey) {
            if obs.sas.contains_key(&c.name) {
                out.push(IpsecChange::Reauthenticate {
                    name: c.name.clone(),
                    why: "this site's key changed",
                    how: Reauth::InPlace,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(backend: IpsecBackend, local: &str, remote: &str) -> DesiredConn {
        let local: IpAddr = local.parse().unwrap();
        let remote: IpAddr = remote.parse().unwrap();
        DesiredConn {
            name: conn_name("l2s0", "site-b"),
            peer: "site-b".into(),
            local,
            remote,
            local_id: "site-a".into(),
            remote_id: "site-b".into(),
            psk_file: "/etc/l2s-vnf/psk".into(),
            psk_digest: None,
            auth: AuthMethod::Psk,
            backend,
            role: role(local, remote),
            ike_proposals: vec!["aes256gcm16-prfsha384-x25519".into()],
            esp_proposals: vec!["aes256gcm16".into()],
            lifetimes: Lifetimes::default(),
        }
    }

    /// Snapshot of the VICI `load-conn` messages (kernel/transport and libipsec/tunnel).
    /// `L2S_BLESS=1` rewrites the snapshot files.
    #[test]
    fn load_conn_snapshots() {
        for (backend, local, remote, file) in [
            (
                IpsecBackend::Kernel,
                "192.0.2.1",
                "192.0.2.2",
                "load-conn-kernel-initiator.txt",
            ),
            (
                IpsecBackend::Libipsec,
                "192.0.2.3",
                "192.0.2.2",
                "load-conn-libipsec-responder.txt",
            ),
        ] {
            let c = conn(backend, local, remote);
            let got = Section::new().section(&c.name, c.message()).to_string();
            crate::base::snapshot::assert_snapshot(file, &got);
        }
    }

    /// With certificates the connection names identities only: no certificate, key or CA
    /// is in it, so rotating them never changes (and never restarts) the connection.
    #[test]
    fn pubkey_conn_snapshot() {
        let mut c = conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2");
        c.auth = AuthMethod::Pubkey;
        c.remote_id = "CN=site-b, O=Operator B".into();
        let got = Section::new().section(&c.name, c.message()).to_string();
        crate::base::snapshot::assert_snapshot("load-conn-pubkey-initiator.txt", &got);
        assert_ne!(
            c.fingerprint(),
            conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2").fingerprint(),
            "switching a peer between psk and pubkey reloads its connection"
        );
    }

    /// Snapshot of the credential messages (placeholder data: the real ones carry DER/PEM).
    #[test]
    fn credential_message_snapshots() {
        use crate::ipsec::vici::messages;
        let got = [
            (
                "load-authority",
                messages::load_authority(&authority_name("l2s0", "0a1b2c3d4e5f"), b"<CA DER>"),
            ),
            ("load-cert", messages::load_cert("X509_CRL", b"<CRL DER>")),
            (
                "load-cert",
                messages::load_cert("X509", b"<certificate DER>"),
            ),
            ("load-key", messages::load_key("ecdsa", b"<key PEM>")),
        ]
        .iter()
        .map(|(cmd, m)| format!("{cmd}:\n{m}"))
        .collect::<Vec<_>>()
        .join("\n");
        crate::base::snapshot::assert_snapshot("load-credentials.txt", &got);
    }

    #[test]
    fn credentials_are_loaded_when_charon_lacks_them_and_stale_cas_unloaded() {
        let creds = |digests: &[&str]| DesiredCreds {
            bridge: "l2s0".into(),
            creds: Credentials {
                cert_der: vec![],
                cert: crate::pki::CertInfo {
                    subject: "CN=site-a".into(),
                    issuer: "CN=CA".into(),
                    serial: "01".into(),
                    not_before_unix: 0,
                    not_after_unix: 1,
                },
                key_pem: crate::pki::Secret::default(),
                key_type: "ecdsa",
                key_id: "k1".into(),
                cas: digests
                    .iter()
                    .map(|d| crate::pki::CaCert {
                        path: "/ca".into(),
                        der: vec![],
                        info: crate::pki::CertInfo {
                            subject: "CN=CA".into(),
                            issuer: "CN=CA".into(),
                            serial: "02".into(),
                            not_before_unix: 0,
                            not_after_unix: 1,
                        },
                        digest: d.to_string(),
                    })
                    .collect(),
                crls: vec![],
            },
        };
        let ca1 = authority_name("l2s0", "aa");
        let ca2 = authority_name("l2s0", "bb");
        let keys = ["k1".to_string()];
        let d = creds(&["aa"]);
        fn held<'a>(authorities: &'a [String], keys: Option<&'a [String]>) -> HeldCreds<'a> {
            HeldCreds {
                authorities: Some(authorities),
                key_ids: keys,
                ..Default::default()
            }
        }
        let cas1 = &[ca1.clone()][..];
        let keys = &keys[..];
        // All there: nothing to do.
        let (l, u) = diff_creds(Some(&d), held(cas1, Some(keys)), "l2s0");
        assert!(l.is_empty() && u.is_empty());
        // A restarted charon has neither.
        let (l, _) = diff_creds(Some(&d), held(&[], Some(&[])), "l2s0");
        assert!(matches!(
            &l[..],
            [IpsecChange::LoadCreds {
                why: "private key not in charon",
                ..
            }]
        ));
        // A renewed certificate charon has not seen, and a CRL it does not hold, are loaded
        // (by `apply` as by the daemon: both converge through this diff).
        let mut renewed = d.clone();
        renewed.creds.cert_der = vec![0x30, 1, 2];
        let seen = &[vec![0x30, 9, 9]][..];
        let (l, _) = diff_creds(
            Some(&renewed),
            HeldCreds {
                own_certs: Some(seen),
                ..held(cas1, Some(keys))
            },
            "l2s0",
        );
        assert!(matches!(
            &l[..],
            [IpsecChange::LoadCreds {
                why: "certificate not in charon",
                ..
            }]
        ));
        let mut revoking = d.clone();
        revoking.creds.crls = vec![crate::pki::CrlFile {
            path: "/crl".into(),
            der: vec![0x30, 7],
            issuer: "CN=CA".into(),
            revoked: vec!["03".into()],
        }];
        let (l, _) = diff_creds(
            Some(&revoking),
            HeldCreds {
                crls: Some(&[]),
                ..held(cas1, Some(keys))
            },
            "l2s0",
        );
        assert!(matches!(
            &l[..],
            [IpsecChange::LoadCreds {
                why: "CRL not in charon",
                ..
            }]
        ));
        let held_crl = &[vec![0x30, 7]][..];
        let (l, _) = diff_creds(
            Some(&revoking),
            HeldCreds {
                crls: Some(held_crl),
                ..held(cas1, Some(keys))
            },
            "l2s0",
        );
        assert!(l.is_empty(), "{l:?}");
        // CA rollover: the new CA is loaded, the old one (dropped from the config) unloaded,
        // a foreign authority left alone.
        let d2 = creds(&["bb"]);
        let with_foreign = &[ca1.clone(), "office-ca".into()][..];
        let (l, u) = diff_creds(Some(&d2), held(with_foreign, Some(keys)), "l2s0");
        assert!(matches!(
            &l[..],
            [IpsecChange::LoadCreds {
                why: "CA not in charon",
                ..
            }]
        ));
        assert_eq!(u, vec![IpsecChange::UnloadAuthority { name: ca1.clone() }]);
        let both = &[ca1.clone(), ca2][..];
        let (l, u) = diff_creds(None, held(both, None), "l2s0");
        assert!(l.is_empty());
        assert_eq!(u.len(), 2);
    }

    #[test]
    fn transport_with_kernel_tunnel_with_libipsec() {
        let k = conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2")
            .message()
            .to_string();
        assert!(
            k.contains("mode = transport") && !k.contains("encap"),
            "{k}"
        );
        let l = conn(IpsecBackend::Libipsec, "192.0.2.1", "192.0.2.2")
            .message()
            .to_string();
        assert!(
            l.contains("mode = tunnel") && l.contains("encap = yes"),
            "{l}"
        );
        assert!(
            l.contains("local_ts = [192.0.2.1/32[udp]]")
                && l.contains("remote_ts = [192.0.2.2/32[udp]]"),
            "{l}"
        );
        assert!(
            l.contains("reauth_time = 0"),
            "rekey, never reauthenticate: {l}"
        );
    }

    #[test]
    fn exactly_one_side_initiates() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(role(a, b), Role::Initiator);
        assert_eq!(role(b, a), Role::Responder);
    }

    #[test]
    fn diff_loads_changes_and_unloads_only_owned() {
        let c = conn(IpsecBackend::Libipsec, "192.0.2.1", "192.0.2.2");
        let current = ObservedConn {
            name: c.name.clone(),
            children: vec![c.child_name()],
        };
        let up = vec![c.name.clone()];
        assert!(diff(
            std::slice::from_ref(&c),
            std::slice::from_ref(&current),
            &up,
            None,
            "l2s0"
        )
        .is_empty());
        assert!(matches!(
            diff(
                std::slice::from_ref(&c),
                std::slice::from_ref(&current),
                &[],
                None,
                "l2s0"
            )[..],
            [IpsecChange::Initiate { .. }]
        ));
        let stale = ObservedConn {
            name: c.name.clone(),
            children: vec!["vxlan-00000000".into()],
        };
        assert!(matches!(
            diff(std::slice::from_ref(&c), &[stale], &up, None, "l2s0")[..],
            [IpsecChange::Load {
                why: "config changed",
                ..
            }]
        ));
        let foreign = ObservedConn {
            name: "office-vpn".into(),
            children: vec![],
        };
        let other_instance = ObservedConn {
            name: conn_name("l2s1", "site-b"),
            children: vec![],
        };
        let ours_gone = ObservedConn {
            name: conn_name("l2s0", "site-z"),
            children: vec![],
        };
        let prefix_twin = ObservedConn {
            name: conn_name("l2s0-x", "p"),
            children: vec![],
        };
        let d = diff(
            &[],
            &[foreign, other_instance, ours_gone, prefix_twin],
            &[],
            None,
            "l2s0",
        );
        assert_eq!(
            d,
            vec![IpsecChange::Unload {
                name: conn_name("l2s0", "site-z")
            }]
        );
    }

    #[test]
    fn a_key_lost_in_charon_is_loaded_again() {
        let c = conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2");
        let current = ObservedConn {
            name: c.name.clone(),
            children: vec![c.child_name()],
        };
        let up = vec![c.name.clone()];
        let keys = vec![c.name.clone()];
        let one = std::slice::from_ref(&c);
        let cur = std::slice::from_ref(&current);
        assert!(diff(one, cur, &up, Some(&keys), "l2s0").is_empty());
        let d = diff(one, cur, &up, Some(&[]), "l2s0");
        assert_eq!(
            d.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["~ ipsec l2s-vnf:l2s0:site-b: pre-shared key loaded again"]
        );
    }

    /// A key changed in its file (another digest): the new one is loaded, the earlier one
    /// taken from charon, and an established IKE_SA authenticates again; with no SA, nothing
    /// to re-authenticate. The connection itself is not touched.
    #[test]
    fn a_changed_key_is_loaded_the_old_one_unloaded_and_the_sa_reauthenticated() {
        let mut c = conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2");
        c.psk_digest = Some("0badc0de".into());
        let current = ObservedConn {
            name: c.name.clone(),
            children: vec![c.child_name()],
        };
        let one = std::slice::from_ref(&c);
        let cur = std::slice::from_ref(&current);
        let up = vec![c.name.clone()];
        let same = vec![format!("{}#0badc0de", c.name)];
        assert!(diff(one, cur, &up, Some(&same), "l2s0").is_empty());
        let old = vec![format!("{}#12345678", c.name), "other-vpn#0badc0de".into()];
        let text = |d: Vec<IpsecChange>| d.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        assert_eq!(
            text(diff(one, cur, &up, Some(&old), "l2s0")),
            vec![
                "~ ipsec l2s-vnf:l2s0:site-b: pre-shared key loaded again",
                "- ipsec l2s-vnf:l2s0:site-b: its earlier pre-shared key",
                "~ ipsec l2s-vnf:l2s0:site-b: re-authenticate (its pre-shared key changed)",
            ]
        );
        assert_eq!(
            text(diff(one, cur, &[], Some(&old), "l2s0")),
            vec![
                "~ ipsec l2s-vnf:l2s0:site-b: pre-shared key loaded again",
                "- ipsec l2s-vnf:l2s0:site-b: its earlier pre-shared key",
                "~ ipsec l2s-vnf:l2s0:site-b: initiate (no SA)",
            ]
        );
    }

    #[test]
    fn the_key_digest_follows_the_file_and_says_nothing_of_the_key() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("psk");
        std::fs::write(&f, "correct-horse-battery-staple\n").unwrap();
        let one = psk_digest(&f).unwrap();
        std::fs::write(&f, "correct-horse-battery-staple").unwrap();
        assert_eq!(
            psk_digest(&f).unwrap(),
            one,
            "a trailing newline is not the key"
        );
        std::fs::write(&f, "another-key-entirely-here").unwrap();
        assert_ne!(psk_digest(&f).unwrap(), one);
        assert_eq!(one.len(), 8);
        assert!(psk_digest(&d.path().join("missing")).is_none());
    }

    #[test]
    fn fingerprint_changes_with_parameters_only() {
        let a = conn(IpsecBackend::Kernel, "192.0.2.1", "192.0.2.2");
        let mut b = a.clone();
        b.psk_file = "/elsewhere".into();
        assert_eq!(
            a.fingerprint(),
            b.fingerprint(),
            "the PSK file path is not a charon parameter"
        );
        b.esp_proposals = vec!["aes128gcm16".into()];
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
