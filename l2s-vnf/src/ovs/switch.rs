//! The OVS side of the observed state: the bridge, its ports, and how ovs-vswitchd is doing
//! with each port's interface (`ofport`, `error`), read from OVSDB in one transaction.
//!
//! Executing a plan's OVS changes is [`super::txn`]; waiting for ovs-vswitchd is
//! [`super::vswitchd`].

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::client::{Client, OvsdbError};
use crate::base::kinds::Datapath;
use crate::base::names::{EXT_IFINDEX, EXT_ORIG_MTU, EXT_OWNER, EXT_ROLE};

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

/// The columns observation reads, per table (also what the daemon's replica monitors).
pub const BRIDGE_COLUMNS: &[&str] = &["name", "ports", "datapath_type", "external_ids"];
pub const PORT_COLUMNS: &[&str] = &["name", "tag", "interfaces", "external_ids"];
pub const IFACE_COLUMNS: &[&str] = &["ofport", "error"];

#[derive(Debug, Clone)]
struct BridgeRow {
    name: String,
    ports: Vec<String>,
    datapath: Datapath,
    owner: Option<String>,
}

#[derive(Debug, Clone)]
struct PortRow {
    name: String,
    tag: Option<u16>,
    iface: Option<String>,
    role: Option<PortRole>,
    orig_mtu: Option<u32>,
    bound_ifindex: Option<u32>,
}

/// The rows of Bridge, Port and Interface that observation needs, parsed; filled from one
/// select, or kept current from a monitor (the daemon's replica).
#[derive(Debug, Clone, Default)]
pub struct Rows {
    bridges: HashMap<String, BridgeRow>,
    ports: HashMap<String, PortRow>,
    ifaces: HashMap<String, ObservedIface>,
}

impl Rows {
    /// Insert, replace or (row `None`) delete one row of `table`.
    pub fn set(&mut self, table: &str, uuid: &str, row: Option<&Value>) {
        let uuid = uuid.to_string();
        match (table, row) {
            ("Bridge", None) => drop(self.bridges.remove(&uuid)),
            ("Port", None) => drop(self.ports.remove(&uuid)),
            ("Interface", None) => drop(self.ifaces.remove(&uuid)),
            ("Bridge", Some(b)) => {
                let ext = b.get("external_ids").map(map_of).unwrap_or_default();
                self.bridges.insert(
                    uuid,
                    BridgeRow {
                        name: b
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        ports: b
                            .get("ports")
                            .map(set_members)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(uuid_of)
                            .collect(),
                        datapath: Datapath::from_ovs(
                            b.get("datapath_type").and_then(Value::as_str).unwrap_or(""),
                        ),
                        owner: ext.get(EXT_OWNER).cloned(),
                    },
                );
            }
            ("Port", Some(p)) => {
                let ext = p.get("external_ids").map(map_of).unwrap_or_default();
                self.ports.insert(
                    uuid,
                    PortRow {
                        name: p
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .into(),
                        tag: optional(p, "tag")
                            .and_then(Value::as_u64)
                            .and_then(|t| u16::try_from(t).ok()),
                        iface: p
                            .get("interfaces")
                            .map(set_members)
                            .unwrap_or_default()
                            .into_iter()
                            .find_map(uuid_of),
                        role: ext.get(EXT_ROLE).and_then(|r| PortRole::parse(r)),
                        orig_mtu: ext.get(EXT_ORIG_MTU).and_then(|m| m.parse().ok()),
                        bound_ifindex: ext.get(EXT_IFINDEX).and_then(|m| m.parse().ok()),
                    },
                );
            }
            ("Interface", Some(i)) => {
                self.ifaces.insert(
                    uuid,
                    ObservedIface {
                        ofport: optional(i, "ofport").and_then(Value::as_i64),
                        error: optional(i, "error")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    },
                );
            }
            _ => {}
        }
    }

    /// Rows from a select of each table (rows carry their `_uuid`).
    fn add_selected(&mut self, table: &str, rows: &[Value]) {
        for r in rows {
            if let Some(uuid) = r.get("_uuid").and_then(uuid_of) {
                self.set(table, &uuid, Some(r));
            }
        }
    }

    /// What concerns the instance managing `bridge`.
    pub fn observed(&self, bridge: &str) -> ObservedSwitch {
        let mut out = ObservedSwitch::default();
        for (uuid, b) in &self.bridges {
            let members = b.ports.iter().filter_map(|u| {
                let p = self.ports.get(u)?;
                Some(ObservedPort {
                    uuid: u.clone(),
                    name: p.name.clone(),
                    tag: p.tag,
                    role: p.role,
                    orig_mtu: p.orig_mtu,
                    bound_ifindex: p.bound_ifindex,
                    iface: p
                        .iface
                        .as_ref()
                        .and_then(|i| self.ifaces.get(i).cloned())
                        .unwrap_or_default(),
                })
            });
            if b.name == bridge {
                let ports: BTreeMap<String, ObservedPort> =
                    members.map(|p| (p.name.clone(), p)).collect();
                for name in ports.keys() {
                    out.port_bridge.insert(name.clone(), b.name.clone());
                }
                out.bridge = Some(ObservedBridge {
                    uuid: uuid.clone(),
                    name: b.name.clone(),
                    datapath: b.datapath,
                    owner: b.owner.clone(),
                    ports,
                });
            } else {
                for p in members {
                    out.port_bridge.insert(p.name, b.name.clone());
                }
            }
        }
        out
    }
}

fn select(table: &str, columns: &[&str]) -> Value {
    let mut cols = vec!["_uuid"];
    cols.extend_from_slice(columns);
    json!({"op": "select", "table": table, "where": [], "columns": cols})
}

/// Read the bridge called `bridge` with its ports and their interfaces, and every port's
/// bridge, in one transaction.
pub async fn observe(client: &Client, bridge: &str) -> Result<ObservedSwitch, OvsdbError> {
    let ops = vec![
        select("Bridge", BRIDGE_COLUMNS),
        select("Port", PORT_COLUMNS),
        select("Interface", IFACE_COLUMNS),
    ];
    let res = client.transact(ops).await?;
    let mut rows = Rows::default();
    match res.as_slice() {
        [b, p, i, ..] => {
            rows.add_selected("Bridge", self::rows(b));
            rows.add_selected("Port", self::rows(p));
            rows.add_selected("Interface", self::rows(i));
        }
        _ => {
            return Err(OvsdbError::Protocol(
                "select returned too few results".into(),
            ))
        }
    }
    Ok(rows.observed(bridge))
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
