//! The daemon (`l2s-vnf run`) on real parts, with IPsec: it adopts what exists, repairs every
//! kind of drift within 2 s, survives `kill -9`, charon and OVS restarts, and reloads without
//! disturbing what a reload does not touch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::{
    forge_vxlan, listen_udp, netns, require_lab, run, sh, within, Capture, Lab, PaperLab,
    PingStream, Vnf, CLEAR_TEXT_VXLAN,
};

/// A rogue host on the underlay (its forged frames are clear text by design).
const ROGUE: &str = "192.0.2.66";

const REPAIR_LIMIT: Duration = Duration::from_secs(2);
const SERVICE_LIMIT: Duration = Duration::from_secs(10);

fn secure_lab() -> PaperLab {
    let mut t = PaperLab::new().unwrap();
    t.secure("dpd_delay = \"2s\"\n").unwrap();
    t
}

fn start_all(t: &mut PaperLab) {
    for s in ["a", "b", "c"] {
        t.lab.start_daemon(s).unwrap();
    }
    let failed = t.ping_mesh();
    assert!(
        failed.is_empty(),
        "not converged by the daemons: {failed:?}"
    );
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) -> String {
    sh(netns(ns, prog).args(args)).unwrap()
}

fn flood(ns: &str, dev: &str) -> String {
    run(netns(ns, "bridge").args(["fdb", "show", "dev", dev]))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// charon's view at a site, through its VICI socket.
struct Charon {
    rt: tokio::runtime::Runtime,
    vici: std::path::PathBuf,
}

impl Charon {
    fn at(lab: &Lab, site: &str) -> Self {
        Charon {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            vici: lab.site(site).dir.join("charon.vici"),
        }
    }

    fn client(&self) -> l2s_vnf::ipsec::vici::Client {
        self.rt
            .block_on(l2s_vnf::ipsec::vici::Client::connect(&self.vici))
            .unwrap()
    }

    fn loaded(&self, conn: &str) -> bool {
        let c = self.client();
        self.rt
            .block_on(c.list_conns())
            .unwrap()
            .iter()
            .any(|(n, _)| n == conn)
    }

    fn sa_up(&self, conn: &str) -> bool {
        let c = self.client();
        let sas = l2s_vnf::ipsec::sa_states(&self.rt.block_on(c.list_sas(None)).unwrap());
        sas.get(conn).is_some_and(|s| s.up())
    }

    fn unload(&self, conn: &str) {
        let c = self.client();
        self.rt.block_on(c.unload_conn(conn)).unwrap();
    }

    fn terminate(&self, conn: &str) {
        let c = self.client();
        self.rt.block_on(c.terminate_ike(conn)).unwrap();
    }
}

/// One kind of drift: what is done at which site, how its repair shows, and which VLAN's
/// traffic must flow again (as (from, to) VNF pairs).
struct Drift<'a> {
    what: &'static str,
    site: &'static str,
    /// Whose daemon repairs it (a deleted SA is restarted by its initiator).
    repairer: &'static str,
    cause: Box<dyn Fn() + 'a>,
    repaired: Box<dyn Fn() -> bool + 'a>,
    vlan: u16,
    traffic: Vec<(&'a Vnf, &'a Vnf)>,
}

