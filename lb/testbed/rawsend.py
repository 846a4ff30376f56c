"""Send hand-made IPv4 packets as they are (tests only): `python -m lb.testbed.rawsend HEX...`.

Each argument is one complete IPv4 packet in hex, sent on a raw IPPROTO_RAW socket (the header is
the caller's: any source address, any checksum) towards its own destination address. Meant for a
test's client namespace: hostile packets (martian sources, malformed transport headers) that no
socket API would build. Prints the number of packets sent.
"""

from __future__ import annotations

import socket
import sys


def send(packets: list[bytes]) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
        for packet in packets:
            s.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
    return len(packets)


def main(argv: list[str]) -> int:
    packets = [bytes.fromhex(arg) for arg in argv]
    if any(len(p) < 20 for p in packets):
        print("rawsend: every packet needs at least an IPv4 header", file=sys.stderr)
        return 2
    print(send(packets))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
