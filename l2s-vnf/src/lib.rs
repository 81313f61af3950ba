//! l2s-vnf: a secure multi-site layer-2 switch for NFV.
//!
//! The modules are layers, lowest first; each uses only the layers below it (the backends
//! never use each other), which `tests/layers.rs` checks. Data flows the same way: a config
//! becomes a desired state, the system is observed, the backends' diffs make one plan, and
//! `apply` executes it.
//!
//! - [`base`]: the shared vocabulary — names and ownership marks, datapath and backend kinds,
//!   MAC addresses, the one clock, the MTU arithmetic. Imports nothing from the crate.
//! - [`pki`]: X.509 files (read, check, expiry, CRLs). [`xfrm`]: the kernel's IPsec policy
//!   database (read by the IPsec backend, written by the guard's block layer).
//! - [`config`]: the site config, parsed and validated with positions.
//! - The backends, each with its desired and observed types, typed change, diff and executor:
//!   - [`linux`]: VXLAN devices (`linux/vxlan.rs`), flood entries and EVPN's remote MACs,
//!     MTUs, link state, the libipsec rule, underlay facts;
//!   - [`ovs`]: the OVSDB client, the bridge and its ports, storm control;
//!   - [`ipsec`]: connections, charon's credentials, SA states, VICI, algorithms, charon's log;
//!   - [`guard`]: the fail-closed nftables guard and its xfrm block policies;
//!   - [`evpn`]: the EVPN control plane (FRR's config, the routes and sessions bgpd learned,
//!     the control namespace's shadow devices, this site's MACs advertised).
//! - [`model`]: the desired state, assembled from every backend's part.
//! - [`plan`]: the observed state and the typed diff (one [`plan::Change`] variant per backend).
//! - [`apply`]: connect and observe, diff, execute in phases with rollback.
//! - [`status`]: status text and JSON, VLAN health, path probes, the MAC table.
//! - [`daemon`]: the long-running loop (events, repairs, reload, control socket, metrics).
//! - [`cli`]: one file per subcommand.

pub mod base;
pub mod pki;
pub mod xfrm;

pub mod config;

pub mod evpn;
pub mod guard;
pub mod ipsec;
pub mod linux;
pub mod ovs;

pub mod model;
pub mod plan;

pub mod apply;
pub mod status;

pub mod daemon;

pub mod cli;
