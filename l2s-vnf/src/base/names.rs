//! Names and ownership marks of everything l2s-vnf creates on the system, and the ports it
//! uses. Anything without one of these marks is never changed.

/// Every VXLAN device l2s-vnf creates is named `l2s-vx<VNI>` (at most 14 bytes).
pub const VXLAN_DEVICE_PREFIX: &str = "l2s-vx";
/// The device alias that marks a VXLAN device as ours: `l2s-vnf bridge=<bridge> vlan=<id>`.
pub const ALIAS_PREFIX: &str = "l2s-vnf bridge=";
/// OVS `external_ids` keys (on Bridge and Port rows).
pub const EXT_OWNER: &str = "l2s-vnf-owner";
pub const EXT_ROLE: &str = "l2s-vnf-role";
pub const EXT_VLAN: &str = "l2s-vnf-vlan";
pub const EXT_ORIG_MTU: &str = "l2s-vnf-orig-mtu";
/// On ports: the ifindex of the device when l2s-vnf (re)added the port.
pub const EXT_IFINDEX: &str = "l2s-vnf-ifindex";

pub fn vxlan_device_name(vni: u32) -> String {
    format!("{VXLAN_DEVICE_PREFIX}{vni}")
}

pub fn vxlan_alias(bridge: &str, vlan: u16) -> String {
    format!("{ALIAS_PREFIX}{bridge} vlan={vlan}")
}

/// Whether a device alias marks the device as owned by the instance managing `bridge`.
pub fn alias_owned_by(alias: Option<&str>, bridge: &str) -> bool {
    alias
        .and_then(|a| a.strip_prefix(ALIAS_PREFIX))
        .and_then(|rest| rest.split_whitespace().next())
        .is_some_and(|b| b == bridge)
}

/// kernel-libipsec's TUN device.
pub const LIBIPSEC_TUN: &str = "ipsec0";

/// The fixed priority of our IPsec policies (lower wins). charon's automatic priorities are
/// above 68 000 — pass policies (e.g. the stock `bypass-lan` plugin's for the underlay's own
/// subnet) above 100 000 — so VXLAN between the VTEPs enters our SA whatever else charon
/// installs for the same addresses.
pub const POLICY_PRIORITY: u32 = 1000;

/// The priority of l2s-vnf's block policies, which is also their ownership mark ("L2S" in
/// ASCII): far behind the per-peer policies ([`POLICY_PRIORITY`]) and charon's
/// automatic ones, so any policy with an SA for the traffic wins over them.
pub const BLOCK_PRIORITY: u32 = 0x004c_3253;

/// The probe port for a VXLAN port.
pub fn probe_port(vxlan_port: u16) -> u16 {
    vxlan_port.saturating_add(1)
}

/// A short, stable digest of a text (32 bits of FNV-1a, 8 hex digits): names derived from a
/// path, unique per instance and fixed across restarts.
pub fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// The EVPN control namespace of the instance whose control socket is `control_socket`.
pub fn evpn_netns(control_socket: &std::path::Path) -> String {
    format!("l2s-evpn-{}", short_hash(&control_socket.to_string_lossy()))
}

/// Where the instance keeps its FRR daemons' config, sockets, pid files and logs.
pub fn evpn_dir(control_socket: &std::path::Path) -> std::path::PathBuf {
    let mut p = control_socket.as_os_str().to_owned();
    p.push(".frr");
    std::path::PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_ownership() {
        let a = vxlan_alias("l2s0", 101);
        assert!(alias_owned_by(Some(&a), "l2s0"));
        assert!(!alias_owned_by(Some(&a), "l2s1"));
        assert!(!alias_owned_by(Some("someone else"), "l2s0"));
        assert!(!alias_owned_by(None, "l2s0"));
    }
}
