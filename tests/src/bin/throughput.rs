//! Throughput and SA set-up benchmark (the IPsec issue's figures), all in one lab run.
//!
//! - iperf3 VNF↔VNF (TCP, `--secs` each, `--runs` runs, medians): the underlay alone, VXLAN
//!   only, VXLAN + IPsec at the computed access MTU, VXLAN + IPsec at 1450 (fragmenting inside
//!   the appliance, as the paper's first configuration);
//! - the time from `apply` at a site with 8 peers to all 8 SAs established.
//!
//! Usage: `l2s-throughput [--runs 3] [--secs 5] [--sa-reps 3]`. Needs root, OVS, strongSwan.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use l2s_lab::{arg, netns, sh, Lab, VlanSpec};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn set_mtu(lab: &Lab, site: &str, dev: &str, mtu: u32) -> Result<()> {
    sh(netns(&lab.site(site).ns, "ip").args(["link", "set", dev, "mtu", &mtu.to_string()]))?;
    Ok(())
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-throughput [--runs 3] [--secs 5] [--sa-reps 3]",
        &["--runs", "--sa-reps", "--secs"],
    );
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot benchmark: {why}");
    }
    let runs = arg("--runs", 3).max(1);
    let secs = arg("--secs", 5).max(1);
    let sa_reps = arg("--sa-reps", 3).max(1);

    // Two sites, one VNF each on VLAN 101.
    let mut lab = Lab::new(2)?;
    let a = lab.add_vnf("a", "acc101", "10.101.0.1/24")?;
    let b = lab.add_vnf("b", "acc101", "10.101.0.2/24")?;
    let vlans: &[VlanSpec] = &[(101, &["acc101"], None)];
    let clear_a = lab.config("a", &["b"], vlans);
    let clear_b = lab.config("b", &["a"], vlans);
    let (a_ns, b_ns) = (lab.site("a").ns.clone(), lab.site("b").ns.clone());
    let measure = |lab: &mut Lab,
                   what: &str,
                   server_ns: &str,
                   server_ip: &str,
                   client_ns: &str|
     -> Result<f64> {
        let ipsec = what.contains("IPsec");
        let sa0 = if ipsec { lab.sa_bytes("a", None)? } else { 0 };
        let mut v = vec![];
        for _ in 0..runs {
            v.push(lab.iperf(server_ns, server_ip, client_ns, secs)? / 1e6);
        }
        if ipsec {
            // What iperf3 moved, at the least; the SAs carry it plus every header.
            let moved = v.iter().sum::<f64>() * 1e6 / 8.0 * f64::from(secs);
            let grown = lab.sa_bytes("a", None)? - sa0;
            if (grown as f64) < moved {
                bail!("{what}: the SAs carried {grown} bytes of the {moved:.0} measured: not all of it was encrypted");
            }
        }
        let m = median(v.clone());
        println!(
            "{what:<40} median {m:>8.0} Mbit/s   runs {:?}",
            v.iter().map(|x| x.round()).collect::<Vec<_>>()
        );
        Ok(m)
    };

    let underlay = measure(
        &mut lab,
        "underlay alone (site A -> site B)",
        &b_ns,
        "192.0.2.2",
        &a_ns,
    )?;

    lab.write_config("a", &clear_a)?;
    lab.write_config("b", &clear_b)?;
    for s in ["a", "b"] {
        lab.l2s_ok(s, &["apply"])?;
    }
    lab.set_vnf_mtu(&[&a, &b], 1450)?;
    if !lab.ping_eventually(&a, &b.ip, Duration::from_secs(20)) {
        bail!("VXLAN-only lab does not ping");
    }
    let vxlan = measure(&mut lab, "VXLAN only (MTU 1450)", &b.ns, &b.ip, &a.ns)?;

    let psk = lab.psk_file("psk", "throughput-benchmark-secret\n")?;
    for s in ["a", "b"] {
        lab.start_charon(s)?;
    }
    lab.write_config("a", &lab.secure("a", &clear_a, &psk, ""))?;
    lab.write_config("b", &lab.secure("b", &clear_b, &psk, ""))?;
    for s in ["b", "a"] {
        lab.l2s_ok(s, &["apply"])?;
    }
    let t = Instant::now();
    while lab.sas_up("a") < 1 && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let plan = lab.l2s_ok("a", &["plan"])?;
    let mtu: u32 = plan
        .split("access MTU ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.trim().parse().ok())
        .context("access MTU not in plan output")?;
    lab.set_vnf_mtu(&[&a, &b], mtu)?;
    if !lab.ping_eventually(&a, &b.ip, Duration::from_secs(20)) {
        bail!("IPsec lab does not ping");
    }
    let ipsec = measure(
        &mut lab,
        &format!("VXLAN + IPsec (libipsec), MTU {mtu}"),
        &b.ns,
        &b.ip,
        &a.ns,
    )?;

    // The paper's first configuration: 1450 inside, so VXLAN packets exceed the TUN MTU and
    // are fragmented inside the appliance before encryption.
    for s in ["a", "b"] {
        set_mtu(&lab, s, "acc101", 1450)?;
        set_mtu(&lab, s, "l2s-vx101", 1450)?;
    }
    lab.set_vnf_mtu(&[&a, &b], 1450)?;
    let ipsec1450 = measure(
        &mut lab,
        "VXLAN + IPsec (libipsec), MTU 1450",
        &b.ns,
        &b.ip,
        &a.ns,
    )?;

    // VNFs that keep 1500 (`outer_fragmentation`): every full-size frame is split after
    // encapsulation, inside the tunnel.
    for (s, clear) in [("a", &clear_a), ("b", &clear_b)] {
        let cfg = lab.secure(s, clear, &psk, "").replace(
            "[daemon]\n",
            "[mtu]\naccess = 1500\nouter_fragmentation = true\n\n[daemon]\n",
        );
        lab.write_config(s, &cfg)?;
        lab.l2s_ok(s, &["apply"])?;
    }
    lab.set_vnf_mtu(&[&a, &b], 1500)?;
    if !lab.ping_eventually(&a, &b.ip, Duration::from_secs(20)) {
        bail!("the outer_fragmentation lab does not ping");
    }
    let ipsec1500 = measure(
        &mut lab,
        "VXLAN + IPsec, MTU 1500 outer_fragmentation",
        &b.ns,
        &b.ip,
        &a.ns,
    )?;
    println!();
    println!("ratios (this run): IPsec@{mtu}/IPsec@1450 = {:.3}, IPsec@{mtu}/VXLAN-only = {:.3}, VXLAN/underlay = {:.3}", ipsec / ipsec1450, ipsec / vxlan, vxlan / underlay);
    println!(
        "outer_fragmentation costs: IPsec@1500/IPsec@{mtu} = {:.3}",
        ipsec1500 / ipsec
    );
    println!("paper (Vidal et al. 2021): VXLAN 1130 Mbit/s; IPsec@1450 556; IPsec@1400 616 (+10.7%); 2 vCPUs 902");
    drop(lab);

    // SA set-up with 8 peers: site A (lowest address, the initiator) and sites B..I.
    let mut lab = Lab::new(9)?;
    let psk = lab.psk_file("psk", "sa-setup-benchmark-secret\n")?;
    let names: Vec<String> = (0..9)
        .map(|i| ((b'a' + i as u8) as char).to_string())
        .collect();
    for n in &names {
        lab.start_charon(n)?;
    }
    for n in &names {
        let peers: Vec<&str> = names
            .iter()
            .filter(|p| *p != n)
            .map(String::as_str)
            .collect();
        let peers: Vec<&str> = if n == "a" { peers } else { vec!["a"] };
        let cfg = lab.secure(n, &lab.config(n, &peers, &[(101, &[], None)]), &psk, "");
        lab.write_config(n, &cfg)?;
    }
    for n in names.iter().skip(1) {
        lab.l2s_ok(n, &["apply"])?;
    }
    let mut times = vec![];
    for _ in 0..sa_reps {
        let t = Instant::now();
        lab.l2s_ok("a", &["apply"])?;
        while lab.sas_up("a") < 8 {
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "8 SAs not up within 60 s:\n{}",
                    lab.l2s_ok("a", &["status"])?
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
        lab.l2s_ok("a", &["down"])?;
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "apply -> all 8 SAs established: median {:.0} ms, runs {:?} ms",
        median(times.clone()),
        times.iter().map(|x| x.round()).collect::<Vec<_>>()
    );
    Ok(())
}
