//! The observed state of the system and the typed diff between it and the desired state.
//!
//! Each backend owns its observed types, its change and its diff; the plan composes them in
//! one order ([`Change`] has one variant per backend): the guard and the policy rule first,
//! then links and the switch, storm control, then IPsec and removals.
//!
//! [`diff`] is pure: it takes a [`DesiredState`] and an [`ActualState`] and returns a [`Plan`]
//! (or the conflicts that forbid one). `plan` prints the value, `apply` executes it.

use std::collections::BTreeSet;
use std::fmt;

use crate::base::names::alias_owned_by;
use crate::guard::GuardChange;
use crate::ipsec::{IpsecChange, ObservedIpsec};
use crate::linux::{LinkChange, VxlanSpec};
use crate::linux::{ObservedLink, ObservedLinks};
use crate::model::{DesiredSecurity, DesiredState};
use crate::ovs::storm::{ObservedStorm, StormChange};
use crate::ovs::switch::{ObservedPort, ObservedSwitch, PortRole};
use crate::ovs::SwitchChange;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualState {
    pub switch: ObservedSwitch,
    pub links: ObservedLinks,
    /// `nft list table` output of our guard table, if it exists.
    pub guard: Option<String>,
    pub ipsec: ObservedIpsec,
    /// Storm control in ovs-vswitchd; `None` when it could not be asked.
    pub storm: Option<ObservedStorm>,
}

/// One step of a plan: a change of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Switch(SwitchChange),
    Link(LinkChange),
    Guard(GuardChange),
    Storm(StormChange),
    Ipsec(IpsecChange),
}

impl Change {
    pub fn as_switch(&self) -> Option<&SwitchChange> {
        match self {
            Change::Switch(c) => Some(c),
            _ => None,
        }
    }
    pub fn as_link(&self) -> Option<&LinkChange> {
        match self {
            Change::Link(c) => Some(c),
            _ => None,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Switch(c) => c.fmt(f),
            Change::Link(c) => c.fmt(f),
            Change::Guard(c) => c.fmt(f),
            Change::Storm(c) => c.fmt(f),
            Change::Ipsec(c) => c.fmt(f),
        }
    }
}

/// Why a plan cannot be made. Nothing is changed when any of these is found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("bridge {0} exists but is not managed by l2s-vnf (no external_ids:l2s-vnf-owner); choose another [switch].bridge or remove it")]
    ForeignBridge(String),
    #[error("bridge {bridge} is managed by the l2s-vnf instance of site `{owner}`, not this one")]
    OtherOwner { bridge: String, owner: String },
    #[error("access interface {port} (vlan {vlan}) does not exist; create it or remove it from the config")]
    MissingInterface { port: String, vlan: u16 },
    #[error(
        "access interface {port} is already a port of OVS bridge {bridge}; remove it there first"
    )]
    PortOnOtherBridge { port: String, bridge: String },
    #[error("port {port} on bridge {bridge} was not created by l2s-vnf; remove it by hand or drop it from the config")]
    ForeignPort { port: String, bridge: String },
    #[error("a device named {name} already exists and is not an l2s-vnf VXLAN device of this bridge; rename or remove it")]
    ForeignDevice { name: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Access interfaces that do not exist yet, left alone (only with
    /// [`DiffOptions::wait_for_missing_ports`]): their OVS ports stay; they join when they appear.
    pub waiting: Vec<Conflict>,
}

/// How strict a diff is.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// A missing access interface is not a conflict but a port to wait for (the daemon: a
    /// VNF's interface may be plugged in later). `apply` is strict: nothing changes.
    pub wait_for_missing_ports: bool,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no changes: the system matches the config");
        }
        let lines: Vec<String> = self.changes.iter().map(ToString::to_string).collect();
        for l in &lines {
            writeln!(f, "  {l}")?;
        }
        let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
        writeln!(
            f,
            "{} to add, {} to change, {} to remove",
            count("+"),
            count("~"),
            count("-")
        )
    }
}

