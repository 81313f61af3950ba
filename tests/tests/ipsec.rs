//! IPsec between sites on real parts: a charon per site (kernel-libipsec backend, as this
//! kernel has no ESP), the fail-closed guard, and a capture of the underlay that must never
//! see clear-text VXLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::{forge_vxlan, listen_udp, netns, require_lab, run, Capture, Lab, PaperLab};

fn secure_lab(extra: &str) -> PaperLab {
    let mut t = PaperLab::new().unwrap();
    t.secure(extra).unwrap();
    t
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
    let mut cap = Capture::start(&t.lab, "underlay").unwrap();
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

    // VICI events on a connection of their own: ike-updown/child-updown arrive at A.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let vici_a = lab.site("a").dir.join("charon.vici");
    let mut events = rt
        .block_on(l2s_vnf::ipsec::vici::subscribe(
            &vici_a,
            &["ike-updown", "child-updown", "ike-rekey", "child-rekey"],
        ))
        .unwrap();

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
    let got: Vec<String> = rt.block_on(async {
        let mut names = vec![];
        while let Ok(Some((name, _))) =
            tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            names.push(name);
        }
        names
    });
    assert!(
        got.iter().filter(|n| *n == "child-updown").count() >= 2,
        "child-updown events for both peers: {got:?}"
    );
    assert!(
        got.iter().any(|n| n == "ike-updown"),
        "ike-updown events: {got:?}"
    );

    lab.set_vnf_mtu(&[&t.a101, &t.b101, &t.c101, &t.a102, &t.b102], mtu)
        .unwrap();
    assert_eq!(
        t.ping_mesh(),
        Vec::<String>::new(),
        "pings over IPsec that failed"
    );
    // A don't-fragment ping of exactly the access MTU passes.
    assert!(
        lab.ping_df(&t.a101, &t.b101.ip, mtu - 28),
        "DF ping of {mtu} bytes"
    );

    let (a101, b101, c101) = (&t.a101, &t.b101, &t.c101);
    let lab = &mut t.lab;
    // Each transfer through its own SA: A -> B and B -> C. The sender's SA with that peer
    // counts every byte received, and the capture sees as many ESP bytes between the two
    // VTEPs in the same interval.
    let through = |server: &l2s_lab::Vnf, client: &l2s_lab::Vnf, from: &str, to: &str, n: &str| {
        lab.encrypted_transfer(&cap, server, client, from, to, n, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e:#}"))
            .bps
    };
    let bps = through(b101, a101, "a", "b", "10M");
    through(c101, b101, "b", "c", "5M");
    eprintln!("TCP A->B over IPsec: {:.0} Mbit/s", bps / 1e6);

    // `down` removes every object it owns: connections in charon, guard, rule, devices.
    let down = lab.l2s_ok("c", &["down"]).unwrap();
    assert!(
        down.contains("- ipsec l2s-vnf:l2s0:site-a")
            && down.contains("- guard")
            && down.contains("- rule"),
        "{down}"
    );
    let c_ns = lab.site("c").ns.clone();
    let nft = run(netns(&c_ns, "nft").args(["list", "tables"])).unwrap();
    assert!(
        !String::from_utf8_lossy(&nft.stdout).contains("l2s_vnf"),
        "guard left behind"
    );
    let conns = run(netns(&c_ns, "swanctl").args([
        "--list-conns",
        "--uri",
        &format!("unix://{}", lab.site("c").dir.join("charon.vici").display()),
    ]))
    .unwrap();
    assert!(
        !String::from_utf8_lossy(&conns.stdout).contains("l2s-vnf:"),
        "connections left in charon"
    );
    assert!(lab
        .l2s_ok("c", &["down"])
        .unwrap()
        .contains("nothing to remove"));

    cap.stop();
    let clear = cap.clear_text_vxlan();
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

#[test]
fn forged_clear_text_vxlan_never_reaches_a_vnf() {
    require_lab!();
    let mut t = secure_lab("");
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    wait_sas(&t.lab, &["a", "b", "c"], Duration::from_secs(30));
    // A rogue host on the underlay.
    let rogue = t.lab.add_underlay_host("rogue", "192.0.2.66/24").unwrap();
    // Control: the listener works (a real broadcast from A over IPsec arrives at B).
    t.lab.set_vnf_mtu(&[&t.a101, &t.b101], 1350).unwrap();
    assert!(t
        .lab
        .ping_eventually(&t.a101, &t.b101.ip, Duration::from_secs(20)));
    let mut l = listen_udp(&t.b101, 9997, 4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let send = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\nfor i in range(3): s.sendto(b'real',('10.101.0.255',9997))\n";
    run(netns(&t.a101.ns, "python3").args(["-c", send])).unwrap();
    assert!(
        l.wait().unwrap().success(),
        "control: a real broadcast over IPsec must arrive"
    );
    // The forged frame, sent to B's VTEP in clear text, must not arrive.
    let mut l = listen_udp(&t.b101, 9998, 4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    forge_vxlan(&rogue, &t.lab.site("b").underlay_ip.clone(), 9998).unwrap();
    assert!(
        !l.wait().unwrap().success(),
        "a forged clear-text VXLAN frame reached a VNF"
    );
    let guard = sh_out(
        &t.lab,
        "b",
        &["nft", "list", "table", "inet", "l2s_vnf_l2s0"],
    );
    assert!(
        guard.contains("counter packets 5")
            || guard
                .lines()
                .any(|l| l.contains("iifname") && !l.contains("packets 0 ")),
        "guard counted no drops:\n{guard}"
    );
    // Negative control: without the guard the very same forged frame does arrive, so it is
    // the guard that stops it (and `apply` puts the guard back).
    sh_out(
        &t.lab,
        "b",
        &["nft", "delete", "table", "inet", "l2s_vnf_l2s0"],
    );
    let mut l = listen_udp(&t.b101, 9996, 4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    forge_vxlan(&rogue, &t.lab.site("b").underlay_ip.clone(), 9996).unwrap();
    assert!(
        l.wait().unwrap().success(),
        "control: the forged frame should arrive without the guard"
    );
    let out = t.lab.l2s_ok("b", &["apply"]).unwrap();
    assert!(out.contains("+ guard"), "apply restores the guard: {out}");
}

/// An ICMP error about a decrypted VXLAN or probe packet quotes that packet (up to ~500 bytes
/// of a VNF's frame), and the SAs cover UDP only: the guard keeps it off the underlay.
#[test]
fn an_icmp_error_about_decrypted_vxlan_never_leaves_in_clear_text() {
    require_lab!();
    let t = secure_lab("");
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    wait_sas(&t.lab, &["a", "b", "c"], Duration::from_secs(30));
    let b_ip = t.lab.site("b").underlay_ip.clone();
    // Datagrams from A's VTEP to B's probe port travel A's SA with B; nothing listens there
    // (no daemon runs at B), so B's kernel answers each with a port unreachable.
    let send = |tag: &str| {
        let cmd = format!(
            "for i in 1 2 3 4 5; do echo {tag}-secret-vnf-bytes > /dev/udp/{b_ip}/4790; sleep 0.1; done"
        );
        run(netns(&t.lab.site("a").ns, "bash").args(["-c", &cmd])).unwrap();
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut cap = Capture::start(&t.lab, "icmp-errors").unwrap();
    let esp0 = cap.count("udp port 4500");
    send("guarded");
    cap.stop();
    assert!(
        cap.count("udp port 4500") >= esp0 + 5,
        "the datagrams did not travel the SA"
    );
    assert_eq!(
        cap.count("icmp"),
        0,
        "an ICMP error left in clear text: {:?}",
        cap.packets("icmp")
    );
    let guard = sh_out(
        &t.lab,
        "b",
        &["nft", "list", "table", "inet", "l2s_vnf_l2s0"],
    );
    assert!(
        guard
            .lines()
            .any(|l| l.contains("ICMP error quoting VXLAN") && !l.contains("packets 0 ")),
        "the guard counted no ICMP error:\n{guard}"
    );
    // Negative control: without the guard the same datagrams do draw clear-text errors.
    sh_out(
        &t.lab,
        "b",
        &["nft", "delete", "table", "inet", "l2s_vnf_l2s0"],
    );
    let mut cap = Capture::start(&t.lab, "icmp-errors-unguarded").unwrap();
    send("unguarded");
    cap.stop();
    assert!(
        cap.count("icmp") > 0,
        "control: without the guard B's port unreachables should be on the underlay"
    );
    let out = t.lab.l2s_ok("b", &["apply"]).unwrap();
    assert!(out.contains("+ guard"), "apply restores the guard: {out}");
}

fn sh_out(lab: &Lab, site: &str, cmd: &[&str]) -> String {
    let out = run(netns(&lab.site(site).ns, cmd[0]).args(&cmd[1..])).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_peer(lab: &Lab, site: &str, peer: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if lab.sa_up(site, &format!("site-{peer}")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

#[test]
fn wrong_psk_fails_that_peer_only() {
    require_lab!();
    let t = secure_lab("");
    let wrong = t
        .lab
        .psk_file("psk-wrong", "not-the-shared-secret-at-all\n")
        .unwrap();
    let cfg_c = std::fs::read_to_string(t.lab.site("c").dir.join("site.toml")).unwrap();
    let cfg_c = cfg_c.replace(
        &t.lab.dir.join("psk").display().to_string(),
        &wrong.display().to_string(),
    );
    t.lab.write_config("c", &cfg_c).unwrap();
    let mut cap = Capture::start(&t.lab, "wrong-psk").unwrap();
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    assert!(
        wait_peer(&t.lab, "a", "b", Duration::from_secs(20)),
        "A-B must work"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !t.lab.sa_up("a", "site-c") && !t.lab.sa_up("b", "site-c"),
        "an SA with the wrong PSK came up"
    );
    let status = t.lab.l2s_ok("a", &["status"]).unwrap();
    assert!(
        status.contains("no established SA with peer site-c"),
        "{status}"
    );
    assert!(
        !status.contains("not-the-shared-secret") && !status.contains("correct-horse"),
        "a secret in status"
    );
    t.lab
        .set_vnf_mtu(&[&t.a101, &t.b101, &t.c101], 1350)
        .unwrap();
    assert!(
        t.lab
            .ping_eventually(&t.a101, &t.b101.ip, Duration::from_secs(20)),
        "A-B traffic"
    );
    assert!(
        !t.lab.ping(&t.a101, &t.c101.ip, 3),
        "A-C must not work without an SA"
    );
    // The positive control of the interval: A-B carries TCP inside ESP meanwhile.
    t.lab
        .encrypted_transfer(
            &cap,
            &t.b101,
            &t.a101,
            "a",
            "b",
            "1M",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    cap.stop();
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "clear-text VXLAN leaked while an SA failed"
    );
    // charon says why (authentication), and no secret is ever in our output.
    let log_c = std::fs::read_to_string(t.lab.site("c").dir.join("charon.log")).unwrap_or_default();
    assert!(
        log_c.contains("AUTHENTICATION_FAILED") || log_c.contains("authentication"),
        "charon at C did not report the auth failure"
    );
}

#[test]
fn resilience_under_capture_charon_restart_peer_churn_and_rekeys() {
    require_lab!();
    // Short lifetimes so that several CHILD and IKE rekeys happen during the test.
    let mut t =
        secure_lab("child_rekey_time = \"12s\"\nike_rekey_time = \"25s\"\ndpd_delay = \"2s\"\n");
    let mut cap = Capture::start(&t.lab, "resilience").unwrap();
    for s in ["a", "b", "c"] {
        t.lab.l2s_ok(s, &["apply"]).unwrap();
    }
    wait_sas(&t.lab, &["a", "b", "c"], Duration::from_secs(30));
    t.lab
        .set_vnf_mtu(&[&t.a101, &t.b101, &t.c101, &t.a102, &t.b102], 1350)
        .unwrap();
    assert!(t
        .lab
        .ping_eventually(&t.a101, &t.c101.ip, Duration::from_secs(20)));

    // 1. charon at C crashes: traffic to C stops but never leaks; C's apply brings it back.
    t.lab.kill_charon("c");
    assert!(
        !t.lab.ping(&t.a101, &t.c101.ip, 3),
        "traffic to C without charon must not flow"
    );
    t.lab.start_charon("c").unwrap();
    let out = t.lab.l2s_ok("c", &["apply"]).unwrap();
    assert!(out.contains("+ ipsec"), "C reloads its connections: {out}");
    assert!(
        wait_peer(&t.lab, "a", "c", Duration::from_secs(30)),
        "A-C SA back after charon restart"
    );
    assert!(
        t.lab
            .ping_eventually(&t.a101, &t.c101.ip, Duration::from_secs(20)),
        "A-C traffic back"
    );

    // 2. Peer C removed from A, then re-added.
    let cfg_a = std::fs::read_to_string(t.lab.site("a").dir.join("site.toml")).unwrap();
    let without_c = cfg_a.replace("[[peer]]\nname = \"site-c\"\naddress = \"192.0.2.3\"\n", "");
    assert_ne!(without_c, cfg_a);
    t.lab.write_config("a", &without_c).unwrap();
    let out = t.lab.l2s_ok("a", &["apply"]).unwrap();
    assert!(
        out.contains("- ipsec l2s-vnf:l2s0:site-c")
            && out.contains("- flood l2s-vx101 -> 192.0.2.3"),
        "{out}"
    );
    assert!(!t.lab.ping(&t.a101, &t.c101.ip, 2), "A-C after removing C");
    assert!(
        t.lab.ping(&t.a101, &t.b101.ip, 2),
        "A-B unaffected by removing C"
    );
    t.lab.write_config("a", &cfg_a).unwrap();
    t.lab.l2s_ok("a", &["apply"]).unwrap();
    // C may have given up on A meanwhile: its apply converges (initiates if no SA).
    t.lab.l2s_ok("c", &["apply"]).unwrap();
    assert!(
        wait_peer(&t.lab, "a", "c", Duration::from_secs(30)),
        "A-C SA after re-adding C"
    );
    assert!(
        t.lab
            .ping_eventually(&t.a101, &t.c101.ip, Duration::from_secs(20)),
        "A-C traffic after re-adding C"
    );

    // 3. Several CHILD and IKE rekeys under a ping stream: at most a few losses, no leak.
    let secs = 40;
    let out = run(netns(&t.a101.ns, "ping").args([
        "-c",
        &(secs * 5).to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        "-q",
        &t.b101.ip,
    ]))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // Rekeys initiated by either side of the A-B pair (IKEv2 CREATE_CHILD_SA exchanges).
    let logs: String = ["a", "b"]
        .iter()
        .map(|x| std::fs::read_to_string(t.lab.site(x).dir.join("charon.log")).unwrap_or_default())
        .collect();
    let sent = || {
        logs.lines()
            .filter(|l| l.contains("generating CREATE_CHILD_SA request"))
    };
    let child_rekeys = sent().filter(|l| l.contains("N(REKEY_SA)")).count();
    let ike_rekeys = sent().filter(|l| l.contains("[ SA No KE ]")).count();
    eprintln!(
        "ping during rekeys: {}; CHILD rekey lines {child_rekeys}, IKE rekey lines {ike_rekeys}",
        text.lines().rev().nth(1).unwrap_or("")
    );
    assert!(
        child_rekeys >= 2 && ike_rekeys >= 1,
        "expected several rekeys (CHILD {child_rekeys}, IKE {ike_rekeys})"
    );
    let received: u32 = text
        .split(" received")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .or_else(|| {
            text.split(" received")
                .next()
                .and_then(|s| s.rsplit(' ').next())
        })
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        received >= secs * 5 - 5,
        "too many pings lost across rekeys: {text}"
    );

    cap.stop();
    let clear = cap.count("udp port 4789");
    eprintln!(
        "resilience capture: {} ESP packets, {clear} clear-text VXLAN",
        cap.count("udp port 4500")
    );
    assert_eq!(
        clear, 0,
        "clear-text VXLAN on the underlay during crash, churn or rekeys"
    );
}

#[test]
fn kernel_backend_transport_mode_negotiates_ike_and_stays_closed() {
    require_lab!();
    let mut lab = Lab::new(2).unwrap();
    let a = lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let b = lab.add_vnf("b", "acc101", "10.101.0.2/24").unwrap();
    let psk = lab
        .psk_file("psk", "kernel-backend-secret-value\n")
        .unwrap();
    for s in ["a", "b"] {
        lab.start_charon_with(s, false).unwrap();
    }
    let vlans: &[l2s_lab::VlanSpec] = &[(101, &["acc101"], None)];
    for (s, p) in [("a", "b"), ("b", "a")] {
        let cfg = lab.secure(s, &lab.config(s, &[p], vlans), &psk, "");
        lab.write_config(s, &cfg).unwrap();
    }
    let mut cap = Capture::start(&lab, "kernel").unwrap();
    let plan = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(
        plan.contains("Kernel backend") && plan.contains("transport"),
        "auto must pick the kernel backend: {plan}"
    );
    assert!(
        !plan.contains("+ rule"),
        "no policy rule without libipsec: {plan}"
    );
    for s in ["b", "a"] {
        lab.l2s_ok(s, &["apply"]).unwrap();
    }
    // The kernel ruleset is installed (XFRM-aware matches).
    let guard =
        run(netns(&lab.site("a").ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
            .unwrap();
    let guard = String::from_utf8_lossy(&guard.stdout);
    assert!(
        guard.contains("rt ipsec missing") && guard.contains("meta ipsec missing"),
        "{guard}"
    );
    let again = lab.l2s_ok("a", &["plan"]).unwrap();
    assert!(
        !again.contains("guard"),
        "the installed kernel guard must be recognised as up to date: {again}"
    );
    // charon accepts the transport-mode connection and negotiates IKE with the peer.
    let t = Instant::now();
    let log =
        |s: &str| std::fs::read_to_string(lab.site(s).dir.join("charon.log")).unwrap_or_default();
    while !log("a").contains("established between") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let la = log("a");
    assert!(
        la.contains("IKE_SA l2s-vnf:l2s0:site-b[")
            && la.contains("established between 192.0.2.1[site-a]...192.0.2.2[site-b]"),
        "IKE not negotiated:\n{}",
        la.lines()
            .filter(|l| l.contains("[IKE]"))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(la.contains("mode = TRANSPORT"), "transport mode expected");
    // Without ESP in this kernel no CHILD_SA can be installed: VXLAN must not leave in clear.
    lab.set_vnf_mtu(&[&a, &b], 1350).unwrap();
    // The positive control: the pings' ARP requests did become VXLAN frames at A's VTEP
    // (sent, or refused by the xfrm layer), and none of them reached the underlay in clear.
    let a_ns = lab.site("a").ns.clone();
    let vxlan_out = || {
        ["tx_packets", "tx_errors", "tx_dropped"]
            .iter()
            .map(|c| {
                lab.link_attr(&a_ns, "l2s-vx101", &format!("statistics/{c}"))
                    .unwrap_or_else(|| panic!("no {c} counter on l2s-vx101"))
            })
            .sum::<u64>()
    };
    let out0 = vxlan_out();
    assert!(!lab.ping(&a, &b.ip, 3));
    let produced = vxlan_out() - out0;
    cap.stop();
    assert!(
        produced >= 2,
        "the pings produced {produced} VXLAN frames at A: nothing was tried"
    );
    assert_eq!(
        cap.clear_text_vxlan(),
        0,
        "clear-text VXLAN with the kernel backend and no SA"
    );
    assert!(
        cap.count("udp port 500 or udp port 4500") > 0,
        "no IKE traffic seen"
    );
}

/// Local causes are clear errors, never a silently dead site: a charon without the algorithms
/// of the configured proposals (Debian's libstrongswan without the standard plugins), and a
/// kernel IPsec policy that would divert VXLAN around the SA. A peer that is merely not up
/// yet stays a warning.
#[test]
fn a_charon_lacking_algorithms_or_a_bypass_policy_is_a_clear_error() {
    require_lab!();
    let mut lab = Lab::new(2).unwrap();
    lab.add_vnf("a", "acc101", "10.101.0.1/24").unwrap();
    let psk = lab.psk_file("psk", "local-causes-secret-value\n").unwrap();
    // What Debian's libstrongswan alone brings: no openssl, gcm or curve25519.
    lab.start_charon_loading(
        "a",
        "random nonce aes sha1 sha2 hmac gmp kdf pem pkcs1 x509 pubkey kernel-netlink socket-default vici",
    )
    .unwrap();
    let vlans: &[l2s_lab::VlanSpec] = &[(101, &["acc101"], None)];
    let cfg = lab.secure("a", &lab.config("a", &["b"], vlans), &psk, "");
    lab.write_config("a", &cfg).unwrap();
    for cmd in ["check", "apply"] {
        let out = lab.l2s("a", &[cmd]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains("ipsec.ike_proposals[0]")
                && err.contains("CURVE_25519 (x25519")
                && err.contains("AES_GCM_16 (aes256gcm16")
                && err.contains("libstrongswan-standard-plugins"),
            "{cmd}: {err}"
        );
    }
    assert!(
        lab.vsctl("a", &["list-br"]).unwrap().trim().is_empty(),
        "a refused apply changed the switch"
    );
    // Proposals this charon can do are accepted.
    let modp = lab.secure(
        "a",
        &lab.config("a", &["b"], vlans),
        &psk,
        "ike_proposals = [\"aes256-sha384-modp3072\"]\nesp_proposals = [\"aes256-sha256-modp3072\"]\n",
    );
    lab.write_config("a", &modp).unwrap();
    lab.l2s_ok("a", &["check"]).unwrap();

    // A kernel backend whose SPD holds a pass policy above ours for the underlay subnet.
    lab.kill_charon("a");
    lab.start_charon_with("a", false).unwrap();
    let kernel = lab
        .secure("a", &lab.config("a", &["b"], vlans), &psk, "")
        .replace("backend = \"auto\"", "backend = \"kernel\"");
    lab.write_config("a", &kernel).unwrap();
    let ns = lab.site("a").ns.clone();
    let xfrm = |args: &[&str]| {
        l2s_lab::sh(netns(&ns, "ip").args(["xfrm", "policy"]).args(args)).unwrap();
    };
    // As charon's bypass-lan installs it: its automatic priority loses to ours.
    xfrm(&[
        "add",
        "src",
        "192.0.2.0/24",
        "dst",
        "192.0.2.0/24",
        "dir",
        "out",
        "priority",
        "175423",
    ]);
    let ok = lab.l2s_ok("a", &["check"]).unwrap();
    assert!(ok.contains("valid"), "{ok}");
    // Someone's pass policy above ours: VXLAN to B would bypass its SA.
    xfrm(&[
        "add",
        "src",
        "192.0.2.0/25",
        "dst",
        "192.0.2.0/25",
        "dir",
        "out",
        "priority",
        "100",
    ]);
    let out = lab.l2s("a", &["check"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("peer[0].address")
            && err.contains("VXLAN to site-b bypasses its SA: a pass policy 192.0.2.0/25 -> 192.0.2.0/25 priority 100"),
        "{err}"
    );
    // status says the same, and that the VLAN is degraded for it.
    lab.l2s_ok("a", &["apply"]).unwrap();
    let st = lab.l2s_ok("a", &["status"]).unwrap();
    assert!(
        st.contains("DEGRADED") && st.contains("VXLAN to site-b bypasses its SA"),
        "{st}"
    );
    // The peer that is simply not up is a warning, not an error.
    assert!(st.contains("no established SA with peer site-b"), "{st}");
}
