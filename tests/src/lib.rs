//! A multi-site lab on one machine, built from real parts: each site is a network namespace
//! with its own `ovsdb-server` + `ovs-vswitchd` (userspace datapath), joined to the others by
//! veth links into an underlay namespace that holds a Linux bridge; each VNF is a namespace
//! whose `eth0` is plugged into its site as an access interface. `l2s-vnf` runs inside each
//! site's namespace.
//!
//! Everything a [`Lab`] starts is recorded and torn down when it is dropped — on success,
//! failure and panic — and labs left behind by a killed test run are purged on the next start.
//! Only addresses inside these namespaces are used (192.0.2.0/24 underlay, 10.x VNF subnets).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod frr_lab;
pub mod guest;

const LAB_PREFIX: &str = "l2slab";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The id of the `i`-th VLAN of a benchmark config: 100, 101, … — or from 1 when the whole
/// 802.1Q space is asked for.
pub fn scale_vlan(i: usize) -> usize {
    if i < 3995 {
        100 + i
    } else {
        i - 3994
    }
}

/// Whether we can build labs here (root, and OVS installed).
pub fn skip_reason() -> Option<String> {
    // SAFETY-free: geteuid through std is not available; read /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
    if uid_line.split_whitespace().nth(2) != Some("0") {
        return Some("end-to-end lab tests need root (network namespaces)".into());
    }
    if !Path::new("/usr/lib/ipsec/charon").exists() {
        return Some("strongSwan's charon is not installed (run tests/deps.sh)".into());
    }
    for tool in [
        "ovsdb-server",
        "ovs-vswitchd",
        "ovsdb-tool",
        "ip",
        "nft",
        "tcpdump",
        "iperf3",
    ] {
        if which(tool).is_none() {
            return Some(format!("`{tool}` is not installed (run tests/deps.sh)"));
        }
    }
    None
}

/// A test that cannot run here fails, naming why — unless skipping was asked for
/// (`L2S_ALLOW_SKIP=1`): a skipped end-to-end test must never count as passed unnoticed.
pub fn skip_or_fail(why: &str) {
    if std::env::var("L2S_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("\n!!!!!!!! SKIPPED (L2S_ALLOW_SKIP=1): {why} !!!!!!!!\n");
        return;
    }
    panic!("this end-to-end test cannot run here: {why} (L2S_ALLOW_SKIP=1 skips it instead)");
}

