//! IPsec between sites on real parts: a charon per site (kernel-libipsec backend, as this
//! kernel has no ESP), the fail-closed guard, and a capture of the underlay that must never
//! see clear-text VXLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use l2s_lab::{netns, require_lab, run, Lab, Vnf};

/// A capture on the underlay bridge for the whole test.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, name: &str) -> Capture {
        let file = lab.dir.join(format!("{name}.pcap"));
        let child = netns(&lab.underlay_ns, "tcpdump")
            .args(["-i", "ul0", "-n", "-U", "-s", "128", "-w"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Capture { child, file }
    }

    /// Packets in the capture matching a tcpdump filter.
    fn count(&self, filter: &str) -> usize {
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .arg(filter)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    fn stop(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Sites {
    lab: Lab,
    a101: Vnf,
    b101: Vnf,
    c101: Vnf,
    a102: Vnf,
    b102: Vnf,
}

fn secure_lab(extra: &str) -> Sites {
    let mut lab = Lab::new(3).unwrap();
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let c101 = lab.add_vnf("c", "acc101", "10.101.0.3/24").unwrap();
    let a102 = lab.add_vnf("a", "acc102", "10.102.0.1/24").unwrap();
    let b102 = lab.add_vnf("b", "acc102", "10.102.0.2/24").unwrap();
    let psk = lab
        .psk_file("psk", "correct-horse-battery-staple-l2s\n")
        .unwrap();
    for s in ["a", "b", "c"] {
        lab.start_charon(s).unwrap();
    }
    let vlans_a: &[l2s_lab::VlanSpec] =
        &[(101, &["acc101"], None), (102, &["acc102"], Some(&["b"]))];
    let vlans_b: &[l2s_lab::VlanSpec] =
        &[(101, &["acc101"], None), (102, &["acc102"], Some(&["a"]))];
    let vlans_c: &[l2s_lab::VlanSpec] = &[(101, &["acc101"], None)];
    for (s, peers, vlans) in [
        ("a", ["b", "c"], vlans_a),
        ("b", ["a", "c"], vlans_b),
        ("c", ["a", "b"], vlans_c),
    ] {
        let cfg = lab.secure(s, &lab.config(s, &peers, vlans), &psk, extra);
        lab.write_config(s, &cfg).unwrap();
    }
    Sites {
        lab,
        a101,
        b101,
        c101,
        a102,
        b102,
    }
}

/// Wait until `status --json` at every site shows every peer up.
fn wait_sas(lab: &Lab, sites: &[&str], within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let all_up = sites.iter().all(|s| {
            let st = lab.l2s_ok(s, &["status", "--json"]).unwrap_or_default();
            !st.contains("\"up\": false") && st.contains("\"up\": true")
        });
        if all_up {
            return t.elapsed();
        }
        if t.elapsed() > within {
            let st: Vec<String> = sites
                .iter()
                .map(|s| lab.l2s_ok(s, &["status"]).unwrap_or_default())
                .collect();
            panic!("SAs not up within {within:?}:\n{}", st.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn access_mtu(lab: &Lab, site: &str) -> u32 {
    let check = lab.l2s_ok(site, &["plan"]).unwrap();
    check
        .split("access MTU ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap()
}

#[test]
fn ipsec_between_three_sites_never_leaks_clear_text() {
    require_lab!();
    let mut t = secure_lab("");
    let mut cap = Capture::start(&t.lab, "underlay");
    let lab = &t.lab;

    let plan = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(
        plan.contains("+ guard")
            && plan.contains("+ ipsec l2s-vnf:l2s0:site-b")
            && plan.contains("+ rule"),
        "{plan}"
    );
    let mtu = access_mtu(lab, "a");
    assert_eq!(mtu, 1350, "libipsec: the TUN MTU 1400 caps the access MTU");

    let t0 = Instant::now();
    for s in ["a", "b", "c"] {
        lab.l2s_ok(s, &["apply"]).unwrap();
    }
    let up = wait_sas(lab, &["a", "b", "c"], Duration::from_secs(30));
    eprintln!(
        "all SAs established {:?} after the first apply ({up:?} of waiting)",
        t0.elapsed()
    );
    assert!(
        lab.l2s_ok("a", &["apply"]).unwrap().contains("no changes"),
        "second apply must be a no-op"
    );

    lab.set_vnf_mtu(&[&t.a101, &t.b101, &t.c101, &t.a102, &t.b102], mtu)
        .unwrap();
    assert!(
        lab.ping_eventually(&t.a101, &t.b101.ip, Duration::from_secs(20)),
        "A->B 101 over IPsec"
    );
    assert!(
        lab.ping_eventually(&t.a101, &t.c101.ip, Duration::from_secs(20)),
        "A->C 101 over IPsec"
    );
    assert!(
        lab.ping_eventually(&t.b101, &t.c101.ip, Duration::from_secs(20)),
        "B->C 101 over IPsec"
    );
    assert!(
        lab.ping_eventually(&t.a102, &t.b102.ip, Duration::from_secs(20)),
        "A->B 102 over IPsec"
    );
    // A don't-fragment ping of exactly the access MTU passes.
    let df = run(netns(&t.a101.ns, "ping").args([
        "-M",
        "do",
        "-s",
        &(mtu - 28).to_string(),
        "-c",
        "3",
        "-W",
        "2",
        &t.b101.ip,
    ]))
    .unwrap();
    assert!(
        df.status.success(),
        "DF ping of {mtu} bytes: {}",
        String::from_utf8_lossy(&df.stdout)
    );

    let (a101, b101, c101) = (&t.a101, &t.b101, &t.c101);
    let lab = &mut t.lab;
    let bps = lab.tcp_transfer(b101, a101, "10M").unwrap();
    lab.tcp_transfer(c101, b101, "5M").unwrap();
    eprintln!("TCP A->B over IPsec: {:.0} Mbit/s", bps / 1e6);

    cap.stop();
    let clear = cap.count("udp port 4789");
    let esp = cap.count("udp port 4500");
    let frags = cap.count("ip[6:2] & 0x3fff != 0");
    eprintln!("underlay capture: {esp} ESP-in-UDP packets, {clear} clear-text VXLAN, {frags} IP fragments");
    assert_eq!(clear, 0, "clear-text VXLAN on the underlay");
    assert_eq!(frags, 0, "outer IP fragments on the underlay");
    assert!(
        esp > 1000,
        "expected the traffic as ESP in UDP 4500, saw {esp} packets"
    );
}
