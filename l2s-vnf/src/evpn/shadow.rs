//! The control namespace's devices: per VNI a shadow Linux bridge holding a shadow VXLAN
//! device (zebra's view of the VNI) and a shadow access port (a macvlan whose bridge FDB entries
//! are the MACs OVS learned on the VLAN's access ports: zebra advertises them as type-2
//! routes), plus one veth pair carrying the VTEP address.

/// A VNI's shadow bridge in the control namespace.
pub fn bridge_name(vni: u32) -> String {
    format!("l2s-eb{vni}")
}

/// A VNI's shadow VXLAN device in the control namespace.
pub fn vxlan_name(vni: u32) -> String {
    format!("l2s-ex{vni}")
}

/// A VNI's shadow access port in the control namespace.
pub fn access_name(vni: u32) -> String {
    format!("l2s-ea{vni}")
}

/// The VNI a shadow access port stands for.
pub fn vni_of_access(name: &str) -> Option<u32> {
    name.strip_prefix("l2s-ea")?.parse().ok()
}

/// The veth pair whose first end carries the VTEP address.
pub const UPLINK: (&str, &str) = ("l2s-eu0", "l2s-eu1");

/// How many devices the control namespace holds for `vnis` VNIs.
pub fn device_count(vnis: usize) -> usize {
    3 * vnis + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_the_count_at_4094_vlans_is_known() {
        assert!(bridge_name(16_777_215).len() <= 15);
        assert!(vxlan_name(16_777_215).len() <= 15);
        assert!(access_name(16_777_215).len() <= 15);
        assert_eq!(vni_of_access(&access_name(101)), Some(101));
        assert_eq!(vni_of_access("l2s-eb101"), None);
        assert_eq!(device_count(4094), 12_284);
    }
}
