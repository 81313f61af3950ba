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
//!
//! - [`conn`]: the desired connections and their `load-conn` messages (fingerprint, roles);
//! - [`credentials`]: **where charon gets its certificates**, key, CAs, CRLs and PSKs, and
//!   what it verified of the peers';
//! - [`change`], [`diff`], [`execute`]: the typed change, the diff against [`observed`] (what
//!   charon and the kernel hold), and its execution over [`vici`];
//! - [`algorithms`]: what charon can negotiate; [`authlog`]: charon's log of failed
//!   authentications.

pub mod algorithms;
pub mod authlog;
pub mod change;
pub mod conn;
pub mod credentials;
pub mod diff;
pub mod execute;
pub mod observed;
pub mod vici;

pub use change::{IpsecChange, Reauth};
pub use conn::{
    conn_name, desired_conns, owned_conn, psk_digest, role, Carries, DesiredConn, Lifetimes, Role,
    CHILD_PREFIX, CHILD_REKEY, CONN_PREFIX, DPD_DELAY, IKE_REKEY, SITES_CONN_PEER,
};
pub use credentials::{authority_name, diff_creds, DesiredCreds, HeldCreds, IpsecError};
pub use diff::{diff, diff_site};
pub use execute::execute;
pub use observed::{sa_states, ObservedConn, ObservedIpsec, SaState};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::kinds::IpsecBackend;
    use crate::config::AuthMethod;
    use crate::ipsec::vici::Section;
    use crate::pki::Credentials;
    use std::net::IpAddr;

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
            carries: Carries::Vxlan,
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
