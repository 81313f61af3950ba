//! The OVS side of a plan: read bridges and ports from OVSDB, turn the OVS changes of a plan
//! into one transaction, and wait until ovs-vswitchd has applied it (`next_cfg`/`cur_cfg`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{Client, OvsdbError};
use crate::model::{Datapath, EXT_ORIG_MTU, EXT_OWNER, EXT_ROLE, EXT_VLAN};
use crate::plan::{Change, ObservedBridge, ObservedPort, ObservedSwitch, PortRole};

const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `["set", [a, b]]` or a bare atom → list of atoms.
fn set_members(v: &Value) -> Vec<&Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([kind, Value::Array(items)]) if kind == "set" => items.iter().collect(),
        _ => vec![v],
    }
}

fn uuid_of(v: &Value) -> Option<String> {
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

fn ovs_map(pairs: &[(&str, String)]) -> Value {
    json!([
        "map",
        pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn rows(result: &Value) -> &[Value] {
    result
        .get("rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Read the bridge called `bridge` and every port's bridge.
pub async fn observe(client: &Client, bridge: &str) -> Result<ObservedSwitch, OvsdbError> {
    let ops = vec![
        json!({"op": "select", "table": "Bridge", "where": [], "columns": ["_uuid", "name", "ports", "datapath_type", "external_ids"]}),
        json!({"op": "select", "table": "Port", "where": [], "columns": ["_uuid", "name", "tag", "external_ids"]}),
    ];
    let res = client.transact(ops).await?;
    let (bridges, ports) = match res.as_slice() {
        [b, p, ..] => (rows(b), rows(p)),
        _ => {
            return Err(OvsdbError::Protocol(
                "select returned too few results".into(),
            ))
        }
    };
    let mut port_by_uuid: BTreeMap<String, ObservedPort> = BTreeMap::new();
    for p in ports {
        let (Some(uuid), Some(name)) = (
            p.get("_uuid").and_then(uuid_of),
            p.get("name").and_then(Value::as_str),
        ) else {
            continue;
        };
        let ext = p.get("external_ids").map(map_of).unwrap_or_default();
        let tag = p
            .get("tag")
            .map(set_members)
            .and_then(|m| m.first().and_then(|t| t.as_u64()))
            .and_then(|t| u16::try_from(t).ok());
        port_by_uuid.insert(
            uuid.clone(),
            ObservedPort {
                uuid,
                name: name.to_string(),
                tag,
                role: ext.get(EXT_ROLE).and_then(|r| PortRole::parse(r)),
                orig_mtu: ext.get(EXT_ORIG_MTU).and_then(|m| m.parse().ok()),
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

/// Whether a change is carried out through OVSDB.
pub fn is_ovs_change(c: &Change) -> bool {
    matches!(
        c,
        Change::CreateBridge { .. }
            | Change::SetDatapath { .. }
            | Change::DeleteBridge { .. }
            | Change::AddPort { .. }
            | Change::RetagPort { .. }
            | Change::RemovePort { .. }
    )
}

/// Build the single transaction for the OVS changes of a plan. `bridge_uuid` is the existing
/// bridge's row (None when the plan creates it). The last two operations bump and read
/// `next_cfg`.
pub fn transaction(changes: &[&Change], bridge_uuid: Option<&str>) -> Vec<Value> {
    let mut ops = vec![json!({"op": "comment", "comment": "l2s-vnf apply"})];
    let mut new_ports: Vec<Value> = vec![];
    let mut removed: Vec<Value> = vec![];
    let mut create: Option<Value> = None;
    for (i, c) in changes.iter().enumerate() {
        match c {
            Change::CreateBridge {
                name,
                datapath,
                owner,
            } => {
                create = Some(json!({
                    "name": name,
                    "datapath_type": datapath.ovs_name(),
                    "external_ids": ovs_map(&[(EXT_OWNER, owner.clone())]),
                }));
            }
            Change::SetDatapath { to, .. } => {
                if let Some(u) = bridge_uuid {
                    ops.push(json!({"op": "update", "table": "Bridge", "where": [["_uuid", "==", ["uuid", u]]], "row": {"datapath_type": to.ovs_name()}}));
                }
            }
            Change::DeleteBridge { .. } => {
                if let Some(u) = bridge_uuid {
                    ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "delete", ["set", [["uuid", u]]]]]}));
                }
            }
            Change::AddPort {
                name,
                vlan,
                role,
                orig_mtu,
            } => {
                let iface = format!("iface{i}");
                let port = format!("port{i}");
                ops.push(
                    json!({"op": "insert", "table": "Interface", "uuid-name": iface, "row": {
                        "name": name,
                        "external_ids": ovs_map(&[(EXT_ROLE, role.as_str().to_string())]),
                    }}),
                );
                let mut ext = vec![
                    (EXT_ROLE, role.as_str().to_string()),
                    (EXT_VLAN, vlan.to_string()),
                ];
                if let Some(m) = orig_mtu {
                    ext.push((EXT_ORIG_MTU, m.to_string()));
                }
                ops.push(
                    json!({"op": "insert", "table": "Port", "uuid-name": port, "row": {
                        "name": name,
                        "interfaces": ["named-uuid", iface],
                        "tag": vlan,
                        "vlan_mode": "access",
                        "external_ids": ovs_map(&ext),
                    }}),
                );
                new_ports.push(json!(["named-uuid", port]));
            }
            Change::RetagPort { uuid, to, .. } => {
                ops.push(json!({"op": "update", "table": "Port", "where": [["_uuid", "==", ["uuid", uuid]]], "row": {"tag": to, "vlan_mode": "access"}}));
                ops.push(json!({"op": "mutate", "table": "Port", "where": [["_uuid", "==", ["uuid", uuid]]], "mutations": [
                    ["external_ids", "delete", ["set", [EXT_VLAN]]],
                    ["external_ids", "insert", ovs_map(&[(EXT_VLAN, to.to_string())])],
                ]}));
            }
            Change::RemovePort { uuid, .. } => removed.push(json!(["uuid", uuid])),
            _ => {}
        }
    }
    if let Some(mut row) = create {
        row["ports"] = json!(["set", new_ports]);
        ops.push(json!({"op": "insert", "table": "Bridge", "uuid-name": "bridge", "row": row}));
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]]}));
    } else if let Some(u) = bridge_uuid {
        // Removals first: a port re-added under the same name must not clash.
        if !removed.is_empty() {
            ops.push(json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", u]]], "mutations": [["ports", "delete", ["set", removed]]]}));
        }
        if !new_ports.is_empty() {
            ops.push(json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", u]]], "mutations": [["ports", "insert", ["set", new_ports]]]}));
        }
    }
    ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]}));
    ops.push(
        json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
    );
    ops
}

