//! `l2s-guest-bench`: the paper's throughput experiment on two guests (two L2S VMs on one
//! underlay, Debian's kernel: OVS kernel datapath, kernel ESP), with 1 and 2 vCPUs:
//! VXLAN only, IPsec at the computed access MTU, and IPsec at 1450 with the encapsulated
//! packets fragmented (`outer_fragmentation`), printed beside the paper's figures.
//!
//! Figures mean something only where guests run under KVM. Under TCG (as on machines whose
//! KVM cannot run guests) it says so and exits 0; `--force` runs it anyway (function, not
//! speed). Usage: `l2s-guest-bench [--secs 10] [--force]`. Needs root and tests/deps.sh.
//!
//! `l2s-guest-bench --scale 500,1000` instead measures `l2s-vnf apply` at N VLANs × 16 peers
//! on the kernel datapath beside its floor (ip -batch, bridge -batch, one ovs-vsctl
//! transaction) in one guest, and `down` beside its creation; under TCG only the ratios mean
//! anything.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use l2s_lab::arg;
use l2s_lab::guest::{self, Accel, Boot, Guest, Image, Underlay};

/// The paper's figures (Vidal et al., Electronics 2021), Mbit/s.
const PAPER_VXLAN: f64 = 1130.0;
const PAPER_IPSEC_1450: f64 = 556.0;
const PAPER_IPSEC_1400: f64 = 616.0;
const PSK: &str = "l2s-guest-bench-psk-for-testing-only";

/// One L2S VM of the pair: its underlay address, its VNF's address.
struct Vm {
    g: Guest,
    vtep: &'static str,
    peer: &'static str,
    vnf: &'static str,
}

impl Vm {
    fn setup(&self, deb: &[u8]) -> Result<()> {
        // The package, from the file the harness writes (these guests have no seed).
        self.g.write_bytes("/tmp/l2s-vnf.deb", deb)?;
        self.g.sh(&format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/l2s-vnf.deb >/dev/null && \
             printf '%s' '{PSK}' > /etc/l2s-vnf/psk && chmod 600 /etc/l2s-vnf/psk && \
             ip addr add {vtep}/24 dev eth1 && ip link set eth1 up && \
             ip netns add vnf && ip -n vnf link set lo up && \
             ip link add acc101 type veth peer name eth0 netns vnf && ip link set acc101 up && \
             ip -n vnf addr add {vnf}/24 dev eth0 && ip -n vnf link set eth0 up && \
             systemctl restart strongswan",
            vtep = self.vtep,
            vnf = self.vnf
        ))?;
        Ok(())
    }

    /// Configure and apply one case; the VNF gets the access MTU.
    fn apply(&self, ipsec: bool, access: &str, fragment: bool, mtu: u32) -> Result<()> {
        let me = if self.vtep.ends_with(".1") { "a" } else { "b" };
        let other = if me == "a" { "b" } else { "a" };
        let sec = if ipsec {
            "[ipsec]\nenabled = true\nbackend = \"kernel\"\n".to_string()
        } else {
            "[ipsec]\nenabled = false\ninsecure = true\n".to_string()
        };
        let cfg = format!(
            "[site]\nname = \"site-{me}\"\nunderlay = \"eth1\"\n\n{sec}\n[mtu]\naccess = {access}\nouter_fragmentation = {fragment}\n\n[[peer]]\nname = \"site-{other}\"\naddress = \"{}\"\n\n[[vlan]]\nid = 101\nports = [\"acc101\"]\n",
            self.peer
        );
        self.g.write("/etc/l2s-vnf/site.toml", &cfg, 0o644)?;
        self.g.sh("l2s-vnf apply >/dev/null")?;
        self.g.sh(&format!("ip -n vnf link set eth0 mtu {mtu}"))?;
        Ok(())
    }
}

/// ESP bytes through the SAs so far (both directions), from the kernel.
fn sa_bytes(vm: &Vm) -> u64 {
    vm.g.sh("ip -s xfrm state | grep -oE '^\\s+[0-9]+\\(bytes\\)' | tr -dc '0-9\\n'")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum()
}

/// IP fragments this guest has made (`FragCreates` of /proc/net/snmp).
fn fragments(vm: &Vm) -> u64 {
    let snmp = vm.g.sh("cat /proc/net/snmp").unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "FragCreates")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// One iperf3 run from A's VNF to B's; Mbit/s at the receiver.
fn iperf(a: &Vm, b: &Vm, secs: u64) -> Result<f64> {
    b.g.sh(&format!("ip netns exec vnf iperf3 -s -1 -D -B {}", b.vnf))?;
    std::thread::sleep(Duration::from_millis(500));
    let out = a.g.sh(&format!(
        "ip netns exec vnf iperf3 -c {} -t {secs} -J --connect-timeout 5000",
        b.vnf
    ))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .context("no receiver figure in iperf3's output")
}

