//! Soak benchmark (not in CI): the 3-site IPsec lab run by its daemons for a long time, with
//! traffic throughout, one fault every few minutes (each from the faults-under-load list, in
//! turn) and a reload every minute (VLAN 103 added, then removed again). Reports pings lost per
//! fault, recovery times, and each daemon's RSS and open fds over time: neither may grow.
//!
//! Usage: `l2s-soak [--minutes 60] [--fault-every 5] [--reload-every 1]`. Needs root, OVS,
//! strongSwan; cleans up after itself.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use l2s_lab::{arg, Fault, Lab, PaperLab, PingStream};

/// (RSS in KiB, open fds) of a process.
fn footprint(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// Add (`on`) or remove VLAN 103 between sites A and B, and reload both daemons.
fn toggle_vlan(lab: &Lab, on: bool) -> Result<()> {
    for (site, peer) in [("a", "site-b"), ("b", "site-a")] {
        let p = lab.site(site).dir.join("site.toml");
        let cfg = std::fs::read_to_string(&p)?;
        let block = format!("\n[[vlan]]\nid = 103\nports = []\npeers = [\"{peer}\"]\n");
        let cfg = if on {
            format!("{cfg}{block}")
        } else {
            cfg.replace(&block, "")
        };
        std::fs::write(&p, cfg)?;
        lab.l2s_ok(site, &["reload"])
            .with_context(|| format!("reload at site {site}"))?;
    }
    Ok(())
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-soak [--minutes 60] [--fault-every 5] [--reload-every 1]",
        &["--fault-every", "--minutes", "--reload-every"],
    );
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot soak: {why}");
    }
    let minutes = arg("--minutes", 60);
    let fault_every = Duration::from_secs(arg("--fault-every", 5) * 60);
    let reload_every = Duration::from_secs(arg("--reload-every", 1) * 60);

    let mut t = PaperLab::new()?;
    t.secure("dpd_delay = \"2s\"\n")?;
    let mut pids = vec![];
    for s in ["a", "b", "c"] {
        pids.push((s, t.lab.start_daemon(s)?));
    }
    let mtu = t.lab.status_json("a")?["access_mtu"]
        .as_u64()
        .context("no access MTU")? as u32;
    t.lab.set_vnf_mtu(&t.vnfs(), mtu)?;
    if !t.ping_mesh().is_empty() {
        bail!("the lab does not converge");
    }
    println!("soak: {minutes} min, a fault every {fault_every:?}, a reload every {reload_every:?}");
    println!("min | site | RSS KiB | fds | reconciles | repairs");

    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let (mut next_fault, mut next_reload, mut next_sample) =
        (start + fault_every, start + reload_every, start);
    let (mut faults, mut reloads, mut vlan_on) = (0usize, 0u32, false);
    let mut samples: Vec<(&str, u64, usize)> = vec![];
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_sample {
            next_sample += Duration::from_secs(60);
            for (site, _) in &pids {
                let pid = t.lab.daemon_pid(site).context("a daemon is gone")?;
                let (rss, fds) = footprint(pid).context("no /proc entry")?;
                let st = t.lab.status_json(site)?;
                println!(
                    "{:>3} | {site} | {rss} | {fds} | {} | {}",
                    start.elapsed().as_secs() / 60,
                    st["daemon"]["reconciles"],
                    st["daemon"]["repairs_total"]
                );
                samples.push((site, rss, fds));
            }
        }
        if now >= next_reload {
            next_reload += reload_every;
            vlan_on = !vlan_on;
            toggle_vlan(&t.lab, vlan_on)?;
            reloads += 1;
        }
        if now >= next_fault {
            next_fault += fault_every;
            let f = Fault::ALL[faults % Fault::ALL.len()];
            faults += 1;
            let (hit, _) = t.pairs_for(f);
            let (from, to) = (hit.0.clone(), hit.1.clone());
            let stream = PingStream::start(&from, &to, (f.secs() + 3) * 10, 100)?;
            f.inflict(&mut t.lab)?;
            let back = t
                .lab
                .service_within(&from, &to, Duration::from_secs(30))
                .with_context(|| format!("after {}", f.describe()))?;
            let (sent, got) = stream.finish()?;
            println!(
                "fault {faults}: {}: service back {:.2} s after it cleared, pings lost {}/{sent}",
                f.describe(),
                back.as_secs_f64(),
                sent - got
            );
            if matches!(f, Fault::SiteRebooted(_)) {
                // Its daemon is a new process: footprints restart there.
                samples.retain(|(s, _, _)| *s != "c");
            }
        }
        // Traffic between events: a ping stream across both VLANs.
        let a = PingStream::start(&t.a101, &t.c101, 20, 100)?;
        let b = PingStream::start(&t.a102, &t.b102, 20, 100)?;
        let (sa, ga) = a.finish()?;
        let (sb, gb) = b.finish()?;
        if ga + gb + 2 < sa + sb {
            println!(
                "{:>3} min: background pings lost {}/{}",
                start.elapsed().as_secs() / 60,
                sa + sb - ga - gb,
                sa + sb
            );
        }
    }
    println!("\nsoak done: {faults} faults, {reloads} reloads");
    for (site, _) in &pids {
        let mine: Vec<_> = samples.iter().filter(|(s, _, _)| s == site).collect();
        if let (Some(first), Some(last)) = (mine.get(1).or(mine.first()), mine.last()) {
            println!(
                "site {site}: RSS {} -> {} KiB ({:+}), fds {} -> {}",
                first.1,
                last.1,
                last.1 as i64 - first.1 as i64,
                first.2,
                last.2
            );
        }
    }
    for s in ["a", "b", "c"] {
        t.lab.stop_daemon(s, libc::SIGTERM)?;
        t.lab.l2s_ok(s, &["down"])?;
    }
    Ok(())
}
