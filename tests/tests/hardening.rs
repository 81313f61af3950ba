//! Corners that tests written outside the project found: each fault alone, from both ends,
//! judged on the service (pings that lose nothing, a TCP transfer whose bytes the SAs carried,
//! an underlay capture with ESP and no clear-text VXLAN).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use l2s_lab::{
    forge_vxlan, listen_udp, netns, require_lab, run, sh, within, Capture, PaperLab, PingStream,
    Vnf, CLEAR_TEXT_VXLAN,
};

/// The number of remote MACs a VLAN's VXLAN device learns unless configured (l2s-vnf's
/// documented default, `DEFAULT_MAC_LIMIT`).
const DEFAULT_MAC_LIMIT: u32 = 4096;

/// A rogue host on the underlay: its forged frames are clear text by design.
const ROGUE: &str = "192.0.2.66";

/// Control for a listener: a real broadcast from `from` over IPsec reaches `to` on `port`.
fn hears_real_broadcast(from: &Vnf, to: &Vnf, port: u16) -> bool {
    let mut l = listen_udp(to, port, 4).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let send = format!("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\nfor i in range(3): s.sendto(b'real',('10.101.0.255',{port}))\n");
    run(netns(&from.ns, "python3").args(["-c", &send])).unwrap();
    l.wait().unwrap().success()
}

/// IKE_SAs of connection `conn` that charon's log says were established.
fn established(log: &str, conn: &str) -> usize {
    let tag = format!("IKE_SA {conn}[");
    log.lines()
        .filter(|l| l.contains(&tag) && l.contains("established between"))
        .count()
}

/// The service between two VNFs as a user judges it: a TCP transfer from `from`'s site
/// (`site`) to its peer `peer` whose every received byte crossed inside ESP (the underlay's
/// ESP bytes and the SAs' counters each grow by at least that much), with no clear-text VXLAN
/// on the underlay meanwhile.
fn judge_transfer(t: &PaperLab, cap: &Capture, from: &Vnf, to: &Vnf, site: &str, peer: &str) {
    let (src, dst) = (
        t.lab.site(site).underlay_ip.clone(),
        t.lab.site(&peer.replace("site-", "")).underlay_ip.clone(),
    );
    let e = t
        .lab
        .encrypted_transfer(
            cap,
            to,
            from,
            site,
            &peer.replace("site-", ""),
            "2M",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "{src} -> {dst}: {} bytes received, {} ESP bytes on the underlay, {} counted by {site}'s SAs with {peer}",
        e.got, e.esp, e.sa
    );
    assert_eq!(
        cap.count(&format!("({CLEAR_TEXT_VXLAN}) and not host {ROGUE}")),
        0,
        "clear-text VXLAN on the underlay"
    );
}

