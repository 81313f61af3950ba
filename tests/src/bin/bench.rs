//! Convergence benchmark against a real ovsdb-server/ovs-vswitchd in a namespace.
//!
//! For V VLANs × P peers it measures, in one run:
//! - `l2s-vnf apply` from empty (wall time and peak RSS of the apply process);
//! - the same objects created the way the paper's prototype did: one `ip`/`bridge`/`ovs-vsctl`
//!   command per object;
//! - a one-VLAN delta on top of the largest case.
//!
//! Usage: `l2s-bench [--vlans 1,10,100,500] [--peers 1,4,8] [--repeat 3]`. Prints a table of
//! medians. Needs root and OVS (see tests/deps.sh).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use l2s_lab::{arg_list, l2s_bin, netns, sh, Lab};

fn config(lab: &Lab, vlans: usize, peers: usize) -> String {
    lab.scale_config(vlans, peers, "")
}

/// Run `l2s-vnf -c cfg CMD` in the site; returns (wall time, peak RSS in KiB).
fn l2s_timed(lab: &Lab, cmd: &str) -> Result<(Duration, i64)> {
    let bin = l2s_bin()?;
    let cfg = lab.site("a").dir.join("site.toml");
    let t = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.site("a").ns])
        .arg(&bin)
        .arg("-c")
        .arg(&cfg)
        .arg(cmd)
        .env(
            "L2S_VNF_LOG",
            std::env::var("L2S_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as i32;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    #[allow(unsafe_code)]
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid pointers.
    #[allow(unsafe_code)]
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = t.elapsed();
    std::mem::forget(child);
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("l2s-vnf {cmd} failed (status {status})");
    }
    Ok((elapsed, usage.ru_maxrss))
}

/// The paper's way: one command per object.
fn script(lab: &Lab, vlans: usize, peers: usize) -> Result<Duration> {
    let ns = &lab.site("a").ns;
    let db = format!("--db=unix:{}", lab.site("a").ovsdb_sock.display());
    let t = Instant::now();
    sh(netns(ns, "ovs-vsctl").args([
        &db,
        "add-br",
        "l2s0",
        "--",
        "set",
        "bridge",
        "l2s0",
        "datapath_type=netdev",
    ]))?;
    for v in 0..vlans {
        let id = (100 + v).to_string();
        let dev = format!("vx{id}");
        sh(netns(ns, "ip").args([
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &id,
            "dstport",
            "4789",
            "local",
            "192.0.2.1",
            "dev",
            "eth1",
        ]))?;
        sh(netns(ns, "ip").args(["link", "set", &dev, "mtu", "1450"]))?;
        for p in 0..peers {
            sh(netns(ns, "bridge").args([
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &dev,
                "dst",
                &format!("192.0.2.{}", 10 + p),
            ]))?;
        }
        sh(netns(ns, "ovs-vsctl").args([
            &db,
            "add-port",
            "l2s0",
            &dev,
            "--",
            "set",
            "port",
            &dev,
            &format!("tag={id}"),
        ]))?;
        sh(netns(ns, "ip").args(["link", "set", &dev, "up"]))?;
    }
    let el = t.elapsed();
    // clean up (not timed)
    sh(netns(ns, "ovs-vsctl").args([&db, "del-br", "l2s0"]))?;
    for v in 0..vlans {
        sh(netns(ns, "ip").args(["link", "del", &format!("vx{}", 100 + v)]))?;
    }
    Ok(el)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-bench [--vlans 1,10,100,500] [--peers 1,4,8] [--repeat 3]",
        &["--peers", "--repeat", "--vlans"],
    );
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot benchmark: {why}");
    }
    let vlan_counts = arg_list("--vlans", &[1, 10, 100, 500]);
    let peer_counts = arg_list("--peers", &[1, 4, 8]);
    let repeat = arg_list("--repeat", &[3])[0].max(1);
    let lab = Lab::new(1)?;
    println!(
        "{:>6} {:>6} {:>12} {:>12} {:>9} {:>10}",
        "vlans", "peers", "l2s-vnf ms", "script ms", "speed-up", "RSS MiB"
    );
    for &v in &vlan_counts {
        for &p in &peer_counts {
            lab.write_config("a", &config(&lab, v, p))?;
            let (mut ours, mut theirs, mut rss) = (vec![], vec![], 0);
            for _ in 0..repeat {
                let (d, r) = l2s_timed(&lab, "apply")?;
                ours.push(d.as_secs_f64() * 1e3);
                rss = rss.max(r);
                l2s_timed(&lab, "down")?;
                // The script is slow at scale: one run of it for the big cases.
                if theirs.is_empty() || v * p < 400 {
                    theirs.push(script(&lab, v, p)?.as_secs_f64() * 1e3);
                }
            }
            let (o, s) = (median(ours), median(theirs));
            println!(
                "{v:>6} {p:>6} {o:>12.1} {s:>12.1} {:>8.1}x {:>10.1}",
                s / o,
                rss as f64 / 1024.0
            );
        }
    }
    // One-VLAN delta on top of the largest case.
    let v = *vlan_counts.iter().max().unwrap_or(&500);
    let p = *peer_counts.iter().max().unwrap_or(&8);
    lab.write_config("a", &config(&lab, v, p))?;
    l2s_timed(&lab, "apply")?;
    let (mut add, mut noop, mut rss) = (vec![], vec![], 0);
    for _ in 0..repeat.max(5) {
        lab.write_config("a", &config(&lab, v + 1, p))?;
        let (d, r) = l2s_timed(&lab, "apply")?;
        add.push(d.as_secs_f64() * 1e3);
        rss = rss.max(r);
        let (d, _) = l2s_timed(&lab, "apply")?;
        noop.push(d.as_secs_f64() * 1e3);
        lab.write_config("a", &config(&lab, v, p))?;
        l2s_timed(&lab, "apply")?;
    }
    println!(
        "delta: +1 VLAN on {v} VLANs x {p} peers: median {:.1} ms (no-op apply {:.1} ms), peak RSS {:.1} MiB",
        median(add),
        median(noop),
        rss as f64 / 1024.0
    );
    l2s_timed(&lab, "down")?;
    Ok(())
}
