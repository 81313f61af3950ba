//! The whole VLAN space on one appliance: `l2s-vnf apply` at N VLANs × P peers against a real
//! ovsdb-server/ovs-vswitchd in a namespace (the userspace datapath here), beside the floor —
//! the same objects made in one `ovs-vsctl` transaction and by `ip -batch` / `bridge -batch`.
//!
//! For each N it prints, in one run: apply from empty (and its ratio to the floor), the floor
//! and its parts, time per VLAN (linear growth shows as a flat column), a no-op apply, a
//! one-VLAN delta, the peak RSS of apply, and removal beside creation: an apply that takes all
//! VLANs but one away (what a reload removing them does), and `down` (each after an apply from
//! empty), with their ratio to that apply.
//!
//! Usage: `l2s-scale [--vlans 500,1000,2000,4094] [--peers 16]`. Needs root and OVS.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use l2s_lab::{arg_list, l2s_bin, netns, run, scale_vlan, sh, Lab};

/// `l2s-vnf -c <site a config> CMD`: (wall time, peak RSS in KiB).
fn l2s_timed(lab: &Lab, cmd: &str) -> Result<(Duration, i64)> {
    let t = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.site("a").ns])
        .arg(l2s_bin()?)
        .arg("-c")
        .arg(lab.site("a").dir.join("site.toml"))
        .arg(cmd)
        .env(
            "L2S_VNF_LOG",
            std::env::var("L2S_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
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

/// Run `prog` in the site with `input` on stdin (for `-batch -`).
fn batch(ns: &str, prog: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = netns(ns, prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{prog} batch failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The floor: the same devices, flood entries and ports with the fastest standard tools.
/// Returns (ip -batch, bridge -batch, ovs-vsctl) times.
fn floor(lab: &Lab, vlans: usize, peers: usize) -> Result<(Duration, Duration, Duration)> {
    let ns = &lab.site("a").ns;
    let db = format!("--db=unix:{}", lab.site("a").ovsdb_sock.display());
    let (mut links, mut fdb) = (String::new(), String::new());
    let mut vsctl: Vec<String> = vec![
        db.clone(),
        "--".into(),
        "add-br".into(),
        "l2s0".into(),
        "--".into(),
        "set".into(),
        "bridge".into(),
        "l2s0".into(),
        "datapath_type=netdev".into(),
    ];
    for v in 0..vlans {
        let id = scale_vlan(v);
        let dev = format!("fx{id}");
        let _ = writeln!(
            links,
            "link add {dev} mtu 1450 type vxlan id {id} dstport 4789 local 192.0.2.1 dev eth1\nlink set {dev} up"
        );
        for p in 0..peers {
            let _ = writeln!(
                fdb,
                "fdb append 00:00:00:00:00:00 dev {dev} dst 192.0.2.{}",
                10 + p
            );
        }
        vsctl.extend([
            "--".into(),
            "add-port".into(),
            "l2s0".into(),
            dev.clone(),
            format!("tag={id}"),
        ]);
    }
    let t = Instant::now();
    batch(ns, "ip", &["-batch", "-"], &links)?;
    let ip_t = t.elapsed();
    let t = Instant::now();
    batch(ns, "bridge", &["-batch", "-"], &fdb)?;
    let br_t = t.elapsed();
    let t = Instant::now();
    // Without --no-wait, ovs-vsctl waits until ovs-vswitchd has applied it, as we do.
    let out = run(netns(ns, "ovs-vsctl").arg("--timeout=3600").args(&vsctl))?;
    if !out.status.success() {
        bail!(
            "ovs-vsctl with {vlans} ports failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ovs_t = t.elapsed();
    // Removal the same way: the bridge (ovs-vsctl waits for ovs-vswitchd), then the devices.
    let t = Instant::now();
    sh(netns(ns, "ovs-vsctl").args([&db, "del-br", "l2s0"]))?;
    let mut del = String::new();
    for v in 0..vlans {
        let _ = writeln!(del, "link del fx{}", scale_vlan(v));
    }
    batch(ns, "ip", &["-batch", "-"], &del)?;
    FLOOR_REMOVAL.with(|r| r.set(t.elapsed()));
    Ok((ip_t, br_t, ovs_t))
}

thread_local! {
    /// How long the last floor took to remove what it made.
    static FLOOR_REMOVAL: std::cell::Cell<Duration> = const { std::cell::Cell::new(Duration::ZERO) };
}

/// The floor of a one-VLAN delta with the bridge full: one more device with its flood
/// entries and its port, by `ip`, `bridge` and `ovs-vsctl` (which waits for ovs-vswitchd).
fn floor_one(lab: &Lab, peers: usize) -> Result<Duration> {
    let ns = &lab.site("a").ns;
    let db = format!("--db=unix:{}", lab.site("a").ovsdb_sock.display());
    let t = Instant::now();
    sh(netns(ns, "ip").args([
        "link",
        "add",
        "fxone",
        "mtu",
        "1450",
        "up",
        "type",
        "vxlan",
        "id",
        "9999",
        "dstport",
        "4789",
        "local",
        "192.0.2.1",
        "dev",
        "eth1",
    ]))?;
    let mut fdb = String::new();
    for p in 0..peers {
        let _ = writeln!(
            fdb,
            "fdb append 00:00:00:00:00:00 dev fxone dst 192.0.2.{}",
            10 + p
        );
    }
    batch(ns, "bridge", &["-batch", "-"], &fdb)?;
    sh(netns(ns, "ovs-vsctl").args([&db, "add-port", "l2s0", "fxone", "tag=4094"]))?;
    let took = t.elapsed();
    sh(netns(ns, "ovs-vsctl").args([&db, "del-port", "l2s0", "fxone"]))?;
    sh(netns(ns, "ip").args(["link", "del", "fxone"]))?;
    Ok(took)
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-scale [--vlans 500,1000,2000,4094] [--peers 16]",
        &["--peers", "--vlans"],
    );
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot benchmark: {why}");
    }
    let vlan_counts = arg_list("--vlans", &[500, 1000, 2000, 4094]);
    let peers = arg_list("--peers", &[16])[0];
    println!(
        "{:>6} {:>5} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>8} | {:>7} {:>8} {:>8} {:>8} {:>7}",
        "vlans",
        "peers",
        "apply s",
        "floor s",
        "ratio",
        "ip s",
        "bridge s",
        "vsctl s",
        "ms/vlan",
        "no-op ms",
        "+1 ms",
        "floor+1",
        "RSS MiB"
    );
    for &n in &vlan_counts {
        let lab = Lab::new(1)?;
        let (fip, fbr, fovs) = floor(&lab, n, peers)?;
        let fl = fip + fbr + fovs;
        lab.write_config("a", &lab.scale_config(n, peers, ""))?;
        let (apply, rss) = l2s_timed(&lab, "apply")?;
        let (noop, _) = l2s_timed(&lab, "apply")?;
        // A one-VLAN delta: one VLAN taken away, then given back (measured).
        lab.write_config("a", &lab.scale_config(n - 1, peers, ""))?;
        l2s_timed(&lab, "apply")?;
        lab.write_config("a", &lab.scale_config(n, peers, ""))?;
        let (delta, rss2) = l2s_timed(&lab, "apply")?;
        let floor_delta = floor_one(&lab, peers)?;
        // Removal beside creation: all VLANs but one taken away by apply, then `down`.
        lab.write_config("a", &lab.scale_config(1, peers, ""))?;
        let (shrink, _) = l2s_timed(&lab, "apply")?;
        lab.write_config("a", &lab.scale_config(n, peers, ""))?;
        l2s_timed(&lab, "apply")?;
        let (down, _) = l2s_timed(&lab, "down")?;
        println!(
            "{n:>6} {peers:>5} | removal: apply to 1 VLAN {:.2} s ({:.2}x creation), down {:.2} s ({:.2}x creation); the floor's (ovs-vsctl del-br, ip -batch link del) {:.2} s ({:.2}x its creation)",
            shrink.as_secs_f64(),
            shrink.as_secs_f64() / apply.as_secs_f64(),
            down.as_secs_f64(),
            down.as_secs_f64() / apply.as_secs_f64(),
            FLOOR_REMOVAL.with(|r| r.get()).as_secs_f64(),
            FLOOR_REMOVAL.with(|r| r.get()).as_secs_f64() / fl.as_secs_f64()
        );
        lab.write_config("a", &lab.scale_config(n, peers, ""))?;
        println!(
            "{n:>6} {peers:>5} | {:>9.2} {:>9.2} {:>5.2}x | {:>8.2} {:>8.2} {:>8.2} | {:>7.2} {:>8.0} {:>8.0} {:>8.0} {:>7.1}",
            apply.as_secs_f64(),
            fl.as_secs_f64(),
            apply.as_secs_f64() / fl.as_secs_f64(),
            fip.as_secs_f64(),
            fbr.as_secs_f64(),
            fovs.as_secs_f64(),
            apply.as_secs_f64() * 1e3 / n as f64,
            noop.as_secs_f64() * 1e3,
            delta.as_secs_f64() * 1e3,
            floor_delta.as_secs_f64() * 1e3,
            rss.max(rss2) as f64 / 1024.0
        );
        l2s_timed(&lab, "down")?;
    }
    Ok(())
}
