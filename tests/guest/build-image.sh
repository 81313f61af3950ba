#!/usr/bin/env bash
# The guest image of the production-stack lab, built from Debian's packages:
#   Debian 12 (minbase, no Recommends — as a minimal cloud image), Debian's own kernel,
#   systemd, cloud-init (NoCloud), sshd for the test harness, the lab's tools, and the
#   project's .deb's *declared* dependencies — the .deb itself is installed at boot by the
#   project's cloud-init user-data, as in a real deployment.
#
# usage: build-image.sh OUT_DIR L2S_DEB SSH_PUBKEY
# Leaves OUT_DIR/{root.img,vmlinuz,initrd.img}. Needs root, mmdebstrap and e2fsprogs; the
# Debian mirror must be reachable (the guest itself reaches nothing).
set -euo pipefail
out=$1 deb=$2 pubkey=$3
here=$(cd "$(dirname "$0")" && pwd)
root=$out/root
rm -rf "$root"
mkdir -p "$root"
mmdebstrap --variant=minbase --quiet \
  --aptopt='APT::Install-Recommends "false"' \
  --include=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,netbase,openssh-server,cloud-init,procps,iputils-ping,tcpdump,iperf3,python3 \
  --customize-hook="'$here/customize.sh' \"\$1\" '$deb' '$pubkey' '$here'" \
  bookworm "$root"
cp -L "$root"/boot/vmlinuz-* "$out/vmlinuz"
cp -L "$root"/boot/initrd.img-* "$out/initrd.img"
mkfs.ext4 -q -F -L l2sroot -d "$root" "$out/root.img" 3G
rm -rf "$root"
