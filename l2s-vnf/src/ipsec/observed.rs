//! What the IPsec backend observes: charon's connections, SAs and credentials (each `None`
//! when charon could not be asked), and the kernel's IPsec policies.

use std::collections::BTreeMap;

use super::vici::Section;
use super::HeldCreds;
use crate::pki::CertInfo;
use crate::xfrm::Policy;

/// Charon's connections, SAs and credentials, and the kernel's IPsec policies, as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedIpsec {
    /// What charon could not be asked, and why (each left unknown, as `None` below).
    pub charon_unknown: Vec<String>,
    /// Our connections in charon; `None` when charon was not reachable.
    pub conns: Option<Vec<ObservedConn>>,
    /// Connections with an IKE_SA (any state), with the state of their SAs.
    pub sas: BTreeMap<String, SaState>,
    /// The kernel's IPsec policies (to tell whether VXLAN would bypass our SAs).
    pub policies: Vec<Policy>,
    /// Ids of the pre-shared keys charon holds (`None`: not known).
    pub keys: Option<Vec<String>>,
    /// Our certification authorities in charon (`None`: not known).
    pub authorities: Option<Vec<String>>,
    /// Ids of the private keys loaded over VICI (`None`: not known).
    pub key_ids: Option<Vec<String>>,
    /// The certificates charon holds for this site's identity, DER (`None`: not known).
    pub own_certs: Option<Vec<Vec<u8>>>,
    /// The revocation lists charon holds, DER (`None`: not known).
    pub crls: Option<Vec<Vec<u8>>>,
    /// Peers whose certificate (as charon verified it) one of our CRLs revokes, with why.
    pub revoked: BTreeMap<String, String>,
    /// The certificate charon verified for each certificate peer, when observation read them
    /// (only with CRLs configured; status reads them itself otherwise).
    pub peer_certs: Option<BTreeMap<String, CertInfo>>,
}

impl ObservedIpsec {
    /// What charon holds of this site's credentials.
    pub fn held_creds(&self) -> HeldCreds<'_> {
        HeldCreds {
            authorities: self.authorities.as_deref(),
            key_ids: self.key_ids.as_deref(),
            own_certs: self.own_certs.as_deref(),
            crls: self.crls.as_deref(),
        }
    }

    /// The SA states, or `None` when charon was not reachable.
    pub fn reachable_sas(&self) -> Option<&BTreeMap<String, SaState>> {
        self.conns.is_some().then_some(&self.sas)
    }
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