/// `--scale N,M`: apply vs floor on the kernel datapath, in one guest.
fn scale(image: &Image, deb: &[u8], counts: &[u64], accel: Accel) -> Result<()> {
    let g = Guest::boot(
        image,
        Boot {
            memory_mib: 3072,
            cpus: 2,
            plain: true,
            ..Default::default()
        },
    )?;
    g.write_bytes("/tmp/l2s-vnf.deb", deb)?;
    g.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/l2s-vnf.deb >/dev/null")?;
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/lab/scale.sh"),
    )?;
    g.write("/root/scale.sh", &script, 0o755)?;
    println!("kernel datapath, 16 peers, {accel:?} (only the ratios mean anything under TCG)");
    println!(
        "{:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>8} | {:>9} {:>9} | {:>7} {:>7} {:>12}",
        "vlans",
        "apply s",
        "floor s",
        "ratio",
        "ip s",
        "bridge s",
        "vsctl s",
        "no-op s",
        "+1 s",
        "down s",
        "/apply",
        "floor down/up"
    );
    for &n in counts {
        let out = g.sh(&format!("/root/scale.sh {n}"))?;
        let get = |k: &str| -> f64 {
            out.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let floor = get("floor_ip") + get("floor_bridge") + get("floor_ovs");
        println!(
            "{n:>6} | {:>9.2} {:>9.2} {:>5.2}x | {:>8.2} {:>8.2} {:>8.2} | {:>9.2} {:>9.2} | {:>7.2} {:>6.2}x {:>11.2}x",
            get("apply"),
            floor,
            get("apply") / floor,
            get("floor_ip"),
            get("floor_bridge"),
            get("floor_ovs"),
            get("noop"),
            get("delta"),
            get("down"),
            get("down") / get("apply"),
            get("floor_down") / floor
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    l2s_lab::bench_usage(
        "usage: l2s-guest-bench [--secs 10] [--force]",
        &["--force", "--scale", "--secs"],
    );
    let secs = arg("--secs", 10);
    let force = std::env::args().any(|a| a == "--force");
    let missing = guest::missing_tools();
    if !missing.is_empty() {
        bail!("missing tools: {} (run tests/deps.sh)", missing.join(", "));
    }
    let deb_path = l2s_lab::package()?;
    let image = Image::ensure(&deb_path)?;
    let accel = Accel::probe(&image);
    let scale_mode = std::env::args().any(|a| a == "--scale");
    if accel == Accel::Tcg && !force && !scale_mode {
        println!(
            "KVM does not run guests on this machine: they would run under TCG (software emulation), \
             where throughput figures are not meaningful. Run this on a machine where KVM works, or \
             with --force to exercise it anyway."
        );
        return Ok(());
    }
    let deb = std::fs::read(&deb_path)?;
    let args: Vec<String> = std::env::args().collect();
    if let Some(counts) = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
    {
        let counts: Vec<u64> = counts.split(',').filter_map(|c| c.parse().ok()).collect();
        return scale(&image, &deb, &counts, accel);
    }
    println!("two L2S VMs on one underlay ({accel:?}), iperf3 {secs} s per figure");
    println!(
        "{:>5} | {:>14} {:>14} | {:>18} {:>14} | {:>18} {:>14}",
        "vCPUs",
        "VXLAN Mbit/s",
        "paper",
        "IPsec @MTU Mbit/s",
        "paper @1400",
        "IPsec @1450 frag",
        "paper @1450"
    );
    for cpus in [1, 2] {
        let port = Underlay::port()?;
        let boot = |u| {
            Guest::boot(
                &image,
                Boot {
                    memory_mib: 1536,
                    cpus,
                    underlay: Some(u),
                    plain: true,
                    ..Default::default()
                },
            )
        };
        let a = Vm {
            g: boot(Underlay::Listen(port))?,
            vtep: "198.51.100.1",
            peer: "198.51.100.2",
            vnf: "10.101.0.1",
        };
        let b = Vm {
            g: boot(Underlay::Connect(port))?,
            vtep: "198.51.100.2",
            peer: "198.51.100.1",
            vnf: "10.101.0.2",
        };
        for vm in [&a, &b] {
            vm.setup(&deb)?;
        }
        let mut row = vec![];
        for (ipsec, access, fragment, mtu) in [
            (false, "\"auto\"", false, 1450),
            (true, "\"auto\"", false, 1408),
            (true, "1450", true, 1450),
        ] {
            for vm in [&b, &a] {
                vm.apply(ipsec, access, fragment, mtu)?;
            }
            a.g.wait_until(
                "the VLAN carries traffic",
                Duration::from_secs(120),
                "ip netns exec vnf ping -c1 -W1 10.101.0.2 >/dev/null",
            )?;
            let (bytes, frags) = (sa_bytes(&a), fragments(&a));
            let mbps = iperf(&a, &b, secs)?;
            if ipsec {
                let grew = sa_bytes(&a) - bytes;
                if grew < (mbps * 1e6 / 8.0 * secs as f64 * 0.5) as u64 {
                    bail!("the SA carried only {grew} bytes during an IPsec figure: clear text?");
                }
            }
            let made = fragments(&a) - frags;
            if fragment != (made > 0) {
                bail!("{made} IP fragments made with outer_fragmentation = {fragment}");
            }
            row.push(mbps);
        }
        println!(
            "{cpus:>5} | {:>14.0} {:>14.0} | {:>18.0} {:>14.0} | {:>18.0} {:>14.0}",
            row[0], PAPER_VXLAN, row[1], PAPER_IPSEC_1400, row[2], PAPER_IPSEC_1450
        );
    }
    if accel == Accel::Tcg {
        println!("(TCG: the figures above show function, not the speed of the stack)");
    }
    Ok(())
}
