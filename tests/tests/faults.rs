//! Faults under load on the IPsec lab, each alone: traffic runs through every fault, the
//! underlay is captured throughout and every VNF listens for the other VLAN's addresses. After
//! each fault clears, the service (ping and a TCP transfer, as a user would judge it) must be
//! back on every pair before the next fault; the daemons must report it; and nothing may ever
//! cross the underlay in clear text or arrive on the wrong VLAN.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::time::Duration;

use l2s_lab::{require_lab, within, Capture, Fault, PaperLab, PingStream};

/// The fault has cleared; the service must be back within this (DPD at 2 s, its retransmits
/// and a new IKE_SA where the peer must notice).
const RECOVERY_LIMIT: Duration = Duration::from_secs(20);
/// Ping interval of the traffic that runs through each fault.
const PING_MS: u32 = 50;

/// One fault's record for the report.
struct Outcome {
    fault: Fault,
    recovery: Duration,
    lost: u32,
    sent: u32,
    bystander_lost: u32,
}

/// Inflict `fault` with pings on the pair it cuts off and on a pair it must not touch, for its
/// duration and a little more; then the service on the hit pair must come back within
/// [`RECOVERY_LIMIT`], on every pair after that, and every site must report all its VLANs up
/// again — before the next fault.
fn under_load(t: &mut PaperLab, fault: Fault) -> Outcome {
    let what = fault.describe();
    let count = (fault.secs() + 3) * 1000 / PING_MS;
    let (hit, bystander) = t.pairs_for(fault);
    let (hit, bystander) = (
        (hit.0.clone(), hit.1.clone()),
        bystander.map(|(a, b)| (a.clone(), b.clone())),
    );
    let stream = PingStream::start(&hit.0, &hit.1, count, PING_MS).unwrap();
    let side = bystander
        .as_ref()
        .map(|(f, to)| PingStream::start(f, to, count, PING_MS).unwrap());
    fault
        .inflict(&mut t.lab)
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let recovery = t
        .lab
        .service_within(&hit.0, &hit.1, RECOVERY_LIMIT)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let (sent, got) = stream.finish().unwrap();
    let bystander_lost = side.map_or(0, |s| {
        let (sent, got) = s.finish().unwrap();
        sent - got
    });
    let failed = t.ping_mesh();
    assert!(failed.is_empty(), "{what}: pairs still failing {failed:?}");
    for (site, vlans) in [("a", &[101u16, 102][..]), ("b", &[101, 102]), ("c", &[101])] {
        for &v in vlans {
            within(
                Duration::from_secs(10),
                &format!("{what}: site {site} reports vlan {v} up"),
                || t.lab.vlan_up(site, v),
            );
        }
    }
    eprintln!(
        "{what}: service back {:.2} s after the fault cleared; pings lost {}/{sent}, by a bystander pair {bystander_lost}",
        recovery.as_secs_f64(),
        sent - got
    );
    Outcome {
        fault,
        recovery,
        lost: sent - got,
        sent,
        bystander_lost,
    }
}

#[test]
fn faults_under_load_leave_a_working_service_and_never_leak() {
    require_lab!();
    let mut t = PaperLab::new().unwrap();
    t.secure("dpd_delay = \"2s\"\n").unwrap();
    t.serve().unwrap();

    let mut underlay = Capture::start(&t.lab, "faults").unwrap();
    // Every VNF listens for the other VLAN's addresses (IP and ARP), and for its own: a
    // listener that hears its own VLAN is one that would hear the other.
    let mut leaks: Vec<(String, String, Capture)> = [
        (&t.a101, "10.102.0.0/16", "10.101.0.0/16"),
        (&t.b101, "10.102.0.0/16", "10.101.0.0/16"),
        (&t.c101, "10.102.0.0/16", "10.101.0.0/16"),
        (&t.a102, "10.101.0.0/16", "10.102.0.0/16"),
        (&t.b102, "10.101.0.0/16", "10.102.0.0/16"),
    ]
    .into_iter()
    .map(|(v, other, own)| {
        let name = format!("leak-{}", v.ip);
        (
            other.to_string(),
            own.to_string(),
            Capture::on(&t.lab, &v.ns, "eth0", &name).unwrap(),
        )
    })
    .collect();

    // Judged after each fault, so a leak is pinned to the fault that caused it.
    let wrong_vlan = |leaks: &[(String, String, Capture)]| -> Vec<String> {
        leaks
            .iter()
            .filter_map(|(other, _, cap)| {
                let n = cap.count(&format!("net {other} or arp net {other}"));
                (n > 0).then(|| format!("{}: {n}", cap.file.display()))
            })
            .collect()
    };
    let own_vlan = |leaks: &[(String, String, Capture)]| -> Vec<usize> {
        leaks
            .iter()
            .map(|(_, own, cap)| cap.count(&format!("net {own} or arp net {own}")))
            .collect()
    };
    let mut report = vec![];
    let esp = |cap: &Capture| cap.count("esp or udp port 4500");
    for f in Fault::ALL {
        let heard = own_vlan(&leaks);
        let esp_before = esp(&underlay);
        report.push(under_load(&mut t, f));
        // The service on both VLANs after the fault, which every listener must hear.
        let failed = t.ping_mesh();
        assert!(
            failed.is_empty(),
            "{}: after the fault: {failed:?}",
            f.describe()
        );
        for (i, n) in own_vlan(&leaks).into_iter().enumerate() {
            assert!(
                n > heard[i],
                "{}: control: {} heard nothing of its own VLAN",
                f.describe(),
                leaks[i].2.file.display()
            );
        }
        assert_eq!(
            underlay.clear_text_vxlan(),
            0,
            "{}: clear-text VXLAN on the underlay",
            f.describe()
        );
        // The capture saw this fault's traffic, as ESP (a dead capture sees nothing).
        assert!(
            esp(&underlay) > esp_before,
            "{}: no ESP on the underlay while the service was judged",
            f.describe()
        );
        let wrong = wrong_vlan(&leaks);
        assert!(
            wrong.is_empty(),
            "{}: frames on the wrong VLAN: {wrong:?}",
            f.describe()
        );
    }

    underlay.stop();
    let clear = underlay.clear_text_vxlan();
    let esp = esp(&underlay);
    for (_, _, cap) in &mut leaks {
        cap.stop();
    }
    let wrong = wrong_vlan(&leaks);
    eprintln!("\nfault | recovery after clear | pings lost (sent) | bystander pings lost");
    for o in &report {
        eprintln!(
            "{} | {:.2} s | {} ({}) | {}",
            o.fault.describe(),
            o.recovery.as_secs_f64(),
            o.lost,
            o.sent,
            o.bystander_lost
        );
    }
    eprintln!("underlay: {esp} ESP packets, {clear} clear-text VXLAN");
    assert_eq!(
        clear, 0,
        "clear-text VXLAN on the underlay during the faults"
    );
    assert!(esp > 1000, "hardly any ESP: the capture saw {esp}");
    assert!(wrong.is_empty(), "frames on the wrong VLAN: {wrong:?}");
    for o in &report {
        assert!(
            o.bystander_lost <= 3,
            "{}: a pair it does not involve lost {} pings",
            o.fault.describe(),
            o.bystander_lost
        );
    }
}
