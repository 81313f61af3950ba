//! The kinds the rest of the crate chooses between: the OVS datapath and the IPsec backend,
//! as configured (`*Choice`, may be `Auto`) and as resolved.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatapathChoice {
    Auto,
    System,
    Netdev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Kernel,
    Libipsec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Datapath {
    System,
    Netdev,
}

impl Datapath {
    pub fn ovs_name(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }
    /// OVS stores the kernel datapath as "" or "system".
    pub fn from_ovs(s: &str) -> Self {
        if s == "netdev" {
            Datapath::Netdev
        } else {
            Datapath::System
        }
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ovs_name())
    }
}

/// The IPsec backend once resolved (from config or from charon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpsecBackend {
    Kernel,
    Libipsec,
}