/// charon at one end of a pair is stopped (`systemctl stop`: it deletes its IKE_SAs) and
/// started again, at the responder and then at the initiator: the pair must end with one
/// IKE_SA that stays, not two sites initiating and replacing each other's SA every few
/// seconds (an IKE duel), and pings across it must lose nothing once it is back.
#[test]
fn charon_restarted_at_either_end_heals_without_an_ike_duel() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("").unwrap();
    t.serve().unwrap();
    let cap = Capture::start(&t.lab, "duel").unwrap();
    // Site A (192.0.2.1) initiates towards B (192.0.2.2); B responds.
    for (restarted, role) in [("b", "responder"), ("a", "initiator")] {
        let what = format!("charon of site {restarted} ({role} of A-B) restarted");
        t.lab.stop_charon(restarted);
        std::thread::sleep(Duration::from_secs(2));
        t.lab.start_charon(restarted).unwrap();
        let back = t
            .lab
            .service_within(&t.a101, &t.b101, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // Let DPD (10 s) and its retransmissions run out on the SAs charon lost, then watch.
        std::thread::sleep(Duration::from_secs(16));
        let (log_a, log_b) = (t.lab.charon_log("a"), t.lab.charon_log("b"));
        let streams = [
            PingStream::start(&t.a101, &t.b101, 200, 100).unwrap(),
            PingStream::start(&t.a102, &t.b102, 200, 100).unwrap(),
        ];
        let lost: Vec<u32> = streams
            .into_iter()
            .map(|s| {
                let (sent, got) = s.finish().unwrap();
                sent - got
            })
            .collect();
        let (new_a, new_b) = (
            &t.lab.charon_log("a")[log_a.len()..],
            &t.lab.charon_log("b")[log_b.len()..],
        );
        let churn = (
            established(new_a, "l2s-vnf:l2s0:site-b"),
            established(new_b, "l2s-vnf:l2s0:site-a"),
        );
        eprintln!(
            "{what}: service back in {:.2} s; in the 20 s after, IKE_SAs established A {} B {}, pings lost {lost:?}",
            back.as_secs_f64(),
            churn.0,
            churn.1
        );
        assert_eq!(churn, (0, 0), "{what}: the IKE_SAs kept being replaced");
        assert_eq!(lost, [0, 0], "{what}: pings lost on VLAN 101 and 102");
        let failed = t.ping_mesh();
        assert!(failed.is_empty(), "{what}: pairs failing {failed:?}");
        judge_transfer(&t, &cap, &t.a101, &t.b101, "a", "site-b");
        for s in ["a", "b"] {
            assert!(t.lab.sa_up(s, if s == "a" { "site-b" } else { "site-a" }));
        }
    }

    // The CHILD_SA rekeys with a fresh key exchange (perfect forward secrecy), from either end,
    // and the service goes on.
    for (site, peer) in [("a", "site-b"), ("b", "site-a")] {
        let conn = format!("l2s-vnf:l2s0:{peer}");
        // The CHILD_SAs as charon lists them (the IKE_SA's own fields come before).
        let children = || {
            swanctl(&t, site, &["--list-sas", "--raw", "--ike", &conn])
                .split_once("child-sas {")
                .map(|(_, c)| c.to_string())
                .unwrap_or_default()
        };
        let before = children();
        let child = before
            .split(" {")
            .next()
            .map(|c| c.trim().rsplit_once('-').map_or(c.trim(), |(name, _)| name))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| panic!("no CHILD_SA at {site}"))
            .to_string();
        // The first CHILD_SA comes with IKE_AUTH, keyed from the IKE_SA.
        assert!(
            site != "a" || !before.contains("dh-group"),
            "{site}: a key exchange before any rekey? {before}"
        );
        let spi = |c: &str| c.split("spi-in=").nth(1).map(|r| r[..8].to_string());
        swanctl(&t, site, &["--rekey", "--child", &child]);
        within(
            Duration::from_secs(10),
            &format!("{site}: CHILD_SA rekeyed with PFS"),
            || {
                let now = children();
                spi(&now) != spi(&before) && now.contains("dh-group=CURVE_25519")
            },
        );
        let failed = t.ping_mesh();
        assert!(
            failed.is_empty(),
            "after a CHILD_SA rekey at {site}: {failed:?}"
        );
        judge_transfer(&t, &cap, &t.a101, &t.b101, "a", "site-b");
    }
}

fn swanctl(t: &PaperLab, site: &str, args: &[&str]) -> String {
    let vici = t.lab.site(site).dir.join("charon.vici");
    sh(std::process::Command::new("swanctl")
        .args(args)
        .args(["--uri", &format!("unix://{}", vici.display())]))
    .unwrap()
}

