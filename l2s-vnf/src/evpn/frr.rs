//! FRR's daemons as l2s-vnf's own supervised children: zebra in the control namespace (a
//! site only), bgpd in the instance's namespace. Their config, sockets, pid files and logs
//! live in the instance's own directory (`base::names::evpn_dir`); the system's FRR service
//! and `/etc/frr` are never touched.
//!
//! A child that exits is started again at the next check — at once the first time, then
//! after a pause that doubles (1 s … 30 s) while it keeps exiting; status says which daemon
//! and why. zebra drops what a dead bgpd had it install, so the daemon keeps the last routes
//! it read (the data plane never empties because FRR went away).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{routes, EvpnError};

pub const ZEBRA: &str = "/usr/lib/frr/zebra";
pub const BGPD: &str = "/usr/lib/frr/bgpd";
pub const VTYSH: &str = "/usr/bin/vtysh";
/// The user FRR's daemons drop to (Debian's `frr` package creates it).
pub const FRR_USER: &str = "frr";
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// How long bgpd's start waits for a starting zebra's socket.
const ZEBRA_READY: Duration = Duration::from_secs(3);
/// How long vtysh may take to answer one question.
const VTYSH_LIMIT: Duration = Duration::from_secs(5);
/// After a question went unanswered, how long the others fail at once.
const VTYSH_QUIET: Duration = Duration::from_secs(3);
/// zebra's netlink receive buffer: thousands of VNIs come in one burst.
const ZEBRA_NL_BUFFER: &str = "33554432";

/// A child's output, or `None` when it did not exit within `limit` (it is killed). Its pipes
/// are read while it runs, so a large answer never blocks it.
fn output_within(
    mut child: Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::Output>> {
    use std::io::Read;
    fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Some(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

/// The capabilities EVPN needs beyond the base unit's (bit numbers of `capability.h`).
const EVPN_CAPS: [(u32, &str); 4] = [
    (21, "CAP_SYS_ADMIN"),
    (10, "CAP_NET_BIND_SERVICE"),
    (7, "CAP_SETUID"),
    (6, "CAP_SETGID"),
];

/// Why this process may not run EVPN's control plane (the hardened unit without its EVPN
/// drop-in), from its effective capabilities; `None` when it may.
pub fn sandbox_problem() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())?;
    let lacking = lacking(eff);
    (!lacking.is_empty()).then(|| {
        format!(
            "this process lacks {} (under systemd: install /usr/share/l2s-vnf/systemd/l2s-vnf-evpn.conf as /etc/systemd/system/l2s-vnf.service.d/evpn.conf, then `systemctl daemon-reload`)",
            lacking.join(", ")
        )
    })
}

/// The capabilities EVPN needs that an effective set `eff` lacks.
fn lacking(eff: u64) -> Vec<&'static str> {
    EVPN_CAPS
        .iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// What is missing for EVPN on this machine (`check` says it).
pub fn missing() -> Vec<&'static str> {
    [ZEBRA, BGPD, VTYSH]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect()
}

/// One supervised FRR daemon.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Option<Child>,
    /// How many times it was started again after exiting.
    restarts: u32,
    last_exit: Option<String>,
    not_before: Instant,
    pause: Duration,
}

impl Proc {
    fn new(name: &'static str) -> Self {
        Proc {
            name,
            child: None,
            restarts: 0,
            last_exit: None,
            not_before: Instant::now(),
            pause: Duration::ZERO,
        }
    }

    /// Whether it runs; notes an exit.
    fn alive(&mut self) -> bool {
        let Some(c) = &mut self.child else {
            return false;
        };
        match c.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                self.last_exit = Some(format!("{} exited ({st})", self.name));
                self.child = None;
                self.not_before = Instant::now() + self.pause;
                self.pause = (self.pause * 2).clamp(RESTART_MIN, RESTART_MAX);
                false
            }
            Err(_) => false,
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What status says about FRR.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FrrState {
    pub zebra_running: Option<bool>,
    pub bgpd_running: bool,
    pub restarts: u32,
    /// Why a daemon last went away (`bgpd exited (signal: 9)`), while it matters.
    pub last_exit: Option<String>,
}

/// The FRR daemons of one instance.
#[derive(Debug)]
pub struct Frr {
    dir: PathBuf,
    /// The control namespace zebra runs in (`None`: a reflector, bgpd alone).
    zebra_ns: Option<String>,
    zebra: Proc,
    bgpd: Proc,
    bgpd_conf: String,
    /// Daemons a previous run left (a daemon killed with SIGKILL cannot end its children)
    /// were ended.
    reaped: bool,
    /// When a question to FRR last went unanswered (see [`Frr::vtysh`]).
    unanswered: std::cell::Cell<Option<Instant>>,
}

impl Drop for Frr {
    fn drop(&mut self) {
        self.bgpd.stop();
        self.zebra.stop();
    }
}

fn chown_to_frr(path: &Path) -> Result<(), EvpnError> {
    let user = nix::unistd::User::from_name(FRR_USER)
        .ok()
        .flatten()
        .ok_or_else(|| {
            EvpnError::Missing(format!("the `{FRR_USER}` user (Debian's frr package)"))
        })?;
    nix::unistd::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| EvpnError::Spawn(format!("chown {}", path.display()), e.into()))
}

