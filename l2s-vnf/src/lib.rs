//! l2s-vnf: a secure multi-site layer-2 switch for NFV.
//!
//! Data flows one way: [`config`] (parse + validate) → [`discover`] (facts of this machine) →
//! [`model`] (desired state; [`mtu`] computes the access MTU) → [`plan`] (observed state and
//! the typed diff) → [`apply`] (executes a plan through [`ovsdb`] and [`netlink`]).

pub mod algorithms;
pub mod apply;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod guard;
pub mod health;
pub mod ipsec;
pub mod macs;
pub mod model;
pub mod mtu;
pub mod netlink;
pub mod ovsdb;
pub mod pki;
pub mod plan;
pub mod probe;
#[cfg(test)]
mod snapshot;
pub mod status;
pub mod storm;
pub mod vici;
pub mod xfrm;
