//! The daemon (`l2s-vnf run`) on real parts, with IPsec: it adopts what exists, repairs every
//! kind of drift within 2 s, survives `kill -9`, charon and OVS restarts, and reloads without
//! disturbing what a reload does not touch.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Stdio;
use std::time::{Duration, Instant};

use l2s_lab::{netns, require_lab, run, sh, Lab, PaperLab, Vnf};

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

/// Poll `ok` until it holds; panics after `limit` (with `what`), returns how long it took.
fn within(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn in_ns(ns: &str, prog: &str, args: &[&str]) -> String {
    sh(netns(ns, prog).args(args)).unwrap()
}

fn flood(ns: &str, dev: &str) -> String {
    run(netns(ns, "bridge").args(["fdb", "show", "dev", dev]))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn status_json(lab: &Lab, site: &str) -> serde_json::Value {
    serde_json::from_str(&lab.l2s_ok(site, &["status", "--json"]).unwrap()).unwrap()
}

/// A background ping of `count` packets 50 ms apart; `finish` returns how many came back.
struct PingStream(std::process::Child, u32);

impl PingStream {
    fn start(from: &Vnf, to: &Vnf, count: u32) -> Self {
        let child = netns(&from.ns, "ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                "0.05",
                "-W",
                "1",
                "-q",
                &to.ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        PingStream(child, count)
    }

    /// (sent, received)
    fn finish(self) -> (u32, u32) {
        let out = self.0.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let received = text
            .split(" received")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no ping summary in {text}"));
        (self.1, received)
    }
}

/// Apply each kind of drift by hand at site A and time the daemon's repair.
#[test]
fn daemon_repairs_every_drift_and_survives_crashes_and_restarts() {
    require_lab!();
    let mut t = secure_lab();
    start_all(&mut t);
    let a_ns = t.lab.site("a").ns.clone();
    let vici = t.lab.site("a").dir.join("charon.vici");
    let access_mtu = t.lab.mtu(&a_ns, "l2s-vx101").unwrap();
    let lab = &t.lab;
    let vs = |args: &[&str]| lab.vsctl("a", args).unwrap();
    let tag = |port: &str| {
        lab.vsctl("a", &["get", "port", port, "tag"])
            .unwrap_or_default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let conns = || {
        rt.block_on(async {
            let c = l2s_vnf::vici::Client::connect(&vici).await.unwrap();
            c.list_conns()
                .await
                .unwrap()
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>()
        })
    };

    let mut times: Vec<(&str, Duration)> = vec![];
    // 1. A VXLAN device deleted.
    in_ns(&a_ns, "ip", &["link", "del", "l2s-vx101"]);
    times.push((
        "VXLAN device deleted",
        within(REPAIR_LIMIT, "VXLAN device recreated", || {
            let f = flood(&a_ns, "l2s-vx101");
            f.contains("dst 192.0.2.2") && f.contains("dst 192.0.2.3")
        }),
    ));
    // 2. A flood entry deleted.
    in_ns(
        &a_ns,
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
    );
    times.push((
        "flood entry deleted",
        within(REPAIR_LIMIT, "flood entry restored", || {
            flood(&a_ns, "l2s-vx101").contains("dst 192.0.2.3")
        }),
    ));
    // 3. The VTEP's MTU changed.
    in_ns(&a_ns, "ip", &["link", "set", "l2s-vx101", "mtu", "1280"]);
    times.push((
        "VTEP MTU changed",
        within(REPAIR_LIMIT, "MTU restored", || {
            lab.mtu(&a_ns, "l2s-vx101") == Some(access_mtu)
        }),
    ));
    // 4. An access port removed from the bridge.
    vs(&["del-port", "l2s0", "acc101"]);
    times.push((
        "OVS port deleted",
        within(REPAIR_LIMIT, "port back", || tag("acc101").trim() == "101"),
    ));
    // 5. An access port retagged.
    vs(&["set", "port", "acc102", "tag=999"]);
    times.push((
        "OVS port retagged",
        within(REPAIR_LIMIT, "tag back", || tag("acc102").trim() == "102"),
    ));
    // 6. The whole bridge deleted.
    vs(&["del-br", "l2s0"]);
    times.push((
        "OVS bridge deleted",
        within(REPAIR_LIMIT, "bridge and its ports back", || {
            let ports = lab.vsctl("a", &["list-ports", "l2s0"]).unwrap_or_default();
            ["acc101", "acc102", "l2s-vx101", "l2s-vx102"]
                .iter()
                .all(|p| ports.lines().any(|l| l == *p))
        }),
    ));
    // 7. The guard table deleted.
    in_ns(&a_ns, "nft", &["delete", "table", "inet", "l2s_vnf_l2s0"]);
    times.push((
        "nftables guard deleted",
        within(REPAIR_LIMIT, "guard back", || {
            run(netns(&a_ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
                .map(|o| o.status.success())
                .unwrap_or(false)
        }),
    ));
    // 8. The policy rule that sends VXLAN to libipsec deleted.
    in_ns(&a_ns, "ip", &["rule", "del", "pref", "100"]);
    times.push((
        "policy rule deleted",
        within(REPAIR_LIMIT, "policy rule back", || {
            !in_ns(&a_ns, "ip", &["rule", "list", "pref", "100"])
                .trim()
                .is_empty()
        }),
    ));
    // 9. A charon connection unloaded by hand.
    rt.block_on(async {
        let c = l2s_vnf::vici::Client::connect(&vici).await.unwrap();
        c.unload_conn("l2s-vnf:l2s0:site-b").await.unwrap();
    });
    times.push((
        "VICI connection unloaded",
        within(REPAIR_LIMIT, "connection loaded again", || {
            conns().iter().any(|c| c == "l2s-vnf:l2s0:site-b")
        }),
    ));
    for (what, d) in &times {
        eprintln!("repair time: {what}: {} ms", d.as_millis());
    }
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "after the repairs: {failed:?}");
    let st = status_json(&t.lab, "a");
    assert_eq!(st["source"], "daemon");
    let d = &st["daemon"];
    assert!(d["repairs_total"].as_u64().unwrap() >= 9, "{st:#}");
    let log = t.lab.daemon_log("a");
    assert!(log.contains("repairing drift: + vxlan l2s-vx101"), "{log}");
    assert!(log.contains("link l2s-vx101 deleted"), "{log}");
    let human = t.lab.l2s_ok("a", &["status"]).unwrap();
    for want in ["daemon pid", "repairs", "last reconcile", "peer site-b"] {
        assert!(human.contains(want), "{want} missing in:\n{human}");
    }

    // kill -9 of the daemon and a restart, during a ping stream: nothing is lost.
    let stream = PingStream::start(&t.a101, &t.b101, 80);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(t.lab.stop_daemon("a", libc::SIGKILL).unwrap(), None);
    std::thread::sleep(Duration::from_millis(500));
    t.lab.start_daemon("a").unwrap();
    let (sent, received) = stream.finish();
    assert_eq!(received, sent, "packets lost across kill -9 and restart");
    let st = status_json(&t.lab, "a");
    let last = &st["daemon"]["last_reconcile"];
    assert_eq!(last["trigger"], "start", "{st:#}");
    assert_eq!(
        last["changes"].as_array().unwrap().len(),
        0,
        "restart was not a no-op: {st:#}"
    );

    // charon killed and restarted: full service within 10 s of its return.
    t.lab.kill_charon("a");
    std::thread::sleep(Duration::from_secs(1));
    t.lab.start_charon("a").unwrap();
    let back = within(SERVICE_LIMIT, "service after charon restart", || {
        t.lab.ping(&t.a101, &t.b101.ip, 1) && t.lab.ping(&t.a101, &t.c101.ip, 1)
    });
    eprintln!("service back {} ms after charon's return", back.as_millis());

    // ovsdb-server and ovs-vswitchd killed and restarted.
    t.lab.kill_ovs("a");
    std::thread::sleep(Duration::from_secs(1));
    t.lab.restart_ovs("a").unwrap();
    let back = within(SERVICE_LIMIT, "service after OVS restart", || {
        t.lab.ping(&t.a101, &t.b101.ip, 1) && t.lab.ping(&t.a102, &t.b102.ip, 1)
    });
    eprintln!("service back {} ms after OVS's return", back.as_millis());

    // SIGTERM: a clean exit that leaves the data plane and the guard in place.
    assert_eq!(t.lab.stop_daemon("a", libc::SIGTERM).unwrap(), Some(0));
    assert!(
        t.lab.ping(&t.a101, &t.b101.ip, 3),
        "traffic stopped with the daemon"
    );
    assert!(
        run(netns(&a_ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
            .unwrap()
            .status
            .success()
    );
    let direct = t.lab.l2s_ok("a", &["status"]).unwrap();
    assert!(direct.contains("no daemon running"), "{direct}");
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
    assert!(err.contains("vlan[2].id") || err.contains("id"), "{err}");
    assert!(err.contains("running config stays"), "{err}");
    assert!(
        t.lab.daemon_pid("a").is_some(),
        "the daemon died of a bad config"
    );
    let st = status_json(&t.lab, "a");
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
    let stream = PingStream::start(&t.a101, &t.b101, 60);
    std::thread::sleep(Duration::from_millis(300));
    t.lab.write_config("a", &swap(&cfg_a, "a")).unwrap();
    t.lab.write_config("b", &swap(&cfg_b, "b")).unwrap();
    t.lab.signal_daemon("a", libc::SIGHUP).unwrap();
    let out = t.lab.l2s_ok("b", &["reload"]).unwrap();
    assert!(out.contains("+ vxlan l2s-vx103"), "{out}");
    assert!(out.contains("- vxlan l2s-vx102"), "{out}");
    let (sent, received) = stream.finish();
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
    let st = status_json(&lab, "a");
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
        "# EOF",
    ] {
        assert!(scrape.contains(want), "{want} missing in:\n{scrape}");
    }
}
