//! EVPN on the production stack: a Debian 12 guest on Debian's own kernel, site A configured by
//! the project's cloud-init from the EVPN NS parameters (descriptors/osm/l2s_evpn_ns) — which
//! installs the .deb, FRR and the unit's EVPN drop-in, and starts the packaged hardened unit
//! with kernel ESP — and, in namespaces of the same guest, the route reflector rr-1 and site B,
//! each configured from its own member's parameters and naming nobody but the reflector.
//!
//! Judged on the service after every event (ping and TCP on both VLANs, A's SA counting what
//! B's VNF received) and on an underlay capture: no clear-text VXLAN or BGP, ever. Type-2
//! routes too: each site places the other's VNF MAC behind it.
//!
//! Slow by nature (TCG: boot and cloud-init ~2 min, FRR's start in the guest): one guest, one
//! test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::guest::{self, Boot, Guest};

const DEB_URL: &str = "http://10.0.2.100/l2s-vnf.deb";
const PARAMS: &str = "descriptors/osm/l2s_evpn_ns/params-evpn.yaml";
const A: &str = "198.51.100.1";
const B: &str = "198.51.100.2";
const RR: &str = "198.51.100.10";
/// Site B, as A names it (a discovered site).
const B_PEER: &str = "evpn-198.51.100.2";

struct Stack {
    g: Guest,
}

