//! The 3-site demo: the paper's validation scenario brought up on this machine.
//!
//! Sites A, B and C are network namespaces on a shared underlay (192.0.2.0/24), each with its
//! own Open vSwitch; VNFs are namespaces on access ports. VLAN 101 spans all three sites,
//! VLAN 102 only A and B. The demo shows each site's check and plan, applies them, pings
//! across sites on both VLANs, shows status, and tears everything down.

use std::time::Duration;

use anyhow::{bail, Result};
use l2s_lab::Lab;

fn banner(s: &str) {
    println!("\n==== {s} ====");
}

fn main() -> Result<()> {
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot run the demo: {why}");
    }
    banner("building the lab: 3 sites, real ovsdb-server/ovs-vswitchd per site");
    let mut lab = Lab::new(3)?;
    let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24")?;
    let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24")?;
    let c101 = lab.add_vnf("c", "acc101", "10.101.0.3/24")?;
    let a102 = lab.add_vnf("a", "acc102", "10.102.0.1/24")?;
    let b102 = lab.add_vnf("b", "acc102", "10.102.0.2/24")?;
    lab.write_config(
        "a",
        &lab.config(
            "a",
            &["b", "c"],
            &[(101, &["acc101"], None), (102, &["acc102"], Some(&["b"]))],
        ),
    )?;
    lab.write_config(
        "b",
        &lab.config(
            "b",
            &["a", "c"],
            &[(101, &["acc101"], None), (102, &["acc102"], Some(&["a"]))],
        ),
    )?;
    lab.write_config(
        "c",
        &lab.config("c", &["a", "b"], &[(101, &["acc101"], None)]),
    )?;
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
    lab.set_vnf_mtu(&[&a101, &b101, &c101, &a102, &b102], 1450)?;

    banner("VNFs pinging across sites");
    let mut ok = true;
    for (from, to, what) in [
        (&a101, &b101, "VLAN 101  A -> B"),
        (&a101, &c101, "VLAN 101  A -> C"),
        (&b101, &c101, "VLAN 101  B -> C"),
        (&a102, &b102, "VLAN 102  A -> B"),
    ] {
        let good = lab.ping_eventually(from, &to.ip, Duration::from_secs(20));
        println!(
            "{what}  {} -> {}: {}",
            from.ip,
            to.ip,
            if good { "ok" } else { "FAILED" }
        );
        ok &= good;
    }
    let isolated = !lab.ping(&a102, &c101.ip, 2);
    println!(
        "VLAN 102 -> VLAN 101 (must fail): {}",
        if isolated { "isolated" } else { "LEAKED" }
    );
    ok &= isolated;

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
    drop(lab);
    if !ok {
        bail!("the demo found a problem (see above)");
    }
    println!("\ndemo finished: all good, lab removed");
    Ok(())
}
