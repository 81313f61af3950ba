//! A plan's OVS changes as OVSDB transactions, executed and — when ovs-vswitchd does not
//! apply them — reverted.
//!
//! Usually one transaction. A port to *rebind* (its device was re-created under the same
//! name, or ovs-vswitchd cannot use the device it holds) is taken off the bridge in the first
//! and put back in a second, once ovs-vswitchd has applied the first: within one transaction
//! ovs-vswitchd matches the port by name and keeps the device it had open.
//!
//! Each transaction ends by bumping `next_cfg`; [`apply`] waits for ovs-vswitchd to reach it
//! ([`super::vswitchd`]). If it does not, [`inverse`] restores the rows the plan started
//! from, so a failed apply leaves OVSDB as it was — and says so only when the revert
//! committed.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::change::SwitchChange;
use super::client::{Client, OvsdbError};
use super::switch::{rows, uuid_of, ObservedBridge, PortRole};
use super::vswitchd;
use crate::base::names::{EXT_IFINDEX, EXT_ORIG_MTU, EXT_OWNER, EXT_ROLE, EXT_VLAN};

fn ovs_map(pairs: &[(&str, String)]) -> Value {
    json!([
        "map",
        pairs.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn by_uuid(uuid: &str) -> Value {
    json!([["_uuid", "==", ["uuid", uuid]]])
}

/// One OVSDB transaction, and where the uuids of the rows it inserts come back.
#[derive(Debug)]
pub struct Txn {
    pub ops: Vec<Value>,
    port_inserts: Vec<usize>,
    bridge_insert: Option<usize>,
    /// How many OVS changes it carries (how long ovs-vswitchd may take over it).
    pub rows: usize,
}

/// Rows committed transactions inserted (what their inverse deletes).
#[derive(Debug, Default)]
pub struct Created {
    pub ports: Vec<String>,
    pub bridge: Option<String>,
}

impl Txn {
    fn created(&self, results: &[Value]) -> Created {
        let uuid = |i: &usize| {
            results
                .get(*i)
                .and_then(|r| r.get("uuid"))
                .and_then(uuid_of)
        };
        Created {
            ports: self.port_inserts.iter().filter_map(uuid).collect(),
            bridge: self.bridge_insert.as_ref().and_then(uuid),
        }
    }
}

/// Where the ports of a transaction go.
enum Bridge<'a> {
    Create(Value),
    Existing(&'a str),
    None,
}

/// A transaction being written.
struct Ops {
    ops: Vec<Value>,
    port_inserts: Vec<usize>,
    new_ports: Vec<Value>,
    removed: Vec<Value>,
    rows: usize,
}

impl Ops {
    fn new(comment: &str) -> Self {
        Ops {
            ops: vec![json!({"op": "comment", "comment": comment})],
            port_inserts: vec![],
            new_ports: vec![],
            removed: vec![],
            rows: 0,
        }
    }

    /// Insert a port with its interface, carrying our marks.
    fn add_port(
        &mut self,
        name: &str,
        vlan: u16,
        role: PortRole,
        orig_mtu: Option<u32>,
        ifindex: Option<u32>,
    ) {
        let n = self.new_ports.len();
        let (iface, port) = (format!("iface{n}"), format!("port{n}"));
        self.ops.push(
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
        if let Some(i) = ifindex {
            ext.push((EXT_IFINDEX, i.to_string()));
        }
        self.port_inserts.push(self.ops.len());
        self.ops.push(
            json!({"op": "insert", "table": "Port", "uuid-name": port, "row": {
                "name": name,
                "interfaces": ["named-uuid", iface],
                "tag": vlan,
                "vlan_mode": "access",
                "external_ids": ovs_map(&ext),
            }}),
        );
        self.new_ports.push(json!(["named-uuid", port]));
        self.rows += 1;
    }

    fn set_ext(&mut self, table: &str, uuid: &str, key: &str, value: String) {
        self.ops.push(
            json!({"op": "mutate", "table": table, "where": by_uuid(uuid), "mutations": [
                ["external_ids", "delete", ["set", [key]]],
                ["external_ids", "insert", ovs_map(&[(key, value)])],
            ]}),
        );
    }

    fn retag(&mut self, uuid: &str, tag: Option<u16>) {
        let value = tag.map_or(json!(["set", []]), |t| json!(t));
        self.ops.push(json!({"op": "update", "table": "Port", "where": by_uuid(uuid), "row": {"tag": value, "vlan_mode": "access"}}));
        if let Some(t) = tag {
            self.set_ext("Port", uuid, EXT_VLAN, t.to_string());
        }
        self.rows += 1;
    }

    fn finish(mut self, bridge: Bridge<'_>) -> Txn {
        let mut bridge_insert = None;
        match bridge {
            Bridge::Create(mut row) => {
                row["ports"] = json!(["set", self.new_ports]);
                bridge_insert = Some(self.ops.len());
                self.ops.push(
                    json!({"op": "insert", "table": "Bridge", "uuid-name": "bridge", "row": row}),
                );
                self.ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]]}));
            }
            Bridge::Existing(u) => {
                // Removals first: a port re-added under the same name must not clash.
                if !self.removed.is_empty() {
                    self.ops.push(json!({"op": "mutate", "table": "Bridge", "where": by_uuid(u), "mutations": [["ports", "delete", ["set", self.removed]]]}));
                }
                if !self.new_ports.is_empty() {
                    self.ops.push(json!({"op": "mutate", "table": "Bridge", "where": by_uuid(u), "mutations": [["ports", "insert", ["set", self.new_ports]]]}));
                }
            }
            Bridge::None => {}
        }
        self.ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["next_cfg", "+=", 1]]}));
        self.ops.push(
            json!({"op": "select", "table": "Open_vSwitch", "where": [], "columns": ["next_cfg"]}),
        );
        Txn {
            ops: self.ops,
            port_inserts: self.port_inserts,
            bridge_insert,
            rows: self.rows,
        }
    }
}

