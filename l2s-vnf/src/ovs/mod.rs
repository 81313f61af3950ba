//! Open vSwitch: the RFC 7047 client and the bridge/port backend built on it.
//!
//! - [`client`]: JSON-RPC over the OVSDB socket (transact, monitor, echo);
//! - [`switch`]: what OVSDB holds for us (bridge, ports, interface health);
//! - [`txn`]: a plan's OVS changes as transactions, and their inverse;
//! - [`vswitchd`]: waiting for ovs-vswitchd to apply them, as long as it makes progress;
//! - [`replica`]: the daemon's monitor-fed copy of the rows it observes;
//! - [`unixctl`]: ovs-vswitchd's control socket (the MAC learning table).

pub mod change;
pub mod client;
pub mod replica;
pub mod storm;
pub mod switch;
pub mod txn;
pub mod unixctl;
pub mod vswitchd;

pub use change::SwitchChange;
pub use client::{Client, OvsdbError};
