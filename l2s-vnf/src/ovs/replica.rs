//! The daemon's copy of the OVSDB rows it observes, kept current by the OVSDB monitor its
//! watcher already holds (as OVS's own IDL does).
//!
//! At the whole VLAN space a select of every port and interface costs ovsdb-server a
//! quarter of a second; reading the copy costs milliseconds. It is only used while the
//! monitor is live, and it is never older than what a reconcile needs: every change (ours
//! or anyone's) reaches it before the watcher wakes the loop, and after its own transaction
//! the daemon waits until the copy has seen ovs-vswitchd apply it ([`Replica::caught_up`]) —
//! ovsdb-server sends each session the updates in commit order, so our commit's rows come
//! before the `cur_cfg` that follows it.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use super::switch::{ObservedSwitch, Rows, BRIDGE_COLUMNS, IFACE_COLUMNS, PORT_COLUMNS};

#[derive(Debug, Default)]
struct State {
    rows: Rows,
    cur_cfg: Option<i64>,
    live: bool,
    /// A configuration we committed and saw applied: older copies are not used.
    expected: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Replica {
    state: Mutex<State>,
}

/// Columns a change to which may be drift (a superset of what observation reads).
const WATCHED: &[(&str, &[&str])] = &[
    ("Port", &["vlan_mode", "trunks"]),
    ("Interface", &["name", "type", "options", "external_ids"]),
];

impl Replica {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic mid-update: the copy is rebuilt on reconnect.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The monitor request: the observed columns, the watched ones, and `cur_cfg`.
    pub fn request() -> Value {
        let cols = |base: &[&'static str], table: &str| -> Vec<&'static str> {
            let mut c: Vec<&'static str> = base.to_vec();
            for (t, more) in WATCHED {
                if *t == table {
                    c.extend_from_slice(more);
                }
            }
            c
        };
        json!({
            "Bridge": {"columns": cols(BRIDGE_COLUMNS, "Bridge")},
            "Port": {"columns": cols(PORT_COLUMNS, "Port")},
            "Interface": {"columns": cols(IFACE_COLUMNS, "Interface")},
            "Open_vSwitch": {"columns": ["bridges", "cur_cfg"]},
        })
    }

    /// Replace the copy with a monitor's initial contents; it is live from now on.
    pub fn reset(&self, initial: &Value) {
        let mut s = self.state();
        s.rows = Rows::default();
        s.cur_cfg = None;
        apply(&mut s, initial);
        s.live = true;
    }

    /// Apply one monitor update. Whether it touched the switch itself (not only `cur_cfg`).
    pub fn update(&self, update: &Value) -> bool {
        let mut s = self.state();
        apply(&mut s, update)
    }

    /// The monitor is gone: the copy may be stale until the next [`Replica::reset`].
    pub fn lost(&self) {
        self.state().live = false;
    }

    /// What concerns `bridge`, from the copy; `None` while it is not live or older than a
    /// configuration we know was applied.
    pub fn observed(&self, bridge: &str) -> Option<ObservedSwitch> {
        let s = self.state();
        let current = match (s.expected, s.cur_cfg) {
            (Some(e), Some(c)) => c >= e,
            (Some(_), None) => false,
            (None, _) => true,
        };
        (s.live && current).then(|| s.rows.observed(bridge))
    }

    /// Wait (up to `within`) until the copy has seen ovs-vswitchd reach `cfg`; until it has,
    /// [`Replica::observed`] declines.
    pub async fn caught_up(&self, cfg: i64, within: Duration) -> bool {
        self.state().expected = Some(cfg);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.state().cur_cfg.is_some_and(|c| c >= cfg) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Apply `{table: {uuid: {"old", "new"}}}`; whether anything but `cur_cfg` changed.
fn apply(s: &mut State, update: &Value) -> bool {
    let mut switch = false;
    let Some(tables) = update.as_object() else {
        return false;
    };
    for (table, rows) in tables {
        let Some(rows) = rows.as_object() else {
            continue;
        };
        for (uuid, change) in rows {
            let new = change.get("new");
            if table == "Open_vSwitch" {
                if let Some(c) = new.and_then(|n| n.get("cur_cfg")).and_then(Value::as_i64) {
                    s.cur_cfg = Some(c);
                }
                // `old` lists the columns that changed.
                switch |= change
                    .get("old")
                    .is_some_and(|o| o.get("bridges").is_some());
                continue;
            }
            s.rows.set(table, uuid, new);
            switch = true;
        }
    }
    switch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_keeps_the_copy_current() {
        let r = Replica::default();
        assert!(
            r.observed("l2s0").is_none(),
            "not live before the initial contents"
        );
        r.reset(&json!({
            "Bridge": {"b1": {"new": {"name": "l2s0", "ports": ["uuid", "p1"], "datapath_type": "netdev",
                "external_ids": ["map", [["l2s-vnf-owner", "a"]]]}}},
            "Port": {"p1": {"new": {"name": "l2s-vx101", "tag": 101, "interfaces": ["uuid", "i1"],
                "external_ids": ["map", [["l2s-vnf-role", "vtep"], ["l2s-vnf-ifindex", "7"]]]}}},
            "Interface": {"i1": {"new": {"ofport": 1, "error": ["set", []]}}},
            "Open_vSwitch": {"o": {"new": {"bridges": ["uuid", "b1"], "cur_cfg": 5}}},
        }));
        let s = r.observed("l2s0").unwrap();
        let b = s.bridge.unwrap();
        assert_eq!(b.owner.as_deref(), Some("a"));
        assert_eq!(b.ports["l2s-vx101"].bound_ifindex, Some(7));
        assert_eq!(b.ports["l2s-vx101"].iface.ofport, Some(1));
        // vswitchd applying a change touches cur_cfg only: no drift to look at.
        assert!(!r.update(&json!({"Open_vSwitch": {"o": {"old": {"cur_cfg": 5}, "new": {"bridges": ["uuid", "b1"], "cur_cfg": 6}}}})));
        // A port deleted by hand is.
        assert!(r.update(&json!({
            "Bridge": {"b1": {"old": {"ports": ["uuid", "p1"]}, "new": {"name": "l2s0", "ports": ["set", []], "datapath_type": "netdev", "external_ids": ["map", [["l2s-vnf-owner", "a"]]]}}},
            "Port": {"p1": {"old": {"name": "l2s-vx101"}}},
        })));
        assert!(r.observed("l2s0").unwrap().bridge.unwrap().ports.is_empty());
        r.lost();
        assert!(r.observed("l2s0").is_none());
    }

    #[tokio::test]
    async fn waiting_for_a_configuration() {
        let r = Replica::default();
        r.reset(&json!({"Open_vSwitch": {"o": {"new": {"bridges": ["set", []], "cur_cfg": 9}}}}));
        assert!(r.caught_up(9, Duration::from_millis(1)).await);
        assert!(r.observed("l2s0").is_some());
        assert!(!r.caught_up(10, Duration::from_millis(20)).await);
        assert!(
            r.observed("l2s0").is_none(),
            "a copy behind our commit is not used"
        );
        r.update(&json!({"Open_vSwitch": {"o": {"old": {"cur_cfg": 9}, "new": {"bridges": ["set", []], "cur_cfg": 10}}}}));
        assert!(r.observed("l2s0").is_some());
    }
}