/// The transactions for the OVS changes of a plan: the first carries everything (rebinds as
/// removals); the second, if any, adds the rebound ports back. `bridge_uuid` is the existing
/// bridge's row (None when the plan creates it); `ifindex` gives each device's index, recorded
/// on the ports added.
pub fn build(
    changes: &[&SwitchChange],
    bridge_uuid: Option<&str>,
    ifindex: &BTreeMap<String, u32>,
) -> (Txn, Option<Txn>) {
    let mut first = Ops::new("l2s-vnf apply");
    let mut second = Ops::new("l2s-vnf apply: rebound ports back");
    let mut create = None;
    for c in changes {
        match c {
            SwitchChange::CreateBridge {
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
            SwitchChange::SetDatapath { to, .. } => {
                if let Some(u) = bridge_uuid {
                    first.ops.push(json!({"op": "update", "table": "Bridge", "where": by_uuid(u), "row": {"datapath_type": to.ovs_name()}}));
                }
            }
            SwitchChange::DeleteBridge { .. } => {
                if let Some(u) = bridge_uuid {
                    first.ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "delete", ["set", [["uuid", u]]]]]}));
                }
            }
            SwitchChange::AddPort {
                name,
                vlan,
                role,
                orig_mtu,
            } => first.add_port(name, *vlan, *role, *orig_mtu, ifindex.get(name).copied()),
            SwitchChange::RebindPort {
                uuid,
                name,
                vlan,
                role,
                orig_mtu,
                ..
            } => {
                first.removed.push(json!(["uuid", uuid]));
                first.rows += 1;
                second.add_port(name, *vlan, *role, *orig_mtu, ifindex.get(name).copied());
            }
            SwitchChange::MarkPort { uuid, ifindex, .. } => {
                first.set_ext("Port", uuid, EXT_IFINDEX, ifindex.to_string())
            }
            SwitchChange::RetagPort { uuid, to, .. } => first.retag(uuid, Some(*to)),
            SwitchChange::RemovePort { uuid, .. } => {
                first.removed.push(json!(["uuid", uuid]));
                first.rows += 1;
            }
        }
    }
    let target = match (create, bridge_uuid) {
        (Some(row), _) => Bridge::Create(row),
        (None, Some(u)) => Bridge::Existing(u),
        (None, None) => Bridge::None,
    };
    let rebinds = !second.new_ports.is_empty();
    let first = first.finish(target);
    let second = match bridge_uuid {
        Some(u) if rebinds => Some(second.finish(Bridge::Existing(u))),
        _ => None,
    };
    (first, second)
}

