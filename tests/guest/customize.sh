#!/usr/bin/env bash
# mmdebstrap customize hook for build-image.sh: ROOT L2S_DEB SSH_PUBKEY GUEST_DIR
set -euo pipefail
root=$1 deb=$2 pubkey=$3 here=$4
in_root() { chroot "$root" "$@"; }

# The package's declared dependencies and nothing else: install it (apt resolves Depends,
# never Recommends: the package recommends frr, for EVPN only), then purge it again —
# cloud-init installs it at boot.
cp "$deb" "$root/tmp/l2s-vnf.deb"
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/l2s-vnf.deb
in_root dpkg --purge l2s-vnf
rm "$root/tmp/l2s-vnf.deb"
# The rest of the project's cloud-init package list: the .deb already brought the others
# (frr is on that list when EVPN is on; its own service stays disabled, as l2s-vnf runs zebra
# and bgpd itself).
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends curl frr
in_root systemctl disable frr.service
for p in openvswitch-switch charon-systemd strongswan-swanctl libstrongswan-standard-plugins nftables curl frr; do
  in_root dpkg-query -W -f='${Status}\n' "$p" | grep -q "install ok installed" || {
    echo "customize: $p is not installed" >&2; exit 1; }
done

# The guest reaches nothing: no package sources (cloud-init's apt-get update then succeeds
# with nothing to fetch and its package list is already installed).
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
in_root apt-get clean
rm -rf "$root"/var/lib/apt/lists/*

echo l2s-guest > "$root/etc/hostname"
echo '/dev/vda / ext4 defaults 0 1' > "$root/etc/fstab"

# Management NIC (QEMU user networking) by systemd-networkd; cloud-init leaves networking
# alone and reads only the NoCloud seed.
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/10-mgmt.network" <<NET
[Match]
MACAddress=52:54:00:00:0a:01
[Network]
Address=10.0.2.15/24
NET
in_root systemctl enable systemd-networkd.service
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat > "$root/etc/cloud/cloud.cfg.d/90-l2s-lab.cfg" <<CFG
datasource_list: [NoCloud, None]
network: {config: disabled}
# As cloud images do: a locale that exists without generating one.
locale: C.UTF-8
CFG

# The test harness logs in with its own key.
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"

# The lab's "NFVI": underlay, the peer sites' namespaces and the VNFs, wired before
# cloud-init configures site A (as a VIM plugs NICs before the VM boots).
install -m 0755 "$here/nfvi.sh" "$root/usr/local/sbin/l2s-lab-nfvi"
install -m 0644 "$here/l2s-lab-nfvi.service" "$root/etc/systemd/system/l2s-lab-nfvi.service"
in_root systemctl enable l2s-lab-nfvi.service
# Time for the TCG-slow guest: do not let systemd give up on slow starts.
mkdir -p "$root/etc/systemd/system.conf.d"
printf '[Manager]\nDefaultTimeoutStartSec=300s\n' > "$root/etc/systemd/system.conf.d/90-l2s-lab.conf"
