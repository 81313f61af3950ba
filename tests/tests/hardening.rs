//! Corners that tests written outside the project found: each fault alone, from both ends,
//! judged on the service (pings that lose nothing, a TCP transfer whose bytes the SAs carried,
//! an underlay capture with ESP and no clear-text VXLAN).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use l2s_lab::{require_lab, Capture, PaperLab, PingStream, Vnf};

/// IKE_SAs of connection `conn` that charon's log says were established.
fn established(log: &str, conn: &str) -> usize {
    let tag = format!("IKE_SA {conn}[");
    log.lines()
        .filter(|l| l.contains(&tag) && l.contains("established between"))
        .count()
}

/// The service between two VNFs as a user judges it: a TCP transfer whose payload the SAs of
/// `site` with `peer` carried (their counters grow by at least that much), with ESP and no
/// clear-text VXLAN on the underlay meanwhile.
fn judge_transfer(t: &PaperLab, cap: &Capture, from: &Vnf, to: &Vnf, site: &str, peer: &str) {
    let esp0 = cap.count("esp or udp port 4500");
    let before = t.lab.sa_bytes(site, Some(peer)).unwrap();
    t.lab.tcp_transfer(to, from, "2M").unwrap();
    let grew = t.lab.sa_bytes(site, Some(peer)).unwrap() - before;
    // kernel-libipsec's counters fall short of the payload by 15-35 % (see README's
    // figures); the capture below proves nothing went around the SA.
    assert!(
        grew >= 1024 * 1024,
        "{site}'s SAs with {peer} carried {grew} bytes of a 2 MiB transfer"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cap.count("esp or udp port 4500") > esp0,
        "no ESP on the underlay during the transfer"
    );
    assert_eq!(
        cap.clear_text_vxlan(),
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
    for s in ["a", "b", "c"] {
        t.lab.start_daemon(s).unwrap();
    }
    let mtu = t.lab.status_json("a").unwrap()["access_mtu"]
        .as_u64()
        .unwrap() as u32;
    t.lab.set_vnf_mtu(&t.vnfs(), mtu).unwrap();
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "not converged: {failed:?}");
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
}
