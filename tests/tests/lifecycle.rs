//! Idempotence, deltas, teardown and bad input on a real two/three-site lab.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use std::os::unix::fs::PermissionsExt;

use l2s_lab::{netns, require_lab, sh, Lab};

fn uuid(lab: &Lab, site: &str, port: &str) -> String {
    lab.vsctl(site, &["get", "port", port, "_uuid"])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn deltas_touch_only_what_changed_and_down_removes_only_ours() {
    require_lab!();
    let mut lab = Lab::new(3).unwrap();
    let a1 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b1 = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let a2 = lab.add_vnf("a", "acc102", "10.102.0.1/24").unwrap();
    let b2 = lab.add_vnf("b", "acc102", "10.102.0.2/24").unwrap();
    let a_ns = lab.site("a").ns.clone();

    // Start with VLAN 101 only, to B.
    lab.write_config("a", &lab.config("a", &["b"], &[(101, &["acc101"], None)]))
        .unwrap();
    lab.write_config(
        "b",
        &lab.config(
            "b",
            &["a"],
            &[(101, &["acc101"], None), (102, &["acc102"], None)],
        ),
    )
    .unwrap();
    lab.l2s_ok("a", &["apply"]).unwrap();
    lab.l2s_ok("b", &["apply"]).unwrap();
    lab.set_vnf_mtu(&[&a1, &b1, &a2, &b2], 1450).unwrap();
    assert!(lab.ping_eventually(&a1, &b1.ip, Duration::from_secs(20)));
    let vx101 = lab.ifindex(&a_ns, "l2s-vx101").unwrap();
    let port101 = uuid(&lab, "a", "acc101");
    let vtep101 = uuid(&lab, "a", "l2s-vx101");

    // Add a VLAN and a peer: only that delta is applied.
    lab.write_config(
        "a",
        &lab.config(
            "a",
            &["b", "c"],
            &[(101, &["acc101"], None), (102, &["acc102"], Some(&["b"]))],
        ),
    )
    .unwrap();
    let plan = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(
        plan.contains("+ vxlan l2s-vx102") && plan.contains("+ flood l2s-vx101 -> 192.0.2.3"),
        "{plan}"
    );
    assert!(
        !plan.contains("+ bridge") && !plan.contains("~ bridge"),
        "the bridge must not be touched: {plan}"
    );
    lab.l2s_ok("a", &["apply"]).unwrap();
    assert_eq!(
        lab.ifindex(&a_ns, "l2s-vx101"),
        Some(vx101),
        "VLAN 101's device was recreated"
    );
    assert_eq!(
        uuid(&lab, "a", "acc101"),
        port101,
        "VLAN 101's access port was recreated"
    );
    assert_eq!(uuid(&lab, "a", "l2s-vx101"), vtep101);
    assert!(
        lab.ping_eventually(&a2, &b2.ip, Duration::from_secs(20)),
        "new VLAN 102 works"
    );
    assert!(lab.ping(&a1, &b1.ip, 2), "VLAN 101 still works");
    assert!(lab.l2s_ok("a", &["apply"]).unwrap().contains("no changes"));

    // Remove a port and the peer again: the port is released with its MTU given back.
    lab.write_config(
        "a",
        &lab.config(
            "a",
            &["b"],
            &[(101, &["acc101"], None), (102, &[], Some(&["b"]))],
        ),
    )
    .unwrap();
    let out = lab.l2s_ok("a", &["apply"]).unwrap();
    assert!(
        out.contains("- port acc102") && out.contains("- flood l2s-vx101 -> 192.0.2.3"),
        "{out}"
    );
    assert_eq!(lab.ifindex(&a_ns, "l2s-vx101"), Some(vx101));
    assert_eq!(uuid(&lab, "a", "acc101"), port101);
    let mtu = sh(netns(&a_ns, "cat").arg("/sys/class/net/acc102/mtu")).unwrap();
    assert_eq!(mtu.trim(), "1500", "released access port gets its MTU back");
    assert!(lab.l2s_ok("a", &["plan"]).unwrap().contains("no changes"));

    // A foreign bridge and a foreign VXLAN device, then `down`.
    lab.vsctl(
        "a",
        &[
            "add-br",
            "foreign0",
            "--",
            "set",
            "bridge",
            "foreign0",
            "datapath_type=netdev",
        ],
    )
    .unwrap();
    sh(netns(&a_ns, "ip").args([
        "link",
        "add",
        "vxforeign",
        "type",
        "vxlan",
        "id",
        "999",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
        "dev",
        "eth1",
    ]))
    .unwrap();
    // Even in the link group `down` deletes its devices through, a foreign device stays.
    let group = l2s_vnf::linux::REMOVAL_GROUP.to_string();
    sh(netns(&a_ns, "ip").args(["link", "set", "vxforeign", "group", &group])).unwrap();
    let down = lab.l2s_ok("a", &["down"]).unwrap();
    assert!(down.contains("- bridge l2s0"), "{down}");
    let brs = lab.vsctl("a", &["list-br"]).unwrap();
    assert_eq!(
        brs.trim(),
        "foreign0",
        "down must leave the foreign bridge alone"
    );
    let links = lab.links(&a_ns);
    assert!(
        links.contains(&"vxforeign".to_string()),
        "down must leave the foreign VXLAN device: {links:?}"
    );
    assert!(
        !links.iter().any(|l| l.starts_with("l2s-vx")),
        "owned VXLAN devices removed: {links:?}"
    );
    let mtu = sh(netns(&a_ns, "cat").arg("/sys/class/net/acc101/mtu")).unwrap();
    assert_eq!(mtu.trim(), "1500", "down gives access ports their MTU back");
    assert!(lab
        .l2s_ok("a", &["down"])
        .unwrap()
        .contains("nothing to remove"));
    // And everything comes back.
    lab.l2s_ok("a", &["apply"]).unwrap();
    assert!(lab.ping_eventually(&a1, &b1.ip, Duration::from_secs(20)));
}

#[test]
fn bad_input_changes_nothing() {
    require_lab!();
    let mut lab = Lab::new(2).unwrap();
    lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let a_ns = lab.site("a").ns.clone();
    let snapshot = |lab: &Lab| (lab.vsctl("a", &["show"]).unwrap(), lab.links(&a_ns));
    let before = snapshot(&lab);

    let bad = |lab: &Lab, toml: &str, want: &str| {
        lab.write_config("a", toml).unwrap();
        let out = lab.l2s("a", &["apply"]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "apply accepted: {toml}");
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    };
    let good = lab.config("a", &["b"], &[(101, &["acc101"], None)]);

    // Invalid config: every error at once, exit 2.
    let invalid = good.replace("id = 101", "id = 5000\nbogus = 1");
    lab.write_config("a", &invalid).unwrap();
    let out = lab.l2s("a", &["apply"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid configuration (2 errors)")
            && err.contains("vlan[0].id: VLAN id 5000 is out of range")
            && err.contains("unknown key `bogus`"),
        "{err}"
    );
    let check = lab.l2s("a", &["check"]).unwrap();
    assert_eq!(check.status.code(), Some(2));

    // A missing access interface.
    bad(
        &lab,
        &good.replace("\"acc101\"", "\"acc101\", \"ens9\""),
        "access interface ens9 (vlan 101) does not exist",
    );
    // A missing underlay.
    bad(
        &lab,
        &good.replace("underlay = \"eth1\"", "underlay = \"eth7\""),
        "interface eth7 ([site].underlay) does not exist",
    );
    // A VTEP address that is not ours.
    bad(
        &lab,
        &good.replace(
            "underlay = \"eth1\"",
            "underlay = \"eth1\"\nvtep_ip = \"192.0.2.77\"",
        ),
        "192.0.2.77 is not an address of the underlay interface eth1",
    );
    // An explicit MTU the discovered underlay cannot carry.
    bad(
        &lab,
        &format!("{good}\n[mtu]\naccess = 1480\n"),
        "mtu.access: 1480 is too large for this path",
    );
    // A missing OVSDB socket.
    bad(
        &lab,
        &good.replace("db.sock", "nope.sock"),
        "cannot connect to OVSDB at",
    );
    bad(
        &lab,
        &good.replace("enabled = false\ninsecure = true", "enabled = true"),
        "PSK file",
    );
    let psk = lab.site("a").dir.join("psk");
    std::fs::write(&psk, "lab-secret-not-for-logs\n").unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    // IPsec requested but charon is not running: a clear error, nothing changed.
    let with_psk = good.replace(
        "enabled = false\ninsecure = true",
        &format!(
            "enabled = true\npsk_file = \"{}\"\nvici = \"unix://{}/charon.vici\"",
            psk.display(),
            lab.site("a").dir.display()
        ),
    );
    bad(&lab, &with_psk, "cannot connect to charon's VICI socket");
    // A foreign bridge of the same name is not taken over.
    lab.vsctl(
        "a",
        &[
            "add-br",
            "l2s0",
            "--",
            "set",
            "bridge",
            "l2s0",
            "datapath_type=netdev",
        ],
    )
    .unwrap();
    let before_foreign = snapshot(&lab);
    bad(
        &lab,
        &good,
        "bridge l2s0 exists but is not managed by l2s-vnf",
    );
    assert_eq!(
        snapshot(&lab),
        before_foreign,
        "a refused apply changed the system"
    );
    lab.vsctl("a", &["del-br", "l2s0"]).unwrap();

    assert_eq!(snapshot(&lab), before, "a failed apply changed the system");
}

/// Never half-applied, also when ovs-vswitchd does not apply a change: frozen (SIGSTOP)
/// during an apply, the apply gives up within seconds, reverts the OVSDB transaction and the
/// netlink steps, and says so; what held before is untouched; once ovs-vswitchd runs again,
/// the same apply converges.
#[test]
fn a_frozen_vswitchd_leaves_the_system_as_before() {
    require_lab!();
    let lab = Lab::new(1).unwrap();
    let cfg = |n: usize| lab.scale_config(n, 4, "");
    lab.write_config("a", &cfg(10)).unwrap();
    lab.l2s_ok("a", &["apply"]).unwrap();
    let ports = || {
        let mut p: Vec<String> = lab
            .vsctl("a", &["list-ports", "l2s0"])
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        p.sort();
        p
    };
    let devices = || {
        let mut d: Vec<String> = lab
            .links(&lab.site("a").ns)
            .into_iter()
            .filter(|l| l.starts_with("l2s-vx"))
            .collect();
        d.sort();
        d
    };
    let (ports0, devices0) = (ports(), devices());
    assert_eq!(ports0.len(), 10);
    let uuid101 = uuid(&lab, "a", "l2s-vx101");

    // 40 more VLANs while ovs-vswitchd is frozen.
    lab.write_config("a", &cfg(50)).unwrap();
    lab.signal_vswitchd("a", libc::SIGSTOP).unwrap();
    let t = std::time::Instant::now();
    let out = lab.l2s("a", &["apply"]).unwrap();
    let took = t.elapsed();
    lab.signal_vswitchd("a", libc::SIGCONT).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "apply succeeded with a frozen ovs-vswitchd"
    );
    assert!(err.contains("ovs-vswitchd is stopped"), "{err}");
    assert!(err.contains("the OVSDB transaction was reverted"), "{err}");
    assert!(err.contains("the system is as before"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(15),
        "a stopped ovs-vswitchd must be noticed quickly, not waited out ({took:?})"
    );
    // …and it is: OVSDB and the kernel hold what they held.
    assert_eq!(ports(), ports0, "OVSDB ports after the failed apply");
    assert_eq!(devices(), devices0, "VXLAN devices after the failed apply");
    assert_eq!(uuid(&lab, "a", "l2s-vx101"), uuid101);
    let plan = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(
        plan.contains("40 to add") || plan.contains("+ vxlan l2s-vx149"),
        "{plan}"
    );

    // ovs-vswitchd runs again: the same apply converges, and the next is a no-op.
    lab.l2s_ok("a", &["apply"]).unwrap();
    assert_eq!(ports().len(), 50);
    assert!(lab.l2s_ok("a", &["apply"]).unwrap().contains("no changes"));
}