/// The guard stands on its own: with charon stopped at a site (every reconcile there fails
/// before it plans anything), `nft flush ruleset` takes the guard away; it is back within 2 s
/// and it works — a forged clear-text VXLAN frame from a rogue host on the underlay does not
/// reach the VNF, and the guard's drop counter counts it. Then charon returns, and the service
/// with it. At an initiator (A) and at a responder (C), each alone.
#[test]
fn the_guard_is_put_back_within_two_seconds_while_charon_is_down() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("").unwrap();
    t.serve().unwrap();
    let rogue = t
        .lab
        .add_underlay_host("rogue", &format!("{ROGUE}/24"))
        .unwrap();
    let cap = Capture::start(&t.lab, "guard-alone").unwrap();
    let clear_text = format!("({CLEAR_TEXT_VXLAN}) and not host {ROGUE}");
    for (i, (site, vnf, peer_vnf)) in [("a", &t.a101, &t.b101), ("c", &t.c101, &t.b101)]
        .into_iter()
        .enumerate()
    {
        let what = format!("guard flushed at site {site} while its charon is down");
        let port = 9990 + i as u16;
        assert!(
            hears_real_broadcast(peer_vnf, vnf, port),
            "{what}: control: a real broadcast over IPsec must arrive"
        );

        t.lab.stop_charon(site);
        std::thread::sleep(Duration::from_secs(1));
        let ns = t.lab.site(site).ns.clone();
        let out = run(netns(&ns, "nft").args(["flush", "ruleset"])).unwrap();
        assert!(out.status.success());
        let took = within(
            Duration::from_secs(2),
            &format!("{what}: guard back"),
            || t.lab.guard_drops_in(site).is_some(),
        );
        // It works: the forged frame is dropped (and counted), not delivered.
        let before = t.lab.guard_drops_in(site).unwrap();
        let mut l = listen_udp(vnf, port, 3).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        forge_vxlan(&rogue, &t.lab.site(site).underlay_ip.clone(), port).unwrap();
        assert!(
            !l.wait().unwrap().success(),
            "{what}: a forged clear-text VXLAN frame reached the VNF"
        );
        let dropped = t.lab.guard_drops_in(site).unwrap() - before;
        assert!(
            dropped >= 5,
            "{what}: the guard counted {dropped} of 5 forged frames"
        );
        let st = t.lab.status_json(site).unwrap();
        let repairs = st["daemon"]["recent_repairs"].to_string();
        assert!(
            repairs.contains("by the guard keeper"),
            "{what}: status shows no repair of the guard: {repairs}"
        );
        eprintln!(
            "{what}: guard back in {} ms, {dropped} forged frames dropped",
            took.as_millis()
        );

        t.lab.start_charon(site).unwrap();
        let back = t
            .lab
            .service_within(vnf, peer_vnf, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}, charon back: {e}"));
        eprintln!(
            "{what}: service back {:.2} s after charon",
            back.as_secs_f64()
        );
        let failed = t.ping_mesh();
        assert!(failed.is_empty(), "{what}: pairs failing {failed:?}");
        judge_transfer(&t, &cap, vnf, peer_vnf, site, "site-b");
        assert_eq!(
            cap.count(&clear_text),
            0,
            "{what}: clear text on the underlay"
        );
    }
}

