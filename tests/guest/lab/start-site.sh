#!/bin/sh
# In the guest: start a peer site (site-b, site-c) in its namespace the way its own L2S VM
# would run it — Open vSwitch on the kernel datapath, charon-systemd with the stock
# /etc/strongswan.conf, and the packaged l2s-vnf under systemd (Type=notify) — with its
# config in /etc/l2s-lab/SITE/site.toml. Everything it makes lives under /run/l2s-lab/SITE.
set -eu
s=$1
d=/run/l2s-lab/$s
mkdir -p "$d/ovs" "$d/run"
[ -e "$d/ovs/conf.db" ] || ovsdb-tool create "$d/ovs/conf.db" /usr/share/openvswitch/vswitch.ovsschema
ovs="env OVS_RUNDIR=$d/ovs OVS_DBDIR=$d/ovs OVS_LOGDIR=$d/ovs"
ip netns exec "$s" $ovs ovsdb-server "$d/ovs/conf.db" --remote="punix:$d/ovs/db.sock" \
  --pidfile="$d/ovs/ovsdb-server.pid" --detach --log-file="$d/ovs/ovsdb-server.log"
ip netns exec "$s" ovs-vsctl --db="unix:$d/ovs/db.sock" --no-wait init
ip netns exec "$s" $ovs ovs-vswitchd "unix:$d/ovs/db.sock" \
  --pidfile="$d/ovs/ovs-vswitchd.pid" --detach --log-file="$d/ovs/ovs-vswitchd.log"
# charon's own /run (its VICI socket is then $d/run/charon.vici from outside).
systemd-run --quiet --unit="l2s-lab-charon-$s" --collect \
  ip netns exec "$s" sh -c "mount --bind $d/run /run && exec /usr/sbin/charon-systemd"
i=0
while [ ! -S "$d/run/charon.vici" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
systemd-run --quiet --unit="l2s-vnf-$s" --property=Type=notify --property=NotifyAccess=all \
  --collect ip netns exec "$s" /usr/sbin/l2s-vnf -c "/etc/l2s-lab/$s/site.toml" run
