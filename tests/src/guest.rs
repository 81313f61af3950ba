//! The guest lab: the production stack in a QEMU guest running Debian 12 with Debian's own
//! kernel — the OVS kernel datapath, kernel ESP in transport mode, systemd, cloud-init and
//! the project's .deb — beside the namespace lab (which runs on this machine's kernel, with
//! the userspace datapath and charon's libipsec).
//!
//! - [`Image::ensure`] builds the guest image from Debian's packages (`tests/guest/`), cached
//!   by content: a rebuild only when the recipe or the .deb's declared dependencies change.
//!   The .deb itself is installed at boot, by the project's cloud-init user-data.
//! - [`Guest::boot`] boots it (KVM when a guest really runs under it — probed by booting —
//!   else TCG), with a NoCloud seed and the .deb served to the guest over QEMU's user
//!   network, which reaches nothing else; [`Guest::sh`] runs commands in it over ssh.
//! - A guest, its disks and its run directory go when it is dropped (success, failure,
//!   panic); those of killed runs are purged at the next boot.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{run, sh};

const RUN_PREFIX: &str = "l2s-guest";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The guest recipe's files, in the order they are hashed for the cache key.
const RECIPE: &[&str] = &[
    "build-image.sh",
    "customize.sh",
    "nfvi.sh",
    "l2s-lab-nfvi.service",
];

fn guest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// Where built images live: `$L2S_GUEST_CACHE`, else /var/cache/l2s-lab/guest.
fn cache_root() -> PathBuf {
    std::env::var_os("L2S_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/l2s-lab/guest"))
}

/// Whether the guest lab can run here: root and the tools it needs. (Missing tools are a
/// failure, not a skip: CI installs them with tests/deps.sh.)
pub fn missing_tools() -> Vec<&'static str> {
    [
        "qemu-system-x86_64",
        "qemu-img",
        "mmdebstrap",
        "mkfs.ext4",
        "genisoimage",
        "ssh",
        "ssh-keygen",
        "sha256sum",
    ]
    .into_iter()
    .filter(|t| crate::which(t).is_none())
    .collect()
}

/// A built guest image: `root.img` (ext4), Debian's `vmlinuz` and `initrd.img`, and the ssh
/// key the harness logs in with.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    pub fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// The image for this .deb: reused when the recipe and the .deb's declared dependencies
    /// are those it was built from, else built (about 2–3 minutes; Debian's mirror must be
    /// reachable).
    pub fn ensure(deb: &Path) -> Result<Image> {
        let depends = sh(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(deb)
            .arg("Depends"))?;
        let mut hashed = Vec::new();
        for f in RECIPE {
            hashed.extend(std::fs::read(guest_dir().join(f))?);
        }
        hashed.extend(depends.as_bytes());
        let digest = sha256(&hashed)?;
        let dir = cache_root().join(&digest[..16]);
        let image = Image { dir: dir.clone() };
        if [
            "root.img",
            "vmlinuz",
            "initrd.img",
            "id_ed25519",
            "complete",
        ]
        .iter()
        .all(|f| dir.join(f).exists())
        {
            return Ok(image);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        sh(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "l2s-guest-lab", "-f"])
            .arg(image.key()))?;
        let t = Instant::now();
        let out = run(Command::new(guest_dir().join("build-image.sh"))
            .arg(&dir)
            .arg(deb)
            .arg(dir.join("id_ed25519.pub")))?;
        if !out.status.success() {
            bail!(
                "building the guest image failed ({}):\n{}\n{}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stdout), 40),
                tail(&String::from_utf8_lossy(&out.stderr), 40)
            );
        }
        std::fs::write(dir.join("complete"), format!("{depends}\n"))?;
        eprintln!(
            "guest image built in {:.0} s: {}",
            t.elapsed().as_secs_f64(),
            dir.display()
        );
        // Older images of this cache are of no use any more.
        for e in std::fs::read_dir(cache_root())?.flatten() {
            if e.path() != dir {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(image)
    }
}

