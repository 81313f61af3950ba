//! The OVS side of the observed state: the bridge, its ports, and how ovs-vswitchd is doing
//! with each port's interface (`ofport`, `error`), read from OVSDB in one transaction.
//!
//! Executing a plan's OVS changes is [`super::txn`]; waiting for ovs-vswitchd is
//! [`super::vswitchd`].

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::client::{Client, OvsdbError};
use crate::model::{Datapath, EXT_IFINDEX, EXT_ORIG_MTU, EXT_OWNER, EXT_ROLE};

/// A role recorded in a port's `external_ids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PortRole {
    Access,
    Vtep,
}

impl PortRole {
    pub fn as_str(self) -> &'static str {
        match self {
            PortRole::Access => "access",
            PortRole::Vtep => "vtep",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "access" => Some(PortRole::Access),
            "vtep" => Some(PortRole::Vtep),
            _ => None,
        }
    }
}

/// What ovs-vswitchd reports about a port's interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedIface {
    /// The OpenFlow port number; -1 when ovs-vswitchd could not add the interface.
    pub ofport: Option<i64>,
    /// ovs-vswitchd's error for the interface (e.g. "could not open network device …").
    pub error: Option<String>,
}

impl ObservedIface {
    /// Why ovs-vswitchd cannot use this interface, if it says so.
    pub fn problem(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        (self.ofport == Some(-1)).then(|| "ovs-vswitchd could not add it (ofport -1)".into())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPort {
    pub uuid: String,
    pub name: String,
    pub tag: Option<u16>,
    /// `Some` when the port carries our ownership mark.
    pub role: Option<PortRole>,
    pub orig_mtu: Option<u32>,
    /// The ifindex of the device when l2s-vnf (re)added the port
    /// (`external_ids:l2s-vnf-ifindex`): a device of the same name with another index was
    /// re-created since, and ovs-vswitchd may still hold the old one.
    pub bound_ifindex: Option<u32>,
    pub iface: ObservedIface,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedBridge {
    pub uuid: String,
    pub name: String,
    pub datapath: Datapath,
    /// The site name in `external_ids:l2s-vnf-owner`, if any.
    pub owner: Option<String>,
    pub ports: BTreeMap<String, ObservedPort>,
}

/// What OVSDB holds that concerns us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSwitch {
    /// The bridge named in the config, if it exists (owned or not).
    pub bridge: Option<ObservedBridge>,
    /// Every port name on any bridge → that bridge's name.
    pub port_bridge: BTreeMap<String, String>,
}

/// `["set", [a, b]]` or a bare atom → list of atoms.
pub(super) fn set_members(v: &Value) -> Vec<&Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, Value::Array(items)]) if kind == "set" => items.iter().collect(),
        _ => vec![v],
    }
}

pub(super) fn uuid_of(v: &Value) -> Option<String> {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, Value::String(u)]) if kind == "uuid" => Some(u.clone()),
        _ => None,
    }
}

/// `["map", [[k, v], ...]]` → map of string values.
fn map_of(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some([kind, Value::Array(pairs)]) = v.as_array().map(Vec::as_slice) {
        if kind == "map" {
            for p in pairs {
                if let Some([Value::String(k), Value::String(val)]) =
                    p.as_array().map(Vec::as_slice)
                {
                    out.insert(k.clone(), val.clone());
                }
            }
        }
    }
    out
}

pub(super) fn rows(result: &Value) -> &[Value] {
    result
        .get("rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The single value of an optional column (`["set", []]` when empty).
fn optional<'a>(row: &'a Value, column: &str) -> Option<&'a Value> {
    row.get(column)
        .map(set_members)
        .and_then(|m| m.first().copied())
}

