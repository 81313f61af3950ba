//! What the IPsec backend observes: charon's connections, SAs and credentials (each `None`
//! when charon could not be asked), and the kernel's IPsec policies.

use std::collections::BTreeMap;

use super::{HeldCreds, ObservedConn, SaState};
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
