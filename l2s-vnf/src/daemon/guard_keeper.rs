//! The guard on its own: a task beside the reconcile loop that puts the fail-closed guard back
//! within moments of its loss, whatever state charon, OVSDB or the reconcile are in (a
//! reconcile can wait seconds on a charon that does not answer, or fail before it plans
//! anything; `nft flush ruleset` and `systemctl restart nftables` must not open a window for
//! clear text meanwhile).
//!
//! It wakes on nftables' own events about the table and checks every [`CHECK`] besides (a
//! lost event, an event socket that cannot be opened). The spec it keeps is the one the last
//! reconcile planned; before any reconcile succeeded, [`fallback`] (the strictest guard this
//! config can want). Every repair is reported to the loop, which counts it as drift repaired.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::base::kinds::BackendChoice;
use crate::base::kinds::IpsecBackend;
use crate::config::SiteConfig;
use crate::guard::{self, GuardSpec};

/// How often the table is checked besides nftables' events.
pub const CHECK: Duration = Duration::from_secs(2);

/// A repair the keeper made: (what woke it, the change as a plan shows it).
pub type Repair = (String, String);

pub struct GuardKeeper {
    spec: watch::Sender<Option<GuardSpec>>,
    task: JoinHandle<()>,
}

impl Drop for GuardKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GuardKeeper {
    /// Start keeping the guard table `table` (nothing is kept until a spec is given).
    pub fn start(table: String, repairs: mpsc::UnboundedSender<Repair>) -> Self {
        let (tx, rx) = watch::channel(None);
        GuardKeeper {
            spec: tx,
            task: tokio::spawn(keep(table, rx, repairs)),
        }
    }

    /// The guard to keep from now on (`None`: none, as in insecure lab mode).
    pub fn keep(&self, spec: Option<GuardSpec>) {
        self.spec.send_if_modified(|s| {
            let changed = *s != spec;
            *s = spec;
            changed
        });
    }

    /// Whether a spec is being kept.
    pub fn keeping(&self) -> bool {
        self.spec.borrow().is_some()
    }
}

/// The guard this config wants when the backend is not known yet (charon unreachable since
/// the start): the configured one; with `auto`, the one the table in place carries (ours,
/// left by an earlier run); else the kernel guard, which also drops every VXLAN packet of the
/// libipsec path — fail-closed until a reconcile knows better.
///
/// With EVPN, the peers are not all in the file: the reflectors are added, and the sites an
/// earlier run discovered are taken from the table in place (else the keeper would replace a
/// working guard with one that drops their IKE, until the first reconcile).
pub fn fallback(cfg: &SiteConfig, listed: Option<&str>) -> Option<GuardSpec> {
    if !cfg.ipsec.enabled {
        return None;
    }
    let spec = |backend| {
        let mut s = guard::spec_for(cfg, backend);
        if let Some(e) = &cfg.evpn {
            let known = e
                .reflectors
                .iter()
                .copied()
                .chain(listed.map(guard::ike_peers).unwrap_or_default());
            for a in known {
                if !s.peers.contains(&a) {
                    s.peers.push(a);
                }
            }
        }
        s
    };
    Some(match cfg.ipsec.backend {
        BackendChoice::Kernel => spec(IpsecBackend::Kernel),
        BackendChoice::Libipsec => spec(IpsecBackend::Libipsec),
        BackendChoice::Auto => [IpsecBackend::Libipsec, IpsecBackend::Kernel]
            .into_iter()
            .map(spec)
            .find(|s| listed.is_some_and(|l| guard::matches(s, l)))
            .unwrap_or_else(|| spec(IpsecBackend::Kernel)),
    })
}

