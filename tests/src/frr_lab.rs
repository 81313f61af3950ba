//! A control-plane lab for EVPN: namespaces on one underlay bridge, each site's control
//! namespace and FRR made by the product's own code (`evpn::ControlNs`, `evpn::Frr`) running
//! inside the site's namespace, and a reflector with bgpd alone. No OVS, no charon: what is
//! measured and proven here is the control plane (the daemon-level tests add the rest).
//! Everything is removed on drop.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use l2s_vnf::config::evpn::Prefix;
use l2s_vnf::config::{Evpn, EvpnRole};
use l2s_vnf::evpn::{frr_config, routes, ControlNs, Frr};

use crate::{netns, run, sh};

pub const ASN: u32 = 65000;

/// Namespaces, directories and FRR daemons of one run.
pub struct FrrLab {
    pub id: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
    pub frr: Vec<Frr>,
    hold: std::time::Duration,
}

impl Drop for FrrLab {
    fn drop(&mut self) {
        // FRR's daemons first (dropping an `Frr` ends its children).
        self.frr.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip(ns: &str, args: &[&str]) -> Result<()> {
    sh(netns(ns, "ip").args(args)).map(drop)
}

/// A site of an [`FrrLab`].
pub struct FrrSite {
    pub ns: String,
    pub ctl: ControlNs,
    pub vtep: IpAddr,
    /// Its index in `FrrLab::frr`.
    pub frr: usize,
    pub evpn: Evpn,
}

/// Run `f` on a thread inside namespace `ns` (what it spawns runs there too).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns {path} failed");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {ns} panicked"))?
    })
}

impl FrrLab {
    /// `hold`: the BGP hold time every site and reflector is given.
    pub fn new(hold: std::time::Duration) -> Result<Self> {
        let id = format!("{}-{}-evpn", crate::LAB_PREFIX, std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mut lab = FrrLab {
            id,
            dir,
            namespaces: vec![],
            frr: vec![],
            hold,
        };
        let ul = lab.ns("ul")?;
        ip(&ul, &["link", "add", "ul0", "type", "bridge"])?;
        ip(&ul, &["link", "set", "ul0", "up"])?;
        Ok(lab)
    }

    fn ns(&mut self, name: &str) -> Result<String> {
        let ns = format!("{}-{name}", self.id);
        sh(Command::new("ip").args(["netns", "add", &ns]))?;
        self.namespaces.push(ns.clone());
        ip(&ns, &["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A host on the underlay: a namespace with `eth1` at `addr`/16.
    fn host(&mut self, name: &str, addr: &str) -> Result<String> {
        let ns = self.ns(name)?;
        let ul = format!("{}-ul", self.id);
        let outer = self.uplink(name);
        sh(Command::new("ip").args([
            "link", "add", &outer, "netns", &ul, "type", "veth", "peer", "name", "eth1", "netns",
            &ns,
        ]))?;
        ip(&ul, &["link", "set", &outer, "master", "ul0", "up"])?;
        ip(&ns, &["addr", "add", &format!("{addr}/16"), "dev", "eth1"])?;
        ip(&ns, &["link", "set", "eth1", "up"])?;
        Ok(ns)
    }

    /// The underlay link of a host, for cutting it.
    pub fn uplink(&self, name: &str) -> String {
        format!("ev{}{name}", std::process::id() % 100_000)
    }

    /// Cut or restore a host's underlay link.
    pub fn set_uplink(&self, name: &str, up: bool) -> Result<()> {
        let ul = format!("{}-ul", self.id);
        ip(
            &ul,
            &[
                "link",
                "set",
                &self.uplink(name),
                if up { "up" } else { "down" },
            ],
        )
    }

    /// A site: its namespace on the underlay, its control namespace and FRR, all made by the
    /// product's code running inside the site's namespace. Returns the site and how many VNIs
    /// its control namespace got.
    pub fn site(
        &mut self,
        name: &str,
        vtep: &str,
        vnis: &BTreeSet<u32>,
        reflectors: &[&str],
    ) -> Result<(FrrSite, usize)> {
        let ns = self.host(name, vtep)?;
        let ctl = ControlNs {
            name: format!("{}-{name}-ctl", self.id),
        };
        self.namespaces.push(ctl.name.clone());
        let evpn = Evpn {
            role: EvpnRole::Site,
            asn: ASN,
            reflectors: reflectors
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, _>>()?,
            listen_range: None,
            hold_time: self.hold,
        };
        let vtep_ip: IpAddr = vtep.parse()?;
        let mut frr = Frr::new(self.dir.join(format!("{name}.frr")), Some(ctl.name.clone()));
        let (added, again, started, frr) = in_netns(&ns, || {
            let added = ctl.ensure(vtep_ip, vnis);
            let again = ctl.ensure(vtep_ip, vnis);
            let started = frr.ensure(
                &frr_config::bgpd(&evpn, name, vtep_ip, vtep_ip),
                &frr_config::zebra(name),
                vtep_ip,
            );
            (added, again, started, frr)
        })?;
        let (added, _) = added?;
        started?;
        if again? != (0, 0) {
            bail!("ensuring {name}'s control namespace a second time changed it");
        }
        self.frr.push(frr);
        Ok((
            FrrSite {
                ns,
                ctl,
                vtep: vtep_ip,
                frr: self.frr.len() - 1,
                evpn,
            },
            added,
        ))
    }

    /// A reflector accepting sites from `range`; returns its index in `frr`.
    pub fn reflector(&mut self, name: &str, addr: &str, range: &str) -> Result<usize> {
        let ns = self.host(name, addr)?;
        let evpn = Evpn {
            role: EvpnRole::Reflector,
            asn: ASN,
            reflectors: vec![],
            listen_range: Some(range.parse::<Prefix>().map_err(anyhow::Error::msg)?),
            hold_time: self.hold,
        };
        let a: IpAddr = addr.parse()?;
        let mut frr = Frr::new(self.dir.join(format!("{name}.frr")), None);
        let (r, frr) = in_netns(&ns, || {
            let r = frr.ensure(&frr_config::bgpd(&evpn, name, a, a), "", a);
            (r, frr)
        })?;
        r?;
        self.frr.push(frr);
        Ok(self.frr.len() - 1)
    }

    /// Supervise a site's FRR once more, from inside its namespace (restarts what exited).
    pub fn supervise(&mut self, s: &FrrSite, name: &str) -> Result<()> {
        let frr = self.frr.get_mut(s.frr).context("no such FRR")?;
        let (evpn, vtep) = (s.evpn.clone(), s.vtep);
        in_netns(&s.ns, || {
            frr.ensure(
                &frr_config::bgpd(&evpn, name, vtep, vtep),
                &frr_config::zebra(name),
                vtep,
            )
        })??;
        Ok(())
    }

    /// What a site's bgpd holds now (empty when it does not answer).
    pub fn discovered(&self, s: &FrrSite) -> routes::Discovered {
        self.frr
            .get(s.frr)
            .and_then(|f| f.discovered(s.evpn.asn, s.vtep).ok())
            .unwrap_or_default()
    }

    /// The BGP sessions of the FRR at `frr`.
    pub fn sessions(&self, frr: usize) -> Vec<routes::BgpSession> {
        self.frr
            .get(frr)
            .and_then(|f| f.sessions().ok())
            .unwrap_or_default()
    }
}
