//! The EVPN control plane at scale: N sites × V VLANs through one route reflector, on real
//! zebra and bgpd, each site's control namespace and FRR made by the product's own code
//! (`l2s_lab::frr_lab`). N−1 sites start together; then the last one joins alone.
//!
//! Prints: the time to make each control namespace (3 devices per VNI), from FRR's start to
//! every flood list converged (zebra's entries on the shadow devices: (N−1) remote VTEPs × V
//! per site), from the last site's start to its own lists and everyone's converged, the RSS
//! of every zebra and bgpd (medians, and the reflector's), and what one read of bgpd's routes
//! costs the daemon (type-3 and type-2 routes; it reads them while they change).
//!
//! Usage: `l2s-evpn-scale [--sites 16] [--vlans 4094]`. Needs root and Debian's `frr`.
//! Control plane only: no OVS, charon or daemon (the lab tests prove those on top).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use l2s_lab::frr_lab::{FrrLab, FrrSite};
use l2s_lab::{arg, netns, scale_vlan, sh};

/// Flood entries zebra installed in a site's control namespace (all its shadow devices).
fn flood_entries(s: &FrrSite) -> usize {
    sh(netns(&s.ctl.name, "bridge").args(["fdb", "show"]))
        .map(|o| {
            o.lines()
                .filter(|l| l.starts_with("00:00:00:00:00:00 ") && l.contains(" dst "))
                .count()
        })
        .unwrap_or(0)
}

fn rss_mib(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(t.elapsed())
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-evpn-scale [--sites 16] [--vlans 4094]",
        &["--sites", "--vlans"],
    );
    let sites: usize = arg("--sites", 16);
    let vlans: usize = arg("--vlans", 4094);
    if !(2..=200).contains(&sites) {
        bail!("--sites must be 2..=200");
    }
    let vnis: BTreeSet<u32> = (0..vlans).map(|i| scale_vlan(i) as u32).collect();
    let mut lab = FrrLab::new(Duration::from_secs(9))?;
    let rr = lab.reflector("r", "192.0.3.254", "192.0.0.0/16")?;
    let addr = |i: usize| format!("192.0.2.{}", i + 1);
    let mut made = vec![];
    let mut list = vec![];
    let t0 = Instant::now();
    for i in 0..sites - 1 {
        let t = Instant::now();
        let (s, n) = lab.site(&format!("s{i}"), &addr(i), &vnis, &["192.0.3.254"])?;
        made.push(t.elapsed().as_secs_f64());
        if n != vlans {
            bail!("site {i}: {n} shadow VNIs made of {vlans}");
        }
        list.push(s);
    }
    let started = t0.elapsed();
    let want = |n: usize| (n - 1) * vlans;
    let converged = wait("N−1 sites converged", Duration::from_secs(900), || {
        list.iter().all(|s| flood_entries(s) == want(sites - 1))
    })?;
    println!(
        "{} sites × {vlans} VLANs through one reflector: control namespaces made in {:.1} s median each ({} devices each), all started in {:.1} s; every flood list converged {:.1} s after the last start",
        sites - 1,
        median(made.clone()),
        l2s_vnf::evpn::shadow::device_count(vlans),
        started.as_secs_f64(),
        converged.as_secs_f64()
    );
    // The last site joins alone.
    let t1 = Instant::now();
    let (last, _) = lab.site(
        &format!("s{}", sites - 1),
        &addr(sites - 1),
        &vnis,
        &["192.0.3.254"],
    )?;
    let made_last = t1.elapsed();
    let own = wait(
        "the new site's own flood lists",
        Duration::from_secs(900),
        || flood_entries(&last) == want(sites),
    )?;
    list.push(last);
    let everyone = wait(
        "every flood list with the new site",
        Duration::from_secs(900),
        || list.iter().all(|s| flood_entries(s) == want(sites)),
    )?;
    println!(
        "site {} joined alone: control namespace made in {:.1} s; its own {} flood entries {:.1} s after, every site's {:.1} s after its start (goal: ≤ 30 s)",
        sites,
        made_last.as_secs_f64(),
        want(sites),
        (made_last + own).as_secs_f64(),
        (made_last + own + everyone).as_secs_f64()
    );
    let zebra: Vec<f64> = list
        .iter()
        .map(|s| rss_mib(lab.frr[s.frr].pids().1))
        .collect();
    let bgpd: Vec<f64> = list
        .iter()
        .map(|s| rss_mib(lab.frr[s.frr].pids().0))
        .collect();
    println!(
        "RSS: zebra {:.0} MiB median (max {:.0}), site bgpd {:.0} MiB median (max {:.0}), reflector bgpd {:.0} MiB",
        median(zebra.clone()),
        zebra.iter().copied().fold(0.0, f64::max),
        median(bgpd.clone()),
        bgpd.iter().copied().fold(0.0, f64::max),
        rss_mib(lab.frr[rr].pids().0)
    );
    // What the daemon's one-second read of bgpd's routes costs at this scale.
    let s = &list[0];
    let mut reads = vec![];
    let mut vteps = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let d = lab.discovered(s);
        reads.push(t.elapsed().as_secs_f64());
        vteps = d.vteps.len();
    }
    println!(
        "one read of bgpd's type-3 routes (vtysh JSON, parsed): {:.2} s median for {} VTEPs × {vlans} VNIs",
        median(reads),
        vteps
    );
    Ok(())
}
