//! Running l2s-vnf like a switch: the MAC table across sites, path health with the MTU alarm,
//! counters, storm control and VNFs that keep MTU 1500 — on real OVS and charon.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::{netns, require_lab, sh, Capture, Lab, PaperLab, Vnf};

fn json(lab: &Lab, site: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&lab.l2s_ok(site, args).unwrap()).unwrap()
}

fn mac_of(v: &Vnf) -> String {
    sh(netns(&v.ns, "cat").arg("/sys/class/net/eth0/address"))
        .unwrap()
        .trim()
        .to_string()
}

fn within(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where site A's MAC table puts `mac` on `vlan`: ("port", name) or ("peer", site).
fn located(lab: &Lab, vlan: u16, mac: &str) -> Option<(String, String)> {
    let t = json(lab, "a", &["macs", "--json"]);
    t["macs"].as_array()?.iter().find_map(|e| {
        (e["vlan"] == vlan && e["mac"] == mac).then(|| {
            if e["port"].is_string() {
                ("port".into(), e["port"].as_str().unwrap().to_string())
            } else {
                ("peer".into(), e["peer"].as_str().unwrap_or("?").to_string())
            }
        })
    })
}

#[test]
fn the_mac_table_spans_the_sites_and_follows_a_vnf_that_moves() {
    require_lab!();
    let t = PaperLab::new().unwrap();
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    assert!(t.ping_mesh().is_empty());
    let lab = &t.lab;
    let (a, b, c) = (mac_of(&t.a101), mac_of(&t.b101), mac_of(&t.c101));
    assert_eq!(
        located(lab, 101, &a),
        Some(("port".into(), "acc101".into()))
    );
    assert_eq!(
        located(lab, 101, &b),
        Some(("peer".into(), "site-b".into()))
    );
    assert_eq!(
        located(lab, 101, &c),
        Some(("peer".into(), "site-c".into()))
    );
    let text = lab.l2s_ok("a", &["macs"]).unwrap();
    assert!(text.contains(&b) && text.contains("site site-b"), "{text}");
    // One VLAN only; a VLAN this site does not have is a clear error.
    let v102 = json(lab, "a", &["macs", "--vlan", "102", "--json"]);
    assert!(v102["macs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["vlan"] == 102));
    let out = lab.l2s("a", &["macs", "--vlan", "999"]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("VLAN 999 is not configured"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // B's VNF moves to site C: its MAC and address now answer from C.
    lab.unplug(&t.b101).unwrap();
    sh(netns(&t.c101.ns, "ip").args(["link", "set", "eth0", "address", &b])).unwrap();
    sh(netns(&t.c101.ns, "ip").args(["addr", "add", "10.101.0.2/24", "dev", "eth0"])).unwrap();
    lab.forget_neighbours(&[&t.a101]);
    within(Duration::from_secs(30), "the moved VNF answers", || {
        lab.ping(&t.a101, "10.101.0.2", 1)
    });
    within(
        Duration::from_secs(10),
        "the MAC table follows the move",
        || located(lab, 101, &b) == Some(("peer".into(), "site-c".into())),
    );
}

#[test]
fn path_health_runs_over_the_sa_and_raises_an_mtu_alarm() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("dpd_delay = \"2s\"\n").unwrap();
    for s in ["a", "b", "c"] {
        let p = t.lab.site(s).dir.join("site.toml");
        let cfg = std::fs::read_to_string(&p)
            .unwrap()
            .replace("[daemon]\n", "[daemon]\nprobe_interval = \"2s\"\n");
        std::fs::write(&p, cfg).unwrap();
    }
    let mut cap = Capture::start(&t.lab, "probes").unwrap();
    for s in ["a", "b", "c"] {
        t.lab.start_daemon(s).unwrap();
    }
    assert!(t.ping_mesh().is_empty());
    let lab = &t.lab;
    let path = |peer: &str| -> serde_json::Value {
        let st = json(lab, "a", &["status", "--json"]);
        st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == peer)
            .map(|p| p["path"].clone())
            .unwrap_or_default()
    };
    within(Duration::from_secs(30), "healthy paths in status", || {
        ["site-b", "site-c"]
            .iter()
            .all(|p| path(p)["mtu_ok"] == true && path(p)["loss_pct"] == 0.0)
    });
    let p = path("site-b");
    assert!(p["rtt_ms"].as_f64().unwrap() > 0.0, "{p}");
    assert!(p["jitter_ms"].is_number(), "{p}");
    // On demand, through the daemon.
    let out = lab.l2s("a", &["probe", "site-b", "--json"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["paths"]["site-b"]["mtu_ok"], true, "{doc}");
    let out = lab.l2s("a", &["probe", "nosuch"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown peer `nosuch`"));

    // The underlay towards B shrinks somewhere between the sites.
    sh(netns(&lab.underlay_ns, "ip").args(["link", "set", "ul-b", "mtu", "1440"])).unwrap();
    let took = within(Duration::from_secs(20), "the MTU alarm", || {
        path("site-b")["mtu_ok"] == false && path("site-c")["mtu_ok"] == true
    });
    eprintln!(
        "MTU alarm raised {} ms after the underlay shrank",
        took.as_millis()
    );
    let b = path("site-b");
    let passes = b["mtu_passes"].as_u64().unwrap();
    assert!(
        passes < b["mtu_size"].as_u64().unwrap() && passes > 1000,
        "{b}"
    );
    let st = lab.l2s_ok("a", &["status"]).unwrap();
    assert!(
        st.contains("MTU alarm on the path to site-b") && st.contains("MTU ALARM"),
        "{st}"
    );
    let out = lab.l2s("a", &["probe", "site-b"]).unwrap();
    assert_eq!(out.status.code(), Some(1), "an unhealthy path is a failure");
    assert!(t.lab.daemon_log("a").contains("MTU alarm"));
    // …and it clears when the path is whole again.
    sh(netns(&lab.underlay_ns, "ip").args(["link", "set", "ul-b", "mtu", "1500"])).unwrap();
    within(Duration::from_secs(20), "the alarm clears", || {
        path("site-b")["mtu_ok"] == true
    });

    // Probes never crossed the underlay in clear text: they travel inside the SAs.
    cap.stop();
    assert_eq!(
        cap.count("udp port 4790"),
        0,
        "clear-text probes on the underlay"
    );
    assert_eq!(cap.clear_text_vxlan(), 0);
}
