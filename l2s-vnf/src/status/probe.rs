//! Path health to each peer, over the same protected path the VXLAN traffic takes (L2S-CES's
//! measurement tool, built in): RTT, jitter, loss, and whether a packet as large as a full
//! VXLAN frame still passes.
//!
//! Probes are UDP datagrams between the two VTEPs on the probe port (the VXLAN port + 1),
//! both ends bound to it. The IPsec connection covers all UDP between the VTEPs, the guard
//! drops the probe port in clear text as it does VXLAN, and with libipsec the policy rule
//! sends the probe port into charon's TUN with VXLAN — so a probe is encrypted exactly when
//! VXLAN is, never in clear text. Every daemon answers the probes of its configured peers
//! (and no one else's).
//!
//! A full-size probe has the size of the IP packet that carries a VXLAN frame of the access
//! MTU, and is sent with don't-fragment (ignoring any cached path MTU): when it stops coming
//! back while small ones do, the underlay path shrank somewhere between the sites, and the
//! largest size that still passes is found and reported — instead of a silent black hole.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use crate::base::mtu::{Family, UDP_HEADER, VXLAN_OVERHEAD};

const MAGIC: &[u8; 4] = b"L2SP";
const REQUEST: u8 = 1;
const REPLY: u8 = 2;
/// magic, kind, 3 spare, sequence number.
const HEADER: usize = 12;
/// How long a probe is waited for.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Small probes of a periodic measurement, and their spacing.
pub const SMALL_PROBES: usize = 5;
/// The longest on-demand measurement (`probe --secs`, the control socket's probe request).
pub const MAX_PROBE_SECS: u64 = 600;
const SPACING: Duration = Duration::from_millis(100);
const SMALL_SIZE: usize = 64;

/// The UDP payload of a probe whose IP packet is as large as a VXLAN packet carrying a frame
/// of `access_mtu` bytes (both have the same IP header).
pub fn full_payload(access_mtu: u32) -> usize {
    // VXLAN packet: IP + UDP + VXLAN + inner Ethernet + frame; a probe: IP + UDP + payload.
    (access_mtu + VXLAN_OVERHEAD - UDP_HEADER) as usize
}

/// What one measurement found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathHealth {
    pub rtt_ms: Option<f64>,
    pub rtt_min_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    pub loss_pct: f64,
    /// Whether a full-size (access MTU) probe passed.
    pub mtu_ok: bool,
    /// The IP packet size of the full-size probe.
    pub mtu_size: u32,
    /// When the full size does not pass: the largest IP packet size that does.
    pub mtu_passes: Option<u32>,
    pub at_unix: u64,
    /// With `--throughput`: Mbit/s of full-size probes echoed back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_mbps: Option<f64>,
}

/// Probes waiting for their answer: sequence number → (whom it was sent to, the waiter).
type Pending = Mutex<HashMap<u32, (IpAddr, oneshot::Sender<Instant>)>>;

/// The socket and the probes waiting for their answer.
struct Shared {
    sock: UdpSocket,
    pending: Pending,
    seq: AtomicU32,
}

impl Shared {
    /// Send one probe with `payload` bytes; its RTT, or `None` when it did not come back.
    async fn one(&self, peer: SocketAddr, payload: usize) -> Option<Duration> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut pkt = vec![0u8; payload.max(HEADER)];
        pkt[..4].copy_from_slice(MAGIC);
        pkt[4] = REQUEST;
        pkt[8..12].copy_from_slice(&seq.to_be_bytes());
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(seq, (peer.ip(), tx));
        let sent = Instant::now();
        // A send that fails (too large for a link on the way out) does not pass either.
        let r = match self.sock.send_to(&pkt, peer).await {
            Ok(_) => tokio::time::timeout(TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .map(|at| at - sent),
            Err(_) => None,
        };
        lock(&self.pending).remove(&seq);
        r
    }
}

