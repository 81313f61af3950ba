#!/bin/sh
# In the guest: the service between two VNFs as a user sees it — neighbour caches flushed
# (ARP must cross the flood path), then a ping and a TCP transfer.
# usage: service.sh FROM_NS TO_NS TO_IP
set -u
pkill -x iperf3 2>/dev/null
ip -n "$1" neigh flush all
ip -n "$2" neigh flush all
i=0
until ip netns exec "$1" ping -c1 -W1 "$3" >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 10 ] || { echo "ping $1 -> $3 failed"; exit 1; }
done
ip netns exec "$2" iperf3 -s -1 -D -B "$3" >/dev/null 2>&1
/root/lab/listening.sh "$2" 5201 || exit 1
ip netns exec "$1" iperf3 -c "$3" -n 256K --connect-timeout 3000 >/dev/null 2>&1 \
  || { echo "TCP $1 -> $3 failed"; exit 1; }
