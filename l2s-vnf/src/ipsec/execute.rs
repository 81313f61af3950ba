//! The IPsec backend's executor: each [`IpsecChange`] as VICI requests.

use tracing::{info, warn};

use super::credentials::{load_creds, load_psk, IpsecError};
use super::vici;
use super::{IpsecChange, Reauth};
use crate::config::AuthMethod;

/// Carry out one IPsec change through charon.
pub async fn execute(v: &vici::Client, change: &IpsecChange) -> Result<(), IpsecError> {
    match change {
        IpsecChange::Load { conn, why } => {
            if conn.auth == AuthMethod::Psk {
                load_psk(v, conn).await?;
            }
            v.load_conn(&conn.name, conn.message()).await?;
            info!(conn = %conn.name, peer = %conn.peer, role = ?conn.role, why = %why, "IPsec connection loaded");
        }
        IpsecChange::Initiate { name, child } => {
            v.initiate_async(name, child).await?;
            info!(conn = %name, "initiating IKE_SA");
        }
        IpsecChange::LoadKey { conn } => {
            load_psk(v, conn).await?;
            info!(conn = %conn.name, "pre-shared key handed to charon again");
        }
        IpsecChange::LoadCreds { creds, why } => {
            load_creds(v, creds).await?;
            info!(certificate = %creds.creds.cert.subject, serial = %creds.creds.cert.serial, why = %why, "certificate, key, CAs and CRLs handed to charon");
        }
        IpsecChange::UnloadAuthority { name } => {
            v.unload_authority(name).await?;
            info!(authority = %name, "CA no longer trusted");
        }
        IpsecChange::UnloadKey { id } => {
            v.unload_key(id).await?;
            info!(key = %id, "the replaced private key is no longer in charon");
        }
        IpsecChange::TerminateRevoked { name, why } => {
            v.terminate_ike(name).await?;
            warn!(conn = %name, "{why}: its SAs are torn down");
        }
        IpsecChange::Unload { name } => {
            v.terminate_ike(name).await?;
            v.unload_conn(name).await?;
            // Its keys, whatever their digest; an already missing key is fine: the goal is
            // "not there".
            let prefix = format!("{name}#");
            for id in v.shared_keys().await.unwrap_or_default() {
                if id == *name || id.starts_with(&prefix) {
                    let _ = v.unload_shared(&id).await;
                }
            }
            info!(conn = %name, "IPsec connection unloaded");
        }
        IpsecChange::UnloadSharedKey { id } => {
            v.unload_shared(id).await?;
            info!(key = %id.split('#').next().unwrap_or(id), "an earlier pre-shared key is no longer in charon");
        }
        IpsecChange::Reauthenticate { name, why, how } => {
            match how {
                Reauth::InPlace => v.reauthenticate(name).await?,
                Reauth::EndFirst { initiate } => {
                    v.terminate_ike(name).await?;
                    if let Some(child) = initiate {
                        v.initiate_async(name, child).await?;
                    }
                }
            }
            info!(conn = %name, why, "re-authenticating");
        }
    }
    Ok(())
}
