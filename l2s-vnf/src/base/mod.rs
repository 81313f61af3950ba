//! The shared vocabulary: names and ownership marks, the kinds of datapath and IPsec backend,
//! MAC addresses, the one clock, and the MTU arithmetic. It imports nothing from the rest of the crate, and
//! every other layer may use it.

pub mod clock;
pub mod kinds;
pub mod mac;
pub mod mtu;
pub mod names;
#[cfg(test)]
pub(crate) mod snapshot;
