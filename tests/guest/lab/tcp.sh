#!/bin/sh
# In the guest: a TCP transfer of SIZE bytes between two VNFs; prints the bytes the receiver
# got (iperf3's own count).
# usage: tcp.sh FROM_NS TO_NS TO_IP SIZE
set -eu
pkill -x iperf3 2>/dev/null || true
ip netns exec "$2" iperf3 -s -1 -D -B "$3" >/dev/null 2>&1
/root/lab/listening.sh "$2" 5201
ip netns exec "$1" iperf3 -c "$3" -n "$4" -J --connect-timeout 3000 \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bytes"])'
