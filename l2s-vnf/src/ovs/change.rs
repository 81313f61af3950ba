//! The OVS backend's typed change: one step on the bridge or its ports, executed in one
//! OVSDB transaction per apply ([`super::txn`]).

use std::fmt;

use super::switch::PortRole;
use crate::base::kinds::Datapath;

/// One change to the bridge or its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchChange {
    CreateBridge {
        name: String,
        datapath: Datapath,
        owner: String,
    },
    SetDatapath {
        bridge: String,
        from: Datapath,
        to: Datapath,
    },
    DeleteBridge {
        name: String,
    },
    AddPort {
        name: String,
        vlan: u16,
        role: PortRole,
        orig_mtu: Option<u32>,
    },
    /// Take a port off the bridge and add it back (in a second OVSDB transaction), so that
    /// ovs-vswitchd opens its device anew: the device was re-created under the same name,
    /// or ovs-vswitchd cannot use the one it holds.
    RebindPort {
        uuid: String,
        name: String,
        vlan: u16,
        role: PortRole,
        orig_mtu: Option<u32>,
        why: String,
    },
    /// Record which device (ifindex) a port is bound to, on a port made before that mark.
    MarkPort {
        uuid: String,
        name: String,
        ifindex: u32,
    },
    RetagPort {
        uuid: String,
        name: String,
        from: Option<u16>,
        to: u16,
    },
    RemovePort {
        uuid: String,
        name: String,
        role: PortRole,
    },
}

impl fmt::Display for SwitchChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwitchChange::CreateBridge { name, datapath, .. } => {
                write!(f, "+ bridge {name} (datapath {datapath})")
            }
            SwitchChange::SetDatapath { bridge, from, to } => {
                write!(f, "~ bridge {bridge}: datapath {from} -> {to}")
            }
            SwitchChange::DeleteBridge { name } => write!(f, "- bridge {name}"),
            SwitchChange::AddPort {
                name, vlan, role, ..
            } => write!(f, "+ port {name} ({}, vlan {vlan})", role.as_str()),
            SwitchChange::RebindPort { name, why, .. } => {
                write!(f, "~ port {name} re-added ({why})")
            }
            SwitchChange::MarkPort { name, ifindex, .. } => {
                write!(f, "~ port {name}: bound to ifindex {ifindex}")
            }
            SwitchChange::RetagPort { name, from, to, .. } => match from {
                Some(from) => write!(f, "~ port {name}: vlan {from} -> {to}"),
                None => write!(f, "~ port {name}: untagged -> vlan {to}"),
            },
            SwitchChange::RemovePort { name, role, .. } => {
                write!(f, "- port {name} ({})", role.as_str())
            }
        }
    }
}