impl Stack {
    fn sh(&self, cmd: &str) -> String {
        self.g.sh(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    fn status_a(&self) -> serde_json::Value {
        serde_json::from_str(&self.sh("l2s-vnf status --json")).unwrap()
    }

    /// A has its session with the reflector, its routes complete, and B discovered with its
    /// SA up on both VLANs.
    fn a_follows_b(&self) -> bool {
        let Ok(text) = self.g.sh("l2s-vnf status --json") else {
            return false;
        };
        let Ok(st) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        let e = &st["evpn"];
        e["problem"].is_null()
            && e["sessions"][0]["established"] == true
            && e["discovered"].as_array().is_some_and(|d| {
                d.iter().any(|p| {
                    p["vtep"] == B
                        && p["sa_up"] == true
                        && p["vnis"].as_array().is_some_and(|v| v.len() == 2)
                })
            })
    }

    fn wait_follows(&self, what: &str, limit: Duration) -> Duration {
        let t = Instant::now();
        while !self.a_follows_b() {
            assert!(
                t.elapsed() < limit,
                "{what}: A does not follow B within {limit:?}:\n{}",
                self.g.sh("l2s-vnf status").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        t.elapsed()
    }

    /// Ping and TCP across the sites on both VLANs; a transfer A -> B counted by A's SA.
    fn service(&self, what: &str) {
        for (from, to, ip) in [
            ("a101", "b101", "10.101.0.2"),
            ("a102", "b102", "10.102.0.2"),
        ] {
            let out = self
                .g
                .run(&format!("/root/lab/service.sh {from} {to} {ip}"))
                .unwrap();
            assert!(
                out.status.success(),
                "{what}: {from} -> {to}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let sa =
            || guest::sa_bytes(&self.status_a(), B_PEER).unwrap_or_else(|e| panic!("{what}: {e}"));
        let before = sa();
        let out = self.sh("/root/lab/tcp.sh a101 b101 10.101.0.2 2M");
        let got: u64 = out
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{what}: tcp.sh: {e}: {out}"));
        let grew = sa() - before;
        assert!(
            // (iperf3 stops counting at the receiver when the sender has written its last
            // byte: under emulation less than the 2 MiB arrives by then.)
            got >= 256 * 1024 && grew >= got,
            "{what}: B's VNF received {got} bytes, A's SA with B counted {grew} (clear text?)"
        );
        eprintln!("guest EVPN: {what}: ping and TCP on both VLANs; {got} bytes A -> B, A's SA counted {grew}");
    }

    /// Whether `mac` is placed behind `dst` (a permanent `extern_learn` entry EVPN made) on
    /// VLAN 101's VXLAN device, in the guest's namespace `ns` (`None`: A's, the root one).
    fn placed(&self, ns: Option<&str>, mac: &str, dst: &str) -> bool {
        let prefix = ns
            .map(|n| format!("ip netns exec {n} "))
            .unwrap_or_default();
        let out = self
            .g
            .sh(&format!("{prefix}bridge -j fdb show dev l2s-vx101"))
            .unwrap_or_default();
        let v: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_default();
        v.iter().any(|e| {
            e["mac"] == mac
                && e["dst"] == dst
                && e["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "extern_learn"))
        })
    }

    /// Wait until A places B's VNF's MAC behind B and B places A's behind A (type-2 routes),
    /// and A's status counts its own VNFs' MACs as advertised.
    fn wait_macs_placed(&self, limit: Duration) -> Duration {
        let mac = |ns: &str| {
            self.sh(&format!(
                "ip netns exec {ns} cat /sys/class/net/eth0/address"
            ))
            .trim()
            .to_string()
        };
        let (a, b) = (mac("a101"), mac("b101"));
        let t = Instant::now();
        loop {
            let advertised = self.status_a()["evpn"]["local_macs"].as_u64().unwrap_or(0);
            if self.placed(None, &b, B) && self.placed(Some("site-b"), &a, A) && advertised >= 1 {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < limit,
                "type-2 routes: {b} not behind B at A, or {a} not behind A at B, within {limit:?}\nA:\n{}\nA's macs:\n{}\nB's l2s-vx101:\n{}",
                self.g.sh("l2s-vnf status").unwrap_or_default(),
                self.g.sh("l2s-vnf macs").unwrap_or_default(),
                self.g.sh("ip netns exec site-b bridge fdb show dev l2s-vx101").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn captured(&self, filter: &str) -> usize {
        self.sh(&format!(
            "tcpdump -n -r /root/underlay.pcap '{filter}' 2>/dev/null | wc -l"
        ))
        .trim()
        .parse()
        .unwrap()
    }

    /// The underlay so far: no clear-text VXLAN, no clear-text BGP, and ESP both between the
    /// sites and with the reflector (BGP travels it). The capture must still be running.
    fn capture_clean(&self, what: &str) {
        assert!(
            self.g
                .run("systemctl is-active --quiet l2s-lab-capture")
                .is_ok_and(|o| o.status.success()),
            "{what}: the underlay capture is not running"
        );
        assert_eq!(
            self.captured("udp port 4789"),
            0,
            "{what}: clear-text VXLAN on the underlay"
        );
        assert_eq!(
            self.captured("tcp port 179"),
            0,
            "{what}: clear-text BGP on the underlay"
        );
        let ab = self.captured(&format!("ip proto 50 and host {A} and host {B}"));
        let arr = self.captured(&format!("ip proto 50 and host {A} and host {RR}"));
        assert!(ab > 0 && arr > 0, "{what}: ESP A-B {ab}, A-reflector {arr}");
    }

    /// What the journal of a unit said since `since` (a `date +%s.%N` of the guest).
    fn journal_since(&self, unit: &str, since: &str) -> String {
        self.sh(&format!(
            "journalctl -u {unit} --no-pager -o cat --since @{since}"
        ))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for cmd in [
            "cloud-init status --long",
            "tail -30 /var/log/cloud-init-output.log",
            "systemctl status l2s-vnf --no-pager",
            "journalctl -u l2s-vnf --no-pager | tail -60",
            "journalctl -u l2s-vnf-site-b --no-pager | tail -30",
            "journalctl -u l2s-vnf-rr-1 --no-pager | tail -30",
            "l2s-vnf status",
            "tail -20 /run/l2s-vnf/control.sock.frr/bgpd.log",
        ] {
            if let Ok(o) = self.g.run(cmd) {
                eprintln!(
                    "---- guest: {cmd}\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

#[test]
fn a_site_and_its_reflector_on_the_production_stack() {
    let Some((image, deb)) = guest::prepare().unwrap() else {
        return;
    };
    let t0 = Instant::now();
    let pki = guest::GuestCa::new().unwrap();
    let user_data = guest::user_data_for(PARAMS, "site-a", A, &pki.ca, DEB_URL).unwrap();
    let g = Guest::boot(
        &image,
        Boot {
            user_data: Some(&user_data),
            serve: Some(&deb),
            memory_mib: 2048,
            cpus: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let s = Stack { g };

    // 1. Site A the whole way: cloud-init → .deb + FRR + the EVPN drop-in → the hardened unit.
    s.g.cloud_init_done().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest EVPN: cloud-init done {:.0} s after boot began",
        t0.elapsed().as_secs_f64()
    );
    let unit = s.sh("systemctl show -p ActiveState,SubState,DropInPaths,NRestarts l2s-vnf");
    for want in [
        "ActiveState=active",
        "SubState=running",
        "/etc/systemd/system/l2s-vnf.service.d/evpn.conf",
    ] {
        assert!(unit.contains(want), "{want} not in:\n{unit}");
    }
    // The unit's own `check` (ExecStartPre, inside the sandbox) found EVPN permitted.
    let started = s.sh("journalctl -u l2s-vnf --no-pager -o cat");
    assert!(
        started.contains("evpn: site in AS") && !started.contains("NOT PERMITTED"),
        "{started}"
    );
    assert_eq!(
        s.sh("systemctl is-enabled frr 2>/dev/null || true").trim(),
        "disabled",
        "the system's FRR service is left alone"
    );
    let check = s.sh("l2s-vnf check");
    assert!(
        check.contains(&format!("evpn: site in AS 65000, reflectors {RR}")),
        "{check}"
    );

    // 2. The reflector and site B in their namespaces, and the underlay capture.
    guest::install_lab_scripts(&s.g).unwrap();
    s.sh("systemd-run --quiet --unit=l2s-lab-capture --collect ip netns exec ul tcpdump -i ul0 -n -U -s 128 -w /root/underlay.pcap; sleep 2");
    s.sh(&format!(
        "ip netns add rr-1 && ip -n rr-1 link set lo up && \
         ip link add t-ul-rr type veth peer name ul-rr netns ul && ip -n ul link set ul-rr master ul0 up && \
         ip link set t-ul-rr netns rr-1 && ip -n rr-1 link set t-ul-rr name ens4 && \
         ip -n rr-1 link set ens4 up && ip -n rr-1 addr add {RR}/24 dev ens4"
    ));
    for (member, vtep) in [("rr-1", RR), ("site-b", B)] {
        let ud = guest::user_data_for(PARAMS, member, vtep, &pki.ca, DEB_URL).unwrap();
        guest::start_peer(&s.g, member, &ud).unwrap();
    }
    // The VNFs get the access MTU l2s-vnf computed (as their operator configures them).
    s.sh("for n in a101 a102 b101 b102; do ip -n $n link set eth0 mtu 1408; done");
    let found = s.wait_follows("first convergence", Duration::from_secs(240));
    eprintln!(
        "guest EVPN: A follows B (session, routes, SA up) {:.1} s after the reflector and B started",
        found.as_secs_f64()
    );
    let st = s.status_a();
    let kinds: Vec<(String, String)> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_string(),
                p["kind"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        (format!("reflector-{RR}"), "reflector"),
        (B_PEER.to_string(), "discovered"),
    ] {
        assert!(
            kinds.iter().any(|(n, k)| *n == want.0 && k == want.1),
            "{want:?} not in {kinds:?}"
        );
    }
    s.service("first convergence");
    s.capture_clean("first convergence");
    // Type-2 routes on Debian's kernel and under the hardened unit: A advertises its VNFs'
    // MACs (the shadow access ports work there too) and places B's behind B, and B A's.
    let placed_macs = s.wait_macs_placed(Duration::from_secs(60));
    eprintln!("guest EVPN: each site's VNF MACs placed behind it at the other {placed_macs:.1?} after the service was up");

    // 3. bgpd killed at A: started again inside the sandbox, as the frr user; the data plane
    //    holds meanwhile.
    let frr = "/run/l2s-vnf/control.sock.frr";
    let old = s.sh(&format!("cat {frr}/bgpd.pid")).trim().to_string();
    s.sh(&format!("kill -9 {old}"));
    let t = Instant::now();
    loop {
        let st = s.status_a();
        let e = &st["evpn"];
        if e["frr"]["restarts"].as_u64().unwrap_or(0) >= 1 && e["frr"]["bgpd_running"] == true {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "bgpd not started again: {:#}",
            e["frr"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let back = s.wait_follows("bgpd killed at A", Duration::from_secs(120));
    let new = s.sh(&format!("cat {frr}/bgpd.pid")).trim().to_string();
    assert_ne!(new, old);
    assert_eq!(
        s.sh(&format!("ps -o user= -p {new}")).trim(),
        "frr",
        "bgpd runs as the frr user"
    );
    eprintln!(
        "guest EVPN: bgpd killed at A: back and routes complete {:.1} s later",
        back.as_secs_f64()
    );
    s.service("bgpd killed at A");
    s.capture_clean("bgpd killed at A");

    // 4. The daemon restarted by systemd: it adopts what it left and never unloads B; the
    //    service is back afterwards.
    let since = s.sh("date +%s.%N").trim().to_string();
    s.sh("systemctl restart l2s-vnf");
    let settled = s.wait_follows("A's daemon restarted", Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(8));
    let ja = s.journal_since("l2s-vnf", &since);
    let jb = s.journal_since("l2s-vnf-site-b", &since);
    assert!(
        ja.contains("holding the discovered sites found on the system"),
        "A did not adopt what it left:\n{ja}"
    );
    // A's hold: it never unloads B's connection while its new bgpd's routes are incomplete.
    let unloaded = format!("- ipsec l2s-vnf:l2s0:{B_PEER}");
    assert!(
        !ja.contains(&unloaded),
        "A unloaded B's connection while its daemon restarted:\n{ja}"
    );
    // B follows A's routes: when A's stop outlasts B's withdrawal grace (TCG: systemd may wait
    // its 15 s TimeoutStopSec), B withdraws A for a moment and follows it again. Reported, not
    // hidden: the service must be back either way (below).
    let b_withdrew = jb.contains(&format!("- ipsec l2s-vnf:l2s0:evpn-{A}"));
    let slow_stop = ja.contains("timed out. Killing");
    eprintln!(
        "guest EVPN: A's daemon restarted: routes complete {:.1} s later; A unloaded nothing; B {} A meanwhile{}",
        settled.as_secs_f64(),
        if b_withdrew { "withdrew (and followed again)" } else { "kept" },
        if slow_stop { " (the stop outlasted TimeoutStopSec: systemd killed it)" } else { "" }
    );
    s.wait_follows("A's daemon restarted, B followed", Duration::from_secs(120));
    s.service("A's daemon restarted");
    s.capture_clean("A's daemon restarted");

    // systemd's watchdog never had to restart a working daemon.
    let restarts = s.sh("systemctl show -p NRestarts --value l2s-vnf");
    assert_eq!(restarts.trim(), "0", "systemd restarted the daemon");
    eprintln!(
        "guest EVPN: the whole scenario took {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}