/// The transaction that undoes `changes` once (part of) them committed: `created` holds the
/// rows the committed transactions inserted, `observed` the bridge as it was before.
pub fn inverse(
    changes: &[&SwitchChange],
    observed: Option<&ObservedBridge>,
    created: &Created,
) -> Vec<Value> {
    let mut ops = Ops::new("l2s-vnf: revert a change ovs-vswitchd did not apply");
    if let Some(b) = &created.bridge {
        // A bridge the plan created: its ports go with it.
        ops.ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [], "mutations": [["bridges", "delete", ["set", [["uuid", b]]]]]}));
        return ops.finish(Bridge::None).ops;
    }
    let Some(bridge) = observed else {
        return ops.finish(Bridge::None).ops;
    };
    ops.removed = created.ports.iter().map(|u| json!(["uuid", u])).collect();
    for c in changes {
        match c {
            SwitchChange::RemovePort { name, .. } | SwitchChange::RebindPort { name, .. } => {
                if let Some((p, role, tag)) = bridge
                    .ports
                    .get(name)
                    .and_then(|p| Some((p, p.role?, p.tag?)))
                {
                    ops.add_port(name, tag, role, p.orig_mtu, p.bound_ifindex);
                }
            }
            SwitchChange::RetagPort { uuid, from, .. } => ops.retag(uuid, *from),
            SwitchChange::SetDatapath { from, .. } => {
                ops.ops.push(json!({"op": "update", "table": "Bridge", "where": by_uuid(&bridge.uuid), "row": {"datapath_type": from.ovs_name()}}));
            }
            _ => {}
        }
    }
    ops.finish(Bridge::Existing(&bridge.uuid)).ops
}

fn next_cfg(results: &[Value]) -> Result<i64, OvsdbError> {
    results
        .last()
        .map(rows)
        .and_then(|r| r.first())
        .and_then(|r| r.get("next_cfg"))
        .and_then(Value::as_i64)
        .ok_or_else(|| OvsdbError::Protocol("next_cfg missing from transaction reply".into()))
}

/// Execute the OVS changes of a plan and wait until ovs-vswitchd has applied them; returns
/// the configuration number it reached (`None`: nothing to do). When it does not, whatever
/// committed is reverted and the error says whether that worked.
pub async fn apply(
    client: &Client,
    changes: &[&SwitchChange],
    observed: Option<&ObservedBridge>,
    ifindex: &BTreeMap<String, u32>,
) -> Result<Option<i64>, OvsdbError> {
    if changes.is_empty() {
        return Ok(None);
    }
    let mut reached = None;
    let (first, second) = build(changes, observed.map(|b| b.uuid.as_str()), ifindex);
    let mut created = Created::default();
    let mut committed = false;
    for mut txn in std::iter::once(first).chain(second) {
        let ops = std::mem::take(&mut txn.ops);
        let results = match client.transact(ops).await {
            Ok(r) => r,
            // An OVSDB transaction is atomic: a refused one changed nothing.
            Err(e) if !committed => return Err(e),
            Err(e) => return Err(revert(client, changes, observed, &created, e).await),
        };
        committed = true;
        let new = txn.created(&results);
        created.ports.extend(new.ports);
        created.bridge = created.bridge.or(new.bridge);
        let waited = match next_cfg(&results) {
            Ok(n) => vswitchd::wait_applied(client, n, txn.rows)
                .await
                .map(|()| n),
            Err(e) => Err(e),
        };
        match waited {
            Ok(n) => reached = Some(n),
            Err(e) => return Err(revert(client, changes, observed, &created, e).await),
        }
    }
    Ok(reached)
}

