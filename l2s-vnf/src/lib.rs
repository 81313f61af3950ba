//! l2s-vnf: a secure multi-site layer-2 switch for NFV.

pub mod apply;
pub mod base;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod guard;
pub mod ipsec;
pub mod linux;
pub mod model;
pub mod ovs;
pub mod pki;
pub mod plan;
pub mod status;
pub mod xfrm;
