//! The IPsec backend's diff: desired connections and credentials against what charon holds.

use crate::config::AuthMethod;

use super::{
    conn_name, diff_creds, owned_conn, DesiredConn, DesiredCreds, IpsecChange, ObservedConn,
    ObservedIpsec, Reauth, Role,
};

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
            Some(_) if !has_sa && d.role != Role::Listener => out.push(initiate),
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
