//! The 3-site demo: the paper's validation scenario brought up on this machine.
//!
//! Sites A, B and C are network namespaces on a shared underlay (192.0.2.0/24), each with its
//! own Open vSwitch; VNFs are namespaces on access ports. VLAN 101 spans all three sites,
//! VLAN 102 only A and B. The demo shows each site's check and plan, applies them, pings
//! across sites on both VLANs, shows status, and tears everything down.

use anyhow::{bail, Result};
use l2s_lab::PaperLab;

fn banner(s: &str) {
    println!("\n==== {s} ====");
}

fn main() -> Result<()> {
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot run the demo: {why}");
    }
    banner("building the lab: 3 sites, real ovsdb-server/ovs-vswitchd per site");
    let t = PaperLab::new()?;
    let lab = &t.lab;
    println!(
        "site A config:\n{}",
        std::fs::read_to_string(lab.site("a").dir.join("site.toml"))?
    );

    banner("l2s-vnf check (site A)");
    print!("{}", lab.l2s_ok("a", &["check"])?);
    for s in ["a", "b", "c"] {
        banner(&format!("l2s-vnf plan (site {})", s.to_uppercase()));
        print!("{}", lab.l2s_ok(s, &["plan"])?);
    }
    for s in ["a", "b", "c"] {
        banner(&format!("l2s-vnf apply (site {})", s.to_uppercase()));
        print!("{}", lab.l2s_ok(s, &["apply"])?);
    }
    // VNFs learn the access MTU as DHCP on the access network would tell them.
    lab.set_vnf_mtu(&t.vnfs(), 1450)?;

    banner("VNFs pinging across sites");
    let failed = t.ping_mesh();
    for f in &failed {
        println!("FAILED: {f}");
    }
    if failed.is_empty() {
        println!("VLAN 101 A<->B, A<->C, B<->C and VLAN 102 A<->B: all ok");
    }
    let isolated = !lab.ping(&t.a102, &t.c101.ip, 2);
    println!(
        "VLAN 102 -> VLAN 101 (must fail): {}",
        if isolated { "isolated" } else { "LEAKED" }
    );
    let ok = failed.is_empty() && isolated;

    for s in ["a", "b", "c"] {
        banner(&format!("l2s-vnf status (site {})", s.to_uppercase()));
        print!("{}", lab.l2s_ok(s, &["status"])?);
    }
    banner("second apply at site A (idempotent)");
    print!("{}", lab.l2s_ok("a", &["apply"])?);
    banner("tearing down (l2s-vnf down, then the lab)");
    for s in ["a", "b", "c"] {
        print!("{}", lab.l2s_ok(s, &["down"])?);
    }
    drop(t);
    if !ok {
        bail!("the demo found a problem (see above)");
    }
    println!("\ndemo finished: all good, lab removed");
    Ok(())
}