async fn keep(
    table: String,
    mut spec: watch::Receiver<Option<GuardSpec>>,
    repairs: mpsc::UnboundedSender<Repair>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<String>();
    let events_task = tokio::spawn(super::watch::nft_table_events(table.clone(), move |why| {
        let _ = events_tx.send(why);
    }));
    let mut tick = tokio::time::interval(CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let woke = tokio::select! {
            Some(why) = events.recv() => format!("nftables: {why}"),
            _ = tick.tick() => "guard check".to_string(),
            changed = spec.changed() => {
                if changed.is_err() {
                    break;
                }
                "guard check".to_string()
            }
        };
        let Some(want) = spec.borrow_and_update().clone() else {
            continue;
        };
        let t = table.clone();
        let listed = tokio::task::spawn_blocking(move || guard::observe(&t))
            .await
            .ok()
            .flatten();
        // What is missing, and whether the whole guard (table and blocks) or only its xfrm
        // layer is put back.
        let (change, why, whole) = match &listed {
            None => (
                format!("+ guard: nftables table inet {table}"),
                "gone",
                true,
            ),
            Some(l) if !guard::matches(&want, l) => (
                format!("~ guard: nftables table inet {table}"),
                "rules differ",
                true,
            ),
            Some(_) => {
                // The second layer, on its own: an `ip xfrm policy flush` leaves the table.
                let w = want.clone();
                let held = tokio::task::spawn_blocking(move || {
                    crate::xfrm::dump().map(|p| guard::blocks_match(&w, &p))
                })
                .await;
                if !matches!(held, Ok(Ok(false))) {
                    continue;
                }
                ("~ guard: xfrm block policies".to_string(), "gone", false)
            }
        };
        let what = if whole {
            "the fail-closed guard"
        } else {
            "the guard's xfrm block policies"
        };
        let put = tokio::task::spawn_blocking(move || {
            if whole {
                guard::ensure(&want)
            } else {
                guard::ensure_blocks(&want)
            }
        })
        .await;
        match put {
            Ok(Ok(())) => {
                warn!(%table, after = %woke, "{what} was {why}: put back");
                let _ = repairs.send((woke, format!("{change} ({why}; by the guard keeper)")));
            }
            Ok(Err(e)) => error!(%table, "cannot put {what} back: {e}"),
            Err(e) => error!(%table, "cannot put {what} back: {e}"),
        }
    }
    events_task.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backend: &str) -> SiteConfig {
        SiteConfig::from_str_at(
            std::path::Path::new("t.toml"),
            &format!(
                "[site]\nname = \"a\"\nunderlay = \"eth1\"\n[ipsec]\nbackend = \"{backend}\"\npsk_file = \"/p\"\n"
            ),
        )
        .unwrap()
    }

    #[test]
    fn before_any_reconcile_the_strictest_guard_is_kept() {
        let kernel = fallback(&cfg("kernel"), None).unwrap();
        assert_eq!(kernel.backend, IpsecBackend::Kernel);
        assert_eq!(
            fallback(&cfg("libipsec"), None).unwrap().backend,
            IpsecBackend::Libipsec
        );
        // auto: the table an earlier run left says which; without one, the kernel guard.
        let libipsec = fallback(&cfg("libipsec"), None).unwrap();
        let listed = libipsec.ruleset();
        assert_eq!(
            fallback(&cfg("auto"), Some(&listed)).unwrap().backend,
            IpsecBackend::Libipsec
        );
        assert_eq!(
            fallback(&cfg("auto"), None).unwrap().backend,
            IpsecBackend::Kernel
        );
        assert_eq!(kernel.table, "l2s_vnf_l2s0");
    }

    #[test]
    fn with_evpn_the_reflectors_and_the_sites_a_run_discovered_keep_their_ike() {
        let mut c = cfg("auto");
        c.evpn = Some(crate::config::Evpn {
            role: crate::config::EvpnRole::Site,
            asn: 65000,
            reflectors: vec!["192.0.2.10".parse().unwrap()],
            listen_range: None,
            hold_time: Duration::from_secs(9),
        });
        // The table an earlier run left: the reflector and two discovered sites.
        let mut earlier = guard::spec_for(&c, IpsecBackend::Libipsec);
        earlier.peers = ["192.0.2.10", "192.0.2.2", "192.0.2.3"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let listed = earlier.ruleset();
        let mut read = guard::ike_peers(&listed);
        read.sort();
        earlier.peers.sort();
        assert_eq!(
            read, earlier.peers,
            "the peers are read back from the listing"
        );
        let kept = fallback(&c, Some(&listed)).unwrap();
        assert!(
            guard::matches(&kept, &listed),
            "the table in place is kept as it is"
        );
        // No table: the reflector alone, kernel guard.
        let strict = fallback(&c, None).unwrap();
        assert_eq!(
            strict.peers,
            vec!["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(strict.backend, IpsecBackend::Kernel);
    }
}
