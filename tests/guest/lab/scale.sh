#!/bin/sh
# In a plain guest (l2s-guest-bench --scale N): l2s-vnf at N VLANs x 16 peers on the kernel
# datapath beside the floor (the same objects by ip -batch, bridge -batch and one ovs-vsctl
# transaction), and removal beside creation (`down`; the floor's del-br and ip -batch link
# del). Prints key=seconds lines.
set -eu
n=$1 peers=16
now() { date +%s.%N; }
ip link add ul0 type dummy 2>/dev/null || true
ip addr add 192.0.2.1/24 dev ul0 2>/dev/null || true
ip link set ul0 up
python3 - "$n" "$peers" <<'PY'
import sys
n, peers = int(sys.argv[1]), int(sys.argv[2])
ids = [v + 1 for v in range(n)]
with open("/tmp/links", "w") as f:
    for i in ids:
        f.write(f"link add fx{i} mtu 1450 up type vxlan id {i} dstport 4789 local 192.0.2.1 dev ul0\n")
with open("/tmp/fdb", "w") as f:
    for i in ids:
        for p in range(peers):
            f.write(f"fdb append 00:00:00:00:00:00 dev fx{i} dst 192.0.2.{10 + p}\n")
with open("/tmp/vsctl", "w") as f:
    f.write("-- add-br fl0\n")
    for i in ids:
        f.write(f"-- add-port fl0 fx{i} tag={i}\n")
with open("/tmp/dels", "w") as f:
    for i in ids:
        f.write(f"link del fx{i}\n")
t = '[site]\nname = "bench"\nunderlay = "ul0"\n[ipsec]\nenabled = false\ninsecure = true\n[daemon]\ncontrol_socket = "/run/l2s-bench.sock"\n'
t += "".join(f'[[peer]]\nname = "p{p}"\naddress = "192.0.2.{10 + p}"\n' for p in range(peers))
with open("/tmp/scale.toml", "w") as f:
    f.write(t + "".join(f"[[vlan]]\nid = {i}\n" for i in ids))
with open("/tmp/scale-1.toml", "w") as f:
    f.write(t + "".join(f"[[vlan]]\nid = {i}\n" for i in ids[:-1]))
PY
t0=$(now); ip -batch /tmp/links; t1=$(now); bridge -batch /tmp/fdb; t2=$(now)
xargs -a /tmp/vsctl ovs-vsctl --timeout=3600 >/dev/null; t3=$(now)
echo "floor_ip=$(awk "BEGIN{print $t1 - $t0}") floor_bridge=$(awk "BEGIN{print $t2 - $t1}") floor_ovs=$(awk "BEGIN{print $t3 - $t2}")"
t0=$(now); ovs-vsctl del-br fl0; ip -batch /tmp/dels; t1=$(now)
echo "floor_down=$(awk "BEGIN{print $t1 - $t0}")"
c="l2s-vnf -c /tmp/scale.toml"
t0=$(now); L2S_VNF_LOG=error $c apply >/dev/null; t1=$(now); L2S_VNF_LOG=error $c apply >/dev/null; t2=$(now)
L2S_VNF_LOG=error l2s-vnf -c /tmp/scale-1.toml apply >/dev/null
t3=$(now); L2S_VNF_LOG=error $c apply >/dev/null; t4=$(now)
echo "apply=$(awk "BEGIN{print $t1 - $t0}") noop=$(awk "BEGIN{print $t2 - $t1}") delta=$(awk "BEGIN{print $t4 - $t3}")"
t0=$(now); L2S_VNF_LOG=error $c down >/dev/null; t1=$(now)
echo "down=$(awk "BEGIN{print $t1 - $t0}")"
