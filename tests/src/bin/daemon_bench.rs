//! Daemon benchmark against a real ovsdb-server/ovs-vswitchd in a namespace: `l2s-vnf run`
//! with V VLANs × P peers (clear text: the figures are the daemon's own work, not charon's).
//!
//! Measures, in one run:
//! - resident memory after converging (VmRSS, and the peak VmHWM);
//! - idle CPU over `--idle` seconds (utime + stime from /proc, periodic reconciles included);
//! - a reconcile that finds nothing to do (`l2s-vnf reload` of the same file: the daemon's own
//!   figure, config parsing included), and the periodic one as the daemon reports it;
//! - drift → repair: a VXLAN device deleted, and an OVS port deleted, each until it is back
//!   (polled from outside, so the figure includes up to one poll of ~5 ms).
//!
//! - with `--scrape-load`: the no-op reconcile again while 1,000 idle TCP connections sit on
//!   the metrics port and 50 scrapes a second arrive for 30 s, beside the daemon's memory.
//!
//! Usage: `l2s-daemon-bench [--vlans 100] [--peers 8] [--idle 30] [--repeat 15] [--interval 30]
//! [--ipsec] [--scrape-load]` (`--interval`: the daemon's `reconcile_interval` in seconds).
//! With `--ipsec`, charon runs at the site and the daemon keeps one IKEv2 connection per peer
//! loaded (the peers are addresses nobody answers: charon keeps retrying them).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use l2s_lab::{arg, netns, run, sh, Lab};

fn config(
    lab: &Lab,
    vlans: u64,
    peers: u64,
    interval: u64,
    psk: Option<&std::path::Path>,
) -> String {
    let control = lab.site("a").dir.join("control.sock");
    let daemon = format!(
        "[daemon]\ncontrol_socket = \"{}\"\nreconcile_interval = \"{interval}s\"\n[metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
        control.display()
    );
    let cfg = lab.scale_config(vlans as usize, peers as usize, &daemon);
    match psk {
        Some(psk) => lab.secure("a", &cfg, psk, ""),
        None => cfg,
    }
}

const METRICS_PORT: u16 = 9417;

/// 1,000 idle connections held on the metrics port and 50 scrapes a second, for `secs`
/// (run inside the site's namespace); prints the scrapes that succeeded.
const SCRAPE_LOAD: &str = r#"
import socket, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
idle = []
for _ in range(1000):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", port)); idle.append(s)
    except OSError:
        s.close()
ok = tried = 0
end = time.time() + secs
while time.time() < end:
    t = time.time(); tried += 1
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=2)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b: break
            data += b
        ok += data.startswith(b"HTTP/1.1 200")
        c.close()
    except OSError:
        pass
    time.sleep(max(0.0, 0.02 - (time.time() - t)))
print(f"{ok} of {tried} scrapes answered, {len(idle)} idle connections opened")
"#;

/// The daemon's no-op reconcile (a reload of the same file), `repeat` times, in ms.
fn noop_reloads(lab: &Lab, repeat: usize) -> Result<Vec<f64>> {
    let mut noop = vec![];
    for _ in 0..repeat {
        let out = lab.l2s_ok("a", &["reload"])?;
        let ms: f64 = out
            .split('(')
            .nth(1)
            .and_then(|s| s.split(" ms").next())
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no duration in {out}"))?;
        noop.push(ms);
    }
    Ok(noop)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn proc_status(pid: u32, key: &str) -> Result<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{key} of pid {pid}"))
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit(')').next().context("stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn status(lab: &Lab) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &lab.l2s_ok("a", &["status", "--json"])?,
    )?)
}

