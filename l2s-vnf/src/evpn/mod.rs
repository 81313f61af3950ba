//! The EVPN control plane (`[evpn]`): peer sites found through BGP EVPN (RFC 7432/8365)
//! instead of listed, with FRR's `zebra` and `bgpd` run as l2s-vnf's own children.
//!
//! # Design: a control namespace beside the data path
//!
//! FRR's zebra advertises a VNI only when its VXLAN device is a port of a Linux bridge, and it
//! writes remote VTEPs and MACs straight into that device's FDB. Our VXLAN devices are ports
//! of Open vSwitch, and a flood entry may exist only once the peer's SA is up (a forged route
//! must open nothing). So zebra never sees the real data path:
//!
//! - a **control namespace** per instance holds, per VNI, a *shadow* Linux bridge, a shadow
//!   VXLAN device with the same VNI and the site's VTEP address as `local`, and a shadow access
//!   port (never up on any wire: the namespace's only link is a veth pair that carries the VTEP
//!   address, so that zebra resolves the peers' next hops through its default route);
//! - zebra runs in that namespace and advertises a type-3 (IMET) route per VNI; bgpd runs in
//!   the site's own namespace (it needs the underlay, inside IPsec) and talks to zebra over
//!   its unix socket;
//! - the daemon reads the routes bgpd accepted ([`routes`]) and decides: a discovered VTEP
//!   gets a certificate-authenticated SA first, then its flood entry on the real
//!   `l2s-vx<VNI>` device, exactly as a listed peer does, and the MACs its type-2 routes
//!   place behind it (permanent `extern_learn` entries on that device);
//! - this site's MACs: the daemon puts the MACs OVS learned on a VLAN's access ports on the
//!   VNI's shadow access port, where zebra finds them and advertises type-2 routes
//!   ([`Runtime::advertise_local`], with the MAC-mobility rule of
//!   [`runtime::advertised_macs`]).
//!
//! Why not a Linux bridge per VNI in the data path (the other design that worked in the
//! experiment): zebra would write flood entries before any SA exists, and the VXLAN devices
//! would leave OVS, taking storm control, counters and the MAC table's view of remote MACs
//! with them. The shadow costs nothing per packet (the data path is unchanged: OVS → VXLAN →
//! ESP) and [`shadow::device_count`] devices in the control namespace: 3 per VNI plus the
//! veth pair, 12,284 at 4094 VLANs — created once, never touched by traffic.
//!
//! Which FRR config each role gets is in [`frr_config`].

pub mod control_ns;
pub mod frr;
pub mod frr_config;
pub mod routes;
pub mod runtime;
pub mod shadow;
pub mod view;

pub use control_ns::ControlNs;
pub use frr::{Frr, FrrState};
pub use routes::{BgpSession, Discovered};
pub use runtime::{EvpnStatus, Runtime};

/// Why the EVPN control plane could not be set up or read.
#[derive(Debug, thiserror::Error)]
pub enum EvpnError {
    #[error("EVPN needs {0}")]
    Missing(String),
    #[error("cannot run {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("{what} failed: {stderr}")]
    Command { what: String, stderr: String },
    #[error("cannot read FRR's or iproute2's answer: {0}")]
    Parse(String),
}
