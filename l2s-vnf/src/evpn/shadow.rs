//! The control namespace's devices: per VNI a shadow Linux bridge holding a shadow VXLAN
//! device (zebra's view of the VNI), plus one veth pair carrying the VTEP address.

/// A VNI's shadow bridge in the control namespace.
pub fn bridge_name(vni: u32) -> String {
    format!("l2s-eb{vni}")
}

/// A VNI's shadow VXLAN device in the control namespace.
pub fn vxlan_name(vni: u32) -> String {
    format!("l2s-ex{vni}")
}

/// The veth pair whose first end carries the VTEP address.
pub const UPLINK: (&str, &str) = ("l2s-eu0", "l2s-eu1");

/// How many devices the control namespace holds for `vnis` VNIs.
pub fn device_count(vnis: usize) -> usize {
    2 * vnis + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_the_count_at_4094_vlans_is_known() {
        assert!(bridge_name(16_777_215).len() <= 15);
        assert!(vxlan_name(16_777_215).len() <= 15);
        assert_eq!(device_count(4094), 8190);
    }
}
