#!/usr/bin/env python3
"""In the guest: a clear-text VXLAN frame crafted by a rogue underlay host — VNI 101, an
Ethernet broadcast carrying IPv4/UDP to 10.101.0.255:PORT. usage: forge-vxlan.py VTEP PORT"""
import socket
import struct
import sys

dst, port = sys.argv[1], int(sys.argv[2])


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


payload = b"forged-l2s"
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton("10.101.0.66"), socket.inet_aton("10.101.0.255"))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x66" + b"\x08\x00"
vxlan = struct.pack("!II", 0x08000000, 101 << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(vxlan + eth + ip + udp, (dst, 4789))
