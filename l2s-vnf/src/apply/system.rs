//! The connections to the system (OVSDB, netlink, charon) and one observation of every
//! backend, read side by side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::config::SiteConfig;
use crate::guard::{self};
use crate::ipsec::credentials::{known, peer_certs, revoked_peers};
use crate::ipsec::vici::{self};
use crate::ipsec::{self, ObservedConn, ObservedIpsec};
use crate::linux::Netlink;
use crate::model::DesiredState;
use crate::ovs::{replica::Replica, switch, Client};
use crate::plan::ActualState;

use super::ApplyError;

/// Connections to the system's backends, opened in the current network namespace.
pub struct System {
    pub netlink: Netlink,
    pub ovsdb: Client,
    /// charon, when IPsec is on (required) or when it happens to be reachable (for cleanup).
    pub vici: Option<vici::Client>,
    /// The daemon's monitor-fed copy of OVSDB, read instead of a select while it is live.
    pub replica: Option<Arc<Replica>>,
    /// ovs-ofctl's address of the bridge (storm control).
    pub ofctl_target: String,
    /// Whether observing reads storm control (see [`System::note_storm`]).
    observe_storm: AtomicBool,
}

impl System {
    /// Connect to netlink, OVSDB and (with IPsec) charon. A missing socket is a clear error,
    /// before anything is read or changed.
    pub async fn connect(cfg: &SiteConfig) -> Result<Self, ApplyError> {
        Self::open(cfg, cfg.ipsec.enabled).await
    }

    /// Like `connect`, but charon is optional (for `down` and `status`).
    pub async fn connect_lenient(cfg: &SiteConfig) -> Result<Self, ApplyError> {
        Self::open(cfg, false).await
    }

    /// Without `require_charon`, charon is still used when reachable: to clean up the
    /// connections of an earlier secure config, or to report SA state.
    async fn open(cfg: &SiteConfig, require_charon: bool) -> Result<Self, ApplyError> {
        let netlink = Netlink::connect()?;
        let ovsdb = Client::connect(&cfg.switch.ovsdb).await?;
        let vici = match vici::Client::connect(&cfg.ipsec.vici).await {
            Ok(v) => Some(v),
            Err(e) if require_charon => return Err(e.into()),
            Err(_) => None,
        };
        Ok(System {
            netlink,
            ovsdb,
            vici,
            replica: None,
            ofctl_target: crate::ovs::storm::target(&cfg.switch.ovsdb, &cfg.switch.bridge),
            observe_storm: AtomicBool::new(true),
        })
    }

    /// Storm control is read from ovs-vswitchd over OpenFlow — two round trips that wait for
    /// its main loop, slow on a bridge of thousands of ports — only while it matters: limits
    /// configured, or ours seen in force. With neither, nothing of ours can appear (only
    /// l2s-vnf adds it), so the daemon stops asking until a config wants limits again.
    pub fn note_storm(&self, desired: &DesiredState, actual: &ActualState) {
        let needed =
            !desired.storm.is_empty() || actual.storm.as_ref().is_some_and(|s| !s.is_empty());
        // Unknown (not read, or unreadable) and not wanted: keep asking as before.
        if needed || actual.storm.is_some() {
            self.observe_storm.store(needed, Ordering::Relaxed);
        }
    }

    /// Read everything this instance may own, all sources at once.
    pub async fn observe(&self, cfg: &SiteConfig) -> Result<ActualState, ApplyError> {
        let bridge = cfg.switch.bridge.as_str();
        let rules = async {
            let (mut vxlan, mut bgp) = (vec![], vec![]);
            for v6 in [false, true] {
                let owned = self.netlink.owned_rules(v6).await?;
                vxlan.extend(owned.vxlan.into_iter().map(|(ports, _)| (ports, v6)));
                bgp.extend(owned.bgp.into_iter().map(|(side, _)| (side, v6)));
            }
            Ok::<_, ApplyError>((vxlan, bgp))
        };
        let charon = async {
            let Some(v) = &self.vici else {
                return Ok::<_, ApplyError>((
                    None,
                    Default::default(),
                    (None, None, None),
                    (None, None, None),
                    vec![],
                ));
            };
            let conns: Vec<ObservedConn> = v
                .list_conns()
                .await?
                .into_iter()
                .filter(|(name, _)| ipsec::owned_conn(name, bridge))
                .map(|(name, children)| ObservedConn { name, children })
                .collect();
            let sas = ipsec::sa_states(&v.list_sas(None).await?)
                .into_iter()
                .filter(|(n, _)| ipsec::owned_conn(n, bridge))
                .collect();
            // What charon cannot tell is not known (`None`: the diff leaves it alone), and
            // status says why. A charon without `get-shared` (before 5.7) cannot tell.
            let mut unknown = vec![];
            let u = &mut unknown;
            let keys = known(u, "its shared keys", v.shared_keys().await);
            let authorities = known(u, "its authorities", v.get_authorities().await).map(|a| {
                a.into_iter()
                    .filter(|n| ipsec::owned_conn(n, bridge))
                    .collect::<Vec<_>>()
            });
            let key_ids = known(u, "its private keys", v.get_keys().await);
            let own_certs = known(
                u,
                "this site's certificates",
                v.certs_of(&cfg.site.id).await,
            );
            let crls = known(u, "its CRLs", v.crls().await);
            // Peers' certificates matter here only when a CRL could revoke them.
            let certs = match &cfg.ipsec.pki {
                Some(p) if !p.creds.crls.is_empty() => Some(peer_certs(v, cfg, &mut unknown).await),
                _ => None,
            };
            Ok((
                Some(conns),
                sas,
                (keys, authorities, key_ids),
                (own_certs, crls, certs),
                unknown,
            ))
        };
        let table = guard::table_name(bridge);
        let guard_listing = async {
            tokio::task::spawn_blocking(move || guard::observe(&table))
                .await
                .ok()
                .flatten()
        };
        let policies = async {
            tokio::task::spawn_blocking(crate::xfrm::dump)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        let target = self.ofctl_target.clone();
        let read_storm = self.observe_storm.load(Ordering::Relaxed);
        let storm = async {
            if !read_storm {
                return None;
            }
            tokio::task::spawn_blocking(move || crate::ovs::storm::observe(&target))
                .await
                .ok()
                .flatten()
        };
        let switch = async {
            match self.replica.as_ref().and_then(|r| r.observed(bridge)) {
                Some(s) => Ok(s),
                None => switch::observe(&self.ovsdb, bridge).await,
            }
        };
        // A socket holds one dump at a time: the rule dump follows the link dump.
        let links_and_rules = async {
            let links = self.netlink.observe().await?;
            Ok::<_, ApplyError>((links, rules.await?))
        };
        let (switch, links_and_rules, charon, guard_listing, policies, storm) = tokio::join!(
            switch,
            links_and_rules,
            charon,
            guard_listing,
            policies,
            storm
        );
        let (conns, sas, (keys, authorities, key_ids), (own_certs, crls, peer_certs), unknown) =
            charon?;
        let revoked = peer_certs
            .as_ref()
            .map(|c| revoked_peers(cfg, c))
            .unwrap_or_default();
        let (mut links, rules) = links_and_rules?;
        (links.vxlan_rules, links.bgp_rules) = rules;
        let ipsec = ObservedIpsec {
            charon_unknown: unknown,
            conns,
            sas,
            policies,
            keys,
            authorities,
            key_ids,
            own_certs,
            crls,
            revoked,
            peer_certs,
        };
        Ok(ActualState {
            switch: switch?,
            links,
            guard: guard_listing,
            ipsec,
            storm,
        })
    }
}