/// Run only where the lab can; elsewhere fail (or skip, when asked to: [`skip_or_fail`]).
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(why) = $crate::skip_reason() {
            $crate::skip_or_fail(&why);
            return;
        }
    };
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&format!("{paths}:/usr/sbin:/sbin"))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Path of the `l2s-vnf` binary: `$L2S_VNF_BIN`, else built once with cargo.
pub fn l2s_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("L2S_VNF_BIN") {
            return Ok(PathBuf::from(p));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let release = cfg!(not(debug_assertions));
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(&root)
            .args(["build", "-q", "-p", "l2s-vnf", "--bin", "l2s-vnf"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !st.success() {
            return Err("cargo build -p l2s-vnf failed".into());
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("target"));
        Ok(target
            .join(if release { "release" } else { "debug" })
            .join("l2s-vnf"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Run a command, returning its output (never fails on a non-zero exit).
pub fn run(cmd: &mut Command) -> Result<Output> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {desc}"))
}

/// Run a command that must succeed.
pub fn sh(cmd: &mut Command) -> Result<String> {
    let desc = format!("{cmd:?}");
    succeeded(&desc, run(cmd)?)
}

/// stdout of a finished command, or an error with everything it printed.
fn succeeded(desc: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "{desc} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// A command inside a namespace.
pub fn netns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// One iperf3 TCP run (one-shot server in `server_ns`, client with `how`: `-n BYTES` or
/// `-t SECS`); returns the receiver's bits/s.
fn iperf3(server_ns: &str, server_ip: &str, client_ns: &str, how: &[&str]) -> Result<f64> {
    let (bps, _) = iperf3_received(server_ns, server_ip, client_ns, how)?;
    Ok(bps)
}

/// One iperf3 run: the receiver's bits/s and the bytes the receiver got (with `-n`, iperf3
/// may end before all the bytes the client wrote have crossed a slow path).
fn iperf3_received(
    server_ns: &str,
    server_ip: &str,
    client_ns: &str,
    how: &[&str],
) -> Result<(f64, u64)> {
    let mut server = netns(server_ns, "iperf3")
        .args(["-s", "-1", "-B", server_ip, "--forceflush"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    // Ready when the server says it listens, not after a guess. Its output is kept (read to
    // the end, so the pipe never fills) for the error report.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let pipe = server.stdout.take().context("iperf3 server's stdout")?;
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(pipe).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    let mut server_said = vec![];
    let t = Instant::now();
    while !server_said
        .iter()
        .any(|l: &String| l.contains("Server listening"))
    {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => server_said.push(l),
            Err(_) if t.elapsed() > Duration::from_secs(5) => {
                let _ = server.kill();
                let _ = server.wait();
                bail!(
                    "the iperf3 server on {server_ip} did not listen within 5 s: {server_said:?}"
                );
            }
            Err(_) => {}
        }
    }
    let out = run(netns(client_ns, "iperf3")
        .args(["-c", server_ip, "-J", "--connect-timeout", "3000"])
        .args(how));
    let _ = server.kill();
    let _ = server.wait();
    server_said.extend(rx.try_iter());
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    // With -J, iperf3 puts its own error text in the JSON.
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!(
            "iperf3's output is not JSON: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() || v.get("error").is_some() {
        bail!(
            "iperf3 to {server_ip} failed: {} (server: {})",
            v["error"].as_str().unwrap_or("no error text"),
            server_said.join(" | ")
        );
    }
    let received = &v["end"]["sum_received"];
    let bps = received["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no bits_per_second in iperf3's output: {text}"))?;
    let bytes = received["bytes"]
        .as_u64()
        .with_context(|| format!("no bytes received in iperf3's output: {text}"))?;
    Ok((bps, bytes))
}

/// A VLAN in a generated lab config: (id, access ports, peers by site letter or all).
pub type VlanSpec<'a> = (u16, &'a [&'a str], Option<&'a [&'a str]>);

pub struct Site {
    pub name: String,
    pub ns: String,
    pub dir: PathBuf,
    /// Underlay address (the VTEP).
    pub underlay_ip: String,
    pub ovsdb_sock: PathBuf,
}

#[derive(Clone)]
pub struct Vnf {
    pub ns: String,
    pub ip: String,
    /// The access interface in the site namespace.
    pub port: String,
    /// The site's namespace.
    pub site_ns: String,
    cidr: String,
}

pub struct Lab {
    /// charon per site name (a child process: `ip netns exec` execs into it).
    charons: Vec<(String, Child)>,
    /// `l2s-vnf run` per site name (also exec'd into: the child's pid is the daemon's).
    daemons: Vec<(String, Child)>,
    pub id: String,
    pub dir: PathBuf,
    pub underlay_ns: String,
    pub sites: Vec<Site>,
    namespaces: Vec<String>,
    pidfiles: Vec<PathBuf>,
    children: Vec<Child>,
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Stop a daemon by its pidfile, only if the pid still runs a command that names `dir`
/// (so a recycled pid is never touched).
fn stop_pidfile(pidfile: &Path, dir: &Path) {
    let Ok(s) = std::fs::read_to_string(pidfile) else {
        return;
    };
    let Ok(pid) = s.trim().parse::<i32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
        return;
    }
    // SAFETY: plain kill(2) on a pid we started (checked through its command line above).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    while pid_alive(pid) && t.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if pid_alive(pid) {
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// End the FRR daemons and remove the EVPN control namespace a site's daemon made (a daemon
/// killed with SIGKILL cannot).
fn stop_evpn(site_dir: &Path, lab_dir: &Path) {
    let sock = site_dir.join("control.sock");
    let frr = l2s_vnf::base::names::evpn_dir(&sock);
    for pf in ["bgpd.pid", "zebra.pid"] {
        stop_pidfile(&frr.join(pf), lab_dir);
    }
    let ns = l2s_vnf::base::names::evpn_netns(&sock);
    if Path::new("/run/netns").join(&ns).exists() {
        let _ = ip(&["netns", "del", &ns]);
    }
}

/// Remove labs whose creating process is gone (a test run that was killed).
fn purge_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = ns.strip_prefix(&format!("{LAB_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        let _ = ip(&["netns", "del", ns]);
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&format!("{LAB_PREFIX}-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        for site in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            for pf in ["ovs/ovs-vswitchd.pid", "ovs/ovsdb-server.pid"] {
                stop_pidfile(&site.path().join(pf), &e.path());
            }
            stop_evpn(&site.path(), &e.path());
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

impl Lab {
    /// A lab of `n` sites named a, b, c… with underlay 192.0.2.{1..n}/24.
    pub fn new(n: usize) -> Result<Lab> {
        purge_stale();
        let id = format!(
            "{LAB_PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            charons: vec![],
            daemons: vec![],
            id: id.clone(),
            dir,
            underlay_ns: format!("{id}-ul"),
            sites: vec![],
            namespaces: vec![],
            pidfiles: vec![],
            children: vec![],
        };
        lab.add_ns(&lab.underlay_ns.clone())?;
        sh(netns(&lab.underlay_ns, "ip").args(["link", "add", "ul0", "type", "bridge"]))?;
        sh(netns(&lab.underlay_ns, "ip").args(["link", "set", "ul0", "up"]))?;
        for i in 0..n {
            lab.add_site(i)?;
        }
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        sh(netns(ns, "ip").args(["link", "set", "lo", "up"]))?;
        Ok(())
    }

    fn add_site(&mut self, i: usize) -> Result<()> {
        let name = ((b'a' + i as u8) as char).to_string();
        let ns = format!("{}-{name}", self.id);
        self.add_ns(&ns)?;
        let peer = format!("ul-{name}");
        sh(netns(&self.underlay_ns, "ip").args([
            "link", "add", &peer, "type", "veth", "peer", "name", "eth1", "netns", &ns,
        ]))?;
        sh(netns(&self.underlay_ns, "ip").args(["link", "set", &peer, "master", "ul0", "up"]))?;
        let underlay_ip = format!("192.0.2.{}", i + 1);
        sh(netns(&ns, "ip").args(["addr", "add", &format!("{underlay_ip}/24"), "dev", "eth1"]))?;
        sh(netns(&ns, "ip").args(["link", "set", "eth1", "up"]))?;
        let dir = self.dir.join(&name);
        let ovs = dir.join("ovs");
        std::fs::create_dir_all(&ovs)?;
        let sock = self.start_ovs(&ns, &ovs)?;
        self.sites.push(Site {
            name,
            ns,
            dir,
            underlay_ip,
            ovsdb_sock: sock,
        });
        Ok(())
    }

    fn start_ovs(&mut self, ns: &str, d: &Path) -> Result<PathBuf> {
        let db = d.join("conf.db");
        let schema = [
            "/usr/share/openvswitch/vswitch.ovsschema",
            "/usr/local/share/openvswitch/vswitch.ovsschema",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("vswitch.ovsschema not found (is openvswitch-switch installed?)")?;
        sh(Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(schema))?;
        self.spawn_ovs(ns, d)
    }

    /// ovsdb-server (on `<d>/conf.db`) and ovs-vswitchd, detached, pidfiles in `d`.
    fn spawn_ovs(&mut self, ns: &str, d: &Path) -> Result<PathBuf> {
        let sock = self.spawn_ovs_daemon(ns, d, OVSDB_SERVER)?;
        self.spawn_ovs_daemon(ns, d, OVS_VSWITCHD)?;
        Ok(sock)
    }

    /// One of the two OVS daemons (`OVSDB_SERVER` or `OVS_VSWITCHD`), detached, as its systemd
    /// unit would start it; returns the database socket.
    fn spawn_ovs_daemon(&mut self, ns: &str, d: &Path, which: &str) -> Result<PathBuf> {
        let sock = d.join("db.sock");
        let pidfile = d.join(format!("{which}.pid"));
        let mut c = netns(ns, which);
        c.env("OVS_RUNDIR", d)
            .env("OVS_DBDIR", d)
            .env("OVS_LOGDIR", d);
        if which == OVSDB_SERVER {
            c.arg(d.join("conf.db"))
                .arg(format!("--remote=punix:{}", sock.display()))
                .arg(format!("--log-file={}", d.join("ovsdb.log").display()));
        } else {
            c.arg(format!("unix:{}", sock.display()))
                .arg(format!("--log-file={}", d.join("vswitchd.log").display()));
        }
        c.arg(format!("--pidfile={}", pidfile.display()))
            .arg("--detach");
        if !self.pidfiles.contains(&pidfile) {
            self.pidfiles.push(pidfile);
        }
        sh(&mut c)?;
        if which == OVSDB_SERVER {
            let mut c = netns(ns, "ovs-vsctl");
            c.arg(format!("--db=unix:{}", sock.display()))
                .args(["--no-wait", "init"]);
            sh(&mut c)?;
        }
        Ok(sock)
    }

    pub fn site(&self, name: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no site {name}"))
    }

    /// Another host on the underlay (e.g. a rogue one); returns its namespace.
    pub fn add_underlay_host(&mut self, name: &str, cidr: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.id);
        self.add_ns(&ns)?;
        let port = format!("ul-{name}");
        sh(netns(&self.underlay_ns, "ip").args([
            "link", "add", &port, "type", "veth", "peer", "name", "eth1", "netns", &ns,
        ]))?;
        sh(netns(&self.underlay_ns, "ip").args(["link", "set", &port, "master", "ul0", "up"]))?;
        sh(netns(&ns, "ip").args(["addr", "add", cidr, "dev", "eth1"]))?;
        sh(netns(&ns, "ip").args(["link", "set", "eth1", "up"]))?;
        Ok(ns)
    }

    /// Plug a VNF namespace into `site` through access interface `port` with address `cidr`.
    pub fn add_vnf(&mut self, site: &str, port: &str, cidr: &str) -> Result<Vnf> {
        let site_ns = self.site(site).ns.clone();
        let ns = format!("{}-{site}-{port}", self.id);
        self.add_ns(&ns)?;
        let vnf = Vnf {
            ns,
            ip: cidr.split('/').next().unwrap_or(cidr).to_string(),
            port: port.to_string(),
            site_ns,
            cidr: cidr.to_string(),
        };
        Self::plug(&vnf, None)?;
        Ok(vnf)
    }

    /// Connect a VNF's `eth0` to its access interface (a new veth pair each time: a VNF
    /// re-plugged gets an access interface of the same name with a new ifindex).
    fn plug(v: &Vnf, mtu: Option<u32>) -> Result<()> {
        sh(netns(&v.site_ns, "ip").args([
            "link", "add", &v.port, "type", "veth", "peer", "name", "eth0", "netns", &v.ns,
        ]))?;
        sh(netns(&v.site_ns, "ip").args(["link", "set", &v.port, "up"]))?;
        sh(netns(&v.ns, "ip").args(["addr", "add", &v.cidr, "dev", "eth0"]))?;
        if let Some(m) = mtu {
            sh(netns(&v.ns, "ip").args(["link", "set", "eth0", "mtu", &m.to_string()]))?;
        }
        sh(netns(&v.ns, "ip").args(["link", "set", "eth0", "up"]))?;
        // The userspace datapath forwards unfinished checksums: compute them in the VNF.
        let _ = run(netns(&v.ns, "ethtool").args(["-K", "eth0", "tx", "off"]));
        Ok(())
    }

    /// Unplug a VNF: its access interface disappears from the site.
    pub fn unplug(&self, v: &Vnf) -> Result<()> {
        sh(netns(&v.site_ns, "ip").args(["link", "del", &v.port]))?;
        Ok(())
    }

    /// Plug an unplugged VNF back in, with `mtu` on its side.
    pub fn replug(&self, v: &Vnf, mtu: u32) -> Result<()> {
        Self::plug(v, Some(mtu))
    }

    /// Start charon at a site with kernel-libipsec (userspace ESP over the TUN `ipsec0`), its
    /// VICI socket at `<site dir>/charon.vici`; waits until the socket answers.
    pub fn start_charon(&mut self, site: &str) -> Result<PathBuf> {
        self.start_charon_with(site, true)
    }

    /// Start charon with (`libipsec`) or without kernel-libipsec (then charon uses the kernel's
    /// XFRM through kernel-netlink, and l2s-vnf's `auto` picks the kernel backend).
    pub fn start_charon_with(&mut self, site: &str, libipsec: bool) -> Result<PathBuf> {
        let plugins = format!(
            "random nonce openssl aes sha1 sha2 hmac gcm curve25519 kdf pem pkcs1 pkcs8 x509 pubkey constraints revocation {}kernel-netlink socket-default vici",
            if libipsec { "kernel-libipsec " } else { "" }
        );
        self.start_charon_loading(site, &plugins)
    }

    /// Start charon at a site loading exactly `plugins` (e.g. without the ones an algorithm
    /// comes from).
    pub fn start_charon_loading(&mut self, site: &str, plugins: &str) -> Result<PathBuf> {
        let s = self.site(site);
        let (ns, dir) = (s.ns.clone(), s.dir.clone());
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        let vici = dir.join("charon.vici");
        let _ = std::fs::remove_file(&vici);
        let conf = dir.join("strongswan.conf");
        std::fs::write(
            &conf,
            format!(
                "charon {{\n  load = {plugins}\n  make_before_break = yes\n  retransmit_timeout = 1.0\n  retransmit_base = 1.2\n  retransmit_tries = 3\n  plugins {{\n    vici {{\n      socket = unix://{vici}\n    }}\n    kernel-libipsec {{\n      allow_peer_ts = yes\n    }}\n  }}\n  filelog {{\n    charon {{\n      path = {log}\n      default = 1\n      ike = 2\n      cfg = 2\n      flush_line = yes\n      time_format = %H:%M:%S\n    }}\n  }}\n}}\n",
                vici = vici.display(),
                log = dir.join("charon.log").display(),
            ),
        )?;
        let script = format!(
            "mount --bind {run} /run && STRONGSWAN_CONF={conf} exec /usr/lib/ipsec/charon",
            run = run.display(),
            conf = conf.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.charons.push((site.to_string(), child));
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if std::os::unix::net::UnixStream::connect(&vici).is_ok() {
                return Ok(vici);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "charon at site {site} did not open {} (see {}/charon.log)",
            vici.display(),
            dir.display()
        )
    }

    /// Start `l2s-vnf run` at a site with its `site.toml` (log in `<site dir>/daemon.log`,
    /// appended across restarts); waits until its control socket answers. Returns its pid.
    pub fn start_daemon(&mut self, site: &str) -> Result<u32> {
        let s = self.site(site);
        let (ns, dir) = (s.ns.clone(), s.dir.clone());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(l2s_bin()?)
            .arg("-c")
            .arg(dir.join("site.toml"))
            .arg("run")
            .env("L2S_VNF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pid = child.id();
        self.daemons.push((site.to_string(), child));
        let sock = dir.join("control.sock");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                return Ok(pid);
            }
            if !pid_alive(pid as i32) || self.daemon_exited(site) {
                bail!(
                    "l2s-vnf run at site {site} exited at start:\n{}",
                    self.daemon_log(site)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("l2s-vnf run at site {site} did not open its control socket")
    }

    fn daemon_exited(&mut self, site: &str) -> bool {
        self.daemons
            .iter_mut()
            .filter(|(s, _)| s == site)
            .any(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The daemon's pid at a site, if one was started and still runs.
    pub fn daemon_pid(&mut self, site: &str) -> Option<u32> {
        self.daemons
            .iter_mut()
            .filter(|(s, _)| s == site)
            .find_map(|(_, c)| matches!(c.try_wait(), Ok(None)).then(|| c.id()))
    }

    /// Send a signal to the site's daemon (e.g. `libc::SIGHUP`).
    pub fn signal_daemon(&mut self, site: &str, sig: i32) -> Result<()> {
        let pid = self
            .daemon_pid(site)
            .with_context(|| format!("no daemon runs at site {site}"))?;
        // SAFETY: kill(2) on the pid of a child this lab started and has not reaped.
        #[allow(unsafe_code)]
        let r = unsafe { libc::kill(pid as i32, sig) };
        if r != 0 {
            bail!("kill({pid}, {sig}) failed");
        }
        Ok(())
    }

    /// Stop the site's daemon with `sig` (SIGTERM: clean stop; SIGKILL: a crash) and reap it;
    /// returns its exit status code (None when killed by a signal).
    pub fn stop_daemon(&mut self, site: &str, sig: i32) -> Result<Option<i32>> {
        self.signal_daemon(site, sig)?;
        let mut code = None;
        let mut kept = vec![];
        for (s, mut c) in self.daemons.drain(..) {
            if s == site {
                let t = Instant::now();
                loop {
                    if let Ok(Some(st)) = c.try_wait() {
                        code = st.code();
                        break;
                    }
                    if t.elapsed() > Duration::from_secs(10) {
                        let _ = c.kill();
                        let _ = c.wait();
                        bail!("the daemon at site {site} did not stop within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            } else {
                kept.push((s, c));
            }
        }
        self.daemons = kept;
        Ok(code)
    }

    pub fn daemon_log(&self, site: &str) -> String {
        std::fs::read_to_string(self.site(site).dir.join("daemon.log")).unwrap_or_default()
    }

    /// Kill a site's ovsdb-server and ovs-vswitchd (SIGKILL, as a crash would).
    pub fn kill_ovs(&self, site: &str) {
        self.kill_ovs_daemon(site, OVS_VSWITCHD);
        self.kill_ovs_daemon(site, OVSDB_SERVER);
    }

    /// Kill one OVS daemon of a site (`OVSDB_SERVER` or `OVS_VSWITCHD`; SIGKILL, as a crash
    /// would) and wait until it is gone.
    pub fn kill_ovs_daemon(&self, site: &str, which: &str) {
        let pf = self.site(site).dir.join("ovs").join(format!("{which}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pf)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on a daemon this lab started (its pidfile is in our dir).
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            let t = Instant::now();
            while pid_alive(pid) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(pf);
    }

    /// Start one OVS daemon of a site again, on the database it had (what systemd's
    /// `Restart=` does after a crash).
    pub fn start_ovs_daemon(&mut self, site: &str, which: &str) -> Result<()> {
        let s = self.site(site);
        let (ns, d) = (s.ns.clone(), s.dir.join("ovs"));
        self.spawn_ovs_daemon(&ns, &d, which)?;
        Ok(())
    }

    /// Send a signal to a site's ovs-vswitchd (e.g. SIGSTOP to freeze it, SIGCONT to resume).
    pub fn signal_vswitchd(&self, site: &str, sig: i32) -> Result<()> {
        let pidfile = self.site(site).dir.join("ovs/ovs-vswitchd.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)?.trim().parse()?;
        // SAFETY: kill(2) on the ovs-vswitchd this lab started (its pidfile is in our dir).
        #[allow(unsafe_code)]
        let r = unsafe { libc::kill(pid, sig) };
        if r != 0 {
            bail!("kill({pid}, {sig}) failed");
        }
        Ok(())
    }

    /// Start a site's ovsdb-server and ovs-vswitchd again on the database they had.
    pub fn restart_ovs(&mut self, site: &str) -> Result<()> {
        let s = self.site(site);
        let (ns, d) = (s.ns.clone(), s.dir.join("ovs"));
        self.spawn_ovs(&ns, &d)?;
        Ok(())
    }

    /// Kill charon at a site (SIGKILL: as a crash would).
    pub fn kill_charon(&mut self, site: &str) {
        let mut kept = vec![];
        for (s, mut c) in self.charons.drain(..) {
            if s == site {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                kept.push((s, c));
            }
        }
        self.charons = kept;
    }

    /// Stop charon at a site the way `systemctl stop` does (SIGTERM: it deletes its IKE_SAs
    /// with the peers before it exits), and wait for it to be gone.
    pub fn stop_charon(&mut self, site: &str) {
        let mut kept = vec![];
        for (s, mut c) in self.charons.drain(..) {
            if s == site {
                // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(10) {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            } else {
                kept.push((s, c));
            }
        }
        self.charons = kept;
    }

    /// charon's log at a site as it is now (append-only across restarts).
    pub fn charon_log(&self, site: &str) -> String {
        std::fs::read_to_string(self.site(site).dir.join("charon.log")).unwrap_or_default()
    }

    /// A PSK file (mode 0600) in the lab directory, shared by the sites that use it.
    pub fn psk_file(&self, name: &str, secret: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.join(name);
        std::fs::write(&p, secret)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        Ok(p)
    }

    /// Turn a clear-text lab config into an IPsec one (charon's VICI at the site, `psk`).
    pub fn secure(&self, site: &str, config: &str, psk: &Path, extra: &str) -> String {
        let vici = self.site(site).dir.join("charon.vici");
        config.replace(
            "[ipsec]\nenabled = false\ninsecure = true\n",
            &format!("[ipsec]\nenabled = true\nbackend = \"auto\"\nvici = \"unix://{}\"\npsk_file = \"{}\"\n{extra}", vici.display(), psk.display()),
        )
    }

    /// Give VNFs the access MTU, as DHCP on an access network created with the computed MTU
    /// would (a VNF with a larger MTU than its access link black-holes large frames).
    /// A VNF's MAC address (its `eth0`'s), in lower case.
    pub fn vnf_mac(&self, v: &Vnf) -> Result<String> {
        let out = sh(netns(&v.ns, "cat").arg("/sys/class/net/eth0/address"))?;
        Ok(out.trim().to_ascii_lowercase())
    }

    /// Give a VNF's `eth0` this MAC (a VNF that moved to another site keeps its MAC).
    pub fn set_vnf_mac(&self, v: &Vnf, mac: &str) -> Result<()> {
        sh(netns(&v.ns, "ip").args(["link", "set", "eth0", "address", mac]))?;
        Ok(())
    }

    /// A VNF leaves its site while its access port stays up: its address goes and its `eth0`
    /// takes another MAC (`spare`), so that nothing of it is heard there any more — yet the
    /// site's switch remembers its MAC until that ages out.
    pub fn vnf_leaves(&self, v: &Vnf, spare: &str) -> Result<()> {
        sh(netns(&v.ns, "ip").args(["addr", "flush", "dev", "eth0"]))?;
        self.set_vnf_mac(v, spare)
    }

    /// A VNF arrives at a site with its MAC and address, and says so to `hello` alone: a
    /// unicast ping (its neighbour entry for `hello` is static), so that no broadcast of it
    /// reaches the other sites and teaches their switches where it went.
    pub fn vnf_arrives(&self, v: &Vnf, mac: &str, hello: &Vnf) -> Result<()> {
        self.set_vnf_mac(v, mac)?;
        self.set_vnf_link(v, true)?;
        let _ = run(netns(&v.ns, "ip").args(["addr", "add", &v.cidr, "dev", "eth0"]));
        let hello_mac = self.vnf_mac(hello)?;
        sh(netns(&v.ns, "ip").args([
            "neigh",
            "replace",
            &hello.ip,
            "lladdr",
            &hello_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]))?;
        let _ = self.ping(v, &hello.ip, 1);
        Ok(())
    }

    /// No IPv6 on a VNF (its link-local chatter would tell every site where its MAC is).
    pub fn vnf_without_ipv6(&self, v: &Vnf) -> Result<()> {
        sh(netns(&v.ns, "sysctl").args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]))?;
        sh(netns(&v.ns, "sysctl").args(["-qw", "net.ipv6.conf.eth0.disable_ipv6=1"]))?;
        Ok(())
    }

    /// Take a VNF's `eth0` up or down (a VNF that left a site, or arrived).
    pub fn set_vnf_link(&self, v: &Vnf, up: bool) -> Result<()> {
        sh(netns(&v.ns, "ip").args(["link", "set", "eth0", if up { "up" } else { "down" }]))?;
        Ok(())
    }

    pub fn set_vnf_mtu(&self, vnfs: &[&Vnf], mtu: u32) -> Result<()> {
        for v in vnfs {
            sh(netns(&v.ns, "ip").args(["link", "set", "eth0", "mtu", &mtu.to_string()]))?;
        }
        Ok(())
    }

    /// Write a site's config file; returns its path.
    pub fn write_config(&self, site: &str, toml: &str) -> Result<PathBuf> {
        let p = self.site(site).dir.join("site.toml");
        std::fs::write(&p, toml)?;
        Ok(p)
    }

    /// A config for `site`: clear-text lab mode, the site's OVSDB, `peers` by site name and
    /// `vlans` as (id, ports, peers) TOML fragments.
    pub fn config(&self, site: &str, peers: &[&str], vlans: &[VlanSpec<'_>]) -> String {
        let s = self.site(site);
        let mut t = String::new();
        let _ = writeln!(t, "[site]\nname = \"site-{site}\"\nunderlay = \"eth1\"\n");
        let _ = writeln!(
            t,
            "[switch]\nbridge = \"l2s0\"\ndatapath = \"auto\"\novsdb = \"unix:{}\"\n",
            s.ovsdb_sock.display()
        );
        let _ = writeln!(t, "[ipsec]\nenabled = false\ninsecure = true\n");
        let _ = writeln!(
            t,
            "[daemon]\ncontrol_socket = \"{}\"\n",
            s.dir.join("control.sock").display()
        );
        for p in peers {
            let _ = writeln!(
                t,
                "[[peer]]\nname = \"site-{p}\"\naddress = \"{}\"\n",
                self.site(p).underlay_ip
            );
        }
        for (id, ports, vp) in vlans {
            let ports: Vec<String> = ports.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(t, "[[vlan]]\nid = {id}\nports = [{}]", ports.join(", "));
            if let Some(vp) = vp {
                let vp: Vec<String> = vp.iter().map(|p| format!("\"site-{p}\"")).collect();
                let _ = writeln!(t, "peers = [{}]", vp.join(", "));
            }
            t.push('\n');
        }
        t
    }

    /// A benchmark config for site A: clear text, `peers` fake peers (192.0.2.10…) and
    /// `vlans` VLANs ([`scale_vlan`]) without access ports; `extra` is appended to the header.
    pub fn scale_config(&self, vlans: usize, peers: usize, extra: &str) -> String {
        let s = self.site("a");
        let mut t = format!(
            "[site]\nname = \"bench\"\nunderlay = \"eth1\"\n[switch]\nbridge = \"l2s0\"\novsdb = \"unix:{}\"\n[ipsec]\nenabled = false\ninsecure = true\n{extra}",
            s.ovsdb_sock.display()
        );
        for p in 0..peers {
            let _ = writeln!(
                t,
                "[[peer]]\nname = \"p{p}\"\naddress = \"192.0.2.{}\"",
                10 + p
            );
        }
        for v in 0..vlans {
            let _ = writeln!(t, "[[vlan]]\nid = {}", scale_vlan(v));
        }
        t
    }

    /// Run `l2s-vnf -c <site config> ARGS` inside the site's namespace.
    pub fn l2s(&self, site: &str, args: &[&str]) -> Result<Output> {
        self.l2s_with(site, &self.site(site).dir.join("site.toml"), args)
    }

    pub fn l2s_with(&self, site: &str, config: &Path, args: &[&str]) -> Result<Output> {
        let bin = l2s_bin()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.site(site).ns])
            .arg(&bin)
            .arg("-c")
            .arg(config)
            .args(args);
        run(&mut c)
    }

    /// `l2s-vnf ARGS` that must succeed; returns stdout.
    pub fn l2s_ok(&self, site: &str, args: &[&str]) -> Result<String> {
        succeeded(
            &format!("l2s-vnf {args:?} at site {site}"),
            self.l2s(site, args)?,
        )
    }

    /// `ovs-vsctl` against a site's OVSDB.
    pub fn vsctl(&self, site: &str, args: &[&str]) -> Result<String> {
        let s = self.site(site);
        let mut c = netns(&s.ns, "ovs-vsctl");
        c.arg(format!("--db=unix:{}", s.ovsdb_sock.display()))
            .args(args);
        sh(&mut c)
    }

    /// Ping from a VNF; true when `count` replies came back.
    pub fn ping(&self, from: &Vnf, to: &str, count: u32) -> bool {
        run(netns(&from.ns, "ping").args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            to,
        ]))
        .map(|o| o.status.success())
        .unwrap_or(false)
    }

    /// A ping of `size` bytes of payload that the sender must not fragment (`-M do`): whether
    /// an IP packet of `size` + 28 crosses whole.
    pub fn ping_df(&self, from: &Vnf, to: &str, size: u32) -> bool {
        run(netns(&from.ns, "ping").args([
            "-c",
            "2",
            "-W",
            "2",
            "-s",
            &size.to_string(),
            "-M",
            "do",
            "-q",
            to,
        ]))
        .is_ok_and(|o| o.status.success())
    }

    /// Ping until it works (MAC learning and OVS start-up take a moment), up to `within`.
    pub fn ping_eventually(&self, from: &Vnf, to: &str, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if self.ping(from, to, 1) {
                return self.ping(from, to, 3);
            }
        }
        false
    }

    /// Spawn a long-running process that is killed when the lab is dropped.
    pub fn spawn(&mut self, cmd: &mut Command) -> Result<()> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    /// A TCP transfer of `bytes` from `client` to `server` (iperf3); returns bits/s.
    pub fn tcp_transfer(&self, server: &Vnf, client: &Vnf, bytes: &str) -> Result<f64> {
        iperf3(&server.ns, &server.ip, &client.ns, &["-n", bytes])
    }

    /// Like [`Lab::tcp_transfer`]; returns the bytes the server received.
    pub fn tcp_received(&self, server: &Vnf, client: &Vnf, bytes: &str) -> Result<u64> {
        Ok(self.tcp_transfer_received(server, client, bytes)?.1)
    }

    /// Like [`Lab::tcp_transfer`]; returns bits/s and the bytes the server received.
    pub fn tcp_transfer_received(
        &self,
        server: &Vnf,
        client: &Vnf,
        bytes: &str,
    ) -> Result<(f64, u64)> {
        iperf3_received(&server.ns, &server.ip, &client.ns, &["-n", bytes])
    }

    /// One iperf3 TCP run of `secs` seconds from `client_ns` to a server at `server_ip` in
    /// `server_ns`; returns the receiver's bits/s.
    pub fn iperf(
        &self,
        server_ns: &str,
        server_ip: &str,
        client_ns: &str,
        secs: u32,
    ) -> Result<f64> {
        iperf3(server_ns, server_ip, client_ns, &["-t", &secs.to_string()])
    }

    /// Like [`Lab::iperf`], paced at `rate` (iperf3's `-b`, e.g. `200M`): a service that needs
    /// that much, not a measure of the machine's spare CPU.
    pub fn iperf_paced(
        &self,
        server_ns: &str,
        server_ip: &str,
        client_ns: &str,
        secs: u32,
        rate: &str,
    ) -> Result<f64> {
        iperf3(
            server_ns,
            server_ip,
            client_ns,
            &["-t", &secs.to_string(), "-b", rate],
        )
    }

    /// A numeric attribute of an interface inside a namespace (`/sys/class/net/<dev>/<attr>`).
    pub fn link_attr(&self, ns: &str, dev: &str, attr: &str) -> Option<u64> {
        run(netns(ns, "cat").arg(format!("/sys/class/net/{dev}/{attr}")))
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    }

    /// rx bytes of an interface inside a namespace.
    pub fn rx_bytes(&self, ns: &str, dev: &str) -> u64 {
        self.link_attr(ns, dev, "statistics/rx_bytes").unwrap_or(0)
    }

    /// Interface index of `dev` in `ns` (to prove an object was not recreated).
    pub fn ifindex(&self, ns: &str, dev: &str) -> Option<u32> {
        self.link_attr(ns, dev, "ifindex")
            .and_then(|i| u32::try_from(i).ok())
    }

    /// MTU of `dev` in `ns`.
    pub fn mtu(&self, ns: &str, dev: &str) -> Option<u32> {
        self.link_attr(ns, dev, "mtu")
            .and_then(|m| u32::try_from(m).ok())
    }

    /// Links in a namespace (`ip -o link` names).
    pub fn links(&self, ns: &str) -> Vec<String> {
        sh(netns(ns, "ip").args(["-o", "link", "show"]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.daemons {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, c) in &mut self.charons {
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pf in self.pidfiles.iter().rev() {
            stop_pidfile(pf, &self.dir);
        }
        for s in &self.sites {
            stop_evpn(&s.dir, &self.dir);
        }
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        if std::env::var_os("L2S_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The paper's validation scenario: sites A, B, C; VLAN 101 at all three (VNFs 10.101.0.1-3),
/// VLAN 102 at A and B (10.102.0.1-2). Configs are written in clear-text lab mode;
/// [`PaperLab::secure`] turns them into IPsec ones with a charon per site.
pub struct PaperLab {
    pub lab: Lab,
    pub a101: Vnf,
    pub b101: Vnf,
    pub c101: Vnf,
    pub a102: Vnf,
    pub b102: Vnf,
}

impl PaperLab {
    pub fn new() -> Result<Self> {
        let mut lab = Lab::new(3)?;
        let a101 = lab.add_vnf("a", "acc101", "10.101.0.1/24")?;
        let b101 = lab.add_vnf("b", "acc101", "10.101.0.2/24")?;
        let c101 = lab.add_vnf("c", "acc101", "10.101.0.3/24")?;
        let a102 = lab.add_vnf("a", "acc102", "10.102.0.1/24")?;
        let b102 = lab.add_vnf("b", "acc102", "10.102.0.2/24")?;
        for (site, peers, vlans) in Self::layout() {
            lab.write_config(site, &lab.config(site, &peers, vlans))?;
        }
        Ok(PaperLab {
            lab,
            a101,
            b101,
            c101,
            a102,
            b102,
        })
    }

    /// (site, peers, VLANs) of the scenario.
    pub fn layout() -> [(
        &'static str,
        [&'static str; 2],
        &'static [VlanSpec<'static>],
    ); 3] {
        [
            (
                "a",
                ["b", "c"],
                &[(101, &["acc101"], None), (102, &["acc102"], Some(&["b"]))],
            ),
            (
                "b",
                ["a", "c"],
                &[(101, &["acc101"], None), (102, &["acc102"], Some(&["a"]))],
            ),
            ("c", ["a", "b"], &[(101, &["acc101"], None)]),
        ]
    }

    /// Start charon at every site and write IPsec configs sharing one PSK (`extra`: more
    /// `[ipsec]` keys).
    pub fn secure(&mut self, extra: &str) -> Result<()> {
        let psk = self
            .lab
            .psk_file("psk", "correct-horse-battery-staple-l2s\n")?;
        for (site, peers, vlans) in Self::layout() {
            self.lab.start_charon(site)?;
            let cfg = self
                .lab
                .secure(site, &self.lab.config(site, &peers, vlans), &psk, extra);
            self.lab.write_config(site, &cfg)?;
        }
        Ok(())
    }

    /// Start charon at every site and write IPsec configs authenticating with certificates
    /// from a throw-away federation CA (the recommended mode): each site's certificate and
    /// key in its directory as `site.crt`/`site.key`. Returns the CA.
    pub fn secure_with_certificates(&mut self) -> Result<TestCa> {
        let ca = TestCa::new(&self.lab.dir, "federation-ca")?;
        // `secure` names a PSK file; no peer uses it.
        let psk = self.lab.psk_file("psk", "unused-with-certificates\n")?;
        for (site, peers, vlans) in Self::layout() {
            self.lab.start_charon(site)?;
            let issued = ca.issue(&format!("site-{site}"), &format!("site-{site}"), 365)?;
            let dir = self.lab.site(site).dir.clone();
            let (cert, key) = (dir.join("site.crt"), dir.join("site.key"));
            std::fs::copy(&issued.cert, &cert)?;
            std::fs::copy(&issued.key, &key)?;
            let more = format!(
                "auth = \"pubkey\"\ncert = \"{}\"\nkey = \"{}\"\ncacerts = [\"{}\"]\n",
                cert.display(),
                key.display(),
                ca.cert.display()
            );
            let cfg = self
                .lab
                .secure(site, &self.lab.config(site, &peers, vlans), &psk, &more);
            self.lab.write_config(site, &cfg)?;
        }
        Ok(ca)
    }

    /// Start every site's daemon, give the VNFs the access MTU (as their access network's
    /// DHCP would) and wait until every pair pings.
    pub fn serve(&mut self) -> Result<()> {
        for s in ["a", "b", "c"] {
            self.lab.start_daemon(s)?;
        }
        let mtu = self.lab.status_json("a")?["access_mtu"]
            .as_u64()
            .context("no access_mtu in status")? as u32;
        self.lab.set_vnf_mtu(&self.vnfs(), mtu)?;
        let failed = self.ping_mesh();
        if !failed.is_empty() {
            bail!("not converged: {failed:?}");
        }
        Ok(())
    }

    pub fn vnfs(&self) -> [&Vnf; 5] {
        [&self.a101, &self.b101, &self.c101, &self.a102, &self.b102]
    }

    /// Ping across sites on both VLANs (each may take up to 20 s to start working); returns
    /// the pairs that failed, each described.
    pub fn ping_mesh(&self) -> Vec<String> {
        [
            (&self.a101, &self.b101, "VLAN 101 A -> B"),
            (&self.a101, &self.c101, "VLAN 101 A -> C"),
            (&self.b101, &self.c101, "VLAN 101 B -> C"),
            (&self.a102, &self.b102, "VLAN 102 A -> B"),
        ]
        .into_iter()
        .filter(|(from, to, _)| {
            !self
                .lab
                .ping_eventually(from, &to.ip, Duration::from_secs(20))
        })
        .map(|(from, to, what)| format!("{what} ({} -> {})", from.ip, to.ip))
        .collect()
    }
}

/// A benchmark's `--name VALUE` argument, or `default` when absent or unparsable.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name).map(|i| args.get(i + 1)) {
        None => default,
        Some(v) => v.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{name} needs a value of the right kind (see --help)");
            std::process::exit(2)
        }),
    }
}

/// A benchmark's command line, checked before anything starts: `--help` (or `-h`) prints
/// `usage` and exits; an option not in `options` is refused (a typo must not start the
/// default run, which can take many minutes).
pub fn bench_usage(usage: &str, options: &[&str]) {
    for a in std::env::args().skip(1) {
        if a == "--help" || a == "-h" {
            println!("{usage}");
            std::process::exit(0);
        }
        if a.starts_with('-') && !options.contains(&a.as_str()) {
            eprintln!("unknown option {a}\n{usage}");
            std::process::exit(2);
        }
    }
}

/// A benchmark's `--name 1,2,3` argument, or `default`.
pub fn arg_list(name: &str, default: &[usize]) -> Vec<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Poll `ok` every 10 ms until it holds; panics after `limit` (naming `what`); returns how long
/// it took.
pub fn within(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if ok() {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Lab {
    /// Clear-text VXLAN frames `site`'s guard dropped on the way in (its counters).
    pub fn guard_drops_in(&self, site: &str) -> Option<u64> {
        let out =
            run(netns(&self.site(site).ns, "nft").args(["list", "table", "inet", "l2s_vnf_l2s0"]))
                .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("drop comment") && l.contains(" in\""))
            .map(|l| {
                l.split("counter packets ")
                    .nth(1)
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .sum()
    }

    /// `status --json` of a site (from its daemon when one runs).
    pub fn status_json(&self, site: &str) -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.l2s_ok(site, &["status", "--json"])?,
        )?)
    }

    /// The peers of `site` whose SA its status shows up.
    pub fn sas_up(&self, site: &str) -> usize {
        self.status_json(site)
            .ok()
            .and_then(|st| {
                st["peers"]
                    .as_array()
                    .map(|p| p.iter().filter(|p| p["up"] == true).count())
            })
            .unwrap_or(0)
    }

    /// Whether `site`'s status shows its SA with `peer` (e.g. "site-b") up.
    pub fn sa_up(&self, site: &str, peer: &str) -> bool {
        self.status_json(site).ok().is_some_and(|st| {
            st["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == peer && p["up"] == true)
        })
    }

    /// Bytes `site`'s SAs carried both ways (charon's counters, as status reads them), with
    /// `peer` only, or with every peer: a measurement of IPsec must see them grow.
    pub fn sa_bytes(&self, site: &str, peer: Option<&str>) -> Result<u64> {
        let st = self.status_json(site)?;
        let peers: Vec<&serde_json::Value> = st["peers"]
            .as_array()
            .context("no peers in status")?
            .iter()
            .filter(|p| peer.is_none_or(|name| p["name"] == name))
            .collect();
        if peers.is_empty() {
            bail!("{site}'s status has no peer {peer:?}: {st}");
        }
        // A peer without an SA has counted nothing; an SA without its counters is an error,
        // never a zero that a `>=` could pass.
        let mut sum = 0;
        for p in peers.into_iter().filter(|p| !p["sa"].is_null()) {
            for field in ["bytes_in", "bytes_out"] {
                sum += p["sa"][field].as_u64().with_context(|| {
                    format!("{site}: peer {} has no SA {field}: {p}", p["name"])
                })?;
            }
        }
        Ok(sum)
    }

    /// Whether `site` reports VLAN `vlan` as up (its data path, not only its objects).
    pub fn vlan_up(&self, site: &str, vlan: u16) -> bool {
        self.status_json(site)
            .ok()
            .and_then(|st| {
                st["vlans"]
                    .as_array()?
                    .iter()
                    .find(|v| v["id"] == vlan)
                    .map(|v| v["up"] == true)
            })
            .unwrap_or(false)
    }
}

/// The OVS daemons, by program name (for [`Lab::kill_ovs_daemon`] and
/// [`Lab::start_ovs_daemon`]).
pub const OVSDB_SERVER: &str = "ovsdb-server";
pub const OVS_VSWITCHD: &str = "ovs-vswitchd";

/// What crossed in one [`Lab::encrypted_transfer`].
#[derive(Debug, Clone, Copy)]
pub struct Encrypted {
    /// The receiver's bits/s.
    pub bps: f64,
    /// The bytes the receiver got.
    pub got: u64,
    /// How much the sender's SA with the peer counted meanwhile.
    pub sa: u64,
    /// ESP bytes from the sender's VTEP to the peer's in the capture meanwhile.
    pub esp: u64,
}

impl Lab {
    /// A TCP transfer of `bytes` from `client` (a VNF at `site`) to `server` (at site `peer`,
    /// a letter), proven to have crossed encrypted: within `within`, `site`'s SA with the peer
    /// counts at least every byte the receiver got, and the capture sees at least as many ESP
    /// bytes from `site`'s VTEP to the peer's in this same interval (each ESP packet carries
    /// more than its payload; charon's counters and the capture's file are read a moment
    /// late). iperf3 -n may end before all the client wrote has crossed: what counts is what
    /// the receiver got.
    #[allow(clippy::too_many_arguments)]
    pub fn encrypted_transfer(
        &self,
        cap: &Capture,
        server: &Vnf,
        client: &Vnf,
        site: &str,
        peer: &str,
        bytes: &str,
        within: Duration,
    ) -> Result<Encrypted> {
        let name = format!("site-{peer}");
        self.encrypted_transfer_to(cap, server, client, site, (peer, &name), bytes, within)
    }

    /// [`Lab::encrypted_transfer`] to a peer that `site` knows by another name than
    /// `site-<letter>` (one found through EVPN): `peer` is (its letter, the name).
    #[allow(clippy::too_many_arguments)]
    pub fn encrypted_transfer_to(
        &self,
        cap: &Capture,
        server: &Vnf,
        client: &Vnf,
        site: &str,
        (peer, name): (&str, &str),
        bytes: &str,
        within: Duration,
    ) -> Result<Encrypted> {
        let (src, dst) = (
            self.site(site).underlay_ip.clone(),
            self.site(peer).underlay_ip.clone(),
        );
        let (sa0, esp0) = (self.sa_bytes(site, Some(name))?, cap.esp_bytes(&src, &dst));
        let (bps, got) = self.tcp_transfer_received(server, client, bytes)?;
        if got == 0 {
            bail!("{site} -> {peer}: the transfer delivered nothing");
        }
        let t0 = Instant::now();
        loop {
            let sa = self.sa_bytes(site, Some(name))?.saturating_sub(sa0);
            let esp = cap.esp_bytes(&src, &dst).saturating_sub(esp0);
            if sa >= got && esp >= got {
                return Ok(Encrypted { bps, got, sa, esp });
            }
            if t0.elapsed() > within {
                bail!(
                    "{site} -> {peer}: {got} bytes received, {site}'s SA with it counted {sa}, the underlay carried {esp} ESP bytes {src} -> {dst} (clear text?) ({})",
                    cap.file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A capture of the underlay bridge, running until stopped or dropped.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
    /// tcpdump's own messages (its "listening on" line is the readiness signal).
    log: PathBuf,
    stopped: bool,
}

/// tcpdump's filter for clear-text VXLAN: the port, or a later UDP fragment (IPv4 offset ≠ 0).
pub const CLEAR_TEXT_VXLAN: &str = "udp port 4789 or (ip proto 17 and ip[6:2] & 0x1fff != 0)";

impl Capture {
    /// Start capturing on the lab's underlay bridge (headers only) into `<lab>/<name>.pcap`.
    pub fn start(lab: &Lab, name: &str) -> Result<Capture> {
        Self::on(lab, &lab.underlay_ns, "ul0", name)
    }

    /// Start capturing on `dev` in namespace `ns` (e.g. a VNF's `eth0`).
    pub fn on(lab: &Lab, ns: &str, dev: &str, name: &str) -> Result<Capture> {
        let file = lab.dir.join(format!("{name}.pcap"));
        let log = lab.dir.join(format!("{name}.tcpdump.log"));
        let mut child = netns(ns, "tcpdump")
            // A 16 MiB buffer (the default loses packets while the two cores are busy), each
            // packet handed over at once (not when a ring block is full or a second has passed).
            .args([
                "-i",
                dev,
                "-n",
                "-U",
                "--immediate-mode",
                "-B",
                "16384",
                "-s",
                "128",
                "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        // Ready when tcpdump says it listens (the capture is active), not after a guess.
        let t = Instant::now();
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("listening on")) {
                break;
            }
            if let Some(st) = child.try_wait()? {
                bail!(
                    "tcpdump on {dev} in {ns} ended ({st}) before capturing: {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                bail!("tcpdump on {dev} in {ns} did not start capturing within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Capture {
            child,
            file,
            log,
            stopped: false,
        })
    }

    /// Whether tcpdump is still capturing (a zombie or a gone process is not).
    fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with(['R', 'S', 'D']))
            })
            .unwrap_or(false)
    }

    /// Packets so far matching a tcpdump filter.
    pub fn count(&self, filter: &str) -> usize {
        self.packets(filter).len()
    }

    /// Packets so far matching a tcpdump filter, one line each as tcpdump prints them. A
    /// capture that died, or a file that cannot be read, is a failure — never "no packets".
    pub fn packets(&self, filter: &str) -> Vec<String> {
        assert!(
            self.stopped || self.alive(),
            "the capture into {} is dead: {}",
            self.file.display(),
            std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .trim()
        );
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .arg(filter)
            .output()
            .unwrap_or_else(|e| panic!("cannot run tcpdump -r: {e}"));
        if !out.status.success() {
            // A packet (or, before the first, the file header) being written as we read ends
            // the read early; anything else is a broken capture.
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("truncated dump file"),
                "tcpdump -r {} '{filter}': {}",
                self.file.display(),
                err.trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Bytes of ESP (plain or UDP-encapsulated, as tcpdump gives each packet's ESP length)
    /// so far from `src` to `dst`: a measure of what crossed inside the SAs that does not
    /// rely on charon's counters.
    pub fn esp_bytes(&self, src: &str, dst: &str) -> u64 {
        self.packets(&format!(
            "src {src} and dst {dst} and (esp or udp port 4500)"
        ))
        .iter()
        .filter(|l| l.contains("ESP("))
        .filter_map(|l| l.rsplit("length ").next()?.trim().parse::<u64>().ok())
        .sum()
    }

    /// Clear-text VXLAN packets so far (must always be zero with IPsec on), counting the
    /// later fragments of a fragmented UDP datagram too: they carry no port, so a filter on
    /// 4789 alone would miss VXLAN that was fragmented before encryption.
    pub fn clear_text_vxlan(&self) -> usize {
        self.count(CLEAR_TEXT_VXLAN)
    }

    pub fn stop(&mut self) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stopped = true;
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A background ping of `count` packets every `interval_ms` ms; [`PingStream::finish`] waits for
/// it and says how many came back.
pub struct PingStream(Child, u32);

impl PingStream {
    pub fn start(from: &Vnf, to: &Vnf, count: u32, interval_ms: u32) -> Result<Self> {
        let child = netns(&from.ns, "ping")
            .args([
                "-c",
                &count.to_string(),
                "-i",
                &format!("{:.3}", f64::from(interval_ms) / 1000.0),
                "-W",
                "1",
                "-q",
                &to.ip,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(PingStream(child, count))
    }

    /// (sent, received)
    pub fn finish(self) -> Result<(u32, u32)> {
        let out = self.0.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let received = text
            .split(" received")
            .next()
            .and_then(|s| s.rsplit([' ', ',']).find(|w| !w.is_empty()))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no ping summary in {text}"))?;
        Ok((self.1, received))
    }
}

/// A VNF gone wrong (a loop, a storm): minimum-size broadcast frames (EtherType 0x88b5) out
/// of a device (argv[2]) as fast as one core sends them, for `secs` seconds (argv[1]). The
/// guest lab runs the same script.
const BLAST: &str = include_str!("../guest/lab/storm.py");

impl Lab {
    /// Start a broadcast storm from `from` into the switch (see [`BLAST`]); it ends by itself
    /// after `secs`.
    pub fn blast_broadcast(&mut self, from: &Vnf, secs: u32) -> Result<()> {
        self.spawn(netns(&from.ns, "python3").args(["-c", BLAST, &secs.to_string(), "eth0"]))
    }

    /// The same sender burning the same CPU, into a veth pair inside the VNF (this kernel has
    /// no dummy devices): what the storm costs this machine's shared cores without the switch
    /// seeing a frame of it.
    pub fn blast_nowhere(&mut self, from: &Vnf, secs: u32) -> Result<()> {
        if self.link_attr(&from.ns, "burn0", "ifindex").is_none() {
            sh(netns(&from.ns, "ip")
                .args(["link", "add", "burn0", "type", "veth", "peer", "burn1"]))?;
            for d in ["burn0", "burn1"] {
                sh(netns(&from.ns, "ip").args(["link", "set", d, "up"]))?;
            }
        }
        self.spawn(netns(&from.ns, "python3").args(["-c", BLAST, &secs.to_string(), "burn0"]))
    }

    /// A VNF gone wrong in another way: `count` broadcast frames, each from a source MAC of
    /// its own (locally administered, `02:4c:…`), as a MAC-flooding attack sends them: paced
    /// (50 frames per 5 ms) and sent twice, so that every MAC crosses even where a queue on
    /// the way drops a burst. Returns once all are sent.
    pub fn flood_source_macs(&self, from: &Vnf, count: u32) -> Result<()> {
        const SCRIPT: &str = r"import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('eth0', 0))
for round in range(2):
    for i in range(int(sys.argv[1])):
        s.send(b'\xff' * 6 + b'\x02\x4c' + struct.pack('>I', i) + b'\x88\xb5' + bytes(46))
        if i % 50 == 49:
            time.sleep(0.005)
";
        sh(netns(&from.ns, "python3").args(["-c", SCRIPT, &count.to_string()]))?;
        Ok(())
    }

    /// FDB entries of a site's device other than the all-zero flood entry, as the kernel
    /// lists them (`bridge fdb`).
    pub fn learned_macs(&self, site: &str, dev: &str) -> Result<usize> {
        let out = sh(netns(&self.site(site).ns, "bridge").args(["-j", "fdb", "show", "dev", dev]))?;
        let entries: Vec<serde_json::Value> =
            serde_json::from_str(&out).with_context(|| format!("bridge -j fdb: {out}"))?;
        Ok(entries
            .iter()
            .filter(|e| e["mac"] != "00:00:00:00:00:00")
            .count())
    }

    /// Frames received by a VNF's eth0 so far.
    pub fn vnf_rx_packets(&self, v: &Vnf) -> u64 {
        self.link_attr(&v.ns, "eth0", "statistics/rx_packets")
            .unwrap_or(0)
    }

    /// Flush the neighbour caches of VNFs, so that the next packet needs ARP again — a
    /// broadcast that must cross the flood path.
    pub fn forget_neighbours(&self, vnfs: &[&Vnf]) {
        for v in vnfs {
            let _ = run(netns(&v.ns, "ip").args(["neigh", "flush", "all"]));
        }
    }

    /// The service between two VNFs, judged as a user would: neighbour caches flushed, then a
    /// ping and a TCP transfer must both succeed. Retried until `limit`; returns how long it
    /// took, or what failed last.
    pub fn service_within(&self, from: &Vnf, to: &Vnf, limit: Duration) -> Result<Duration> {
        let t = Instant::now();
        self.forget_neighbours(&[from, to]);
        let mut last = String::new();
        while t.elapsed() < limit {
            if !self.ping(from, &to.ip, 1) {
                last = format!("ping {} -> {} failed", from.ip, to.ip);
                continue;
            }
            match iperf3(&to.ns, &to.ip, &from.ns, &["-n", "256K"]) {
                Ok(_) => return Ok(t.elapsed()),
                Err(e) => last = format!("TCP {} -> {}: {e}", from.ip, to.ip),
            }
        }
        bail!("no service within {limit:?}: {last}")
    }
}

/// Faults an L2S VM meets in the field, made on purpose (the faults-under-load test and the
/// soak benchmark).
impl Lab {
    /// Take a site's underlay interface down or up (a cable pulled, a provider outage).
    pub fn set_underlay(&self, site: &str, up: bool) -> Result<()> {
        sh(netns(&self.site(site).ns, "ip").args([
            "link",
            "set",
            "eth1",
            if up { "up" } else { "down" },
        ]))?;
        Ok(())
    }

    /// Drop `pct` % of the IPsec packets crossing the underlay (`None`: none). This kernel has
    /// no netem, so loss comes from an nftables rule on the underlay bridge, and no delay.
    pub fn set_underlay_loss(&self, pct: Option<u32>) -> Result<()> {
        let _ =
            run(netns(&self.underlay_ns, "nft").args(["delete", "table", "bridge", "l2slab_loss"]));
        if let Some(pct) = pct {
            let rules = format!(
                "table bridge l2slab_loss {{\n  chain forward {{\n    type filter hook forward priority 0;\n    udp dport 4500 numgen random mod 100 < {pct} drop\n    ip protocol esp numgen random mod 100 < {pct} drop\n  }}\n}}\n"
            );
            let file = self.dir.join("loss.nft");
            std::fs::write(&file, rules)?;
            sh(netns(&self.underlay_ns, "nft").arg("-f").arg(&file))?;
        }
        Ok(())
    }

    /// Ask charon at `site` to rekey its IKE_SA with `peer` (e.g. "site-b"), without waiting.
    pub fn rekey_ike(&self, site: &str, peer: &str) -> Result<()> {
        let vici = self.site(site).dir.join("charon.vici");
        sh(Command::new("swanctl").args([
            "--rekey",
            "--ike",
            &format!("l2s-vnf:l2s0:{peer}"),
            "--uri",
            &format!("unix://{}", vici.display()),
        ]))?;
        Ok(())
    }

    /// A site's L2S VM goes down hard and boots again: the daemon, charon and OVS die
    /// (SIGKILL); what the kernel held (VXLAN devices, nftables, policy rules, routes, MTUs of
    /// the access NICs) is gone; OVS's database survives on disk. Then everything starts from
    /// the site's config, as at boot.
    pub fn reboot_site(&mut self, site: &str) -> Result<()> {
        let _ = self.stop_daemon(site, libc::SIGKILL);
        self.kill_charon(site);
        self.kill_ovs(site);
        let ns = self.site(site).ns.clone();
        for dev in self.links(&ns) {
            if dev.starts_with("l2s") || dev.starts_with("ipsec") {
                let _ = run(netns(&ns, "ip").args(["link", "del", &dev]));
            } else if dev.starts_with("acc") {
                let _ = run(netns(&ns, "ip").args(["link", "set", &dev, "mtu", "1500"]));
            }
        }
        let _ = run(netns(&ns, "nft").args(["flush", "ruleset"]));
        while run(netns(&ns, "ip").args(["rule", "del", "pref", "100"]))
            .is_ok_and(|o| o.status.success())
        {}
        let _ = run(netns(&ns, "ip").args(["route", "flush", "table", "220"]));
        self.restart_ovs(site)?;
        self.start_charon(site)?;
        self.start_daemon(site)?;
        Ok(())
    }
}

/// The faults of the faults-under-load test and the soak benchmark, each alone. Most strike
/// one site, and each of those at site A (the initiator of both its connections) and at site
/// C (the responder of both); B is the initiator towards C and the responder towards A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A site's underlay link down for 5 s, then up.
    UnderlayDown(&'static str),
    /// 5 % loss on the underlay for 10 s with forced IKE rekeys from site A.
    LossWithRekeys,
    /// A site's ovs-vswitchd killed alone, started again after 1 s.
    VswitchdKilled(&'static str),
    /// A site's ovsdb-server killed alone, started again after 1 s.
    OvsdbKilled(&'static str),
    /// A site's charon killed while an IKE rekey it started is in flight (the peer's answer
    /// held back on the underlay, and charon's log read to prove it), started again after 1 s.
    CharonKilledMidRekey(&'static str),
    /// A site's L2S VM rebooted (see [`Lab::reboot_site`]).
    SiteRebooted(&'static str),
}

/// How a site of the paper lab stands in IKE (the lower VTEP address initiates).
fn ike_role(site: &str) -> &'static str {
    match site {
        "a" => "the initiator of both its connections",
        "b" => "initiator towards C, responder towards A",
        _ => "the responder of both its connections",
    }
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::UnderlayDown("c"),
        Fault::UnderlayDown("a"),
        Fault::LossWithRekeys,
        Fault::VswitchdKilled("b"),
        Fault::VswitchdKilled("a"),
        Fault::VswitchdKilled("c"),
        Fault::OvsdbKilled("b"),
        Fault::OvsdbKilled("a"),
        Fault::OvsdbKilled("c"),
        Fault::CharonKilledMidRekey("c"),
        Fault::CharonKilledMidRekey("a"),
        Fault::SiteRebooted("c"),
        Fault::SiteRebooted("a"),
    ];

    pub fn describe(self) -> String {
        let at = |s: &str| format!("site {} ({})", s.to_uppercase(), ike_role(s));
        match self {
            Fault::UnderlayDown(s) => format!("underlay of {} down for 5 s", at(s)),
            Fault::LossWithRekeys => {
                "5 % loss on the underlay for 10 s, with forced IKE rekeys".into()
            }
            Fault::VswitchdKilled(s) => {
                format!(
                    "ovs-vswitchd of {} killed alone, restarted after 1 s",
                    at(s)
                )
            }
            Fault::OvsdbKilled(s) => {
                format!(
                    "ovsdb-server of {} killed alone, restarted after 1 s",
                    at(s)
                )
            }
            Fault::CharonKilledMidRekey(s) => {
                format!("charon of {} killed in the middle of an IKE rekey", at(s))
            }
            Fault::SiteRebooted(s) => format!(
                "{} rebooted (daemon, charon, OVS and kernel state gone)",
                at(s)
            ),
        }
    }

    /// The site it strikes (the loss strikes the underlay, seen from site A and B's pair).
    pub fn site(self) -> &'static str {
        match self {
            Fault::UnderlayDown(s)
            | Fault::VswitchdKilled(s)
            | Fault::OvsdbKilled(s)
            | Fault::CharonKilledMidRekey(s)
            | Fault::SiteRebooted(s) => s,
            Fault::LossWithRekeys => "b",
        }
    }

    /// Roughly how long it lasts, in seconds.
    pub fn secs(self) -> u32 {
        match self {
            Fault::UnderlayDown(_) | Fault::SiteRebooted(_) => 5,
            Fault::LossWithRekeys => 10,
            Fault::CharonKilledMidRekey(_) => 3,
            Fault::VswitchdKilled(_) | Fault::OvsdbKilled(_) => 2,
        }
    }

    /// Make it happen and clear it again (returns when the fault has cleared).
    pub fn inflict(self, lab: &mut Lab) -> Result<()> {
        let pause = |s: f64| std::thread::sleep(Duration::from_secs_f64(s));
        match self {
            Fault::UnderlayDown(s) => {
                lab.set_underlay(s, false)?;
                pause(5.0);
                lab.set_underlay(s, true)?;
            }
            Fault::LossWithRekeys => {
                lab.set_underlay_loss(Some(5))?;
                for _ in 0..2 {
                    lab.rekey_ike("a", "site-b")?;
                    lab.rekey_ike("a", "site-c")?;
                    pause(5.0);
                }
                lab.set_underlay_loss(None)?;
            }
            Fault::VswitchdKilled(s) | Fault::OvsdbKilled(s) => {
                let which = if matches!(self, Fault::VswitchdKilled(_)) {
                    OVS_VSWITCHD
                } else {
                    OVSDB_SERVER
                };
                lab.kill_ovs_daemon(s, which);
                pause(1.0);
                lab.start_ovs_daemon(s, which)?;
            }
            Fault::CharonKilledMidRekey(s) => {
                let peer = if s == "c" { "a" } else { "c" };
                lab.kill_charon_mid_rekey(s, peer)?;
                pause(1.0);
                lab.start_charon(s)?;
            }
            Fault::SiteRebooted(s) => lab.reboot_site(s)?,
        }
        Ok(())
    }
}

impl Lab {
    /// Kill charon at `site` while an IKE rekey with `peer` (a site letter) that it started
    /// is in flight: the peer's IKE messages to it are held back on the underlay (ESP passes),
    /// the rekey is asked for, and once charon's log shows the CREATE_CHILD_SA request sent
    /// and no rekey completed, charon is killed; then the hold is lifted. Fails when the log
    /// does not prove the rekey was in flight.
    pub fn kill_charon_mid_rekey(&mut self, site: &str, peer: &str) -> Result<()> {
        let log = self.site(site).dir.join("charon.log");
        let from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        let since = || {
            std::fs::read(&log)
                .map(|b| String::from_utf8_lossy(b.get(from..).unwrap_or_default()).into_owned())
                .unwrap_or_default()
        };
        self.hold_ike(peer, site, true)?;
        let killed = (|| -> Result<String> {
            self.rekey_ike(site, &format!("site-{peer}"))?;
            let t = Instant::now();
            while !since().contains("generating CREATE_CHILD_SA request") {
                if t.elapsed() > Duration::from_secs(5) {
                    bail!(
                        "charon at {site} never sent the rekey request:\n{}",
                        since()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            self.kill_charon(site);
            Ok(since())
        })();
        self.hold_ike(peer, site, false)?;
        let text = killed?;
        if text.contains("rekeyed between") {
            bail!("the rekey completed before charon at {site} was killed:\n{text}");
        }
        Ok(())
    }

    /// Drop (or stop dropping) IKE messages from site `from` to site `to` on the underlay
    /// bridge: UDP 500, and UDP 4500 with the non-ESP marker (ESP in UDP passes).
    pub fn hold_ike(&self, from: &str, to: &str, hold: bool) -> Result<()> {
        let table = format!("l2slab_hold_{from}{to}");
        let _ = run(netns(&self.underlay_ns, "nft").args(["delete", "table", "bridge", &table]));
        if hold {
            let (src, dst) = (&self.site(from).underlay_ip, &self.site(to).underlay_ip);
            let rules = format!(
                "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority -1;\n    ip saddr {src} ip daddr {dst} udp sport 500 drop\n    ip saddr {src} ip daddr {dst} udp sport 4500 @th,64,32 0 drop\n  }}\n}}\n"
            );
            let file = self.dir.join(format!("{table}.nft"));
            std::fs::write(&file, rules)?;
            sh(netns(&self.underlay_ns, "nft").arg("-f").arg(&file))?;
        }
        Ok(())
    }
}

impl PaperLab {
    /// The pair of VNFs a fault cuts off, and one it must leave alone (if any).
    pub fn pairs_for(&self, f: Fault) -> ((&Vnf, &Vnf), Option<(&Vnf, &Vnf)>) {
        match f.site() {
            _ if f == Fault::LossWithRekeys => ((&self.a101, &self.b101), None),
            "c" => ((&self.a101, &self.c101), Some((&self.a102, &self.b102))),
            "a" => ((&self.a101, &self.b101), Some((&self.c101, &self.b101))),
            _ => ((&self.a102, &self.b102), Some((&self.a101, &self.c101))),
        }
    }
}

/// The project's Debian package, built once per test process with cargo-deb (from
/// tests/deps.sh): its path.
pub fn package() -> Result<PathBuf> {
    static DEB: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DEB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = run(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&root)
                .args(["deb", "-p", "l2s-vnf", "--locked"]),
        )
        .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "cargo deb failed:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        text.lines()
            .rev()
            .map(str::trim)
            .find(|l| l.ends_with(".deb"))
            .map(PathBuf::from)
            .ok_or_else(|| format!("no .deb named in cargo deb's output:\n{text}"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A throw-away certification authority made with strongSwan's `pki` tool, as an operator
/// federation would (README "Certificates"): ECDSA P-256 keys, PEM files.
pub struct TestCa {
    pub dir: PathBuf,
    pub name: String,
    pub cert: PathBuf,
    key: PathBuf,
    crls: std::cell::Cell<u32>,
}

/// One issued certificate and its key (mode 0600).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn pki(args: &[&str], out: &Path) -> Result<()> {
    let o = Command::new("pki")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running strongSwan's pki (package strongswan-pki)")?;
    if !o.status.success() || o.stdout.is_empty() {
        bail!(
            "pki {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    std::fs::write(out, &o.stdout)?;
    Ok(())
}

/// A fresh ECDSA P-256 key (mode 0600).
fn new_key(path: &Path) -> Result<()> {
    pki(
        &[
            "--gen",
            "--type",
            "ecdsa",
            "--size",
            "256",
            "--outform",
            "pem",
        ],
        path,
    )?;
    private_file(path)
}

fn private_file(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

impl TestCa {
    /// A self-signed CA `CN=<name>` under `dir/<name>/`.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let key = dir.join("ca.key");
        let cert = dir.join("ca.crt");
        new_key(&key)?;
        let dn = format!("O=L2S Test, CN={name}");
        pki(
            &[
                "--self",
                "--ca",
                "--lifetime",
                "3650",
                "--in",
                path_str(&key),
                "--type",
                "ecdsa",
                "--dn",
                &dn,
                "--outform",
                "pem",
            ],
            &cert,
        )?;
        Ok(TestCa {
            dir,
            name: name.into(),
            cert,
            key,
            crls: std::cell::Cell::new(0),
        })
    }

    /// A certificate for `id` (subject `O=L2S Test, CN=<id>`, subjectAltName `<id>`) with a
    /// fresh key, valid for `days`, saved as `<file>.crt`/`<file>.key`.
    pub fn issue(&self, file: &str, id: &str, days: u32) -> Result<Issued> {
        self.issue_with(file, id, &["--lifetime", &days.to_string()])
    }

    /// Like [`TestCa::issue`], valid between two `YYYY-MM-DD HH:MM:SS` UTC times.
    pub fn issue_between(&self, file: &str, id: &str, from: &str, to: &str) -> Result<Issued> {
        self.issue_with(
            file,
            id,
            &[
                "--dateform",
                "%Y-%m-%d %H:%M:%S",
                "--not-before",
                from,
                "--not-after",
                to,
            ],
        )
    }

    fn issue_with(&self, file: &str, id: &str, validity: &[&str]) -> Result<Issued> {
        let key = self.dir.join(format!("{file}.key"));
        let cert = self.dir.join(format!("{file}.crt"));
        new_key(&key)?;
        let dn = format!("O=L2S Test, CN={id}");
        let mut args = vec![
            "--issue",
            "--cacert",
            path_str(&self.cert),
            "--cakey",
            path_str(&self.key),
            "--in",
            path_str(&key),
            "--type",
            "priv",
            "--dn",
            &dn,
            "--san",
            id,
            "--outform",
            "pem",
        ];
        args.extend_from_slice(validity);
        pki(&args, &cert)?;
        Ok(Issued { cert, key })
    }

    /// A CRL revoking `revoked` (each a certificate file); every new CRL numbers after the
    /// last, as a CA publishes them.
    pub fn crl(&self, revoked: &[&Path]) -> Result<PathBuf> {
        self.sign_crl(revoked, true)
    }

    /// A CRL revoking `revoked` only (not what earlier lists revoked).
    pub fn crl_alone(&self, revoked: &[&Path]) -> Result<PathBuf> {
        self.sign_crl(revoked, false)
    }

    fn sign_crl(&self, revoked: &[&Path], chained: bool) -> Result<PathBuf> {
        let n = self.crls.get() + 1;
        let out = self.dir.join(format!("crl{n}.pem"));
        let mut args = vec![
            "--signcrl".to_string(),
            "--cacert".into(),
            path_str(&self.cert).into(),
            "--cakey".into(),
            path_str(&self.key).into(),
            "--lifetime".into(),
            "30".into(),
            "--outform".into(),
            "pem".into(),
            "--reason".into(),
            "key-compromise".into(),
        ];
        if n > 1 && chained {
            args.push("--lastcrl".into());
            args.push(path_str(&self.dir.join(format!("crl{}.pem", n - 1))).into());
        }
        for r in revoked {
            args.push("--cert".into());
            args.push(path_str(r).into());
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        pki(&a, &out)?;
        self.crls.set(n);
        Ok(out)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// The serial of a PEM certificate as l2s-vnf shows it (lowercase hex bytes, no colons).
pub fn cert_serial(cert: &Path) -> Result<String> {
    let o = sh(Command::new("openssl").args(["x509", "-noout", "-serial", "-in", path_str(cert)]))?;
    Ok(o.trim().trim_start_matches("serial=").to_ascii_lowercase())
}

/// A VXLAN frame in clear text, crafted by hand: outer UDP to `dst`:4789, VNI 101, carrying
/// an Ethernet broadcast with IPv4/UDP to 10.101.0.255:`port`.
pub fn forge_vxlan(rogue_ns: &str, dst: &str, port: u16) -> Result<()> {
    let code = format!(
        r#"
import socket, struct
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
payload = b'forged-l2s'
udp = struct.pack('!HHHH', 40000, {port}, 8 + len(payload), 0) + payload
src = socket.inet_aton('10.101.0.66'); dst = socket.inet_aton('10.101.0.255')
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, dst)
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = b'\xff' * 6 + b'\x02\x00\x00\x00\x00\x66' + b'\x08\x00'
vxlan = struct.pack('!II', 0x08000000, 101 << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5): s.sendto(vxlan + eth + ip + udp, ('{dst}', 4789))
"#
    );
    let out = run(netns(rogue_ns, "python3").args(["-c", &code]))?;
    if !out.status.success() {
        bail!(
            "forging VXLAN failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Listen on a VNF for UDP to `port` for `secs`; the process exits 0 if anything arrived.
/// Returns once the socket is bound (a listener that never bound would pass "nothing
/// arrived" tests by itself), or fails.
pub fn listen_udp(vnf: &Vnf, port: u16, secs: u32) -> Result<Child> {
    let code = format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\nprint('bound', flush=True)\ns.settimeout({secs})\ntry:\n  s.recvfrom(100); print('received', flush=True); sys.exit(0)\nexcept socket.timeout:\n  sys.exit(1)\n"
    );
    let mut child = netns(&vnf.ns, "python3")
        .args(["-c", &code])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("listener's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // Read every line (the pipe stays open until the listener ends: a closed pipe would
    // fail its last print), reporting the first.
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for (i, line) in std::io::BufReader::new(out).lines().enumerate() {
            if i == 0 {
                let _ = tx.send(line.unwrap_or_default());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(l) if l.trim() == "bound" => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the listener on {} port {port} did not bind: {other:?}",
                vnf.ns
            )
        }
    }
}

#[cfg(test)]
mod tests {
    /// Without `L2S_ALLOW_SKIP=1` a test that cannot run fails; with it, it skips.
    #[test]
    fn a_skip_is_a_failure_unless_asked_for() {
        let allowed = std::env::var("L2S_ALLOW_SKIP").as_deref() == Ok("1");
        let r = std::panic::catch_unwind(|| super::skip_or_fail("a reason"));
        assert_eq!(r.is_err(), !allowed);
    }
}