/// The probe socket of a site: answers its peers' probes and sends its own.
pub struct Prober {
    shared: Arc<Shared>,
    peers: Arc<Mutex<BTreeSet<IpAddr>>>,
    ip_header: u32,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Don't fragment, and ignore the cached path MTU: the probe tests the path as it is.
fn set_df_probe(sock: &UdpSocket, v6: bool) -> std::io::Result<()> {
    let (level, name, value) = if v6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    };
    // SAFETY: setsockopt(2) on a socket we own, with a pointer to a live c_int and its size.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Prober {
    /// Bind the probe port on the VTEP address and start answering `peers`.
    pub async fn bind(vtep: IpAddr, port: u16, peers: BTreeSet<IpAddr>) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(SocketAddr::new(vtep, port)).await?;
        set_df_probe(&sock, vtep.is_ipv6())?;
        let shared = Arc::new(Shared {
            sock,
            pending: Mutex::default(),
            seq: AtomicU32::new(1),
        });
        let peers = Arc::new(Mutex::new(peers));
        let task = tokio::spawn(serve(shared.clone(), peers.clone()));
        Ok(Prober {
            shared,
            peers,
            ip_header: Family::of(&vtep).header(),
            task,
        })
    }

    /// The port it is bound to.
    pub fn port(&self) -> u16 {
        self.shared.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The peers whose probes are answered (after a reload).
    pub fn set_peers(&self, peers: BTreeSet<IpAddr>) {
        *lock(&self.peers) = peers;
    }

    /// One measurement: `count` small probes, 100 ms apart, for RTT, jitter and loss; a
    /// full-size one for the MTU (and, when it fails, the largest size that passes).
    pub async fn measure(
        &self,
        peer: IpAddr,
        port: u16,
        full_payload: usize,
        count: usize,
    ) -> PathHealth {
        let to = SocketAddr::new(peer, port);
        let count = count.max(1);
        let mut rtts = vec![];
        for i in 0..count {
            if i > 0 {
                tokio::time::sleep(SPACING).await;
            }
            if let Some(d) = self.shared.one(to, SMALL_SIZE).await {
                rtts.push(d.as_secs_f64() * 1e3);
            }
        }
        let ms = |v: Option<f64>| v.map(|x| (x * 1000.0).round() / 1000.0);
        let mut h = PathHealth {
            rtt_ms: ms((!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64)),
            rtt_min_ms: ms(rtts.iter().copied().reduce(f64::min)),
            rtt_max_ms: ms(rtts.iter().copied().reduce(f64::max)),
            jitter_ms: ms((rtts.len() > 1).then(|| {
                rtts.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (rtts.len() - 1) as f64
            })),
            loss_pct: 100.0 * (count - rtts.len()) as f64 / count as f64,
            mtu_size: self.ip_size(full_payload),
            at_unix: crate::base::clock::unix_now(),
            ..Default::default()
        };
        if rtts.is_empty() {
            return h; // The peer does not answer at all: no MTU verdict.
        }
        // Twice, so that one lost packet is not an MTU alarm.
        h.mtu_ok = self.shared.one(to, full_payload).await.is_some()
            || self.shared.one(to, full_payload).await.is_some();
        if !h.mtu_ok {
            // The largest payload that passes, by bisection.
            let (mut lo, mut hi) = (SMALL_SIZE, full_payload);
            while hi - lo > 8 {
                let mid = (lo + hi) / 2;
                if self.shared.one(to, mid).await.is_some() {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            h.mtu_passes = Some(self.ip_size(lo));
        }
        h
    }

    /// Full-size probes, up to 32 in flight, for `secs`: Mbit/s of what came back.
    pub async fn throughput(&self, peer: IpAddr, port: u16, payload: usize, secs: u64) -> f64 {
        let to = SocketAddr::new(peer, port);
        let start = Instant::now();
        let until = start + Duration::from_secs(secs.max(1));
        let mut back = 0usize;
        let mut inflight = tokio::task::JoinSet::new();
        while Instant::now() < until {
            if inflight.len() >= 32 {
                back += usize::from(matches!(inflight.join_next().await, Some(Ok(true))));
            }
            let shared = self.shared.clone();
            inflight.spawn(async move { shared.one(to, payload).await.is_some() });
        }
        while let Some(r) = inflight.join_next().await {
            back += usize::from(matches!(r, Ok(true)));
        }
        let bits = back as f64 * f64::from(self.ip_size(payload)) * 8.0;
        bits / start.elapsed().as_secs_f64() / 1e6
    }

    fn ip_size(&self, payload: usize) -> u32 {
        payload as u32 + UDP_HEADER + self.ip_header
    }
}

/// Answer the peers' probes; hand our replies to whoever waits for them.
async fn serve(shared: Arc<Shared>, peers: Arc<Mutex<BTreeSet<IpAddr>>>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = shared.sock.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let pkt = &mut buf[..n];
        if n < HEADER || &pkt[..4] != MAGIC {
            continue;
        }
        match pkt[4] {
            // Only the configured peers are answered (no reflector for anyone else).
            REQUEST if lock(&peers).contains(&from.ip()) => {
                pkt[4] = REPLY;
                let _ = shared.sock.send_to(pkt, from).await;
            }
            // Only from whom the probe was sent to.
            REPLY => {
                let seq = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
                let mut pending = lock(&shared.pending);
                if pending.get(&seq).is_some_and(|(to, _)| *to == from.ip()) {
                    if let Some((_, tx)) = pending.remove(&seq) {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_size_probe_is_as_large_as_a_full_vxlan_packet() {
        // Access MTU 1408 over IPv4: the VXLAN packet is 20 + 8 + 8 + 14 + 1408 = 1458.
        let payload = full_payload(1408);
        assert_eq!(payload as u32 + UDP_HEADER + 20, 1458);
        assert_eq!(crate::base::names::probe_port(4789), 4790);
    }

    #[tokio::test]
    async fn probes_are_answered_only_for_peers() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let a = Prober::bind(lo, 0, BTreeSet::new()).await.unwrap();
        let port_a = a.port();
        let b = Prober::bind("127.0.0.2".parse().unwrap(), port_a, BTreeSet::from([lo]))
            .await
            .unwrap();
        // A is B's peer: B answers A.
        let h = a
            .measure("127.0.0.2".parse().unwrap(), port_a, 1400, SMALL_PROBES)
            .await;
        assert_eq!(h.loss_pct, 0.0, "{h:?}");
        assert!(
            h.rtt_ms.is_some() && h.jitter_ms.is_some() && h.mtu_ok,
            "{h:?}"
        );
        assert_eq!(h.mtu_size, 1400 + 8 + 20);
        // B is not A's peer: A does not answer B.
        let h = b.measure(lo, port_a, 1400, SMALL_PROBES).await;
        assert_eq!(h.loss_pct, 100.0, "{h:?}");
        assert!(!h.mtu_ok);
    }
}