async fn revert(
    client: &Client,
    changes: &[&SwitchChange],
    observed: Option<&ObservedBridge>,
    created: &Created,
    cause: OvsdbError,
) -> OvsdbError {
    let undone = client
        .transact(inverse(changes, observed, created))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    OvsdbError::NotApplied {
        cause: cause.to_string(),
        reverted: undone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::kinds::Datapath;
    use crate::ovs::switch::{ObservedIface, ObservedPort};

    fn text(ops: &[Value]) -> String {
        serde_json::to_string(ops).unwrap()
    }

    #[test]
    fn new_bridge_transaction_inserts_bridge_with_ports() {
        let changes = [
            SwitchChange::CreateBridge {
                name: "l2s0".into(),
                datapath: Datapath::Netdev,
                owner: "site-a".into(),
            },
            SwitchChange::AddPort {
                name: "ens4".into(),
                vlan: 101,
                role: PortRole::Access,
                orig_mtu: Some(1500),
            },
        ];
        let refs: Vec<&SwitchChange> = changes.iter().collect();
        let index = BTreeMap::from([("ens4".to_string(), 7)]);
        let (t, second) = build(&refs, None, &index);
        assert!(second.is_none());
        let s = text(&t.ops);
        assert!(s.contains(r#""datapath_type":"netdev""#), "{s}");
        assert!(
            s.contains(r#""ports":["set",[["named-uuid","port0"]]]"#),
            "{s}"
        );
        assert!(s.contains(r#"["l2s-vnf-owner","site-a"]"#), "{s}");
        assert!(s.contains(r#""tag":101"#), "{s}");
        assert!(s.contains(r#"["l2s-vnf-orig-mtu","1500"]"#), "{s}");
        assert!(s.contains(r#"["l2s-vnf-ifindex","7"]"#), "{s}");
        assert_eq!(t.ops.last().unwrap()["op"], "select");
        // The uuids of what it inserted are found in the reply.
        let mut reply: Vec<Value> = t.ops.iter().map(|_| json!({})).collect();
        reply[t.port_inserts[0]] = json!({"uuid": ["uuid", "p-1"]});
        reply[t.bridge_insert.unwrap()] = json!({"uuid": ["uuid", "b-1"]});
        let c = t.created(&reply);
        assert_eq!(
            (c.ports, c.bridge),
            (vec!["p-1".into()], Some("b-1".into()))
        );
    }

    #[test]
    fn removal_mutates_the_bridge() {
        let changes = [SwitchChange::RemovePort {
            uuid: "u-1".into(),
            name: "ens5".into(),
            role: PortRole::Access,
        }];
        let refs: Vec<&SwitchChange> = changes.iter().collect();
        let (t, _) = build(&refs, Some("b-1"), &BTreeMap::new());
        let s = text(&t.ops);
        assert!(
            s.contains(r#"["ports","delete",["set",[["uuid","u-1"]]]]"#),
            "{s}"
        );
    }

    #[test]
    fn a_rebind_removes_first_and_adds_back_in_a_second_transaction() {
        let changes = [SwitchChange::RebindPort {
            uuid: "u-1".into(),
            name: "l2s-vx101".into(),
            vlan: 101,
            role: PortRole::Vtep,
            orig_mtu: None,
            why: "device re-created".into(),
        }];
        let refs: Vec<&SwitchChange> = changes.iter().collect();
        let index = BTreeMap::from([("l2s-vx101".to_string(), 42)]);
        let (first, second) = build(&refs, Some("b-1"), &index);
        let s = text(&first.ops);
        assert!(s.contains(r#"["ports","delete",["set",[["uuid","u-1"]]]]"#));
        assert!(!s.contains("insert"), "{s}");
        let s = text(&second.unwrap().ops);
        assert!(s.contains(r#""name":"l2s-vx101""#) && s.contains(r#"["l2s-vnf-ifindex","42"]"#));
        assert!(s.contains(r#"["ports","insert""#), "{s}");
    }

    fn observed() -> ObservedBridge {
        let port = |name: &str, uuid: &str, tag| ObservedPort {
            uuid: uuid.into(),
            name: name.into(),
            tag: Some(tag),
            role: Some(PortRole::Access),
            orig_mtu: Some(1500),
            bound_ifindex: Some(9),
            iface: ObservedIface::default(),
        };
        ObservedBridge {
            uuid: "b-1".into(),
            name: "l2s0".into(),
            datapath: Datapath::Netdev,
            owner: Some("a".into()),
            ports: [port("ens5", "u-5", 102), port("ens6", "u-6", 103)]
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect(),
        }
    }

    #[test]
    fn the_inverse_restores_what_the_plan_started_from() {
        let changes = [
            SwitchChange::AddPort {
                name: "ens4".into(),
                vlan: 101,
                role: PortRole::Access,
                orig_mtu: Some(1500),
            },
            SwitchChange::RemovePort {
                uuid: "u-5".into(),
                name: "ens5".into(),
                role: PortRole::Access,
            },
            SwitchChange::RetagPort {
                uuid: "u-6".into(),
                name: "ens6".into(),
                from: Some(103),
                to: 104,
            },
        ];
        let refs: Vec<&SwitchChange> = changes.iter().collect();
        let created = Created {
            ports: vec!["p-new".into()],
            bridge: None,
        };
        let s = text(&inverse(&refs, Some(&observed()), &created));
        assert!(
            s.contains(r#"["ports","delete",["set",[["uuid","p-new"]]]]"#),
            "{s}"
        );
        assert!(
            s.contains(r#""name":"ens5""#) && s.contains(r#""tag":102"#),
            "{s}"
        );
        assert!(s.contains(r#"["l2s-vnf-ifindex","9"]"#), "{s}");
        assert!(s.contains(r#""row":{"tag":103"#), "{s}");
        assert!(s.contains("next_cfg"), "{s}");
    }

    #[test]
    fn the_inverse_of_a_new_bridge_deletes_it() {
        let created = Created {
            ports: vec!["p-1".into()],
            bridge: Some("b-9".into()),
        };
        let s = text(&inverse(&[], None, &created));
        assert!(
            s.contains(r#"["bridges","delete",["set",[["uuid","b-9"]]]]"#),
            "{s}"
        );
        assert!(!s.contains("p-1"), "its ports go with it: {s}");
    }
}