fn sha256(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The project's cloud-init user-data for one site of the NS parameters
/// (descriptors/osm/l2s_ns/params-3sites.yaml, certificates), rendered as OSM renders it,
/// with a certificate for the site issued here by `ca`, the package URL given here and the
/// SHA-256 of the package this run built (cloud-init installs nothing else).
pub fn user_data(member: &str, ca: &crate::TestCa, deb_url: &str) -> Result<String> {
    user_data_for(
        "descriptors/osm/l2s_ns/params-3sites.yaml",
        member,
        member,
        ca,
        deb_url,
    )
}

/// Like [`user_data`], from another NS's parameters (`params`, from the project's root), the
/// certificate naming `san` (an EVPN site's VTEP address).
pub fn user_data_for(
    params: &str,
    member: &str,
    san: &str,
    ca: &crate::TestCa,
    deb_url: &str,
) -> Result<String> {
    let sum = sh(Command::new("sha256sum").arg(crate::package()?))?;
    let sha256 = sum
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::temp_dir().join(format!(
        "{RUN_PREFIX}-{}-{member}.user-data",
        std::process::id()
    ));
    let issued = ca.issue(member, san, 365)?;
    let read = |p: &Path| std::fs::read_to_string(p);
    sh(Command::new("python3")
        .current_dir(&root)
        .arg("tests/deploy/render_cloud_init.py")
        .arg("cloud-init/l2s-user-data.yaml")
        .arg(params)
        .arg(member)
        .arg(&out)
        .arg(format!("site_cert={}", read(&issued.cert)?))
        .arg(format!("site_key={}", read(&issued.key)?))
        .arg(format!("ca_cert={}", read(&ca.cert)?))
        .arg(format!("l2s_deb_url={deb_url}"))
        .arg(format!("l2s_deb_sha256={sha256}")))?;
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(text)
}

/// A throw-away federation CA for the guest's sites, under the system's temp directory
/// (removed when dropped).
pub struct GuestCa {
    pub ca: crate::TestCa,
}

impl GuestCa {
    pub fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{RUN_PREFIX}-{}-pki", std::process::id()));
        Ok(GuestCa {
            ca: crate::TestCa::new(&dir, "federation-ca")?,
        })
    }
}

impl Drop for GuestCa {
    fn drop(&mut self) {
        if let Some(parent) = self.ca.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// How QEMU runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => &["-accel", "tcg,thread=multi"],
        }
    }

    /// KVM if a guest really runs under it here, else TCG. `/dev/kvm` existing proves
    /// nothing (on these machines guests hang under it), so this boots the image's kernel
    /// under KVM and waits for it to print; the answer is remembered until the next reboot.
    pub fn probe(image: &Image) -> Accel {
        let memo = Self::memo(image);
        if let Ok(s) = std::fs::read_to_string(&memo) {
            return if s.trim() == "kvm" {
                Accel::Kvm
            } else {
                Accel::Tcg
            };
        }
        let works = Path::new("/dev/kvm").exists() && kvm_boots(image).unwrap_or(false);
        let accel = if works { Accel::Kvm } else { Accel::Tcg };
        let _ = std::fs::write(&memo, if works { "kvm" } else { "tcg" });
        accel
    }

    /// Where the verdict is remembered (until the next reboot of this machine).
    fn memo(image: &Image) -> PathBuf {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        image.dir.join(format!("accel-{boot_id}"))
    }

    /// A guest did not come up under KVM after all: TCG from now on.
    fn give_up_kvm(image: &Image) {
        let _ = std::fs::write(Self::memo(image), "tcg");
    }
}

