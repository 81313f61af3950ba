//! Open vSwitch: the RFC 7047 client and the bridge/port backend built on it.

pub mod client;
pub mod switch;

pub use client::{Client, OvsdbError};
