//! The 3-site demo: the paper's validation scenario brought up on this machine as deployed —
//! IPsec on, the sites authenticated by X.509 certificates from a federation CA, each site run
//! by its daemon (`l2s-vnf run`).
//!
//! Sites A, B and C are network namespaces on a shared underlay (192.0.2.0/24), each with its
//! own Open vSwitch and its own charon (libipsec: this kernel has no ESP); VNFs are namespaces
//! on access ports. VLAN 101 spans all three sites, VLAN 102 only A and B. The demo starts the
//! daemons, waits for the SAs, carries ping and a TCP transfer across sites on both VLANs while
//! capturing the underlay (only ESP may cross it), shows the MAC table, path health and
//! status, and tears everything down.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use l2s_lab::{Capture, PaperLab};

fn banner(s: &str) {
    println!("\n==== {s} ====");
}

fn main() -> Result<()> {
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot run the demo: {why}");
    }
    let started = Instant::now();
    banner("building the lab: 3 sites, real ovsdb-server/ovs-vswitchd and charon per site");
    let mut t = PaperLab::new()?;
    let ca = t.secure_with_certificates()?;
    println!(
        "the sites authenticate with X.509 certificates issued by a throw-away federation CA ({}, made with strongSwan's pki)",
        ca.cert.display()
    );
    println!(
        "site A config (its private key stays in its 0600 file):\n{}",
        std::fs::read_to_string(t.lab.site("a").dir.join("site.toml"))?
    );
    banner("l2s-vnf check (site A)");
    print!("{}", t.lab.l2s_ok("a", &["check"])?);

    banner("l2s-vnf run at every site (the daemon, as systemd runs it)");
    for s in ["a", "b", "c"] {
        let pid = t.lab.start_daemon(s)?;
        println!("site {}: daemon pid {pid}", s.to_uppercase());
    }
    let lab = &t.lab;
    let up_since = Instant::now();
    // A and B share both VLANs, C only 101: every site has two peers.
    while ["a", "b", "c"].iter().any(|s| lab.sas_up(s) < 2) {
        if up_since.elapsed() > Duration::from_secs(60) {
            bail!("SAs not up within 60 s:\n{}", lab.l2s_ok("a", &["status"])?);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "all 6 SAs (3 site pairs, both ends) established {:.1} s after the daemons started",
        up_since.elapsed().as_secs_f64()
    );
    // VNFs learn the access MTU as DHCP on the access network would tell them.
    let mtu = lab.status_json("a")?["access_mtu"]
        .as_u64()
        .context("no access MTU in status")? as u32;
    lab.set_vnf_mtu(&t.vnfs(), mtu)?;

    banner("VNFs across sites, with the underlay captured");
    let mut cap = Capture::start(lab, "demo")?;
    let failed = t.ping_mesh();
    for f in &failed {
        println!("FAILED: {f}");
    }
    if failed.is_empty() {
        println!("ping: VLAN 101 A<->B, A<->C, B<->C and VLAN 102 A<->B: all ok");
    }
    let full = lab.ping_df(&t.a101, &t.b101.ip, mtu - 28);
    println!(
        "don't-fragment ping of the full access MTU ({mtu}): {}",
        if full { "passes" } else { "FAILED" }
    );
    let tcp = lab.tcp_transfer(&t.b101, &t.a101, "8M");
    match &tcp {
        Ok(bps) => println!("TCP: 8 MB VLAN 101 A -> B at {:.0} Mbit/s", bps / 1e6),
        Err(e) => println!("FAILED: TCP VLAN 101 A -> B: {e:#}"),
    }
    let isolated = !lab.ping(&t.a102, &t.c101.ip, 2);
    println!(
        "VLAN 102 -> VLAN 101 (must fail): {}",
        if isolated { "isolated" } else { "LEAKED" }
    );
    cap.stop();
    let esp = cap.count("esp or udp port 4500");
    let clear = cap.clear_text_vxlan();
    // Anything else in IP is a leak, but for the underlay's own IGMP membership reports (an
    // interface of the lab's underlay, not a VNF: VNFs are in 10.0.0.0/8).
    let others = cap.packets(
        "ip and not (esp or udp port 4500 or udp port 500) and not (igmp and not net 10.0.0.0/8)",
    );
    let other = others.len();
    println!(
        "underlay capture: {esp} ESP packets (in UDP 4500: libipsec), {clear} clear-text VXLAN, {other} other IP packets"
    );
    for p in &others {
        println!("  other: {p}");
    }

    banner("l2s-vnf macs (site A): which MAC is behind which port or site");
    print!("{}", lab.l2s_ok("a", &["macs"])?);
    banner("l2s-vnf probe (site A): path health inside the SAs");
    print!("{}", lab.l2s_ok("a", &["probe", "--secs", "2"])?);
    for s in ["a", "b", "c"] {
        banner(&format!("l2s-vnf status (site {})", s.to_uppercase()));
        print!("{}", lab.l2s_ok(s, &["status"])?);
    }
    let ok = failed.is_empty()
        && full
        && tcp.is_ok()
        && isolated
        && esp > 100
        && clear == 0
        && other == 0;

    banner("tearing down (daemons stopped, l2s-vnf down, then the lab)");
    for s in ["a", "b", "c"] {
        t.lab.stop_daemon(s, libc::SIGTERM)?;
        print!("{}", t.lab.l2s_ok(s, &["down"])?);
    }
    drop(t);
    if !ok {
        bail!("the demo found a problem (see above)");
    }
    println!(
        "\ndemo finished in {:.0} s: all good, lab removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