/// Boot the kernel under KVM with no root: does it print within 20 s?
fn kvm_boots(image: &Image) -> Result<bool> {
    let log = image.dir.join("kvm-probe.log");
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new("qemu-system-x86_64")
        .args(Accel::Kvm.args())
        .args([
            "-m", "512", "-smp", "1", "-display", "none", "-monitor", "none",
        ])
        .args(["-no-reboot", "-kernel"])
        .arg(image.dir.join("vmlinuz"))
        .arg("-append")
        .arg("console=ttyS0 panic=-1")
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t = Instant::now();
    let mut printed = false;
    while t.elapsed() < Duration::from_secs(20) {
        if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Linux version")) {
            printed = true;
            break;
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(printed)
}

/// What to boot a guest with.
#[derive(Debug, Default, Clone, Copy)]
pub struct Boot<'a> {
    /// cloud-init user-data for the NoCloud seed (`None`: no seed).
    pub user_data: Option<&'a str>,
    /// A file the guest can fetch as `http://10.0.2.100/<file name>`.
    pub serve: Option<&'a Path>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// A second NIC (`eth1`) on an underlay shared with another guest: QEMU's socket
    /// network, one guest listening on 127.0.0.1:port, the other connecting to it.
    pub underlay: Option<Underlay>,
    /// Boot without the lab's NFVI namespaces (a plain L2S VM, for the benchmark).
    pub plain: bool,
}

#[derive(Debug, Clone, Copy)]
pub enum Underlay {
    Listen(u16),
    Connect(u16),
}

impl Underlay {
    /// A free port for a new shared underlay.
    pub fn port() -> Result<u16> {
        free_port()
    }
}

/// A running guest. Killed, and its disks and run directory removed, when dropped.
pub struct Guest {
    child: Child,
    /// QEMU's command line, to power the same machine (same disk) on again.
    argv: Vec<std::ffi::OsString>,
    pub dir: PathBuf,
    port: u16,
    key: PathBuf,
    pub accel: Accel,
}