/// Read the bridge called `bridge` with its ports and their interfaces, and every port's
/// bridge.
pub async fn observe(client: &Client, bridge: &str) -> Result<ObservedSwitch, OvsdbError> {
    let ops = vec![
        json!({"op": "select", "table": "Bridge", "where": [], "columns": ["_uuid", "name", "ports", "datapath_type", "external_ids"]}),
        json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "tag", "interfaces", "external_ids"]}),
        json!({"op": "select", "table": "Interface", "where": [], "columns": ["_uuid", "ofport", "error"]}),
    ];
    let res = client.transact(ops).await?;
    let (bridges, ports, ifaces) = match res.as_slice() {
        [b, p, i, ..] => (rows(b), rows(p), rows(i)),
        _ => {
            return Err(OvsdbError::Protocol(
                "select returned too few results".into(),
            ))
        }
    };
    let iface_by_uuid: BTreeMap<String, ObservedIface> = ifaces
        .iter()
        .filter_map(|i| {
            let uuid = i.get("_uuid").and_then(uuid_of)?;
            Some((
                uuid,
                ObservedIface {
                    ofport: optional(i, "ofport").and_then(Value::as_i64),
                    error: optional(i, "error")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
            ))
        })
        .collect();
    let mut port_by_uuid: BTreeMap<String, ObservedPort> = BTreeMap::new();
    for p in ports {
        let (Some(uuid), Some(name)) = (
            p.get("_uuid").and_then(uuid_of),
            p.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let ext = p.get("external_ids").map(map_of).unwrap_or_default();
        let tag = optional(p, "tag")
            .and_then(Value::as_u64)
            .and_then(|t| u16::try_from(t).ok());
        let iface = p
            .get("interfaces")
            .map(set_members)
            .unwrap_or_default()
            .into_iter()
            .find_map(uuid_of)
            .and_then(|u| iface_by_uuid.get(&u).cloned())
            .unwrap_or_default();
        port_by_uuid.insert(
            uuid.clone(),
            ObservedPort {
                uuid,
                name: name.to_string(),
                tag,
                role: ext.get(EXT_ROLE).and_then(|r| PortRole::parse(r)),
                orig_mtu: ext.get(EXT_ORIG_MTU).and_then(|m| m.parse().ok()),
                bound_ifindex: ext.get(EXT_IFINDEX).and_then(|m| m.parse().ok()),
                iface,
            },
        );
    }
    let mut out = ObservedSwitch::default();
    for b in bridges {
        let (Some(uuid), Some(name)) = (
            b.get("_uuid").and_then(uuid_of),
            b.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let members: Vec<ObservedPort> = b
            .get("ports")
            .map(set_members)
            .unwrap_or_default()
            .into_iter()
            .filter_map(uuid_of)
            .filter_map(|u| port_by_uuid.get(&u).cloned())
            .collect();
        for p in &members {
            out.port_bridge.insert(p.name.clone(), name.to_string());
        }
        if name == bridge {
            let ext = b.get("external_ids").map(map_of).unwrap_or_default();
            out.bridge = Some(ObservedBridge {
                uuid,
                name: name.to_string(),
                datapath: Datapath::from_ovs(
                    b.get("datapath_type").and_then(Value::as_str).unwrap_or(""),
                ),
                owner: ext.get(EXT_OWNER).cloned(),
                ports: members.into_iter().map(|p| (p.name.clone(), p)).collect(),
            });
        }
    }
    Ok(out)
}

/// Interface errors ovs-vswitchd reported for the given port names (e.g. "could not open
/// network device").
pub async fn interface_errors(
    client: &Client,
    names: &[String],
) -> Result<Vec<(String, String)>, OvsdbError> {
    if names.is_empty() {
        return Ok(vec![]);
    }
    let res = client
        .transact(vec![json!({"op": "select", "table": "Interface", "where": [], "columns": ["name", "error"]})])
        .await?;
    let mut out = vec![];
    for r in res.first().map(rows).unwrap_or(&[]) {
        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
        if !names.iter().any(|n| n == name) {
            continue;
        }
        if let Some(e) = optional(r, "error").and_then(Value::as_str) {
            out.push((name.to_string(), e.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ovsdb_atoms() {
        assert_eq!(set_members(&json!(["set", [1, 2]])).len(), 2);
        assert_eq!(set_members(&json!(101)).len(), 1);
        assert_eq!(uuid_of(&json!(["uuid", "abc"])), Some("abc".into()));
        let m = map_of(&json!(["map", [["a", "1"], ["b", "2"]]]));
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
        assert_eq!(optional(&json!({"tag": ["set", []]}), "tag"), None);
        assert_eq!(optional(&json!({"tag": 7}), "tag"), Some(&json!(7)));
    }

    #[test]
    fn an_interface_ovs_cannot_use_says_why() {
        let ok = ObservedIface {
            ofport: Some(3),
            error: None,
        };
        assert_eq!(ok.problem(), None);
        let gone = ObservedIface {
            ofport: Some(-1),
            error: None,
        };
        assert!(gone.problem().unwrap().contains("ofport -1"));
        let err = ObservedIface {
            ofport: Some(-1),
            error: Some("could not open network device x (No such device)".into()),
        };
        assert!(err.problem().unwrap().contains("No such device"));
    }
}
