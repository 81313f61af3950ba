#!/usr/bin/env bash
# Install what the lab, the tests and the demo need (Debian 12). Idempotent; needs root.
set -euo pipefail
pkgs=(openvswitch-switch iproute2 nftables iperf3 ethtool iputils-ping tcpdump python3 procps
      strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
      libstrongswan-standard-plugins systemd)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