/// A pre-shared key changed in its file re-authenticates the IKE_SAs it protects: a site that
/// holds only the old key is shut out at once (there is no reauthentication otherwise:
/// `reauth_time = 0`), the sites with the new key keep their service, and the old key leaves
/// charon. A and B take the new key (A initiates to B and C, B to C); C keeps the old one,
/// then takes the new one too.
#[test]
fn a_changed_psk_reauthenticates_and_shuts_out_the_old_key() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("").unwrap();
    // C reads its own copy of the key (the same key for now).
    let c_psk = t
        .lab
        .psk_file("psk-c", "correct-horse-battery-staple-l2s\n")
        .unwrap();
    let shared = t.lab.dir.join("psk");
    let c_toml = t.lab.site("c").dir.join("site.toml");
    let text = std::fs::read_to_string(&c_toml).unwrap().replace(
        &format!("psk_file = \"{}\"", shared.display()),
        &format!("psk_file = \"{}\"", c_psk.display()),
    );
    std::fs::write(&c_toml, text).unwrap();
    t.serve().unwrap();
    let cap = Capture::start(&t.lab, "psk-rotation").unwrap();

    // A and B take a new key.
    std::fs::write(&shared, "a-brand-new-key-for-a-and-b\n").unwrap();
    let before = established(&t.lab.charon_log("a"), "l2s-vnf:l2s0:site-b");
    let out = t.lab.l2s_ok("a", &["reload"]).unwrap();
    for want in [
        "~ ipsec l2s-vnf:l2s0:site-b: re-authenticate (its pre-shared key changed)",
        "- ipsec l2s-vnf:l2s0:site-c: its earlier pre-shared key",
    ] {
        assert!(out.contains(want), "A's reload: no `{want}`:\n{out}");
    }
    assert!(!out.contains("a-brand-new-key"), "{out}");
    t.lab.l2s_ok("b", &["reload"]).unwrap();
    let back = t
        .lab
        .service_within(&t.a101, &t.b101, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("A-B with the new key: {e}"));
    assert!(
        established(&t.lab.charon_log("a"), "l2s-vnf:l2s0:site-b") > before,
        "A and B did not authenticate again"
    );
    // C, with only the old key, is out: no SA with A or B, no traffic.
    within(Duration::from_secs(15), "C shut out by A and B", || {
        !t.lab.sa_up("a", "site-c") && !t.lab.sa_up("b", "site-c")
    });
    assert!(
        !t.lab
            .ping_eventually(&t.a101, &t.c101.ip, Duration::from_secs(5)),
        "C still reaches A with the old key"
    );
    assert!(t
        .lab
        .ping_eventually(&t.a102, &t.b102.ip, Duration::from_secs(10)));
    judge_transfer(&t, &cap, &t.a101, &t.b101, "a", "site-b");
    eprintln!(
        "key changed at A and B: A-B served again {:.2} s after B's reload; C shut out",
        back.as_secs_f64()
    );

    // C takes the new key: everyone is back.
    std::fs::write(&c_psk, "a-brand-new-key-for-a-and-b\n").unwrap();
    t.lab.l2s_ok("c", &["reload"]).unwrap();
    let back = t
        .lab
        .service_within(&t.a101, &t.c101, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("A-C with the new key at C: {e}"));
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "after C took the new key: {failed:?}");
    judge_transfer(&t, &cap, &t.b101, &t.c101, "b", "site-c");
    eprintln!(
        "C took the new key: A-C served again {:.2} s after its reload",
        back.as_secs_f64()
    );
}

/// What a host on the underlay can send, as raw packets with forged sources (`python3` in the
/// rogue's namespace): clear-text VXLAN and path probes claiming to come from a real peer,
/// the same VXLAN cut into fragments, and a flood of IKE_SA_INIT requests from many addresses.
const ATTACK: &str = r#"
import random, socket, struct, sys, time
what, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def ip(src, dst, payload, ident, frag=0):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), ident, frag, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + payload
def udp(sport, dport, payload):
    return struct.pack('!HHHH', sport, dport, 8 + len(payload), 0) + payload
def frame(port):
    body = udp(40000, port, b'forged-l2s')
    inner = ip('10.101.0.66', '10.101.0.255', body, 7)
    eth = b'\xff' * 6 + b'\x02\x00\x00\x00\x00\x66' + b'\x08\x00'
    return struct.pack('!II', 0x08000000, 101 << 8) + eth + inner
sent = 0
if what == 'vxlan':
    for i in range(50):
        raw.sendto(ip(src, dst, udp(40000, 4789, frame(port)), 1000 + i), (dst, 0)); sent += 1
elif what == 'fragments':
    for i in range(50):
        d = udp(40000, 4789, frame(port))
        raw.sendto(ip(src, dst, d[:24], 2000 + i, 0x2000), (dst, 0))
        raw.sendto(ip(src, dst, d[24:], 2000 + i, 3), (dst, 0)); sent += 2
