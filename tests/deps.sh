#!/usr/bin/env bash
# Install what the lab, the tests and the demo need (Debian 12). Idempotent; needs root.
set -euo pipefail
pkgs=(openvswitch-switch iproute2 nftables iperf3 ethtool iputils-ping tcpdump python3 procps
      strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
      libstrongswan-standard-plugins strongswan-pki libssl-dev pkg-config systemd cloud-init
      # the EVPN control plane: FRR's zebra, bgpd and vtysh (the system's FRR service stays off)
      frr
      # the guest lab: Debian guests under QEMU, built with mmdebstrap
      qemu-system-x86 qemu-utils mmdebstrap e2fsprogs genisoimage openssh-client)
missing_pkgs() {
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
}
export DEBIAN_FRONTEND=noninteractive
updated=""
# Twice: installing one package may remove another the image had (the image's qemu-utils from
# backports conflicts with Debian 12's qemu-system-x86, and apt removes it); the second pass
# installs the matching one.
for pass in 1 2; do
  missing_pkgs
  ((${#missing[@]})) || break
  echo "installing (pass $pass): ${missing[*]}"
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
missing_pkgs
if ((${#missing[@]})); then
  echo "deps.sh: still missing after installing: ${missing[*]}" >&2
  exit 1
fi

# Python tools of the deployment tests (descriptors, HOT, cloud-init rendering, Ansible).
pip_pkgs=(yamllint==1.38.0 yangson==1.7.9 pyang==2.7.1 Jinja2==3.1.6 PyYAML==6.0.3
          python-heatclient==5.3.0 ansible-core==2.19.14 ansible-lint==26.10.1)
if ! python3 -c "import yangson, pyang, heatclient, jinja2, yaml" 2>/dev/null \
   || ! command -v ansible-lint >/dev/null || ! command -v yamllint >/dev/null; then
  echo "installing python tools: ${pip_pkgs[*]}"
  python3 -m pip install -q --root-user-action=ignore "${pip_pkgs[@]}"
fi

# cargo-deb builds the Debian package in the tests.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install -q --locked cargo-deb --version 3.8.0
fi
