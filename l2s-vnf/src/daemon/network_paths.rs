//! The daemon's periodic path probes ([`crate::status::probe`]): each peer every
//! `[daemon] probe_interval`, the latest result per peer for `status` and the metrics, and an
//! alarm in the log when a path stops carrying full-size frames (or carries them again).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::status::probe::{self, PathHealth, Prober};

/// A site's prober and what it found.
pub struct NetworkPaths {
    prober: Prober,
    port: u16,
    peers: Mutex<Vec<(String, IpAddr)>>,
    access_mtu: AtomicU32,
    results: Mutex<BTreeMap<String, PathHealth>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl NetworkPaths {
    /// Bind the probe port of `vxlan_port` on the VTEP address.
    pub async fn bind(vtep: IpAddr, vxlan_port: u16) -> std::io::Result<Arc<Self>> {
        let port = crate::base::names::probe_port(vxlan_port);
        let prober = Prober::bind(vtep, port, Default::default()).await?;
        Ok(Arc::new(NetworkPaths {
            prober,
            port,
            peers: Mutex::default(),
            access_mtu: AtomicU32::new(0),
            results: Mutex::default(),
        }))
    }

    /// The peers to probe and answer, and the access MTU a full-size probe stands for.
    pub fn configure(&self, peers: Vec<(String, IpAddr)>, access_mtu: u32) {
        self.prober
            .set_peers(peers.iter().map(|(_, a)| *a).collect());
        lock(&self.results).retain(|name, _| peers.iter().any(|(n, _)| n == name));
        *lock(&self.peers) = peers;
        self.access_mtu.store(access_mtu, Ordering::Relaxed);
    }

    /// The latest result per peer.
    pub fn results(&self) -> BTreeMap<String, PathHealth> {
        lock(&self.results).clone()
    }

    /// Measure now: every peer, or one (by name), for `secs` seconds of small probes (10 a
    /// second; 0: the periodic five), and with `throughput` a bandwidth test as long.
    pub async fn measure(
        &self,
        peer: Option<&str>,
        secs: u64,
        throughput: bool,
    ) -> Result<BTreeMap<String, PathHealth>, String> {
        if secs > probe::MAX_PROBE_SECS {
            return Err(format!(
                "a probe of {secs} s is refused: at most {} s",
                probe::MAX_PROBE_SECS
            ));
        }
        let peers = lock(&self.peers).clone();
        let chosen: Vec<(String, IpAddr)> = match peer {
            None => peers,
            Some(want) => match peers.iter().find(|(n, _)| n == want) {
                Some(p) => vec![p.clone()],
                None => {
                    let known: Vec<&str> = peers.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!(
                        "unknown peer `{want}`; configured peers: {}",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ));
                }
            },
        };
        let payload = probe::full_payload(self.access_mtu.load(Ordering::Relaxed));
        let mut out = BTreeMap::new();
        let count = if secs == 0 {
            probe::SMALL_PROBES
        } else {
            // Bounded above: at most 6000 probes.
            usize::try_from(secs * 10).unwrap_or(usize::MAX)
        };
        for (name, addr) in chosen {
            let mut h = self.prober.measure(addr, self.port, payload, count).await;
            if throughput {
                h.throughput_mbps = Some(
                    self.prober
                        .throughput(addr, self.port, payload, secs.max(1))
                        .await,
                );
            }
            self.record(&name, &h);
            out.insert(name, h);
        }
        Ok(out)
    }

    /// Keep a result; say so when a path's verdict on full-size frames changes.
    fn record(&self, peer: &str, h: &PathHealth) {
        let before = lock(&self.results).insert(peer.to_string(), h.clone());
        let was_ok = before
            .as_ref()
            .is_none_or(|b| b.mtu_ok || b.loss_pct == 100.0);
        if h.loss_pct < 100.0 && !h.mtu_ok && was_ok {
            warn!(
                peer,
                size = h.mtu_size,
                passes = h.mtu_passes,
                "MTU alarm: packets of {} bytes (a full frame at the access MTU) no longer reach {peer}; {} bytes do — the underlay path shrank",
                h.mtu_size,
                h.mtu_passes.map(|p| p.to_string()).unwrap_or_else(|| "no size".into())
            );
        } else if h.mtu_ok && before.is_some_and(|b| !b.mtu_ok && b.loss_pct < 100.0) {
            info!(
                peer,
                size = h.mtu_size,
                "full-size frames reach {peer} again"
            );
        }
    }

    /// Probe every peer every `interval`, until the daemon ends.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let _ = self.measure(None, 0, false).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe request of absurd length is refused at once (it once hung the client and
    /// overflowed the daemon's arithmetic).
    #[tokio::test]
    async fn a_probe_longer_than_the_bound_is_refused() {
        let paths = NetworkPaths::bind("127.0.0.1".parse().unwrap(), 47_890)
            .await
            .unwrap();
        paths.configure(vec![("site-b".into(), "127.0.0.2".parse().unwrap())], 1400);
        let e = paths
            .measure(None, 99_999_999_999, false)
            .await
            .unwrap_err();
        assert_eq!(e, "a probe of 99999999999 s is refused: at most 600 s");
    }
}
