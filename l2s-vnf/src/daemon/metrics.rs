//! Opt-in Prometheus endpoint (`[metrics] listen`): `GET /metrics` in the OpenMetrics text
//! format, encoded by `prometheus-client`, served by hyper. Values that live in charon and
//! the switch (SA state and counters, VLAN and port counts) are a snapshot the daemon
//! refreshes at every reconcile (from the reconcile's own observation); counters of the
//! daemon's own work are kept here. A scrape only encodes: it never reaches the daemon's loop,
//! charon or OVSDB, so scrapers cannot slow the reconcile down.
//!
//! At most [`MAX_CONNECTIONS`] clients at once (more are closed at once), each given
//! [`HEADER_TIMEOUT`] to send its request and [`CONNECTION_LIFETIME`] in all.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::watch::IpsecEvents;
use crate::status::{Counters, Status};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

/// `cert="local"` for this site's certificate, else the peer's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    cert: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SaLabels {
    peer: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RekeyLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VlanLabels {
    vlan: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VlanDirLabels {
    vlan: u16,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessPortLabels {
    port: String,
    vlan: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccessPortDirLabels {
    port: String,
    vlan: u16,
    direction: &'static str,
}

/// Traffic counters by direction, labelled `L`: packets, bytes, drops.
struct TrafficFamilies<L> {
    packets: Family<L, Counter>,
    bytes: Family<L, Counter>,
    dropped: Family<L, Counter>,
}

impl<
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    > TrafficFamilies<L>
{
    fn new() -> Self {
        TrafficFamilies {
            packets: Family::default(),
            bytes: Family::default(),
            dropped: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry, of: &str, what: &str) {
        r.register(
            format!("{of}_packets"),
            format!("Packets through {what} (in: into the switch; out: out of it)"),
            self.packets.clone(),
        );
        r.register(
            format!("{of}_bytes"),
            format!("Bytes through {what}"),
            self.bytes.clone(),
        );
        r.register(
            format!("{of}_dropped"),
            format!("Frames {what} dropped (in: refused on entry, e.g. above the MTU)"),
            self.dropped.clone(),
        );
    }

    fn clear(&self) {
        self.packets.clear();
        self.bytes.clear();
        self.dropped.clear();
    }

    /// Kernel counters are copied, not added up: they count from the device's creation.
    fn set(&self, c: &Counters, label: impl Fn(&'static str) -> L) {
        for (direction, packets, bytes, dropped) in [
            ("in", c.rx_packets, c.rx_bytes, c.rx_dropped),
            ("out", c.tx_packets, c.tx_bytes, c.tx_dropped),
        ] {
            let l = label(direction);
            store(&self.packets.get_or_create(&l), packets);
            store(&self.bytes.get_or_create(&l), bytes);
            store(&self.dropped.get_or_create(&l), dropped);
        }
    }
}

fn store(c: &Counter, v: u64) {
    c.inner().store(v, Ordering::Relaxed);
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub reconcile_seconds: Histogram,
    pub repairs: Counter,
    pub reconcile_failures: Counter,
    pub reloads: Counter,
    sa_up: Family<PeerLabels, Gauge>,
    sa_bytes: Family<SaLabels, Gauge>,
    sa_packets: Family<SaLabels, Gauge>,
    rekeys: Family<RekeyLabels, Gauge>,
    vlans: Gauge,
    vlan_up: Family<VlanLabels, Gauge>,
    vlan_remote_macs: Family<VlanLabels, Gauge>,
    vlan_mac_limit: Family<VlanLabels, Gauge>,
    vlan_mac_limit_reached: Family<VlanLabels, Gauge>,
    path_rtt: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    path_jitter: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    path_loss: Family<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    path_mtu_ok: Family<PeerLabels, Gauge>,
    cert_expiry: Family<CertLabels, Gauge>,
    ports: Family<PortLabels, Gauge>,
    vlan_traffic: TrafficFamilies<VlanDirLabels>,
    vlan_bum_limited: Family<VlanLabels, Counter>,
    port_traffic: TrafficFamilies<AccessPortDirLabels>,
    port_bum_limited: Family<AccessPortLabels, Counter>,
    port_bum_limit: Family<AccessPortLabels, Gauge>,
    access_mtu: Gauge,
    guard: Gauge,
    evpn_routes: Gauge,
    evpn_peers: Family<EvpnPeerLabels, Gauge>,
    evpn_session_up: Family<PeerLabels, Gauge>,
    evpn_frr_restarts: Gauge,
    evpn_macs: Family<EvpnMacLabels, Gauge>,
}

/// `sa="up"|"down"`: discovered sites by the state of their SA (flooding only when up).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvpnPeerLabels {
    sa: &'static str,
}

/// `side="remote"|"local"`: type-2 routes' MACs, placed here or advertised from here.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvpnMacLabels {
    side: &'static str,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut m = Metrics {
            registry: Mutex::new(Registry::default()),
            // 1 ms … 16 s.
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            repairs: Counter::default(),
            reconcile_failures: Counter::default(),
            reloads: Counter::default(),
            sa_up: Family::default(),
            sa_bytes: Family::default(),
            sa_packets: Family::default(),
            rekeys: Family::default(),
            vlans: Gauge::default(),
            vlan_up: Family::default(),
            vlan_remote_macs: Family::default(),
            vlan_mac_limit: Family::default(),
            vlan_mac_limit_reached: Family::default(),
            path_rtt: Family::default(),
            path_jitter: Family::default(),
            path_loss: Family::default(),
            path_mtu_ok: Family::default(),
            cert_expiry: Family::default(),
            ports: Family::default(),
            vlan_traffic: TrafficFamilies::new(),
            vlan_bum_limited: Family::default(),
            port_traffic: TrafficFamilies::new(),
            port_bum_limited: Family::default(),
            port_bum_limit: Family::default(),
            access_mtu: Gauge::default(),
            guard: Gauge::default(),
            evpn_routes: Gauge::default(),
            evpn_peers: Family::default(),
            evpn_session_up: Family::default(),
            evpn_frr_restarts: Gauge::default(),
            evpn_macs: Family::default(),
        };
        let mut r = Registry::with_prefix("l2s_vnf");
        r.register(
            "build",
            "l2s-vnf build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time of a reconcile (observe, diff, apply)",
            m.reconcile_seconds.clone(),
        );
        r.register("repairs", "Changes made to undo drift", m.repairs.clone());
        r.register(
            "reconcile_failures",
            "Reconciles that failed (retried)",
            m.reconcile_failures.clone(),
        );
        r.register("reloads", "Config reloads applied", m.reloads.clone());
        r.register(
            "sa_up",
            "1 when the IKE_SA is established and its CHILD_SA installed",
            m.sa_up.clone(),
        );
        r.register(
            "sa_bytes",
            "Bytes through the peer's current CHILD_SA (restarts at each rekey)",
            m.sa_bytes.clone(),
        );
        r.register(
            "sa_packets",
            "Packets through the peer's current CHILD_SA (restarts at each rekey)",
            m.sa_packets.clone(),
        );
        r.register(
            "rekeys",
            "Rekeys of owned SAs seen since the daemon started",
            m.rekeys.clone(),
        );
        r.register("vlans", "VLANs with a VTEP on the bridge", m.vlans.clone());
        r.register(
            "cert_expiry_seconds",
            "Seconds until a certificate expires: cert=\"local\" is this site's, else the peer's as charon verified it",
            m.cert_expiry.clone(),
        );
        r.register(
            "vlan_up",
            "1 when the VLAN's data path works (VTEP, ports, flood entries, SAs to its peers)",
            m.vlan_up.clone(),
        );
        r.register(
            "vlan_remote_macs",
            "MACs the VLAN's VXLAN device learned from the peer sites",
            m.vlan_remote_macs.clone(),
        );
        r.register(
            "vlan_mac_limit",
            "How many remote MACs the VLAN's VXLAN device may learn",
            m.vlan_mac_limit.clone(),
        );
        r.register(
            "vlan_mac_limit_reached",
            "1 when the VLAN's VXLAN device is full (frames to unlearned MACs go to every peer)",
            m.vlan_mac_limit_reached.clone(),
        );
        r.register(
            "path_rtt_seconds",
            "Mean round trip of the latest path probe to the peer (over its SA)",
            m.path_rtt.clone(),
        );
        r.register(
            "path_jitter_seconds",
            "Mean difference between successive probe round trips",
            m.path_jitter.clone(),
        );
        r.register(
            "path_loss_ratio",
            "Share of the latest path probes that did not come back",
            m.path_loss.clone(),
        );
        r.register(
            "path_mtu_ok",
            "1 when a probe as large as a full frame at the access MTU reaches the peer",
            m.path_mtu_ok.clone(),
        );
        r.register("access_ports", "Access ports by state", m.ports.clone());
        m.vlan_traffic
            .register(&mut r, "vlan", "the VLAN's access ports and VTEP");
        r.register(
            "vlan_bum_limited",
            "Broadcast/multicast frames storm control dropped on the VLAN's access ports",
            m.vlan_bum_limited.clone(),
        );
        m.port_traffic
            .register(&mut r, "port", "the access port (in: from the VNF)");
        r.register(
            "port_bum_limited",
            "Broadcast/multicast frames storm control dropped from the access port",
            m.port_bum_limited.clone(),
        );
        r.register(
            "port_bum_limit_pps",
            "The access port's storm-control limit (packets per second)",
            m.port_bum_limit.clone(),
        );
        r.register(
            "access_mtu_bytes",
            "The access MTU in use (VTEP MTU)",
            m.access_mtu.clone(),
        );
        r.register(
            "guard_installed",
            "1 when the fail-closed nftables guard is in place",
            m.guard.clone(),
        );
        r.register(
            "evpn_routes",
            "EVPN type-3 routes (VTEP, VNI) followed: bgpd's, and those withdrawn within the grace",
            m.evpn_routes.clone(),
        );
        r.register(
            "evpn_discovered_peers",
            "Sites found through EVPN sharing a VLAN with this one, by the state of their SA",
            m.evpn_peers.clone(),
        );
        r.register(
            "evpn_bgp_session_up",
            "1 when the BGP session with the peer (a reflector, or a site at a reflector) is established",
            m.evpn_session_up.clone(),
        );
        r.register(
            "evpn_frr_restarts",
            "Times zebra or bgpd exited and was started again",
            m.evpn_frr_restarts.clone(),
        );
        r.register(
            "evpn_macs",
            "MACs in EVPN type-2 routes: remote (placed behind discovered sites) and local (this site's access ports, advertised)",
            m.evpn_macs.clone(),
        );
        m.registry = Mutex::new(r);
        Arc::new(m)
    }

    /// Update the gauges from a fresh status.
    pub fn observe(&self, s: &Status, events: &IpsecEvents) {
        self.sa_up.clear();
        self.sa_bytes.clear();
        self.sa_packets.clear();
        for f in [&self.path_rtt, &self.path_jitter, &self.path_loss] {
            f.clear();
        }
        self.path_mtu_ok.clear();
        self.cert_expiry.clear();
        if let Some(c) = &s.ipsec.certificate {
            self.cert_expiry
                .get_or_create(&CertLabels {
                    cert: "local".into(),
                })
                .set(c.expires_in_secs);
        }
        for p in &s.peers {
            if let Some(c) = &p.certificate {
                self.cert_expiry
                    .get_or_create(&CertLabels {
                        cert: p.name.clone(),
                    })
                    .set(c.expires_in_secs);
            }
        }
        for p in &s.peers {
            let Some(h) = &p.path else { continue };
            let l = PeerLabels {
                peer: p.name.clone(),
            };
            if let Some(rtt) = h.rtt_ms {
                self.path_rtt.get_or_create(&l).set(rtt / 1e3);
            }
            if let Some(j) = h.jitter_ms {
                self.path_jitter.get_or_create(&l).set(j / 1e3);
            }
            self.path_loss.get_or_create(&l).set(h.loss_pct / 100.0);
            self.path_mtu_ok.get_or_create(&l).set(i64::from(h.mtu_ok));
        }
        for p in &s.peers {
            let peer = p.name.clone();
            self.sa_up
                .get_or_create(&PeerLabels { peer: peer.clone() })
                .set(i64::from(p.up));
            let sa = p.sa.clone().unwrap_or_default();
            for (direction, bytes, packets) in [
                ("in", sa.bytes_in, sa.packets_in),
                ("out", sa.bytes_out, sa.packets_out),
            ] {
                let l = SaLabels {
                    peer: peer.clone(),
                    direction,
                };
                self.sa_bytes
                    .get_or_create(&l)
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                self.sa_packets
                    .get_or_create(&l)
                    .set(i64::try_from(packets).unwrap_or(i64::MAX));
            }
        }
        for (kind, n) in [
            ("ike", events.ike_rekeys.load(Ordering::Relaxed)),
            ("child", events.child_rekeys.load(Ordering::Relaxed)),
        ] {
            self.rekeys
                .get_or_create(&RekeyLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.vlans
            .set(s.vlans.iter().filter(|v| v.vtep.is_some()).count() as i64);
        self.vlan_up.clear();
        self.vlan_remote_macs.clear();
        self.vlan_mac_limit.clear();
        self.vlan_mac_limit_reached.clear();
        for v in &s.vlans {
            let l = VlanLabels { vlan: v.id };
            self.vlan_up.get_or_create(&l).set(i64::from(v.up));
            if v.vtep.is_some() {
                self.vlan_remote_macs
                    .get_or_create(&l)
                    .set(i64::try_from(v.remote_macs).unwrap_or(i64::MAX));
                self.vlan_mac_limit_reached
                    .get_or_create(&l)
                    .set(i64::from(v.mac_limit_reached));
            }
            if let Some(n) = v.mac_limit {
                self.vlan_mac_limit.get_or_create(&l).set(i64::from(n));
            }
        }
        self.vlan_traffic.clear();
        self.vlan_bum_limited.clear();
        self.port_traffic.clear();
        self.port_bum_limited.clear();
        self.port_bum_limit.clear();
        for v in &s.vlans {
            let vlan = v.id;
            self.vlan_traffic
                .set(&v.counters, |direction| VlanDirLabels { vlan, direction });
            store(
                &self.vlan_bum_limited.get_or_create(&VlanLabels { vlan }),
                v.counters.bum_limited,
            );
            for p in &v.access_ports {
                let l = AccessPortLabels {
                    port: p.name.clone(),
                    vlan,
                };
                if let Some(c) = &p.counters {
                    self.port_traffic.set(c, |direction| AccessPortDirLabels {
                        port: p.name.clone(),
                        vlan,
                        direction,
                    });
                    store(&self.port_bum_limited.get_or_create(&l), c.bum_limited);
                }
                if let Some(pps) = p.bum_limit_pps {
                    self.port_bum_limit.get_or_create(&l).set(i64::from(pps));
                }
            }
        }
        self.ports.clear();
        for p in s.vlans.iter().flat_map(|v| &v.access_ports) {
            let state = if !p.exists {
                "missing"
            } else if p.up {
                "up"
            } else {
                "down"
            };
            self.ports.get_or_create(&PortLabels { state }).inc();
        }
        self.access_mtu
            .set(s.access_mtu.map(i64::from).unwrap_or(0));
        self.guard.set(i64::from(s.ipsec.guard));
        self.evpn_peers.clear();
        self.evpn_session_up.clear();
        self.evpn_macs.clear();
        if let Some(e) = &s.evpn {
            self.evpn_routes
                .set(e.discovered.iter().map(|d| d.vnis.len() as i64).sum());
            for sa in ["up", "down"] {
                let n = e
                    .discovered
                    .iter()
                    .filter(|d| d.sa_up == (sa == "up"))
                    .count();
                self.evpn_peers
                    .get_or_create(&EvpnPeerLabels { sa })
                    .set(n as i64);
            }
            for b in &e.sessions {
                self.evpn_session_up
                    .get_or_create(&PeerLabels {
                        peer: b.peer.to_string(),
                    })
                    .set(i64::from(b.established));
            }
            self.evpn_frr_restarts.set(i64::from(e.frr.restarts));
            for (side, n) in [("remote", e.remote_macs), ("local", e.local_macs)] {
                self.evpn_macs
                    .get_or_create(&EvpnMacLabels { side })
                    .set(n as i64);
            }
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(reg) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        }
        out
    }
}

/// Clients served at once; one more is closed as soon as it connects.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, keep-alive included (bounds a client that reads slowly).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serve `GET /metrics` until the daemon ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("metrics: {MAX_CONNECTIONS} clients connected already; closing one more");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = respond(&metrics, &req);
                async move { Ok::<_, std::convert::Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => debug!(error = %e, "metrics client"),
                Err(_) => debug!("metrics client: connection lifetime over"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn respond<B>(metrics: &Metrics, req: &hyper::Request<B>) -> hyper::Response<Body> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (
            hyper::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&hyper::Method::GET, _) => (
            hyper::StatusCode::NOT_FOUND,
            "text/plain",
            "l2s-vnf serves /metrics only\n".into(),
        ),
        _ => (
            hyper::StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            String::new(),
        ),
    };
    let mut reply = hyper::Response::new(Body::new(body.into()));
    *reply.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        reply.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    /// A scrape is served from the snapshot (no trip to the daemon's loop); clients beyond
    /// the cap are closed at once, and the served ones keep being served.
    #[tokio::test]
    async fn scrapes_are_served_and_connections_capped() {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let m = Metrics::new();
        m.repairs.inc();
        tokio::spawn(serve(l, m.clone()));
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("application/openmetrics-text") && ok.contains("l2s_vnf_repairs_total 1"),
            "{ok}"
        );
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        // Fill every slot with a client that says nothing.
        let mut idle = vec![];
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut b))
            .await
            .expect("a client beyond the cap is closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Slots come back when the idle clients go.
        drop(idle);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn exposition_has_the_documented_families() {
        let m = Metrics::new();
        m.reconcile_seconds.observe(0.012);
        m.repairs.inc();
        let text = m.encode();
        for family in [
            "l2s_vnf_build_info{version=",
            "l2s_vnf_reconcile_duration_seconds_bucket{le=\"0.016\"} 1",
            "l2s_vnf_repairs_total 1",
            "# EOF",
        ] {
            assert!(text.contains(family), "{family} missing in:\n{text}");
        }
    }

    /// A status with one of everything: a VLAN with a port, a peer with an SA and a probe.
    fn full_status() -> Status {
        let counters = Counters {
            rx_packets: 10,
            rx_bytes: 1000,
            rx_dropped: 1,
            tx_packets: 20,
            tx_bytes: 2000,
            tx_dropped: 0,
            bum_limited: 5,
        };
        serde_json::from_value(serde_json::json!({
            "schema": 1, "source": "daemon", "site": "a", "bridge": null, "access_mtu": 1400,
            "ipsec": {"enabled": true, "guard": true, "charon": true,
                      "certificate": {"subject": "CN=a", "issuer": "CN=ca", "serial": "01",
                                      "not_after_unix": 2, "expires_in_secs": 86400,
                                      "days_left": 1}},
            "warnings": [],
            "vlans": [{
                "id": 101, "vni": 101, "vtep": "l2s-vx101", "vtep_up": true, "vtep_mtu": 1400,
                "local": "192.0.2.1", "flood": [], "up": true, "counters": counters,
                "bum_limit_pps": 500, "remote_macs": 4096, "mac_limit": 4096,
                "mac_limit_reached": true,
                "access_ports": [{"name": "ens4", "exists": true, "up": true, "mtu": 1400,
                                  "counters": counters, "bum_limit_pps": 500}]
            }],
            "peers": [{
                "name": "b", "address": "192.0.2.2", "connection": "c", "loaded": true,
                "up": true, "sa": {"ike_state": "ESTABLISHED", "child_state": "INSTALLED",
                                   "established_secs": 1, "bytes_in": 1, "bytes_out": 1,
                                   "packets_in": 1, "packets_out": 1,
                                   "ike_rekey_in_secs": 1, "child_rekey_in_secs": 1},
                "path": {"rtt_ms": 0.5, "rtt_min_ms": 0.4, "rtt_max_ms": 0.6,
                         "jitter_ms": 0.1, "loss_pct": 0.0, "mtu_ok": true,
                         "mtu_size": 1400, "mtu_passes": null, "at_unix": 1},
                "auth": "pubkey", "id": "b",
                "certificate": {"subject": "CN=b", "issuer": "CN=ca", "serial": "02",
                                "not_after_unix": 2, "expires_in_secs": 172800,
                                "days_left": 2}
            }],
            "evpn": {
                "role": "site", "asn": 65000,
                "frr": {"zebra_running": true, "bgpd_running": true, "restarts": 1,
                        "last_exit": "bgpd exited (signal: 9)"},
                "sessions": [{"peer": "192.0.2.4", "state": "Established", "established": true,
                              "uptime_ms": 5, "prefixes_received": 3, "dynamic": false}],
                "discovered": [
                    {"vtep": "192.0.2.2", "vnis": [101, 102], "sa_up": true},
                    {"vtep": "192.0.2.3", "vnis": [101], "sa_up": false, "withdrawn_secs": 2}
                ],
                "routes_age_secs": 0, "remote_macs": 4, "local_macs": 2, "problem": null
            }
        }))
        .unwrap()
    }

    #[test]
    fn counters_and_storm_drops_are_exported_per_vlan_and_port() {
        let m = Metrics::new();
        m.observe(&full_status(), &IpsecEvents::default());
        let text = m.encode();
        for sample in [
            "l2s_vnf_vlan_packets_total{vlan=\"101\",direction=\"in\"} 10",
            "l2s_vnf_vlan_bytes_total{vlan=\"101\",direction=\"out\"} 2000",
            "l2s_vnf_vlan_bum_limited_total{vlan=\"101\"} 5",
            "l2s_vnf_port_dropped_total{port=\"ens4\",vlan=\"101\",direction=\"in\"} 1",
            "l2s_vnf_port_bum_limited_total{port=\"ens4\",vlan=\"101\"} 5",
            "l2s_vnf_port_bum_limit_pps{port=\"ens4\",vlan=\"101\"} 500",
            "l2s_vnf_vlan_remote_macs{vlan=\"101\"} 4096",
            "l2s_vnf_vlan_mac_limit{vlan=\"101\"} 4096",
            "l2s_vnf_vlan_mac_limit_reached{vlan=\"101\"} 1",
        ] {
            assert!(text.contains(sample), "{sample} missing in:\n{text}");
        }
    }

    /// The dashboard shipped in the package queries only what the daemon exports.
    #[test]
    fn every_dashboard_query_names_an_exported_metric() {
        let dashboard = include_str!("../../grafana/l2s-vnf.json");
        let _: serde_json::Value = serde_json::from_str(dashboard).unwrap();
        let m = Metrics::new();
        m.reconcile_seconds.observe(0.01);
        m.observe(&full_status(), &IpsecEvents::default());
        let text = m.encode();
        let samples: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let mut named = std::collections::BTreeSet::new();
        let mut rest = dashboard;
        while let Some(at) = rest.find("l2s_vnf_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            named.insert(name);
        }
        assert!(named.len() >= 15, "the dashboard names only {named:?}");
        let missing: Vec<_> = named
            .iter()
            .filter(|n| !samples.contains(n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "not exported: {missing:?}\nexported: {samples:?}"
        );
    }

    #[test]
    fn evpn_routes_peers_sessions_and_restarts_are_exported() {
        let m = Metrics::new();
        m.observe(&full_status(), &IpsecEvents::default());
        let text = m.encode();
        for sample in [
            "l2s_vnf_evpn_routes 3",
            "l2s_vnf_evpn_discovered_peers{sa=\"up\"} 1",
            "l2s_vnf_evpn_discovered_peers{sa=\"down\"} 1",
            "l2s_vnf_evpn_bgp_session_up{peer=\"192.0.2.4\"} 1",
            "l2s_vnf_evpn_frr_restarts 1",
            "l2s_vnf_evpn_macs{side=\"remote\"} 4",
            "l2s_vnf_evpn_macs{side=\"local\"} 2",
        ] {
            assert!(text.contains(sample), "{sample} missing in:\n{text}");
        }
    }

    #[test]
    fn certificate_expiry_is_exported_for_this_site_and_each_peer() {
        let m = Metrics::new();
        m.observe(&full_status(), &IpsecEvents::default());
        let text = m.encode();
        assert!(
            text.contains("l2s_vnf_cert_expiry_seconds{cert=\"local\"} 86400"),
            "{text}"
        );
        assert!(
            text.contains("l2s_vnf_cert_expiry_seconds{cert=\"b\"} 172800"),
            "{text}"
        );
    }
}
