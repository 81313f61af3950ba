//! Where charon gets its credentials: this site's certificate, key, CAs and CRLs, and each
//! connection's pre-shared key (read from its file, handed to charon, never kept or printed);
//! and what charon verified of the peers' certificates.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::vici::{self, ViciError};
use super::{owned_conn, DesiredConn, IpsecChange, CONN_PREFIX};
use crate::config::{AuthMethod, SiteConfig};
use crate::pki::{info_of_der, CertInfo, Credentials, Identity, Secret};

/// Why the IPsec backend could not do a step.
#[derive(Debug, thiserror::Error)]
pub enum IpsecError {
    #[error(transparent)]
    Vici(#[from] ViciError),
    #[error("cannot read PSK file {}: {source}", path.display())]
    ReadPsk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("PSK file {} is empty", .0.display())]
    EmptyPsk(PathBuf),
    #[error("charon refused CA {}: {source}", path.display())]
    CaRefused { path: PathBuf, source: ViciError },
    #[error("charon refused CRL {}: {source}", path.display())]
    CrlRefused { path: PathBuf, source: ViciError },
    #[error("charon refused this site's certificate: {0}")]
    CertRefused(ViciError),
    #[error("charon refused this site's private key: {0}")]
    KeyRefused(ViciError),
}

/// Read a PSK file; the content goes to charon only (and is wiped from memory after).
fn read_psk(path: &std::path::Path) -> Result<Secret, IpsecError> {
    let raw = Secret::new(std::fs::read(path).map_err(|source| IpsecError::ReadPsk {
        path: path.to_path_buf(),
        source,
    })?);
    let trimmed = raw.expose().trim_ascii_end();
    if trimmed.is_empty() {
        return Err(IpsecError::EmptyPsk(path.to_path_buf()));
    }
    Ok(Secret::new(trimmed.to_vec()))
}

/// Hand charon this site's CAs, CRLs, certificate and key (the CAs first: what follows is
/// checked against them). A certificate or key rotated in its file, a CA added beside the old
/// one or a newer CRL is taken into use at the next IKE authentication; established SAs are
/// not touched. Returns charon's id of the key.
pub async fn load_creds(v: &vici::Client, creds: &DesiredCreds) -> Result<String, IpsecError> {
    for (name, ca) in creds.authorities() {
        v.load_authority(&name, &ca.der)
            .await
            .map_err(|source| IpsecError::CaRefused {
                path: ca.path.clone(),
                source,
            })?;
    }
    for crl in &creds.creds.crls {
        v.load_cert("X509_CRL", &crl.der)
            .await
            .map_err(|source| IpsecError::CrlRefused {
                path: crl.path.clone(),
                source,
            })?;
    }
    v.load_cert("X509", &creds.creds.cert_der)
        .await
        .map_err(IpsecError::CertRefused)?;
    let key = &creds.creds.key_pem;
    let id = v
        .load_key(creds.creds.key_type, key.expose())
        .await
        .map_err(IpsecError::KeyRefused)?;
    Ok(id)
}

/// The certificate charon verified for each peer that authenticates with one: the newest
/// (by start of validity) charon holds for the peer's identity, which is the one its next
/// authentication uses. Peers charon holds none for are left out.
/// The answer, or `None` with what could not be asked noted for status.
pub fn known<T>(unknown: &mut Vec<String>, what: &str, r: Result<T, vici::ViciError>) -> Option<T> {
    r.map_err(|e| unknown.push(format!("{what}: {e}"))).ok()
}

pub async fn peer_certs(
    v: &vici::Client,
    cfg: &SiteConfig,
    unknown: &mut Vec<String>,
) -> BTreeMap<String, CertInfo> {
    let mut out = BTreeMap::new();
    for p in cfg.peers.iter().filter(|p| p.auth == AuthMethod::Pubkey) {
        // The config's identities parse (validation checked them).
        let Ok(id) = Identity::parse(&p.id) else {
            continue;
        };
        let ders = match v.certs_of(&p.id).await {
            Ok(d) => d,
            Err(e) => {
                unknown.push(format!("peer {}'s certificates: {e}", p.name));
                continue;
            }
        };
        let newest = ders
            .iter()
            .filter_map(|d| info_of_der(d))
            .filter(|(_, c)| id.carried_by(c))
            .map(|(i, _)| i)
            .max_by_key(|i| i.not_before_unix);
        if let Some(c) = newest {
            out.insert(p.name.clone(), c);
        }
    }
    out
}

/// Peers whose certificate one of our CRLs revokes, with the reason for status.
pub fn revoked_peers(
    cfg: &SiteConfig,
    certs: &BTreeMap<String, CertInfo>,
) -> BTreeMap<String, String> {
    let Some(pki) = &cfg.ipsec.pki else {
        return Default::default();
    };
    certs
        .iter()
        .filter_map(|(peer, c)| {
            pki.creds.revocation_of(c).map(|crl| {
                (
                    peer.clone(),
                    format!(
                        "certificate {} is revoked by CRL {}",
                        c.describe(),
                        crl.path.display()
                    ),
                )
            })
        })
        .collect()
}

/// Hand charon the connection's PSK, read from its file (the only place a secret goes).
pub(super) async fn load_psk(v: &vici::Client, conn: &DesiredConn) -> Result<(), IpsecError> {
    let psk = read_psk(&conn.psk_file)?;
    v.load_shared(
        &conn.shared_key_id(),
        psk.expose(),
        &[&conn.local_id, &conn.remote_id],
    )
    .await?;
    Ok(())
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
        // A reflector names no peer, yet authenticates every site with its certificate.
        (cfg.peers.iter().any(|p| p.auth == AuthMethod::Pubkey) || cfg.evpn.is_some()).then(|| {
            DesiredCreds {
                bridge: cfg.switch.bridge.clone(),
                creds: pki.creds.clone(),
            }
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
