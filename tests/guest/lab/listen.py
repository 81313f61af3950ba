#!/usr/bin/env python3
"""In the guest: exit 0 if a UDP datagram to PORT arrives within SECS. usage: listen.py PORT SECS"""
import socket
import sys

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
try:
    s.recvfrom(100)
    print("received")
except OSError:
    sys.exit(1)
