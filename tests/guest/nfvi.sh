#!/bin/sh
# The guest lab's virtual NFVI, wired at boot before cloud-init configures site A:
#   ul      the underlay (bridge ul0), 198.51.100.0/24 — the L2S VMs' provider network
#   site A  this guest's own namespace: underlay ens4 = 198.51.100.1, access ens5 (VLAN 101)
#           and ens6 (VLAN 102), as in the NS parameters (descriptors/osm/l2s_ns)
#   site-b  namespace: ens4 = 198.51.100.2, ens5, ens6
#   site-c  namespace: ens4 = 198.51.100.3, ens5
#   rogue   namespace on the underlay (198.51.100.66), for forged clear-text VXLAN
#   a101 a102 b101 b102 c101   VNF namespaces: eth0 = 10.101.0.{1,2,3}, 10.102.0.{1,2}
set -eu
ip netns add ul
ip -n ul link set lo up
ip -n ul link add ul0 type bridge
ip -n ul link set ul0 up

# Links are made under a temporary name in this namespace, then moved and renamed, so that
# every site can have its own ens4/ens5.
place() { # NS TMP NAME  (NS "" = this namespace)
  if [ -n "$1" ]; then ip link set "$2" netns "$1"; fi
  ip ${1:+-n "$1"} link set "$2" name "$3"
  ip ${1:+-n "$1"} link set "$3" up
}
underlay() { # NS ADDR TAG
  ip link add "t-ul-$3" type veth peer name "ul-$3" netns ul
  ip -n ul link set "ul-$3" master ul0 up
  place "$1" "t-ul-$3" ens4
  ip ${1:+-n "$1"} addr add "$2/24" dev ens4
}
vnf() { # SITE_NS PORT VNF ADDR
  ip netns add "$3"
  ip -n "$3" link set lo up
  ip link add "t-$3" type veth peer name eth0 netns "$3"
  place "$1" "t-$3" "$2"
  ip -n "$3" addr add "$4/24" dev eth0
  ip -n "$3" link set eth0 up
}
site() { ip netns add "$1"; ip -n "$1" link set lo up; }

underlay "" 198.51.100.1 a
vnf "" ens5 a101 10.101.0.1
vnf "" ens6 a102 10.102.0.1
site site-b
underlay site-b 198.51.100.2 b
vnf site-b ens5 b101 10.101.0.2
vnf site-b ens6 b102 10.102.0.2
site site-c
underlay site-c 198.51.100.3 c
vnf site-c ens5 c101 10.101.0.3
site rogue
underlay rogue 198.51.100.66 rogue