fn vxlan_mismatch(spec: &VxlanSpec, obs: &ObservedLink) -> Option<String> {
    let Some(a) = &obs.vxlan else {
        return Some("not a VXLAN device".into());
    };
    let mut why = vec![];
    if a.vni != Some(spec.vni) {
        why.push(format!("vni {:?} -> {}", a.vni, spec.vni));
    }
    if a.local != Some(spec.local) {
        why.push(format!("local {:?} -> {}", a.local, spec.local));
    }
    if a.port != Some(spec.port) {
        why.push(format!("dstport {:?} -> {}", a.port, spec.port));
    }
    if a.underlay_index != spec.underlay_index {
        why.push("underlay device changed".into());
    }
    if !a.learning {
        why.push("learning off".into());
    }
    // The kernel cannot change a device's limit: a new limit is a new device.
    if a.mac_limit != Some(spec.mac_limit) {
        why.push(match a.mac_limit {
            Some(n) => format!("MAC limit {n} -> {}", spec.mac_limit),
            None => format!("no MAC limit -> {}", spec.mac_limit),
        });
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// A port as the desired state has it.
struct PortWant<'a> {
    name: &'a str,
    vlan: u16,
    role: PortRole,
    /// For a new access port: the interface's MTU before l2s-vnf takes it.
    orig_mtu: Option<u32>,
}

/// A port on our bridge that is not ours.
struct NotOurs(String);

impl NotOurs {
    fn on(self, bridge: &str) -> Conflict {
        Conflict::ForeignPort {
            port: self.0,
            bridge: bridge.to_string(),
        }
    }
}

/// Why ovs-vswitchd may not be using the device now named like the port, `index` being that
/// device's ifindex (None: there is no such device, so nothing to bind to).
pub fn stale_binding(p: &ObservedPort, index: Option<u32>) -> Option<String> {
    let index = index?;
    match p.bound_ifindex {
        Some(b) if b != index => Some(format!("device re-created: ifindex {b} -> {index}")),
        // Bound to this very device: re-adding it again would not change what OVS says.
        Some(_) => None,
        None => p.iface.problem().map(|e| format!("ovs-vswitchd: {e}")),
    }
}

/// The changes that make a port as wanted: add it, rebind it (its device is new or not the
/// one ovs-vswitchd holds), retag it, or record the device it is bound to.
fn ensure_port(
    c: &mut Vec<Change>,
    observed: Option<&ObservedPort>,
    want: &PortWant<'_>,
    index: Option<u32>,
    device_new: bool,
) -> Result<(), NotOurs> {
    let Some(p) = observed else {
        c.push(Change::Switch(SwitchChange::AddPort {
            name: want.name.to_string(),
            vlan: want.vlan,
            role: want.role,
            orig_mtu: want.orig_mtu,
        }));
        return Ok(());
    };
    if p.role.is_none() {
        return Err(NotOurs(p.name.clone()));
    }
    let why = if device_new {
        Some("device re-created".to_string())
    } else {
        stale_binding(p, index)
    };
    if let Some(why) = why {
        c.push(Change::Switch(SwitchChange::RebindPort {
            uuid: p.uuid.clone(),
            name: p.name.clone(),
            vlan: want.vlan,
            role: want.role,
            orig_mtu: p.orig_mtu.or(want.orig_mtu),
            why,
        }));
        return Ok(());
    }
    if p.tag != Some(want.vlan) {
        c.push(Change::Switch(SwitchChange::RetagPort {
            uuid: p.uuid.clone(),
            name: p.name.clone(),
            from: p.tag,
            to: want.vlan,
        }));
    }
    if let (None, Some(ifindex)) = (p.bound_ifindex, index) {
        c.push(Change::Switch(SwitchChange::MarkPort {
            uuid: p.uuid.clone(),
            name: p.name.clone(),
            ifindex,
        }));
    }
    Ok(())
}

/// Compute the changes that take `actual` to `desired`, touching only owned objects.
pub fn diff(desired: &DesiredState, actual: &ActualState) -> Result<Plan, Vec<Conflict>> {
    diff_with(desired, actual, DiffOptions::default())
}

/// [`diff`] with options.
pub fn diff_with(
    desired: &DesiredState,
    actual: &ActualState,
    opts: DiffOptions,
) -> Result<Plan, Vec<Conflict>> {
    let mut conflicts = vec![];
    let mut waiting = vec![];
    let mut c = vec![];
    let links = &actual.links.links;

    // The bridge.
    let bridge = actual.switch.bridge.as_ref();
    match bridge {
        None => c.push(Change::Switch(SwitchChange::CreateBridge {
            name: desired.bridge.clone(),
            datapath: desired.datapath,
            owner: desired.owner.clone(),
        })),
        Some(b) => match &b.owner {
            None => conflicts.push(Conflict::ForeignBridge(b.name.clone())),
            Some(o) if o != &desired.owner => conflicts.push(Conflict::OtherOwner {
                bridge: b.name.clone(),
                owner: o.clone(),
            }),
            Some(_) if b.datapath != desired.datapath => {
                c.push(Change::Switch(SwitchChange::SetDatapath {
                    bridge: b.name.clone(),
                    from: b.datapath,
                    to: desired.datapath,
                }))
            }
            Some(_) => {}
        },
    }
    let ports = bridge.map(|b| &b.ports);
    let port = |name: &str| ports.and_then(|p| p.get(name));

    let mut wanted_ports: BTreeSet<&str> = BTreeSet::new();
    let mut wanted_devs: BTreeSet<&str> = BTreeSet::new();
    let mut late: Vec<Change> = vec![];

    for v in desired.vlans.values() {
        let spec = &v.vxlan;
        wanted_devs.insert(&spec.name);
        wanted_ports.insert(&spec.name);
        // The VXLAN device.
        let mut recreated = false;
        match links.get(&spec.name) {
            None => c.push(Change::Link(LinkChange::CreateVxlan { spec: spec.clone() })),
            Some(l) if !alias_owned_by(l.alias.as_deref(), &desired.bridge) => {
                conflicts.push(Conflict::ForeignDevice {
                    name: spec.name.clone(),
                })
            }
            Some(l) => {
                if let Some(why) = vxlan_mismatch(spec, l) {
                    recreated = true;
                    c.push(Change::Link(LinkChange::ReplaceVxlan {
                        index: l.index,
                        spec: spec.clone(),
                        why,
                    }));
                } else {
                    if l.mtu != spec.mtu {
                        c.push(Change::Link(LinkChange::SetMtu {
                            dev: spec.name.clone(),
                            index: l.index,
                            from: l.mtu,
                            to: spec.mtu,
                        }));
                    }
                    for addr in l.flood.iter().filter(|a| !v.flood.contains_key(a)) {
                        c.push(Change::Link(LinkChange::RemoveFlood {
                            dev: spec.name.clone(),
                            address: *addr,
                        }));
                    }
                }
            }
        }
        let existing_flood = links
            .get(&spec.name)
            .filter(|_| !recreated)
            .map(|l| l.flood.clone())
            .unwrap_or_default();
        for (addr, peer) in &v.flood {
            if !existing_flood.contains(addr) {
                c.push(Change::Link(LinkChange::AddFlood {
                    dev: spec.name.clone(),
                    peer: peer.clone(),
                    address: *addr,
                }));
            }
        }
        // EVPN's remote MACs, after the flood entries towards their VTEPs.
        let placed = links
            .get(&spec.name)
            .filter(|_| !recreated)
            .map(|l| l.placed.clone())
            .unwrap_or_default();
        for (mac, address) in placed.iter().filter(|(m, _)| !v.macs.contains_key(*m)) {
            c.push(Change::Link(LinkChange::RemoveMac {
                dev: spec.name.clone(),
                mac: mac.clone(),
                address: *address,
            }));
        }
        for (mac, (address, peer)) in &v.macs {
            let was = placed.get(mac).copied();
            if was != Some(*address) {
                c.push(Change::Link(LinkChange::PlaceMac {
                    dev: spec.name.clone(),
                    mac: mac.clone(),
                    address: *address,
                    peer: peer.clone(),
                    was,
                }));
            }
        }
        // New devices are made up; an existing one that is down is brought up last.
        if links.get(&spec.name).is_some_and(|l| !l.up) && !recreated {
            late.push(Change::Link(LinkChange::SetUp {
                dev: spec.name.clone(),
            }));
        }
        // Its OVS port: a device made by this plan must be opened anew by ovs-vswitchd.
        let device_new = recreated || !links.contains_key(&spec.name);
        let want = PortWant {
            name: &spec.name,
            vlan: v.id,
            role: PortRole::Vtep,
            orig_mtu: None,
        };
        let index = links.get(&spec.name).map(|l| l.index);
        if let Err(e) = ensure_port(&mut c, port(&spec.name), &want, index, device_new) {
            conflicts.push(e.on(&desired.bridge));
        }

        // Access ports.
        for name in &v.access_ports {
            wanted_ports.insert(name);
            let Some(l) = links.get(name) else {
                let missing = Conflict::MissingInterface {
                    port: name.clone(),
                    vlan: v.id,
                };
                if opts.wait_for_missing_ports {
                    waiting.push(missing);
                } else {
                    conflicts.push(missing);
                }
                continue;
            };
            if port(name).is_none() {
                if let Some(other) = actual.switch.port_bridge.get(name) {
                    if other != &desired.bridge {
                        conflicts.push(Conflict::PortOnOtherBridge {
                            port: name.clone(),
                            bridge: other.clone(),
                        });
                        continue;
                    }
                }
            }
            let want = PortWant {
                name,
                vlan: v.id,
                role: PortRole::Access,
                orig_mtu: Some(l.mtu),
            };
            if let Err(e) = ensure_port(&mut c, port(name), &want, Some(l.index), false) {
                conflicts.push(e.on(&desired.bridge));
                continue;
            }
            if l.mtu != desired.access_mtu {
                c.push(Change::Link(LinkChange::SetMtu {
                    dev: name.clone(),
                    index: l.index,
                    from: l.mtu,
                    to: desired.access_mtu,
                }));
            }
            if !l.up {
                late.push(Change::Link(LinkChange::SetUp { dev: name.clone() }));
            }
        }
    }

    // Owned objects that are no longer wanted.
    if let Some(ports) = ports {
        for p in ports.values() {
            let Some(role) = p.role else { continue };
            if wanted_ports.contains(p.name.as_str()) {
                continue;
            }
            c.push(Change::Switch(SwitchChange::RemovePort {
                uuid: p.uuid.clone(),
                name: p.name.clone(),
                role,
            }));
            if role == PortRole::Access {
                if let (Some(orig), Some(l)) = (p.orig_mtu, links.get(&p.name)) {
                    if l.mtu != orig {
                        late.push(Change::Link(LinkChange::RestoreMtu {
                            dev: p.name.clone(),
                            to: orig,
                        }));
                    }
                }
            }
        }
    }
    for l in links.values() {
        if l.vxlan.is_some()
            && alias_owned_by(l.alias.as_deref(), &desired.bridge)
            && !wanted_devs.contains(l.name.as_str())
        {
            late.push(Change::Link(LinkChange::DeleteVxlan {
                index: l.index,
                name: l.name.clone(),
            }));
        }
    }

    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    // Storm control: flows name ports by OpenFlow number, which a port (re)added here changes.
    let ports_change = c.iter().any(|c| {
        matches!(
            c,
            Change::Switch(SwitchChange::CreateBridge { .. })
                | Change::Switch(SwitchChange::SetDatapath { .. })
                | Change::Switch(SwitchChange::AddPort { .. })
                | Change::Switch(SwitchChange::RebindPort { .. })
        )
    });
    let storm_ok = match (&actual.storm, ports) {
        (Some(o), Some(ports)) => o.matches(&desired.storm, ports),
        _ => desired.storm.is_empty(),
    };
    if !storm_ok || (ports_change && !desired.storm.is_empty()) {
        late.push(Change::Storm(StormChange {
            bridge: desired.bridge.clone(),
            limits: desired.storm.clone(),
        }));
    }
    c.extend(late);
    let (pre, post) = diff_security(desired.security.as_ref(), actual, &desired.bridge);
    let mut changes = pre;
    changes.extend(c);
    changes.extend(post);
    Ok(Plan { changes, waiting })
}

/// Security changes: `pre` must run before any VXLAN device exists or comes up (the guard and
/// the policy rule), `post` after the switch is wired (IPsec connections, removals).
pub fn diff_security(
    desired: Option<&DesiredSecurity>,
    actual: &ActualState,
    bridge: &str,
) -> (Vec<Change>, Vec<Change>) {
    let obs = &actual.ipsec;
    let guard = crate::guard::diff(
        desired.map(|d| &d.guard),
        actual.guard.as_deref(),
        &obs.policies,
        bridge,
    )
    .map(Change::Guard);
    let (add_rule, remove_rules) = crate::linux::diff_vxlan_rules(
        desired.and_then(|d| d.vxlan_rule),
        &actual.links.vxlan_rules,
    );
    let ipsec = crate::ipsec::diff_site(
        desired.map(|d| (d.conns.as_slice(), d.creds.as_ref())),
        obs,
        bridge,
    )
    .into_iter()
    .map(Change::Ipsec);
    let (add_bgp, remove_bgp) =
        crate::linux::diff_bgp_rules(desired.and_then(|d| d.bgp_rule), &actual.links.bgp_rules);
    let remove_rules = remove_rules.into_iter().chain(remove_bgp).map(Change::Link);
    match desired {
        Some(_) => (
            guard
                .into_iter()
                .chain(add_rule.map(Change::Link))
                .chain(add_bgp.into_iter().map(Change::Link))
                .collect(),
            remove_rules.chain(ipsec).collect(),
        ),
        // Insecure lab mode: nothing of ours may stay in the way of clear-text VXLAN.
        None => (vec![], ipsec.chain(remove_rules).chain(guard).collect()),
    }
}

/// The plan that removes everything this instance owns (for `down`).
pub fn teardown(bridge_name: &str, owner: &str, actual: &ActualState) -> Plan {
    let mut c = vec![];
    let links = &actual.links.links;
    if let Some(b) = &actual.switch.bridge {
        if b.owner.as_deref() == Some(owner) {
            c.push(Change::Switch(SwitchChange::DeleteBridge {
                name: b.name.clone(),
            }));
            for p in b.ports.values() {
                if p.role == Some(PortRole::Access) {
                    if let (Some(orig), Some(l)) = (p.orig_mtu, links.get(&p.name)) {
                        if l.mtu != orig {
                            c.push(Change::Link(LinkChange::RestoreMtu {
                                dev: p.name.clone(),
                                to: orig,
                            }));
                        }
                    }
                }
            }
        }
    }
    for l in links.values() {
        if l.vxlan.is_some() && alias_owned_by(l.alias.as_deref(), bridge_name) {
            c.push(Change::Link(LinkChange::DeleteVxlan {
                index: l.index,
                name: l.name.clone(),
            }));
        }
    }
    // Security goes last: the guard stays until no VXLAN device of ours is left.
    let (_, post) = diff_security(None, actual, bridge_name);
    c.extend(post);
    Plan {
        changes: c,
        waiting: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::kinds::{Datapath, IpsecBackend};
    use crate::config::SiteConfig;
    use crate::ipsec::ObservedConn;
    use crate::linux::Facts;
    use crate::linux::VxlanAttrs;
    use crate::ovs::switch::{ObservedBridge, ObservedIface};
    use std::collections::BTreeMap;

    fn desired(ipsec: bool) -> DesiredState {
        let sec = if ipsec {
            "[ipsec]\nbackend = \"libipsec\"\n"
        } else {
            "[ipsec]\nenabled = false\ninsecure = true\n"
        };
        let text = format!(
            "[site]\nname = \"a\"\nunderlay = \"eth1\"\n{sec}[[peer]]\nname = \"b\"\naddress = \"192.0.2.2\"\n[[vlan]]\nid = 101\nports = [\"ens4\"]\n"
        );
        // PSK files are checked at load: point the default at a real 0600 file.
        let dir = tempfile::tempdir().unwrap();
        let psk = dir.path().join("psk");
        std::fs::write(&psk, "a-long-enough-secret").unwrap();
        std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let text = text.replace(
            "[ipsec]\n",
            &format!("[ipsec]\npsk_file = \"{}\"\n", psk.display()),
        );
        let cfg = SiteConfig::from_str_at(std::path::Path::new("t.toml"), &text).unwrap();
        let facts = Facts {
            underlay_index: 2,
            vtep_ip: "192.0.2.1".parse().unwrap(),
            underlay_mtu: 1500,
            kernel_has_ovs_datapath: false,
            ipsec_backend: ipsec.then_some(IpsecBackend::Libipsec),
        };
        DesiredState::build(&cfg, &facts).unwrap()
    }

    fn link(name: &str, index: u32, mtu: u32) -> ObservedLink {
        ObservedLink {
            index,
            name: name.into(),
            mtu,
            up: true,
            alias: None,
            kind: None,
            vxlan: None,
            flood: BTreeSet::new(),
            learned_macs: 0,
            placed: Default::default(),
            stats: None,
        }
    }

    fn actual_with_port() -> ActualState {
        let mut a = ActualState::default();
        a.links.links.insert("ens4".into(), link("ens4", 5, 1500));
        a
    }

    #[test]
    fn from_empty_creates_everything_in_order() {
        let p = diff(&desired(false), &actual_with_port()).unwrap();
        let text: Vec<String> = p.changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(text[0], "+ bridge l2s0 (datapath netdev)");
        assert!(
            text.contains(
                &"+ vxlan l2s-vx101 (vni 101, local 192.0.2.1, dstport 4789, mtu 1450)".to_string()
            ),
            "{text:?}"
        );
        assert!(text.contains(&"+ flood l2s-vx101 -> 192.0.2.2 (b)".to_string()));
        assert!(text.contains(&"~ mtu ens4: 1500 -> 1450".to_string()));
        assert!(
            !text.iter().any(|t| t.contains("link l2s-vx101 up")),
            "a new VTEP is made up: {text:?}"
        );
    }

    #[test]
    fn the_guard_comes_first_and_ipsec_after_the_switch() {
        let p = diff(&desired(true), &actual_with_port()).unwrap();
        assert!(
            matches!(p.changes[0], Change::Guard(GuardChange::Ensure { .. })),
            "{:?}",
            p.changes[0]
        );
        assert!(matches!(
            p.changes[1],
            Change::Link(LinkChange::AddVxlanRule {
                port: 4789,
                v6: false
            })
        ));
        let first_vxlan = p
            .changes
            .iter()
            .position(|c| matches!(c, Change::Link(LinkChange::CreateVxlan { .. })))
            .unwrap();
        let first_ipsec = p
            .changes
            .iter()
            .position(|c| matches!(c, Change::Ipsec(_)))
            .unwrap();
        assert!(first_vxlan < first_ipsec);
    }

    #[test]
    fn conflicts_stop_the_plan() {
        let mut a = ActualState::default();
        a.switch.bridge = Some(ObservedBridge {
            uuid: "u".into(),
            name: "l2s0".into(),
            datapath: Datapath::Netdev,
            owner: None,
            ports: BTreeMap::new(),
        });
        let err = diff(&desired(false), &a).unwrap_err();
        assert!(err.contains(&Conflict::ForeignBridge("l2s0".into())));
        assert!(err.contains(&Conflict::MissingInterface {
            port: "ens4".into(),
            vlan: 101
        }));
    }

    /// A converged clear-text site: bridge, VTEP l2s-vx101 (ifindex 10) and access port ens4
    /// (ifindex 5), both ports bound to those devices.
    fn converged() -> ActualState {
        let d = desired(false);
        let mut a = actual_with_port();
        a.links.links.get_mut("ens4").unwrap().mtu = 1450;
        let spec = &d.vlans[&101].vxlan;
        let mut vx = link("l2s-vx101", 10, 1450);
        vx.alias = Some(spec.alias.clone());
        vx.vxlan = Some(VxlanAttrs {
            vni: Some(101),
            local: Some(spec.local),
            port: Some(spec.port),
            underlay_index: spec.underlay_index,
            learning: true,
            mac_limit: Some(spec.mac_limit),
        });
        vx.flood = BTreeSet::from(["192.0.2.2".parse().unwrap()]);
        a.links.links.insert("l2s-vx101".into(), vx);
        let port = |name: &str, role, bound| ObservedPort {
            uuid: format!("u-{name}"),
            name: name.into(),
            tag: Some(101),
            role: Some(role),
            orig_mtu: None,
            bound_ifindex: Some(bound),
            iface: ObservedIface {
                ofport: Some(1),
                error: None,
            },
        };
        a.switch.bridge = Some(ObservedBridge {
            uuid: "b".into(),
            name: "l2s0".into(),
            datapath: Datapath::Netdev,
            owner: Some("a".into()),
            ports: [
                port("l2s-vx101", PortRole::Vtep, 10),
                port("ens4", PortRole::Access, 5),
            ]
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect(),
        });
        a
    }

    fn texts(d: &DesiredState, a: &ActualState) -> Vec<String> {
        diff(d, a)
            .unwrap()
            .changes
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn evpn_macs_are_placed_moved_and_removed() {
        let mut d = desired(false);
        let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
        let v = d.vlans.get_mut(&101).unwrap();
        for m in ["02:00:00:00:00:01", "02:00:00:00:00:02"] {
            v.macs.insert(m.into(), (b, "b".into()));
        }
        let mut a = converged();
        let vx = a.links.links.get_mut("l2s-vx101").unwrap();
        vx.placed
            .insert("02:00:00:00:00:01".into(), "192.0.2.9".parse().unwrap());
        vx.placed.insert("02:00:00:00:00:03".into(), b);
        assert_eq!(
            texts(&d, &a),
            vec![
                "- mac l2s-vx101 02:00:00:00:00:03 -> 192.0.2.2",
                "~ mac l2s-vx101 02:00:00:00:00:01: 192.0.2.9 -> 192.0.2.2 (b)",
                "+ mac l2s-vx101 02:00:00:00:00:02 -> 192.0.2.2 (b)",
            ]
        );
        // Placed as desired: nothing to do.
        let vx = a.links.links.get_mut("l2s-vx101").unwrap();
        vx.placed = d.vlans[&101]
            .macs
            .iter()
            .map(|(m, (ip, _))| (m.clone(), *ip))
            .collect();
        assert_eq!(texts(&d, &a), Vec::<String>::new());
    }

    #[test]
    fn a_converged_site_needs_nothing() {
        assert_eq!(texts(&desired(false), &converged()), Vec::<String>::new());
    }

    #[test]
    fn a_vtep_recreated_is_rebound_on_the_bridge() {
        let d = desired(false);
        // Deleted: created again, and its port re-added so ovs-vswitchd opens the new device.
        let mut a = converged();
        a.links.links.remove("l2s-vx101");
        let t = texts(&d, &a);
        assert!(
            t.iter().any(|c| c.starts_with("+ vxlan l2s-vx101")),
            "{t:?}"
        );
        assert!(
            t.contains(&"~ port l2s-vx101 re-added (device re-created)".to_string()),
            "{t:?}"
        );
        // Re-created behind our back (a new ifindex): the port is re-added.
        let mut a = converged();
        a.links.links.get_mut("l2s-vx101").unwrap().index = 11;
        assert_eq!(
            texts(&d, &a),
            vec!["~ port l2s-vx101 re-added (device re-created: ifindex 10 -> 11)"]
        );
        // The same for an access interface (a VNF re-plugged).
        let mut a = converged();
        a.links.links.get_mut("ens4").unwrap().index = 6;
        assert_eq!(
            texts(&d, &a),
            vec!["~ port ens4 re-added (device re-created: ifindex 5 -> 6)"]
        );
    }

    #[test]
    fn an_interface_ovs_cannot_use_is_rebound_once() {
        let d = desired(false);
        let mut a = converged();
        let b = a.switch.bridge.as_mut().unwrap();
        let p = b.ports.get_mut("l2s-vx101").unwrap();
        p.iface.error = Some("could not open network device l2s-vx101".into());
        p.bound_ifindex = None;
        assert_eq!(
            texts(&d, &a),
            vec![
                "~ port l2s-vx101 re-added (ovs-vswitchd: could not open network device l2s-vx101)"
            ]
        );
        // Already re-added against this very device: no loop of re-adds.
        let b = a.switch.bridge.as_mut().unwrap();
        b.ports.get_mut("l2s-vx101").unwrap().bound_ifindex = Some(10);
        assert_eq!(texts(&d, &a), Vec::<String>::new());
    }

    #[test]
    fn a_vtep_that_is_down_comes_up_last() {
        let mut a = converged();
        a.links.links.get_mut("l2s-vx101").unwrap().up = false;
        assert_eq!(texts(&desired(false), &a), vec!["~ link l2s-vx101 up"]);
    }

    #[test]
    fn a_port_made_before_the_mark_gets_it() {
        let mut a = converged();
        let b = a.switch.bridge.as_mut().unwrap();
        b.ports.get_mut("ens4").unwrap().bound_ifindex = None;
        assert_eq!(
            texts(&desired(false), &a),
            vec!["~ port ens4: bound to ifindex 5"]
        );
    }

    #[test]
    fn teardown_removes_security_last() {
        let mut a = actual_with_port();
        a.switch.bridge = Some(ObservedBridge {
            uuid: "u".into(),
            name: "l2s0".into(),
            datapath: Datapath::Netdev,
            owner: Some("a".into()),
            ports: BTreeMap::new(),
        });
        a.guard = Some("table inet l2s_vnf_l2s0 {}".into());
        a.links.vxlan_rules = vec![((4789, 4789), false)];
        a.ipsec = ObservedIpsec {
            conns: Some(vec![
                ObservedConn {
                    name: "l2s-vnf:l2s0:b".into(),
                    children: vec![],
                },
                ObservedConn {
                    name: "other".into(),
                    children: vec![],
                },
            ]),
            sas: BTreeMap::new(),
            policies: vec![],
            ..Default::default()
        };
        let p = teardown("l2s0", "a", &a);
        let text: Vec<String> = p.changes.iter().map(|c| c.to_string()).collect();
        assert_eq!(text.first().map(String::as_str), Some("- bridge l2s0"));
        assert_eq!(
            text.last().map(String::as_str),
            Some("- guard: nftables table inet l2s_vnf_l2s0"),
            "{text:?}"
        );
        // The xfrm layer alone (the table flushed) still goes with `down`.
        a.guard = None;
        a.ipsec.policies = crate::xfrm::blocks(&[4789])
            .iter()
            .map(crate::xfrm::listed)
            .collect();
        let p = teardown("l2s0", "a", &a);
        assert!(
            p.changes
                .iter()
                .any(|c| matches!(c, Change::Guard(GuardChange::Remove { .. }))),
            "{:?}",
            p.changes
        );
        assert!(
            text.contains(&"- ipsec l2s-vnf:l2s0:b".to_string())
                && !text.iter().any(|t| t.contains("other")),
            "{text:?}"
        );
    }
}