impl Frr {
    /// `zebra_ns`: the control namespace of a site; `None` for a reflector.
    pub fn new(dir: PathBuf, zebra_ns: Option<String>) -> Self {
        Frr {
            dir,
            zebra_ns,
            zebra: Proc::new("zebra"),
            bgpd: Proc::new("bgpd"),
            bgpd_conf: String::new(),
            reaped: false,
            unanswered: std::cell::Cell::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).to_string_lossy().into_owned()
    }

    /// Write the configs and start whatever is not running (a changed bgpd config restarts
    /// bgpd). `listen`: the address bgpd listens on and speaks from.
    pub fn ensure(
        &mut self,
        bgpd_conf: &str,
        zebra_conf: &str,
        listen: IpAddr,
    ) -> Result<(), EvpnError> {
        let missing = missing();
        if !missing.is_empty() {
            return Err(EvpnError::Missing(format!(
                "{} (install Debian's `frr` package; its own service may stay disabled)",
                missing.join(", ")
            )));
        }
        if !self.reaped {
            self.reap_stale();
            self.reaped = true;
        }
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| EvpnError::Spawn(format!("mkdir {}", self.dir.display()), e))?;
            chown_to_frr(&self.dir)?;
        }
        // FRR's daemons read their config after dropping to the frr user: under the unit's
        // umask (0077) a file of root's would be unreadable, and bgpd would run empty.
        let write = |f: &str, text: &str| {
            let path = self.dir.join(f);
            std::fs::write(&path, text).map_err(|e| EvpnError::Spawn(format!("write {f}"), e))?;
            chown_to_frr(&path)
        };
        let dir = self.path("");
        let dir = dir.trim_end_matches('/').to_string();
        let zserv = self.path("zserv.api");
        if let Some(ns) = self.zebra_ns.clone() {
            if !self.zebra.alive() && Instant::now() >= self.zebra.not_before {
                write("zebra.conf", zebra_conf)?;
                // A socket file left by a dead zebra would take bgpd's first connection: FRR's
                // client then waits 10 s before trying again (routes 10 s late).
                let _ = std::fs::remove_file(&zserv);
                let restarted = self.zebra.last_exit.is_some();
                let child = Command::new("ip")
                    .args(["netns", "exec", &ns, ZEBRA])
                    .args(["-u", FRR_USER, "-g", FRR_USER, "-s", ZEBRA_NL_BUFFER])
                    .args([
                        "-f",
                        &self.path("zebra.conf"),
                        "-i",
                        &self.path("zebra.pid"),
                    ])
                    .args(["-z", &zserv, "--vty_socket", &dir, "-P", "0"])
                    .args(["--log", &format!("file:{}", self.path("zebra.log"))])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| EvpnError::Spawn("zebra".into(), e))?;
                self.zebra.child = Some(child);
                if restarted {
                    self.zebra.restarts += 1;
                }
            }
        }
        if self.bgpd_conf != bgpd_conf && self.bgpd.alive() {
            tracing::info!("bgpd's config changed: restarting it");
            self.bgpd.stop();
        }
        if !self.bgpd.alive() && Instant::now() >= self.bgpd.not_before {
            if self.zebra_ns.is_some() {
                // bgpd's first connection to zebra must find it listening (see above).
                let t = Instant::now();
                while !Path::new(&zserv).exists() && t.elapsed() < ZEBRA_READY {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            write("bgpd.conf", bgpd_conf)?;
            let restarted = self.bgpd.last_exit.is_some();
            let mut cmd = Command::new(BGPD);
            cmd.args(["-u", FRR_USER, "-g", FRR_USER])
                .args(["-f", &self.path("bgpd.conf"), "-i", &self.path("bgpd.pid")])
                .args(["--vty_socket", &dir, "-P", "0", "-l", &listen.to_string()])
                .args(["--log", &format!("file:{}", self.path("bgpd.log"))]);
            if self.zebra_ns.is_some() {
                cmd.args(["-z", &zserv]);
            } else {
                cmd.arg("-Z");
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| EvpnError::Spawn("bgpd".into(), e))?;
            self.bgpd.child = Some(child);
            self.bgpd_conf = bgpd_conf.to_string();
            if restarted {
                self.bgpd.restarts += 1;
            }
        }
        Ok(())
    }

    /// End FRR daemons an earlier run of this instance left running: those named by our pid
    /// files whose command line names our directory (a recycled pid is never touched).
    fn reap_stale(&self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let dir = self.dir.to_string_lossy().into_owned();
        for f in ["bgpd.pid", "zebra.pid"] {
            let Ok(text) = std::fs::read_to_string(self.dir.join(f)) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !String::from_utf8_lossy(&cmdline).contains(&dir) {
                continue;
            }
            tracing::info!(pid, "ending {f}'s daemon left by an earlier run");
            let pid = Pid::from_raw(pid);
            let _ = kill(pid, Signal::SIGTERM);
            let t = Instant::now();
            while kill(pid, None).is_ok() && t.elapsed() < Duration::from_secs(3) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    pub fn state(&mut self) -> FrrState {
        let zebra_running = self.zebra_ns.is_some().then(|| self.zebra.alive());
        let bgpd_running = self.bgpd.alive();
        FrrState {
            zebra_running,
            bgpd_running,
            restarts: self.zebra.restarts + self.bgpd.restarts,
            last_exit: self
                .bgpd
                .last_exit
                .clone()
                .or_else(|| self.zebra.last_exit.clone()),
        }
    }

    /// The pid of bgpd and zebra (for status, metrics and tests).
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        (
            self.bgpd.child.as_ref().map(Child::id),
            self.zebra.child.as_ref().map(Child::id),
        )
    }

    /// One question to this instance's FRR. A daemon that does not answer within
    /// [`VTYSH_LIMIT`] (stopped, or swamped) fails the question instead of stalling the
    /// daemon's loop, and for [`VTYSH_QUIET`] after that the other questions fail at once.
    fn vtysh(&self, cmd: &str) -> Result<String, EvpnError> {
        if let Some(at) = self.unanswered.get() {
            if at.elapsed() < VTYSH_QUIET {
                return Err(EvpnError::Command {
                    what: format!("vtysh -c {cmd:?}"),
                    stderr: format!(
                        "FRR did not answer within {} s a moment ago",
                        VTYSH_LIMIT.as_secs()
                    ),
                });
            }
        }
        let child = Command::new(VTYSH)
            .args([
                "--vty_socket",
                self.path("").trim_end_matches('/'),
                "-c",
                cmd,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| EvpnError::Spawn("vtysh".into(), e))?;
        let out = match output_within(child, VTYSH_LIMIT) {
            Ok(Some(out)) => out,
            Ok(None) => {
                self.unanswered.set(Some(Instant::now()));
                return Err(EvpnError::Command {
                    what: format!("vtysh -c {cmd:?}"),
                    stderr: format!("no answer within {} s", VTYSH_LIMIT.as_secs()),
                });
            }
            Err(e) => return Err(EvpnError::Spawn("vtysh".into(), e)),
        };
        self.unanswered.set(None);
        if !out.status.success() {
            return Err(EvpnError::Command {
                what: format!("vtysh -c {cmd:?}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The remote VTEPs per VNI and the remote MACs bgpd holds now.
    pub fn discovered(&self, asn: u32, own: IpAddr) -> Result<routes::Discovered, EvpnError> {
        let parse = |e: routes::RoutesError| EvpnError::Parse(e.to_string());
        let json = self.vtysh("show bgp l2vpn evpn route type multicast json")?;
        let mut found = routes::parse_imet(&json, asn, own).map_err(parse)?;
        let json = self.vtysh("show bgp l2vpn evpn route type macip json")?;
        found.macs = routes::parse_macs(&json, asn, own).map_err(parse)?;
        Ok(found)
    }

    /// How many UPDATE messages bgpd has received, over all its neighbours (a few hundred bytes
    /// per neighbour to ask; the route table can be megabytes).
    pub fn updates_received(&self) -> Result<u64, EvpnError> {
        let json = self.vtysh("show bgp neighbors json")?;
        routes::parse_updates_received(&json).map_err(|e| EvpnError::Parse(e.to_string()))
    }

    /// bgpd's sessions.
    pub fn sessions(&self) -> Result<Vec<routes::BgpSession>, EvpnError> {
        let json = self.vtysh("show bgp l2vpn evpn summary json")?;
        routes::parse_summary(&json).map_err(|e| EvpnError::Parse(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capabilities_evpn_needs_are_named_when_lacking() {
        // The base unit's set: CAP_NET_ADMIN (12) alone.
        assert_eq!(
            lacking(1 << 12),
            vec![
                "CAP_SYS_ADMIN",
                "CAP_NET_BIND_SERVICE",
                "CAP_SETUID",
                "CAP_SETGID"
            ]
        );
        let drop_in = (1 << 12) | (1 << 21) | (1 << 10) | (1 << 7) | (1 << 6);
        assert!(lacking(drop_in).is_empty());
    }

    #[test]
    fn a_child_that_does_not_answer_in_time_is_killed_and_one_that_does_is_read_whole() {
        let slow = Command::new("sleep")
            .arg("10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        assert!(output_within(slow, Duration::from_millis(200))
            .unwrap()
            .is_none());
        assert!(t.elapsed() < Duration::from_secs(5));
        // More than a pipe holds: read while it runs, never a deadlock.
        let big = Command::new("sh")
            .args(["-c", "head -c 300000 /dev/zero; echo oops >&2; exit 3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = output_within(big, Duration::from_secs(20))
            .unwrap()
            .unwrap();
        assert_eq!(out.stdout.len(), 300_000);
        assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
        assert_eq!(out.status.code(), Some(3));
    }
}