fn pid_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Remove the guests of test runs that were killed: their QEMU (by the pid file in their run
/// directory, if its command line still names that directory) and their files.
fn purge_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(&format!("{RUN_PREFIX}-"))
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*e.path().to_string_lossy()) {
                // SAFETY: kill(2) on a QEMU that a test run started (its command line names
                // that run's directory).
                #[allow(unsafe_code)]
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Guest {
    /// Boot a guest of `image` and wait until it can be logged into (it has booted to
    /// multi-user by then; cloud-init may still run).
    ///
    /// A guest that does not come up under KVM (the probe's kernel printed, yet the real boot
    /// hangs) is booted again under TCG, and TCG is remembered: a wrong verdict costs one
    /// boot, never a failed run.
    pub fn boot(image: &Image, opts: Boot<'_>) -> Result<Guest> {
        purge_stale();
        match Accel::probe(image) {
            Accel::Tcg => Self::boot_with(image, opts, Accel::Tcg),
            Accel::Kvm => Self::boot_with(image, opts, Accel::Kvm).or_else(|e| {
                eprintln!("the guest did not come up under KVM ({e:#}); booting it under TCG");
                Accel::give_up_kvm(image);
                Self::boot_with(image, opts, Accel::Tcg)
            }),
        }
    }

    fn boot_with(image: &Image, opts: Boot<'_>, accel: Accel) -> Result<Guest> {
        let dir = std::env::temp_dir().join(format!(
            "{RUN_PREFIX}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        let overlay = dir.join("disk.qcow2");
        sh(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(image.dir.join("root.img"))
            .arg(&overlay))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(accel.args())
            .arg("-m")
            .arg(opts.memory_mib.max(1024).to_string())
            .arg("-smp")
            .arg(opts.cpus.max(1).to_string())
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-pidfile")
            .arg(dir.join("qemu.pid"))
            .arg("-kernel")
            .arg(image.dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(image.dir.join("initrd.img"))
            .arg("-append")
            .arg(format!(
                "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1{}",
                if opts.plain { " l2s.nfvi=off" } else { "" }
            ))
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()));
        if let Some(ud) = opts.user_data {
            let seed = dir.join("seed");
            std::fs::create_dir_all(&seed)?;
            std::fs::write(seed.join("user-data"), ud)?;
            std::fs::write(
                seed.join("meta-data"),
                format!(
                    "instance-id: l2s-guest-{}\nlocal-hostname: l2s-guest\n",
                    std::process::id()
                ),
            )?;
            sh(Command::new("genisoimage")
                .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
                .arg(dir.join("seed.iso"))
                .arg(seed.join("user-data"))
                .arg(seed.join("meta-data")))?;
            cmd.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                dir.join("seed.iso").display()
            ));
        }
        let port = free_port()?;
        // User networking that reaches nothing (restrict=on) but the harness's ssh and the
        // one file served to 10.0.2.100:80 (a fresh `cat` of a ready HTTP response per
        // connection, run by QEMU).
        let mut nic = format!(
            "user,model=virtio-net-pci,mac=52:54:00:00:0a:01,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
        );
        if let Some(file) = opts.serve {
            let body = std::fs::read(file)?;
            let mut response = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend(body);
            let path = dir.join("served.http");
            std::fs::write(&path, response)?;
            // The connection must outlive `cat` until QEMU has passed everything on.
            nic.push_str(&format!(
                ",guestfwd=tcp:10.0.2.100:80-cmd:sh -c 'cat {} && sleep 60'",
                path.display()
            ));
        }
        cmd.arg("-nic").arg(nic);
        if let Some(u) = opts.underlay {
            let (how, port, mac) = match u {
                Underlay::Listen(p) => ("listen", p, "52:54:00:00:0b:01"),
                Underlay::Connect(p) => ("connect", p, "52:54:00:00:0b:02"),
            };
            cmd.arg("-netdev")
                .arg(format!("socket,id=ul,{how}=127.0.0.1:{port}"))
                .arg("-device")
                .arg(format!("virtio-net-pci,netdev=ul,mac={mac}"));
        }
        let argv: Vec<std::ffi::OsString> = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(ToOwned::to_owned)
            .collect();
        let child = spawn_qemu(&argv, &dir)?;
        let guest = Guest {
            child,
            argv,
            dir,
            port,
            key: image.key(),
            accel,
        };
        guest.wait_for_ssh(match accel {
            Accel::Kvm => Duration::from_secs(120),
            Accel::Tcg => Duration::from_secs(420),
        })?;
        Ok(guest)
    }

    /// Reboot the guest the way an operator does (`systemctl reboot`: units stop in order),
    /// and wait until it answers ssh again; the same disk boots (QEMU runs with
    /// `-no-reboot`, so the machine is powered on again with the same command line). Returns
    /// how long it took.
    pub fn reboot(&mut self) -> Result<Duration> {
        let t = Instant::now();
        // The connection drops as the guest goes down: the command's own status says nothing.
        let _ = self.run("systemctl reboot");
        while pid_alive(self.child.id() as i32) && t.elapsed() < Duration::from_secs(180) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if self.child.try_wait()?.is_none() {
            bail!(
                "the guest did not go down within 180 s of `systemctl reboot`:\n{}",
                tail(&self.console(), 40)
            );
        }
        self.close_master();
        let _ = std::fs::rename(
            self.dir.join("console.log"),
            self.dir.join("console-before-reboot.log"),
        );
        self.child = spawn_qemu(&self.argv, &self.dir)?;
        self.wait_for_ssh(match self.accel {
            Accel::Kvm => Duration::from_secs(120),
            Accel::Tcg => Duration::from_secs(420),
        })?;
        Ok(t.elapsed())
    }

    /// End the shared ssh connection (the guest went away, or the test is over).
    fn close_master(&self) {
        let _ = Command::new("ssh")
            .args(["-O", "exit", "-o"])
            .arg(format!(
                "ControlPath={}",
                self.dir.join("ssh.ctl").display()
            ))
            .arg("root@127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(self.dir.join("ssh.ctl"));
    }

    fn wait_for_ssh(&self, within: Duration) -> Result<()> {
        let t = Instant::now();
        while t.elapsed() < within {
            if let Ok(o) = self.run("true") {
                if o.status.success() {
                    return Ok(());
                }
            }
            if !pid_alive(self.child.id() as i32) {
                bail!(
                    "the guest stopped during boot ({:?}):\n{}\nqemu: {}",
                    self.accel,
                    tail(&self.console(), 40),
                    std::fs::read_to_string(self.dir.join("qemu.err")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        bail!(
            "the guest ({:?}) did not answer ssh within {within:?}; console:\n{}",
            self.accel,
            tail(&self.console(), 40)
        )
    }

    /// What the guest printed on its serial console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// The ssh command line that logs into this guest (for a person: README's "shell").
    pub fn ssh_command(&self) -> String {
        format!(
            "ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1",
            self.key.display(),
            self.port
        )
    }

    fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "BatchMode=yes",
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=600",
            ])
            .arg("-o")
            .arg(format!(
                "ControlPath={}",
                self.dir.join("ssh.ctl").display()
            ))
            .arg("root@127.0.0.1");
        c
    }

    /// Run a shell command in the guest (as root); never fails on its exit status.
    pub fn run(&self, cmd: &str) -> Result<Output> {
        run(self.ssh().arg(cmd))
    }

    /// Run a shell command in the guest that must succeed; returns its stdout.
    pub fn sh(&self, cmd: &str) -> Result<String> {
        let out = self.run(cmd)?;
        if !out.status.success() {
            bail!(
                "in the guest: `{cmd}` failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Write a text file in the guest.
    pub fn write(&self, path: &str, content: &str, mode: u32) -> Result<()> {
        self.write_mode(path, content.as_bytes(), mode)
    }

    /// Write a file in the guest (mode 0644).
    pub fn write_bytes(&self, path: &str, content: &[u8]) -> Result<()> {
        self.write_mode(path, content, 0o644)
    }

    fn write_mode(&self, path: &str, content: &[u8], mode: u32) -> Result<()> {
        let mut child = self
            .ssh()
            .arg(format!(
                "umask 077 && cat > '{path}' && chmod {mode:o} '{path}'"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("ssh stdin")?
            .write_all(content)?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "writing {path} in the guest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Poll `cmd` in the guest until it succeeds; returns how long it took.
    pub fn wait_until(&self, what: &str, within: Duration, cmd: &str) -> Result<Duration> {
        let t = Instant::now();
        loop {
            if self.run(cmd).is_ok_and(|o| o.status.success()) {
                return Ok(t.elapsed());
            }
            if t.elapsed() > within {
                bail!("in the guest: {what}: not within {within:?} (`{cmd}`)");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.close_master();
        if std::env::var_os("L2S_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Start QEMU from its command line (output to the guest's run directory).
fn spawn_qemu(argv: &[std::ffi::OsString], dir: &Path) -> Result<Child> {
    let Some((program, args)) = argv.split_first() else {
        bail!("no QEMU command line");
    };
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("qemu.err"))?,
        )
        .spawn()
        .context("starting qemu-system-x86_64")
}

/// The files a rendered user-data writes, by path (read with PyYAML, as cloud-init does).
pub fn site_files(user_data: &str) -> Result<std::collections::BTreeMap<String, String>> {
    let ud = std::env::temp_dir().join(format!(
        "{RUN_PREFIX}-{}-{}.files",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&ud, user_data)?;
    let out = sh(Command::new("python3").arg("-c").arg(format!(
        "import json,yaml;print(json.dumps({{f['path']: f['content'] for f in yaml.safe_load(open('{}'))['write_files']}}))",
        ud.display()
    )));
    let _ = std::fs::remove_file(&ud);
    Ok(serde_json::from_str(&out?)?)
}

/// Write the lab's helper scripts (tests/guest/lab) into the guest's /root/lab.
pub fn install_lab_scripts(g: &Guest) -> Result<()> {
    let dir = guest_dir().join("lab");
    g.sh("mkdir -p /root/lab")?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path())?;
        g.write(&format!("/root/lab/{name}"), &text, 0o755)?;
    }
    Ok(())
}

/// Configure and start a peer site (or reflector) in its namespace of the guest from its
/// rendered user-data: its config, certificate, key and the federation's CA in
/// /etc/l2s-lab/SITE, its own OVSDB, charon and control socket under /run/l2s-lab/SITE, and
/// l2s-vnf under systemd (`/root/lab/start-site.sh`).
pub fn start_peer(g: &Guest, site: &str, user_data: &str) -> Result<()> {
    let files = site_files(user_data)?;
    let dir = format!("/etc/l2s-lab/{site}");
    let run = format!("/run/l2s-lab/{site}");
    g.sh(&format!("mkdir -p {dir}"))?;
    let mut toml = files
        .get("/etc/l2s-vnf/site.toml")
        .context("the user-data writes no site.toml")?
        .clone();
    for (name, mode) in [("site.crt", 0o644), ("site.key", 0o600), ("ca.crt", 0o644)] {
        let path = format!("/etc/l2s-vnf/{name}");
        let text = files
            .get(&path)
            .with_context(|| format!("the user-data writes no {path}"))?;
        g.write(&format!("{dir}/{name}"), text, mode)?;
        toml = toml.replace(&path, &format!("{dir}/{name}"));
    }
    // Its own sockets: OVSDB, charon's VICI, the control socket.
    let toml = toml.replace(
        "vici = \"unix:///run/charon.vici\"",
        &format!("vici = \"unix://{run}/run/charon.vici\""),
    ) + &format!(
        "\n[switch]\novsdb = \"unix:{run}/ovs/db.sock\"\n\n[daemon]\ncontrol_socket = \"{run}/control.sock\"\n"
    );
    g.write(&format!("{dir}/site.toml"), &toml, 0o644)?;
    g.sh(&format!("/root/lab/start-site.sh {site}"))?;
    Ok(())
}

/// What every guest test does first: as root with the tools installed, the image for this
/// run's .deb (built when not cached) and the .deb itself; `Ok(None)` when the guest lab
/// cannot run here and skipping was asked for (otherwise that fails the test).
pub fn prepare() -> Result<Option<(Image, PathBuf)>> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string));
    if uid.as_deref() != Some("0") {
        crate::skip_or_fail("the guest lab needs root");
        return Ok(None);
    }
    let missing = missing_tools();
    if !missing.is_empty() {
        bail!(
            "the guest lab needs {} (tests/deps.sh installs them)",
            missing.join(", ")
        );
    }
    let deb = crate::package()?;
    let image = Image::ensure(&deb)?;
    Ok(Some((image, deb)))
}

/// The bytes (in + out) a peer's SA counted, from a site's `status --json`.
pub fn sa_bytes(status: &serde_json::Value, peer: &str) -> Result<u64> {
    let p = status["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == peer))
        .with_context(|| format!("no peer {peer}: {status:#}"))?;
    ["bytes_in", "bytes_out"]
        .iter()
        .map(|f| {
            p["sa"][f]
                .as_u64()
                .with_context(|| format!("{peer}: no SA {f}: {p:#}"))
        })
        .sum()
}

impl Guest {
    /// Wait (up to 15 minutes under emulation) until cloud-init has finished, successfully.
    pub fn cloud_init_done(&self) -> Result<Duration> {
        self.wait_until(
            "cloud-init done",
            Duration::from_secs(900),
            "cloud-init status --wait >/dev/null 2>&1; cloud-init status | grep -q 'status: done'",
        )
    }
}
