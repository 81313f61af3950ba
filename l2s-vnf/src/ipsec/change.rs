//! The IPsec backend's typed change.

use std::fmt;

use crate::base::kinds::IpsecBackend;

use super::{DesiredConn, DesiredCreds};

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