elif what == 'probes':
    for i in range(50):
        raw.sendto(ip(src, dst, udp(4790, 4790, b'L2SP\x01' + bytes(7)), 3000 + i), (dst, 0)); sent += 1
elif what == 'ike-flood':
    end = time.time() + port
    while time.time() < end:
        s = '192.0.2.%d' % random.randint(100, 250)
        hdr = random.randbytes(8) + bytes(8) + bytes([33, 0x20, 34, 0x08]) + bytes(4) + struct.pack('!I', 28)
        raw.sendto(ip(s, dst, udp(500, 500, hdr), random.randint(1, 65535)), (dst, 0)); sent += 1
        if sent % 200 == 0: time.sleep(0.02)
print(sent)
"#;

/// An attacker on the underlay: clear-text VXLAN and path probes forged with a real peer's
/// source address, the VXLAN cut into fragments, and an IKE_SA_INIT flood from 150 addresses
/// while the real pairs rekey. Nothing reaches a VNF (a listener that hears the real thing
/// hears none of it), the guard counts every forged packet, the real SAs stay up through the
/// flood and its rekeys, and the service holds: pings through the flood, then ping and TCP,
/// no clear text from the real sites.
#[test]
fn an_attacker_on_the_underlay_reaches_no_vnf_and_breaks_no_sa() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("").unwrap();
    t.serve().unwrap();
    let rogue = t
        .lab
        .add_underlay_host("rogue", &format!("{ROGUE}/24"))
        .unwrap();
    let rogue_mac = sh(netns(&rogue, "cat").arg("/sys/class/net/eth1/address"))
        .unwrap()
        .trim()
        .to_string();
    let cap = Capture::start(&t.lab, "attacker").unwrap();
    let (a_ip, b_ip) = (
        t.lab.site("a").underlay_ip.clone(),
        t.lab.site("b").underlay_ip.clone(),
    );
    let attack = |what: &str, target: &str, port: u16| -> u64 {
        let out = sh(netns(&rogue, "python3").args([
            "-c",
            ATTACK,
            what,
            &b_ip,
            target,
            &port.to_string(),
        ]))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        out.trim().parse().unwrap()
    };

    // At A (B's initiator) and at C (a responder to both), with B's address forged.
    for (site, vnf) in [("a", &t.a101), ("c", &t.c101)] {
        let target = t.lab.site(site).underlay_ip.clone();
        for (i, what) in ["vxlan", "fragments", "probes"].into_iter().enumerate() {
            let port = 9980 + i as u16;
            assert!(
                hears_real_broadcast(&t.b101, vnf, port),
                "{what} at {site}: control: a real broadcast over IPsec must arrive"
            );
            let before = t.lab.guard_drops_in(site).unwrap();
            let mut l = listen_udp(vnf, port, 3).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let sent = attack(what, &target, port);
            assert!(
                !l.wait().unwrap().success(),
                "{what}: a forged packet from B's address reached a VNF at {site}"
            );
            let dropped = t.lab.guard_drops_in(site).unwrap() - before;
            eprintln!("forged {what} from B's address to {site}: {sent} packets sent, {dropped} dropped by its guard, none delivered");
            assert!(
                dropped >= 50,
                "{what} at {site}: the guard counted {dropped} of the forged datagrams"
            );
        }
    }

    // The IKE_SA_INIT flood, while A rekeys its IKE_SAs and a ping stream runs.
    let stream = PingStream::start(&t.a101, &t.b101, 100, 100).unwrap();
    let side = PingStream::start(&t.a101, &t.c101, 100, 100).unwrap();
    let flood = std::thread::spawn({
        let (rogue, a_ip, b_ip) = (rogue.clone(), a_ip.clone(), b_ip.clone());
        move || {
            sh(netns(&rogue, "python3").args(["-c", ATTACK, "ike-flood", &b_ip, &a_ip, "8"]))
                .map(|o| o.trim().parse::<u64>().unwrap_or(0))
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    t.lab.rekey_ike("a", "site-b").unwrap();
    t.lab.rekey_ike("a", "site-c").unwrap();
    let sent = flood.join().unwrap().unwrap();
    let (s1, g1) = stream.finish().unwrap();
    let (s2, g2) = side.finish().unwrap();
    eprintln!(
        "IKE_SA_INIT flood: {sent} requests from 150 addresses in 8 s during two IKE rekeys; pings lost A-B {}/{s1}, A-C {}/{s2}",
        s1 - g1,
        s2 - g2
    );
    assert!(sent > 1000, "the flood was no flood: {sent}");
    assert!(
        s1 - g1 <= 2 && s2 - g2 <= 2,
        "the flood broke the service: lost {} and {}",
        s1 - g1,
        s2 - g2
    );
    for (s, peers) in [("a", ["site-b", "site-c"]), ("b", ["site-a", "site-c"])] {
        for p in peers {
            assert!(
                t.lab.sa_up(s, p),
                "{s}'s SA with {p} is down after the flood"
            );
        }
    }
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "after the attacks: {failed:?}");
    // (The forged frames are clear text by design: the transfer is judged on its own capture.)
    let after = Capture::start(&t.lab, "after-the-attacks").unwrap();
    judge_transfer(&t, &after, &t.a101, &t.b101, "a", "site-b");
    assert_eq!(
        cap.count(&format!(
            "({CLEAR_TEXT_VXLAN}) and not ether src {rogue_mac}"
        )),
        0,
        "clear-text VXLAN from the real sites"
    );
}

/// A VNF at one site floods its VLAN with frames from thousands of made-up source MACs (a
/// MAC-flooding attack, or a broken VNF). The VXLAN devices at the other sites learn at most
/// their limit — the default on one VLAN, a configured one on the other — status and the
/// kernel agree on the count, and the VLANs keep serving: frames to MACs a full device could
/// not learn are flooded to the VLAN's peers instead.
#[test]
fn a_mac_flood_fills_a_vxlan_device_only_to_its_limit() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("").unwrap();
    // VLAN 102 at B learns at most 50 MACs; VLAN 101 has the default.
    let path = t.lab.site("b").dir.join("site.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    assert!(cfg.contains("[[vlan]]\nid = 102\n"), "{cfg}");
    let limited = cfg.replace(
        "[[vlan]]\nid = 102\n",
        "[[vlan]]\nid = 102\nmac_limit = 50\n",
    );
    std::fs::write(&path, limited).unwrap();
    t.serve().unwrap();
    let cap = Capture::start(&t.lab, "mac-flood").unwrap();
    let vlan = |st: &serde_json::Value, id: u64| {
        st["vlans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["id"] == id)
            .cloned()
            .unwrap()
    };
    let st: serde_json::Value =
        serde_json::from_str(&t.lab.l2s_ok("b", &["status", "--json"]).unwrap()).unwrap();
    assert_eq!(vlan(&st, 101)["mac_limit"], DEFAULT_MAC_LIMIT, "{st:#}");
    assert_eq!(vlan(&st, 102)["mac_limit"], 50, "{st:#}");
    assert_eq!(vlan(&st, 101)["mac_limit_reached"], false, "{st:#}");

    // B forgets what it learned (the VNFs' MACs among it), so that the frames to A's VNFs
    // must take the path of a MAC the full device cannot learn.
    // The VNFs' own chatter (IPv6 router solicitations, MLD reports) may be learned again
    // between the flush and the count: flush until the device is seen empty.
    for dev in ["l2s-vx101", "l2s-vx102"] {
        let mut left = usize::MAX;
        for _ in 0..20 {
            sh(netns(&t.lab.site("b").ns, "bridge").args(["fdb", "flush", "dev", dev, "dynamic"]))
                .unwrap();
            left = t.lab.learned_macs("b", dev).unwrap();
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let fdb = sh(netns(&t.lab.site("b").ns, "bridge").args(["fdb", "show", "dev", dev]))
            .unwrap_or_default();
        assert_eq!(left, 0, "{dev} flushed: {fdb}");
    }
    // More made-up MACs than either limit, from A into each VLAN.
    let flood = DEFAULT_MAC_LIMIT + 1000;
    t.lab.flood_source_macs(&t.a101, flood).unwrap();
    t.lab.flood_source_macs(&t.a102, 500).unwrap();
    // The flood crosses A's switch, IPsec and B's device: read B's counts until they stop
    // growing (three reads alike, 200 ms apart; under load libipsec takes seconds), not after
    // a fixed wait.
    let counts = || {
        (
            t.lab.learned_macs("b", "l2s-vx101").unwrap(),
            t.lab.learned_macs("b", "l2s-vx102").unwrap(),
        )
    };
    let (mut last, mut alike) = (counts(), 0);
    let settle = Instant::now();
    while alike < 3 && settle.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
        let now = counts();
        alike = if now == last { alike + 1 } else { 0 };
        last = now;
    }
    let (k101, k102) = last;
    let out = t.lab.l2s("b", &["status", "--json"]).unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "MAC flood: {flood} source MACs into VLAN 101, 500 into VLAN 102; B's devices learned {k101} and {k102} (status: {} and {})",
        vlan(&st, 101)["remote_macs"],
        vlan(&st, 102)["remote_macs"]
    );
    assert_eq!(k101, DEFAULT_MAC_LIMIT as usize, "VLAN 101 (default limit)");
    assert_eq!(k102, 50, "VLAN 102 (mac_limit = 50)");
    for (id, n) in [(101, k101), (102, k102)] {
        assert_eq!(vlan(&st, id)["remote_macs"], n, "{st:#}");
        assert_eq!(vlan(&st, id)["mac_limit_reached"], true, "{st:#}");
    }
    let text = t.lab.l2s("b", &["status"]).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("remote MACs: 50 of 50 (LIMIT REACHED)"),
        "{text}"
    );
    assert!(text.contains("vlan 102: MAC limit reached"), "{text}");
    // Nothing to converge: a full device is a device working as configured.
    let plan = t.lab.l2s_ok("b", &["plan"]).unwrap();
    assert!(plan.contains("no changes"), "{plan}");

    // The service, with B's devices full: B's frames to A's VNFs (whose MACs B could not
    // learn) are flooded to the VLAN's peers and arrive.
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "with full MAC tables: {failed:?}");
    judge_transfer(&t, &cap, &t.b101, &t.a101, "b", "site-a");
    judge_transfer(&t, &cap, &t.b102, &t.a102, "b", "site-a");
    judge_transfer(&t, &cap, &t.c101, &t.b101, "c", "site-b");

    // A new limit is a new device (the kernel cannot change it in place).
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, cfg.replace("mac_limit = 50\n", "mac_limit = 80\n")).unwrap();
    let plan = t.lab.l2s_ok("b", &["plan"]).unwrap();
    assert!(
        plan.contains("~ vxlan l2s-vx102 recreated (MAC limit 50 -> 80)"),
        "{plan}"
    );
    // The daemon holds the config it read: `reload` makes it converge the new one.
    t.lab.l2s_ok("b", &["reload"]).unwrap();
    let plan = t.lab.l2s_ok("b", &["plan"]).unwrap();
    assert!(plan.contains("no changes"), "after reload: {plan}");
    t.lab.flood_source_macs(&t.a102, 500).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(t.lab.learned_macs("b", "l2s-vx102").unwrap(), 80);
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "after the new limit: {failed:?}");
    judge_transfer(&t, &cap, &t.a102, &t.b102, "a", "site-b");
}
