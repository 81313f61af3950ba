//! The control namespace: where zebra sees one shadow Linux bridge and VXLAN device per VNI
//! (see the module's design note). Made and changed with `ip -batch`, one process for any
//! number of VNIs; nothing in it ever carries traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use super::shadow;
use super::EvpnError;

/// One instance's control namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlNs {
    pub name: String,
}

/// A shadow VXLAN device as found: its VNI and local address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shadow {
    vni: u32,
    local: Option<IpAddr>,
}

/// The shadow bridges' ageing time, in centiseconds (11.5 days: never, in practice).
const NEVER_AGES: u64 = 100_000_000;

/// The `ip -batch` lines that make a VNI's shadow access port, in its bridge, up: a macvlan
/// on the uplink (up with it, and carrying nothing; `dummy` links are not in every kernel).
/// Private mode: its siblings never hear each other (in bridge mode, one frame on any shadow
/// bridge would reach all 4094 of them; measured: a namespace of 4094 VNIs took minutes to
/// make instead of 15 s).
fn access_port(vni: u32) -> String {
    let (br, ea) = (shadow::bridge_name(vni), shadow::access_name(vni));
    let up0 = shadow::UPLINK.0;
    format!("link add {ea} link {up0} type macvlan mode private\nlink set {ea} addrgenmode none\nlink set {ea} master {br}\nlink set {ea} up\n")
}

/// A JSON list as `ip -j` and `bridge -j` print it.
fn json_list(out: &str) -> Result<Vec<serde_json::Value>, EvpnError> {
    serde_json::from_str(out.trim()).map_err(|e| EvpnError::Parse(e.to_string()))
}

fn ip(args: &[&str], stdin: Option<&str>) -> Result<String, EvpnError> {
    run("ip", args, stdin)
}

fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, EvpnError> {
    let what = format!("{tool} {}", args.join(" "));
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EvpnError::Spawn(what.clone(), e))?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| EvpnError::Spawn(what.clone(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| EvpnError::Spawn(what.clone(), e))?;
    if !out.status.success() {
        return Err(EvpnError::Command {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ControlNs {
    pub fn for_instance(control_socket: &Path) -> Self {
        ControlNs {
            name: crate::base::names::evpn_netns(control_socket),
        }
    }

    pub fn exists(&self) -> bool {
        Path::new("/run/netns").join(&self.name).exists()
    }

    /// Whether the name's file is a mounted network namespace (not a file left behind).
    fn mounted(&self) -> bool {
        const NSFS_MAGIC: u32 = 0x6e73_6673;
        nix::sys::statfs::statfs(&Path::new("/run/netns").join(&self.name))
            .is_ok_and(|s| s.filesystem_type().0 as u64 == u64::from(NSFS_MAGIC))
    }

    /// The namespace's links of one kind, as `ip -j -d link show type KIND` lists them.
    fn links_of(&self, kind: &str) -> Result<Vec<serde_json::Value>, EvpnError> {
        let out = ip(
            &["-n", &self.name, "-j", "-d", "link", "show", "type", kind],
            None,
        )?;
        json_list(&out)
    }

    /// The shadow VXLAN devices in the namespace, by name.
    fn shadows(&self) -> Result<BTreeMap<String, Shadow>, EvpnError> {
        Ok(self
            .links_of("vxlan")?
            .iter()
            .filter_map(|l| {
                let name = l["ifname"].as_str()?.to_string();
                let data = &l["linkinfo"]["info_data"];
                let vni = data["id"].as_u64()? as u32;
                let local = data["local"]
                    .as_str()
                    .or(data["local6"].as_str())
                    .and_then(|s| s.parse().ok());
                Some((name, Shadow { vni, local }))
            })
            .collect())
    }

    /// The VNIs whose shadow access port exists.
    fn access_ports(&self) -> Result<BTreeSet<u32>, EvpnError> {
        Ok(self
            .links_of("macvlan")?
            .iter()
            .filter_map(|l| shadow::vni_of_access(l["ifname"].as_str()?))
            .collect())
    }

    /// The MACs on the shadow access ports (what zebra advertises as this site's), by VNI.
    pub fn local_macs(&self) -> Result<BTreeSet<(u32, String)>, EvpnError> {
        let out = run("bridge", &["-n", &self.name, "-j", "fdb", "show"], None)?;
        Ok(json_list(&out)?
            .iter()
            .filter(|e| e["state"] != "permanent" && e["master"].is_string())
            .filter_map(|e| {
                let vni = shadow::vni_of_access(e["ifname"].as_str()?)?;
                Some((vni, e["mac"].as_str()?.to_ascii_lowercase()))
            })
            .collect())
    }

    /// Put `add` on the shadow access ports and take `remove` off them, in one `bridge -batch`.
    pub fn set_local_macs(
        &self,
        add: &BTreeSet<(u32, String)>,
        remove: &BTreeSet<(u32, String)>,
    ) -> Result<(), EvpnError> {
        let mut batch = String::new();
        for (vni, mac) in remove {
            batch += &format!("fdb del {mac} dev {} master\n", shadow::access_name(*vni));
        }
        for (vni, mac) in add {
            batch += &format!(
                "fdb replace {mac} dev {} master dynamic\n",
                shadow::access_name(*vni)
            );
        }
        if batch.is_empty() {
            return Ok(());
        }
        // `-force`: a MAC zebra moved meanwhile does not stop the others.
        run(
            "bridge",
            &["-n", &self.name, "-force", "-batch", "-"],
            Some(&batch),
        )
        .map(|_| ())
    }

    fn has_uplink(&self) -> Result<bool, EvpnError> {
        let out = ip(&["-n", &self.name, "-j", "link", "show"], None)?;
        Ok(out.contains(&format!("\"ifname\":\"{}\"", shadow::UPLINK.0)))
    }

    /// Make the namespace hold exactly the shadow devices of `vnis`, with `vtep` as their
    /// local address. Returns how many VNIs were added and removed.
    pub fn ensure(&self, vtep: IpAddr, vnis: &BTreeSet<u32>) -> Result<(usize, usize), EvpnError> {
        self.ensure_once(vtep, vnis, true)
    }

    fn ensure_once(
        &self,
        vtep: IpAddr,
        vnis: &BTreeSet<u32>,
        may_rebuild: bool,
    ) -> Result<(usize, usize), EvpnError> {
        if self.exists() && !self.mounted() {
            // The name's file outlived its mount: the namespace was mounted inside a mount
            // namespace that is gone (an earlier run's sandbox). Its devices went with it.
            tracing::info!(ns = %self.name, "EVPN control namespace: its mount is gone; making it afresh");
            let path = Path::new("/run/netns").join(&self.name);
            std::fs::remove_file(&path)
                .map_err(|e| EvpnError::Spawn(format!("rm {}", path.display()), e))?;
        }
        if !self.exists() {
            ip(&["netns", "add", &self.name], None)?;
        }
        let mut batch = String::new();
        let (up0, up1) = shadow::UPLINK;
        let host = if vtep.is_ipv4() { 32 } else { 128 };
        let default = if vtep.is_ipv4() { "default" } else { "::/0" };
        if !self.has_uplink()? {
            batch += &format!("link set lo up\nlink add {up0} type veth peer name {up1}\n");
            for d in [up0, up1] {
                batch += &format!("link set {d} addrgenmode none\nlink set {d} up\n");
            }
            batch += &format!("addr add {vtep}/{host} dev {up0}\nroute add {default} dev {up0}\n");
        }
        let found = self.shadows()?;
        let mut removed = 0;
        for (name, s) in &found {
            if !vnis.contains(&s.vni) || s.local != Some(vtep) || *name != shadow::vxlan_name(s.vni)
            {
                batch += &format!(
                    "link del {name}\nlink del {}\nlink del {}\n",
                    shadow::bridge_name(s.vni),
                    shadow::access_name(s.vni)
                );
                removed += 1;
            }
        }
        let kept: BTreeSet<u32> = found
            .iter()
            .filter(|(name, s)| {
                vnis.contains(&s.vni)
                    && s.local == Some(vtep)
                    && **name == shadow::vxlan_name(s.vni)
            })
            .map(|(_, s)| s.vni)
            .collect();
        let mut added = 0;
        for vni in vnis.difference(&kept) {
            let (br, vx) = (shadow::bridge_name(*vni), shadow::vxlan_name(*vni));
            // A bridge left alone by an interrupted batch is taken over. The bridge never
            // ages what the daemon put on its access port (the daemon takes it away).
            batch += &format!(
                "link add {br} type bridge ageing_time {NEVER_AGES}\nlink set {br} addrgenmode none\nlink add {vx} type vxlan id {vni} local {vtep} dstport 4789 nolearning\nlink set {vx} addrgenmode none\nlink set {vx} master {br}\nlink set {vx} up\n"
            );
            batch += &access_port(*vni);
            batch += &format!("link set {br} up\n");
            added += 1;
        }
        // A namespace made before shadow access ports existed gets them.
        let ports = self.access_ports()?;
        for vni in kept.iter().filter(|v| !ports.contains(v)) {
            let br = shadow::bridge_name(*vni);
            batch += &format!("link set {br} type bridge ageing_time {NEVER_AGES}\n");
            batch += &access_port(*vni);
        }
        if !batch.is_empty() {
            // `-force` carries on past a line that fails (a leftover bridge of the same name)
            // and still reports the failure.
            match ip(&["-n", &self.name, "-force", "-batch", "-"], Some(&batch)) {
                Ok(_) => {}
                // Leftovers of an interrupted run: start the namespace afresh, once.
                Err(e) if may_rebuild => {
                    tracing::debug!("control namespace batch: {e}; rebuilding it");
                    ip(&["netns", "del", &self.name], None)?;
                    return self.ensure_once(vtep, vnis, false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((added, removed))
    }

    /// zebra's flood entries on a VNI's shadow device (what the routes made it install).
    pub fn shadow_flood(&self, vni: u32) -> Result<BTreeSet<IpAddr>, EvpnError> {
        let dev = shadow::vxlan_name(vni);
        let out = run(
            "bridge",
            &["-n", &self.name, "-j", "fdb", "show", "dev", &dev],
            None,
        )?;
        Ok(json_list(&out)?
            .iter()
            .filter(|e| e["mac"] == "00:00:00:00:00:00")
            .filter_map(|e| e["dst"].as_str()?.parse().ok())
            .collect())
    }

    /// Remove the namespace and everything in it (`down`).
    pub fn remove(&self) -> Result<(), EvpnError> {
        if self.exists() {
            ip(&["netns", "del", &self.name], None)?;
        }
        Ok(())
    }
}