/// Execute the OVS changes in one transaction and wait for ovs-vswitchd to apply them.
pub async fn apply(
    client: &Client,
    changes: &[&Change],
    bridge_uuid: Option<&str>,
) -> Result<(), OvsdbError> {
    if changes.is_empty() {
        return Ok(());
    }
    let ops = transaction(changes, bridge_uuid);
    let results = client.transact(ops).await?;
    let next_cfg = results
        .last()
        .map(rows)
        .and_then(|r| r.first())
        .and_then(|r| r.get("next_cfg"))
        .and_then(Value::as_i64)
        .ok_or_else(|| OvsdbError::Protocol("next_cfg missing from transaction reply".into()))?;
    wait_cur_cfg(client, next_cfg).await
}

/// Wait until `Open_vSwitch.cur_cfg >= next_cfg`, i.e. ovs-vswitchd has reconfigured.
pub async fn wait_cur_cfg(client: &Client, next_cfg: i64) -> Result<(), OvsdbError> {
    let monitor_id = format!("l2s-vnf-cfg-{next_cfg}");
    let (initial, mut updates) = client
        .monitor(
            &monitor_id,
            json!({"Open_vSwitch": {"columns": ["cur_cfg"]}}),
        )
        .await?;
    let cur = |v: &Value| -> Option<i64> {
        v.get("Open_vSwitch")?
            .as_object()?
            .values()
            .find_map(|row| row.get("new")?.get("cur_cfg")?.as_i64())
    };
    let mut done = cur(&initial).is_some_and(|c| c >= next_cfg);
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    while !done {
        match tokio::time::timeout_at(deadline, updates.recv()).await {
            Ok(Some(u)) => done = cur(&u).is_some_and(|c| c >= next_cfg),
            Ok(None) => return Err(OvsdbError::Closed(client.path().to_path_buf())),
            Err(_) => {
                let _ = client.monitor_cancel(&monitor_id).await;
                return Err(OvsdbError::Rpc {
                    method: "wait for ovs-vswitchd".into(),
                    error: format!(
                        "ovs-vswitchd did not apply configuration {next_cfg} within {APPLY_TIMEOUT:?}; is it running? The change is stored in OVSDB and takes effect when it runs"
                    ),
                });
            }
        }
    }
    client.monitor_cancel(&monitor_id).await
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
        if let Some(e) = r
            .get("error")
            .map(set_members)
            .and_then(|m| m.first().and_then(|e| e.as_str().map(str::to_string)))
        {
            out.push((name.to_string(), e));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_bridge_transaction_inserts_bridge_with_ports() {
        let changes = [
            Change::CreateBridge {
                name: "l2s0".into(),
                datapath: Datapath::Netdev,
                owner: "site-a".into(),
            },
            Change::AddPort {
                name: "ens4".into(),
                vlan: 101,
                role: PortRole::Access,
                orig_mtu: Some(1500),
            },
        ];
        let refs: Vec<&Change> = changes.iter().collect();
        let ops = transaction(&refs, None);
        let s = serde_json::to_string(&ops).unwrap();
        assert!(s.contains(r#""datapath_type":"netdev""#), "{s}");
        assert!(
            s.contains(r#""ports":["set",[["named-uuid","port1"]]]"#),
            "{s}"
        );
        assert!(s.contains(r#"["l2s-vnf-owner","site-a"]"#), "{s}");
        assert!(s.contains(r#""tag":101"#), "{s}");
        assert!(s.contains(r#"["l2s-vnf-orig-mtu","1500"]"#), "{s}");
        assert_eq!(ops.last().unwrap()["op"], "select");
    }

    #[test]
    fn removal_mutates_the_bridge() {
        let changes = [Change::RemovePort {
            uuid: "u-1".into(),
            name: "ens5".into(),
            role: PortRole::Access,
        }];
        let refs: Vec<&Change> = changes.iter().collect();
        let ops = transaction(&refs, Some("b-1"));
        let s = serde_json::to_string(&ops).unwrap();
        assert!(
            s.contains(r#"["ports","delete",["set",[["uuid","u-1"]]]]"#),
            "{s}"
        );
    }

    #[test]
    fn parses_ovsdb_atoms() {
        assert_eq!(set_members(&json!(["set", [1, 2]])).len(), 2);
        assert_eq!(set_members(&json!(101)).len(), 1);
        assert_eq!(uuid_of(&json!(["uuid", "abc"])), Some("abc".into()));
        let m = map_of(&json!(["map", [["a", "1"], ["b", "2"]]]));
        assert_eq!(m.get("b").map(String::as_str), Some("2"));
    }
}
