#!/bin/sh
# In the guest: wait (at most 5 s) until a TCP port listens in a namespace.
# usage: listening.sh NS PORT
i=0
until ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q .; do
  i=$((i + 1))
  [ $i -lt 100 ] || { echo "nothing listens on $2 in $1"; exit 1; }
  sleep 0.05
done
