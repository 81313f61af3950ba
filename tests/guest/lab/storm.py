#!/usr/bin/env python3
# A VNF gone wrong (a loop, a storm): minimum-size broadcast frames (EtherType 0x88b5) out of
# a device (argv[2]) as fast as one core sends them, for argv[1] seconds. Used by both labs.
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[2], 0))
mac = bytes.fromhex(open("/sys/class/net/%s/address" % sys.argv[2]).read().strip().replace(":", ""))
frame = b"\xff" * 6 + mac + b"\x88\xb5" + b"storm" + bytes(41)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(1000):
        try:
            s.send(frame)
        except OSError:
            pass