fn wait_for(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if ok() {
            return Ok(t.elapsed());
        }
    }
    bail!("not repaired within {limit:?}")
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-daemon-bench [--vlans 100] [--peers 8] [--idle 30] [--repeat 15] [--interval 30] [--ipsec] [--scrape-load]",
        &["--idle", "--interval", "--ipsec", "--peers", "--repeat", "--scrape-load", "--vlans"],
    );
    if let Some(why) = l2s_lab::skip_reason() {
        bail!("cannot benchmark: {why}");
    }
    let (vlans, peers) = (arg("--vlans", 100), arg("--peers", 8));
    let idle = arg("--idle", 30);
    // The periodic full reconcile: the product's default unless asked otherwise.
    let interval: u64 = arg("--interval", 30);
    let repeat = arg("--repeat", 15).max(3) as usize;
    let ipsec = std::env::args().any(|a| a == "--ipsec");
    let mut lab = Lab::new(1)?;
    let psk = if ipsec {
        lab.start_charon("a")?;
        Some(lab.psk_file("psk", "daemon-bench-psk-for-testing-only\n")?)
    } else {
        None
    };
    lab.write_config("a", &config(&lab, vlans, peers, interval, psk.as_deref()))?;
    let t = Instant::now();
    let pid = lab.start_daemon("a")?;
    loop {
        // The daemon answers between reconciles: while it converges, a status may time out.
        let Ok(s) = status(&lab) else {
            continue;
        };
        if s["daemon"]["last_reconcile"]["error"].is_null()
            && s["vlans"].as_array().map(|v| v.len()) == Some(vlans as usize)
            && s["vlans"][0]["vtep"].is_string()
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            bail!(
                "the daemon did not converge: {}",
                s["daemon"]["last_reconcile"]
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "daemon with {vlans} VLANs x {peers} peers{} converged from empty in {:.0} ms (start included)",
        if ipsec { ", IPsec to every peer" } else { "" },
        t.elapsed().as_secs_f64() * 1e3
    );
    let ns = lab.site("a").ns.clone();

    // A reconcile that finds nothing to do.
    let noop = noop_reloads(&lab, repeat)?;
    if std::env::args().any(|a| a == "--scrape-load") {
        let rss0 = proc_status(pid, "VmRSS:")?;
        let load = netns(&ns, "python3")
            .args(["-c", SCRAPE_LOAD, &METRICS_PORT.to_string(), "30"])
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        let mut loaded = vec![];
        while t.elapsed() < Duration::from_secs(25) {
            loaded.extend(noop_reloads(&lab, 1)?);
        }
        let rss1 = proc_status(pid, "VmRSS:")?;
        let out = load.wait_with_output()?;
        let (idle_median, load_median) = (median(noop.clone()), median(loaded.clone()));
        println!(
            "metrics under load ({}): no-op reconcile median {load_median:.1} ms over {} vs {idle_median:.1} ms idle ({:.2}x); RSS {:.1} -> {:.1} MiB",
            String::from_utf8_lossy(&out.stdout).trim(),
            loaded.len(),
            load_median / idle_median,
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0
        );
    }

    // Drift → repair.
    let (mut dev, mut port) = (vec![], vec![]);
    let probe = format!("l2s-vx{}", l2s_lab::scale_vlan(vlans as usize / 2));
    for _ in 0..repeat {
        sh(netns(&ns, "ip").args(["link", "del", &probe]))?;
        // Repaired: the device is back with its flood entries, and its port re-added.
        let d = wait_for(Duration::from_secs(60), || {
            run(netns(&ns, "bridge").args(["fdb", "show", "dev", &probe]))
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .matches("00:00:00:00:00:00")
                        .count()
                        == peers as usize
                })
                .unwrap_or(false)
                && lab.vsctl("a", &["get", "port", &probe, "tag"]).is_ok()
        })?;
        dev.push(d.as_secs_f64() * 1e3);
        lab.vsctl("a", &["del-port", "l2s0", &probe])?;
        let d = wait_for(Duration::from_secs(60), || {
            lab.vsctl("a", &["get", "port", &probe, "tag"]).is_ok()
        })?;
        port.push(d.as_secs_f64() * 1e3);
    }
    std::thread::sleep(Duration::from_secs(1));

    // Idle.
    let (rss, hwm) = (proc_status(pid, "VmRSS:")?, proc_status(pid, "VmHWM:")?);
    let reconciles = |s: &serde_json::Value| s["daemon"]["reconciles"].as_u64().unwrap_or(0);
    let r0 = reconciles(&status(&lab)?);
    let c0 = cpu_ticks(pid)?;
    std::thread::sleep(Duration::from_secs(idle));
    let c1 = cpu_ticks(pid)?;
    // SAFETY: sysconf has no preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = (c1 - c0) as f64 / hz / idle as f64 * 100.0;
    let s = status(&lab)?;
    let periodic = &s["daemon"]["last_reconcile"];
    println!(
        "no-op reconcile (reload of the same file): median {:.1} ms over {repeat}",
        median(noop)
    );
    println!(
        "periodic reconcile as reported: {:.1} ms ({}, {} change(s))",
        periodic["duration_ms"].as_f64().unwrap_or(f64::NAN),
        periodic["trigger"],
        periodic["changes"].as_array().map(|c| c.len()).unwrap_or(0)
    );
    println!(
        "drift -> repair, VXLAN device deleted (back with {peers} flood entries): median {:.1} ms",
        median(dev)
    );
    println!(
        "drift -> repair, OVS port deleted: median {:.1} ms",
        median(port)
    );
    println!(
        "resident memory: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "idle CPU over {idle} s: {cpu:.2}% of one core ({} reconciles in that time, the last: {}; periodic every {interval} s)",
        reconciles(&s) - r0,
        periodic["trigger"]
    );
    println!(
        "repairs counted by the daemon: {}",
        s["daemon"]["repairs_total"]
    );
    lab.stop_daemon("a", libc::SIGTERM)?;
    lab.l2s_ok("a", &["down"])?;
    Ok(())
}
