//! The paper's validation scenario on real parts: three sites (A, B, C), VLAN 101 at all
//! three, VLAN 102 at A and B, clear-text lab mode (IPsec comes with its own issue).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::{netns, require_lab, run, Lab, PaperLab, Vnf};

/// Send UDP datagrams to the subnet broadcast from `from` once every listener in `to` is bound
/// (each says so); true for each of `to` that received one.
fn broadcast_reaches(lab: &Lab, from: &Vnf, to: &[&Vnf], bcast: &str) -> Vec<bool> {
    use std::io::BufRead;
    let mut children = vec![];
    for v in to {
        let code = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',9999))\ns.settimeout(6)\nprint('ready',flush=True)\ntry:\n  d,a=s.recvfrom(100)\n  print('got',d)\nexcept Exception:\n  sys.exit(1)\n";
        let mut child = netns(&v.ns, "python3")
            .args(["-c", code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the listener in {} did not bind",
            v.ns
        );
        children.push(child);
    }
    let send = format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\nfor i in range(3): s.sendto(b'l2s-bcast',('{bcast}',9999))\n");
    run(netns(&from.ns, "python3").args(["-c", &send])).unwrap();
    let _ = lab;
    children
        .into_iter()
        .map(|c| {
            c.wait_with_output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn three_site_switch() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    let lab = &t.lab;

    // plan shows creations and touches nothing.
    let plan = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(plan.contains("+ bridge l2s0"), "{plan}");
    assert!(plan.contains("+ vxlan l2s-vx101"), "{plan}");
    assert!(
        lab.vsctl("a", &["list-br"]).unwrap().trim().is_empty(),
        "plan must not create anything"
    );
    assert!(!lab
        .links(&lab.site("a").ns)
        .iter()
        .any(|l| l.starts_with("l2s-vx")));

    // check prints the computed MTU and its derivation.
    let check = lab.l2s_ok("a", &["check"]).unwrap();
    assert!(check.contains("access MTU 1450"), "{check}");
    assert!(check.contains("underlay MTU 1500"), "{check}");

    let t0 = Instant::now();
    for s in ["a", "b", "c"] {
        let out = lab.l2s_ok(s, &["apply"]).unwrap();
        assert!(out.contains("applied"), "{out}");
    }
    eprintln!("3 sites applied in {:?}", t0.elapsed());
    lab.set_vnf_mtu(&[&t.a101, &t.b101, &t.c101, &t.a102, &t.b102], 1450)
        .unwrap();

    // The bridge is OVS's, with the netdev datapath chosen automatically (no kernel OVS here).
    assert_eq!(
        lab.vsctl("a", &["get", "bridge", "l2s0", "datapath_type"])
            .unwrap()
            .trim(),
        "netdev"
    );
    assert_eq!(
        lab.vsctl("a", &["get", "port", "acc101", "tag"])
            .unwrap()
            .trim(),
        "101"
    );
    assert_eq!(
        lab.vsctl("a", &["get", "port", "l2s-vx102", "tag"])
            .unwrap()
            .trim(),
        "102"
    );
    let mtu = run(netns(&lab.site("a").ns, "cat").arg("/sys/class/net/acc101/mtu")).unwrap();
    assert_eq!(String::from_utf8_lossy(&mtu.stdout).trim(), "1450");
    let fdb =
        run(netns(&lab.site("a").ns, "bridge").args(["fdb", "show", "dev", "l2s-vx101"])).unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains("00:00:00:00:00:00 dst 192.0.2.2")
            && fdb.contains("00:00:00:00:00:00 dst 192.0.2.3"),
        "{fdb}"
    );
    let fdb102 =
        run(netns(&lab.site("a").ns, "bridge").args(["fdb", "show", "dev", "l2s-vx102"])).unwrap();
    let fdb102 = String::from_utf8_lossy(&fdb102.stdout);
    assert!(
        !fdb102.contains("192.0.2.3"),
        "VLAN 102 must not flood to C: {fdb102}"
    );

    // Connectivity on both VLANs across sites.
    assert_eq!(t.ping_mesh(), Vec::<String>::new(), "pings that failed");

    // Second apply: no changes.
    let again = lab.l2s_ok("a", &["apply"]).unwrap();
    assert!(again.contains("no changes"), "{again}");
    let plan = lab.l2s_ok("b", &["plan"]).unwrap();
    assert!(plan.contains("no changes"), "{plan}");

    // status reads the system.
    let st = lab.l2s_ok("a", &["status", "--json"]).unwrap();
    assert!(
        st.contains("\"access_mtu\": 1450") && st.contains("\"l2s-vx101\""),
        "{st}"
    );
    drop(st);

    // TCP across sites on both VLANs.
    let (a101, b101, c101, a102, b102) = (&t.a101, &t.b101, &t.c101, &t.a102, &t.b102);
    let lab = &mut t.lab;
    // iperf3 -n ends once the client has written its 20 MiB; what is still in flight then
    // (a socket buffer's worth at most) is not counted, so the receiver gets most of it.
    let (bps, got) = lab.tcp_transfer_received(b101, a101, "20M").unwrap();
    assert!(
        got >= 10 << 20,
        "B received {got} bytes of 20 MiB on VLAN 101"
    );
    let (bps102, got) = lab.tcp_transfer_received(b102, a102, "20M").unwrap();
    assert!(
        got >= 10 << 20,
        "B received {got} bytes of 20 MiB on VLAN 102"
    );
    lab.tcp_transfer(c101, a101, "5M").unwrap();
    eprintln!(
        "TCP A->B vlan101 {:.0} Mbit/s, vlan102 {:.0} Mbit/s",
        bps / 1e6,
        bps102 / 1e6
    );

    // A broadcast from A reaches B and C.
    let got = broadcast_reaches(lab, a101, &[b101, c101], "10.101.0.255");
    assert_eq!(got, vec![true, true], "broadcast from A must reach B and C");

    // After learning, unicast A<->B leaves (almost) nothing on C's underlay.
    assert!(lab.ping(a101, &b101.ip, 2));
    let c_ns = lab.site("c").ns.clone();
    let before = lab.rx_bytes(&c_ns, "eth1");
    lab.tcp_transfer(b101, a101, "20M").unwrap();
    let leaked = lab.rx_bytes(&c_ns, "eth1") - before;
    eprintln!("C's underlay saw {leaked} bytes during a 20 MB A->B transfer");
    assert!(
        leaked < 200_000,
        "C's underlay received {leaked} bytes of an A->B unicast transfer"
    );
}

#[test]
fn vlans_are_isolated() {
    require_lab!();
    let t = PaperLab::new().unwrap();
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    assert!(t
        .lab
        .ping_eventually(&t.a101, &t.b101.ip, Duration::from_secs(20)));
    // A VNF on VLAN 102 at A takes an address in 101's subnet: it must reach nothing on 101.
    let intruder = &t.a102;
    netns(&intruder.ns, "ip")
        .args(["addr", "add", "10.101.0.99/24", "dev", "eth0"])
        .status()
        .unwrap();
    assert!(
        !t.lab.ping(intruder, &t.b101.ip, 3),
        "VLAN 102 reached VLAN 101"
    );
    assert!(
        !t.lab.ping(intruder, &t.c101.ip, 2),
        "VLAN 102 reached VLAN 101"
    );
    // Its ARP never arrived on 101: B's VNF has not learned it.
    let neigh = run(netns(&t.b101.ns, "ip").args(["neigh", "show", "10.101.0.99"])).unwrap();
    assert!(
        String::from_utf8_lossy(&neigh.stdout).trim().is_empty(),
        "ARP from VLAN 102 reached VLAN 101"
    );
    // And 101 still works.
    assert!(t.lab.ping(&t.a101, &t.b101.ip, 2));
}