/// Every kind of drift the daemon repairs, each applied alone at site A of the IPsec lab (the
/// initiator of both its connections), and charon's drifts at site C too (the responder of
/// both):
/// the daemon repairs it within 2 s (the object is back *and* status says the VLAN is up),
/// and within 2 s of that repair the VLAN carries a ping and a TCP transfer across sites,
/// with neighbour caches flushed so that broadcasts must cross too — before the next drift is
/// applied. The underlay capture never sees clear-text VXLAN.
#[test]
fn every_drift_alone_is_repaired_and_the_vlan_carries_traffic_again() {
    require_lab!();
    let mut t = secure_lab();
    let rogue = t
        .lab
        .add_underlay_host("rogue", &format!("{ROGUE}/24"))
        .unwrap();
    let mut cap = Capture::start(&t.lab, "drifts").unwrap();
    start_all(&mut t);
    let a_ns = t.lab.site("a").ns.clone();
    let access_mtu = t.lab.mtu(&a_ns, "l2s-vx101").unwrap();
    t.lab.set_vnf_mtu(&t.vnfs(), access_mtu).unwrap();
    let charon = Charon::at(&t.lab, "a");
    let charon_c = Charon::at(&t.lab, "c");
    let (lab, a101, b101, c101, a102, b102) = (&t.lab, &t.a101, &t.b101, &t.c101, &t.a102, &t.b102);
    let vs = |args: &[&str]| {
        lab.vsctl("a", args).unwrap();
    };
    let tag = |port: &str| {
        lab.vsctl("a", &["get", "port", port, "tag"])
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let on_bridge = |port: &str| {
        lab.vsctl("a", &["list-ports", "l2s0"])
            .unwrap_or_default()
            .lines()
            .any(|l| l == port)
    };
    let a = |prog: &str, args: &[&str]| {
        in_ns(&a_ns, prog, args);
    };
    // The guard judged by what it does, not by its table being there: forged clear-text
    // VXLAN from the rogue host reaches no VNF at A, and A's guard counts it.
    let guard_drops_forged = |what: &str| {
        let before = lab.guard_drops_in("a").expect("the guard's table at A");
        let mut l = listen_udp(a101, 9977, 3).unwrap();
        forge_vxlan(&rogue, &lab.site("a").underlay_ip, 9977).unwrap();
        assert!(
            !l.wait().unwrap().success(),
            "{what}: a forged clear-text VXLAN frame reached a VNF at A"
        );
        let dropped = lab.guard_drops_in("a").expect("the guard's table at A") - before;
        assert_eq!(
            dropped, 5,
            "{what}: A's guard counted {dropped} of 5 forged frames"
        );
    };
    let clear_text = || cap.count(&format!("({CLEAR_TEXT_VXLAN}) and not host {ROGUE}"));
    let esp = || cap.count("esp or udp port 4500");

    let drifts: Vec<Drift> = vec![
        Drift {
            site: "a",
            repairer: "a",
            what: "VXLAN device deleted",
            cause: Box::new(|| a("ip", &["link", "del", "l2s-vx101"])),
            repaired: Box::new(|| {
                let f = flood(&a_ns, "l2s-vx101");
                f.contains("dst 192.0.2.2") && f.contains("dst 192.0.2.3") && on_bridge("l2s-vx101")
            }),
            vlan: 101,
            traffic: vec![(a101, b101), (a101, c101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "flood entry deleted",
            cause: Box::new(|| {
                a(
                    "bridge",
                    &[
                        "fdb",
                        "del",
                        "00:00:00:00:00:00",
                        "dev",
                        "l2s-vx101",
                        "dst",
                        "192.0.2.3",
                    ],
                )
            }),
            repaired: Box::new(|| flood(&a_ns, "l2s-vx101").contains("dst 192.0.2.3")),
            vlan: 101,
            traffic: vec![(a101, c101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "VTEP MTU changed",
            cause: Box::new(|| a("ip", &["link", "set", "l2s-vx101", "mtu", "1280"])),
            repaired: Box::new(|| lab.mtu(&a_ns, "l2s-vx101") == Some(access_mtu)),
            vlan: 101,
            traffic: vec![(a101, b101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "access port deleted from the bridge",
            cause: Box::new(|| vs(&["del-port", "l2s0", "acc101"])),
            repaired: Box::new(|| tag("acc101") == "101"),
            vlan: 101,
            traffic: vec![(a101, b101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "access port retagged",
            cause: Box::new(|| vs(&["set", "port", "acc102", "tag=999"])),
            repaired: Box::new(|| tag("acc102") == "102"),
            vlan: 102,
            traffic: vec![(a102, b102)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "bridge deleted",
            cause: Box::new(|| vs(&["del-br", "l2s0"])),
            repaired: Box::new(|| {
                ["acc101", "acc102", "l2s-vx101", "l2s-vx102"]
                    .iter()
                    .all(|p| on_bridge(p))
            }),
            vlan: 102,
            traffic: vec![(a101, b101), (a102, b102)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "nftables guard deleted",
            cause: Box::new(|| a("nft", &["delete", "table", "inet", "l2s_vnf_l2s0"])),
            repaired: Box::new(|| {
                run(netns(&a_ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            }),
            vlan: 101,
            traffic: vec![(a101, c101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "policy rule deleted",
            cause: Box::new(|| a("ip", &["rule", "del", "pref", "100"])),
            repaired: Box::new(|| {
                !in_ns(&a_ns, "ip", &["rule", "list", "pref", "100"])
                    .trim()
                    .is_empty()
            }),
            vlan: 101,
            traffic: vec![(a101, b101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "charon connection unloaded",
            cause: Box::new(|| charon.unload("l2s-vnf:l2s0:site-b")),
            repaired: Box::new(|| {
                charon.loaded("l2s-vnf:l2s0:site-b") && charon.sa_up("l2s-vnf:l2s0:site-b")
            }),
            vlan: 102,
            traffic: vec![(a101, b101), (a102, b102)],
        },
        Drift {
            site: "a",
            repairer: "a",
            what: "SA deleted in charon",
            cause: Box::new(|| {
                charon.terminate("l2s-vnf:l2s0:site-c");
                // terminate does not wait: let the IKE_SA go before judging its return.
                std::thread::sleep(Duration::from_millis(200));
            }),
            repaired: Box::new(|| charon.sa_up("l2s-vnf:l2s0:site-c")),
            vlan: 101,
            traffic: vec![(a101, c101)],
        },
        Drift {
            site: "c",
            repairer: "c",
            what: "charon connection unloaded at the responder",
            cause: Box::new(|| charon_c.unload("l2s-vnf:l2s0:site-a")),
            repaired: Box::new(|| {
                charon_c.loaded("l2s-vnf:l2s0:site-a") && charon_c.sa_up("l2s-vnf:l2s0:site-a")
            }),
            vlan: 101,
            traffic: vec![(c101, a101)],
        },
        Drift {
            site: "c",
            repairer: "b",
            what: "SA deleted in charon at the responder",
            cause: Box::new(|| {
                charon_c.terminate("l2s-vnf:l2s0:site-b");
                std::thread::sleep(Duration::from_millis(200));
            }),
            repaired: Box::new(|| charon_c.sa_up("l2s-vnf:l2s0:site-b")),
            vlan: 101,
            traffic: vec![(c101, b101)],
        },
        Drift {
            site: "a",
            repairer: "a",
            // A VNF re-plugged: an access interface of the same name, a new device.
            what: "access interface re-created",
            cause: Box::new(|| {
                lab.unplug(a101).unwrap();
                std::thread::sleep(Duration::from_millis(300));
                lab.replug(a101, access_mtu).unwrap();
            }),
            repaired: Box::new(|| {
                tag("acc101") == "101" && lab.mtu(&a_ns, "acc101") == Some(access_mtu)
            }),
            vlan: 101,
            traffic: vec![(a101, b101), (a101, c101)],
        },
    ];

    let mut figures: Vec<(String, Duration, Duration)> = vec![];
    for d in &drifts {
        let repairs = || {
            lab.status_json(d.repairer).unwrap()["daemon"]["repairs_total"]
                .as_u64()
                .unwrap()
        };
        let before = repairs();
        let esp_before = esp();
        (d.cause)();
        let repair = within(
            REPAIR_LIMIT,
            &format!("{}: repaired and VLAN {} up", d.what, d.vlan),
            || (d.repaired)() && lab.vlan_up(d.site, d.vlan),
        );
        let mut slowest = Duration::ZERO;
        for (from, to) in &d.traffic {
            let took = lab
                .service_within(from, to, REPAIR_LIMIT)
                .unwrap_or_else(|e| panic!("{}: no service after the repair: {e}", d.what));
            slowest = slowest.max(took);
        }
        assert!(repairs() > before, "{}: no repair counted", d.what);
        if d.what.contains("guard") {
            guard_drops_forged(d.what);
        }
        assert_eq!(
            clear_text(),
            0,
            "{}: clear-text VXLAN on the underlay",
            d.what
        );
        // The capture saw this interval's traffic, as ESP (a dead capture sees nothing).
        assert!(
            esp() > esp_before,
            "{}: no ESP on the underlay while the service was judged",
            d.what
        );
        figures.push((format!("{} (site {})", d.what, d.site), repair, slowest));
    }
    for (what, repair, service) in &figures {
        eprintln!(
            "drift {what}: repaired in {} ms; ping + TCP {} ms after",
            repair.as_millis(),
            service.as_millis()
        );
    }

    // A VNF unplugged for good: status tells the truth (the VLAN is degraded, and why).
    lab.unplug(a101).unwrap();
    within(
        REPAIR_LIMIT,
        "status reports the missing access port",
        || {
            let st = lab.status_json("a").unwrap();
            st["vlans"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["id"] == 101)
                .is_some_and(|v| {
                    v["up"] == false
                        && v["degraded"]
                            .to_string()
                            .contains("access port acc101 is missing")
                })
        },
    );
    lab.replug(a101, access_mtu).unwrap();
    within(REPAIR_LIMIT, "VLAN 101 up after the VNF came back", || {
        lab.vlan_up("a", 101)
    });
    lab.service_within(a101, b101, REPAIR_LIMIT).unwrap();

    let log = t.lab.daemon_log("a");
    assert!(log.contains("repairing drift: + vxlan l2s-vx101"), "{log}");
    assert!(
        log.contains("~ port l2s-vx101 re-added (device re-created)"),
        "{log}"
    );
    assert!(log.contains("link l2s-vx101 deleted"), "{log}");
    assert!(log.contains("VLAN data path is degraded"), "{log}");
    let human = t.lab.l2s_ok("a", &["status"]).unwrap();
    for want in [
        "daemon pid",
        "repairs",
        "last reconcile",
        "peer site-b",
        "UP",
    ] {
        assert!(human.contains(want), "{want} missing in:\n{human}");
    }
    cap.stop();
    assert_eq!(
        cap.count(&format!("({CLEAR_TEXT_VXLAN}) and not host {ROGUE}")),
        0,
        "clear-text VXLAN on the underlay (the rogue's forged frames aside)"
    );
    assert!(cap.count("udp port 4500") > 100, "the traffic went as ESP");
}

/// The daemon and its backends crash and come back, each alone, under traffic.
#[test]
fn daemon_survives_crashes_and_restarts() {
    require_lab!();
    let mut t = secure_lab();
    start_all(&mut t);
    let a_ns = t.lab.site("a").ns.clone();
    let access_mtu = t.lab.mtu(&a_ns, "l2s-vx101").unwrap();
    t.lab.set_vnf_mtu(&t.vnfs(), access_mtu).unwrap();
    let mut cap = Capture::start(&t.lab, "crashes").unwrap();

    // kill -9 of the daemon and a restart, during a ping stream: nothing is lost.
    let stream = PingStream::start(&t.a101, &t.b101, 80, 50).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(t.lab.stop_daemon("a", libc::SIGKILL).unwrap(), None);
    std::thread::sleep(Duration::from_millis(500));
    t.lab.start_daemon("a").unwrap();
    let (sent, received) = stream.finish().unwrap();
    assert_eq!(received, sent, "packets lost across kill -9 and restart");
    let st = t.lab.status_json("a").unwrap();
    let last = &st["daemon"]["last_reconcile"];
    assert_eq!(last["trigger"], "start", "{st:#}");
    assert_eq!(
        last["changes"].as_array().unwrap().len(),
        0,
        "restart was not a no-op: {st:#}"
    );

    // The same at site C, the responder of both its connections.
    let stream = PingStream::start(&t.c101, &t.a101, 80, 50).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(t.lab.stop_daemon("c", libc::SIGKILL).unwrap(), None);
    std::thread::sleep(Duration::from_millis(500));
    t.lab.start_daemon("c").unwrap();
    let (sent, received) = stream.finish().unwrap();
    assert_eq!(
        received, sent,
        "packets lost across kill -9 and restart at C"
    );
    let st = t.lab.status_json("c").unwrap();
    let last = &st["daemon"]["last_reconcile"];
    assert_eq!(last["trigger"], "start", "{st:#}");
    assert_eq!(
        last["changes"].as_array().unwrap().len(),
        0,
        "restart at C was not a no-op: {st:#}"
    );

    // charon killed and restarted: full service within 10 s of its return.
    t.lab.kill_charon("a");
    std::thread::sleep(Duration::from_secs(1));
    t.lab.start_charon("a").unwrap();
    let back = within(SERVICE_LIMIT, "service after charon restart", || {
        t.lab.ping(&t.a101, &t.b101.ip, 1) && t.lab.ping(&t.a101, &t.c101.ip, 1)
    });
    t.lab
        .service_within(&t.a101, &t.c101, REPAIR_LIMIT)
        .unwrap();
    eprintln!("service back {} ms after charon's return", back.as_millis());

    // ovsdb-server and ovs-vswitchd killed and restarted.
    t.lab.kill_ovs("a");
    std::thread::sleep(Duration::from_secs(1));
    t.lab.restart_ovs("a").unwrap();
    let back = within(SERVICE_LIMIT, "service after OVS restart", || {
        t.lab.ping(&t.a101, &t.b101.ip, 1) && t.lab.ping(&t.a102, &t.b102.ip, 1)
    });
    t.lab
        .service_within(&t.a102, &t.b102, REPAIR_LIMIT)
        .unwrap();
    eprintln!("service back {} ms after OVS's return", back.as_millis());

    // SIGTERM: a clean exit that leaves the data plane and the guard in place.
    assert_eq!(t.lab.stop_daemon("a", libc::SIGTERM).unwrap(), Some(0));
    t.lab
        .service_within(&t.a101, &t.b101, REPAIR_LIMIT)
        .unwrap();
    assert!(
        run(netns(&a_ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
            .unwrap()
            .status
            .success()
    );
    let direct = t.lab.l2s_ok("a", &["status"]).unwrap();
    assert!(direct.contains("no daemon running"), "{direct}");
    cap.stop();
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "clear-text VXLAN on the underlay"
    );
}

/// SIGHUP and `l2s-vnf reload`: a broken config changes nothing; a valid one applies only
/// its delta; 200 reloads leak neither file descriptors nor memory.
#[test]
fn reload_applies_the_delta_keeps_a_broken_config_out_and_does_not_leak() {
    require_lab!();
    let mut t = secure_lab();
    let a103 = t.lab.add_vnf("a", "acc103", "10.103.0.1/24").unwrap();
    let b103 = t.lab.add_vnf("b", "acc103", "10.103.0.2/24").unwrap();
    start_all(&mut t);
    let mtu101 = t.lab.mtu(&t.lab.site("a").ns, "l2s-vx101").unwrap();
    t.lab.set_vnf_mtu(&[&a103, &b103], mtu101).unwrap();
    let cfg_a = std::fs::read_to_string(t.lab.site("a").dir.join("site.toml")).unwrap();
    let cfg_b = std::fs::read_to_string(t.lab.site("b").dir.join("site.toml")).unwrap();
    let vx101 = t.lab.ifindex(&t.lab.site("a").ns, "l2s-vx101");

    // A broken config: SIGHUP and `reload` report it, nothing changes.
    t.lab
        .write_config("a", &format!("{cfg_a}\n[[vlan]]\nid = 5000\n"))
        .unwrap();
    t.lab.signal_daemon("a", libc::SIGHUP).unwrap();
    let out = t.lab.l2s("a", &["reload"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vlan[2].id: VLAN id 5000 is out of range; allowed: 1..=4094"),
        "{err}"
    );
    assert!(err.contains("running config stays"), "{err}");
    assert!(
        t.lab.daemon_pid("a").is_some(),
        "the daemon died of a bad config"
    );
    let st = t.lab.status_json("a").unwrap();
    assert!(
        st["daemon"]["reloads_failed"].as_u64().unwrap() >= 2,
        "{st:#}"
    );
    assert!(t.lab.ping(&t.a101, &t.b101.ip, 3));

    // Add VLAN 103 and remove VLAN 102 at A and B while VLAN 101 carries a ping stream.
    let swap = |cfg: &str, site: &str| {
        let cut = cfg.find("[[vlan]]\nid = 102").unwrap();
        let rest = &cfg[cut..];
        let end = rest[1..]
            .find("[[vlan]]")
            .map(|i| cut + 1 + i)
            .unwrap_or(cfg.len());
        let peer = if site == "a" { "b" } else { "a" };
        format!(
            "{}{}\n[[vlan]]\nid = 103\nports = [\"acc103\"]\npeers = [\"site-{peer}\"]\n",
            &cfg[..cut],
            &cfg[end..]
        )
    };
    let stream = PingStream::start(&t.a101, &t.b101, 60, 50).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    t.lab.write_config("a", &swap(&cfg_a, "a")).unwrap();
    t.lab.write_config("b", &swap(&cfg_b, "b")).unwrap();
    t.lab.signal_daemon("a", libc::SIGHUP).unwrap();
    let out = t.lab.l2s_ok("b", &["reload"]).unwrap();
    assert!(out.contains("+ vxlan l2s-vx103"), "{out}");
    assert!(out.contains("- vxlan l2s-vx102"), "{out}");
    let (sent, received) = stream.finish().unwrap();
    assert_eq!(received, sent, "VLAN 101 lost packets during the reload");
    assert_eq!(t.lab.ifindex(&t.lab.site("a").ns, "l2s-vx101"), vx101);
    assert!(t
        .lab
        .ping_eventually(&a103, &b103.ip, Duration::from_secs(10)));
    assert!(!t
        .lab
        .links(&t.lab.site("a").ns)
        .contains(&"l2s-vx102".to_string()));

    // 200 reloads in a row: file descriptors and memory stay put.
    let pid = t.lab.daemon_pid("a").unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let rss_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // Every other reload adds VLAN 104 (a VTEP and its flood entries, new watchers), the
    // next removes it again: the create and delete paths both run 100 times.
    let cfg_a = std::fs::read_to_string(t.lab.site("a").dir.join("site.toml")).unwrap();
    let with_104 = format!("{cfg_a}\n[[vlan]]\nid = 104\nports = []\n");
    let reload = |n: usize| {
        for i in 0..n {
            let cfg = if i % 2 == 0 { &with_104 } else { &cfg_a };
            t.lab.write_config("a", cfg).unwrap();
            let out = t.lab.l2s("a", &["reload"]).unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("l2s-vx104"),
                "reload {i} did not apply: {text}"
            );
        }
    };
    reload(20);
    let (fd0, rss0) = (fds(), rss_kib());
    let started = Instant::now();
    reload(200);
    let per = started.elapsed() / 200;
    let (fd1, rss1) = (fds(), rss_kib());
    eprintln!(
        "200 reloads: fds {fd0} -> {fd1}, RSS {rss0} -> {rss1} KiB, {} ms per reload (CLI included)",
        per.as_millis()
    );
    assert!(fd1 <= fd0 + 2, "file descriptors grew: {fd0} -> {fd1}");
    assert!(rss1 <= rss0 + 2048, "memory grew: {rss0} -> {rss1} KiB");
    assert!(t.lab.ping(&t.a101, &t.b101.ip, 3));
    assert!(t.lab.ping(&a103, &b103.ip, 3));
}

/// Clear-text lab: one instance per config, a port that appears later, metrics, and the
/// systemd unit.
#[test]
fn single_instance_late_ports_and_metrics() {
    require_lab!();
    let mut lab = Lab::new(2).unwrap();
    let a = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    // Metrics on a loopback port inside site A's namespace.
    let cfg_a = format!(
        "{}[metrics]\nlisten = \"127.0.0.1:9417\"\n",
        lab.config("a", &["b"], &[(101, &["acc101", "late0"], None)])
    )
    .replace("[daemon]\n", "[daemon]\nreconcile_interval = \"5s\"\n");
    lab.write_config("a", &cfg_a).unwrap();
    lab.write_config("b", &lab.config("b", &["a"], &[(101, &["acc101"], None)]))
        .unwrap();
    let pid = lab.start_daemon("a").unwrap();
    lab.start_daemon("b").unwrap();
    assert!(lab.ping_eventually(&a, &b.ip, Duration::from_secs(20)));

    // A second daemon for the same config is refused, naming the first.
    let out = lab.l2s("a", &["run"]).unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(lab.daemon_pid("a") == Some(pid));

    // `late0` does not exist yet: a warning, not a failure; it joins when it appears.
    let st = lab.status_json("a").unwrap();
    let warnings = st["warnings"].to_string();
    assert!(warnings.contains("late0"), "{st:#}");
    let ns = lab.site("a").ns.clone();
    in_ns(
        &ns,
        "ip",
        &[
            "link", "add", "late0", "type", "veth", "peer", "name", "late0p",
        ],
    );
    in_ns(&ns, "ip", &["link", "set", "late0p", "up"]);
    let joined = within(REPAIR_LIMIT, "late port joined", || {
        lab.vsctl("a", &["get", "port", "late0", "tag"])
            .map(|t| t.trim() == "101")
            .unwrap_or(false)
    });
    eprintln!("late port joined in {} ms", joined.as_millis());

    // Metrics.
    let scrape = sh(netns(&ns, "python3").args([
        "-c",
        "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:9417/metrics').read().decode())",
    ]))
    .unwrap();
    for want in [
        "l2s_vnf_build_info{version=",
        "l2s_vnf_vlans 1",
        "l2s_vnf_access_ports{state=\"up\"} 2",
        "l2s_vnf_reconcile_duration_seconds_count",
        "l2s_vnf_repairs_total",
        "l2s_vnf_sa_up{peer=\"site-b\"} 0",
        "l2s_vnf_vlan_up{vlan=\"101\"} 1",
        "# EOF",
    ] {
        assert!(scrape.contains(want), "{want} missing in:\n{scrape}");
    }
}
