#!/usr/bin/env python3
"""In the guest: multicast across sites. `multicast.py recv ADDR` joins 239.1.1.1 on the VNF's
address and prints the first datagram; `multicast.py send ADDR` sends a few."""
import socket
import struct
import sys
import time

GROUP, PORT = "239.1.1.1", 5001
mode, addr = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "recv":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", PORT))
    mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(addr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    s.settimeout(15)
    print(s.recvfrom(100)[0].decode())
else:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(addr))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    for _ in range(20):
        s.sendto(b"l2s-multicast", (GROUP, PORT))
        time.sleep(0.2)
