"""Flood the server through a device's tunnel: raw UDP packets as fast as Python sends them.

    python -m tests.integration.flood SOURCE MODE SECONDS

MODE ``new-flows``: each packet from another source port to syslog (514), so each
opens a flow until the device's table is full; ``refused``: to a port no rule
allows; ``allowed``: one syslog flow. Prints how many packets were sent.
"""

from __future__ import annotations

import socket
import sys
import time

from tests.packets import ipv4

SERVER = "169.254.0.1"


def packets(source: str, mode: str) -> list[bytes]:
    if mode == "new-flows":
        return [ipv4(source, SERVER, 17, b"x" * 8, port, 514) for port in range(1024, 65536)]
    port = 9999 if mode == "refused" else 514
    return [ipv4(source, SERVER, 17, b"x" * 8, 40000, port)]


def main(source: str, mode: str, seconds: float) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sock.setblocking(False)
    ready, count = packets(source, mode), 0
    sent, end = 0, time.monotonic() + seconds
    while count & 1023 or time.monotonic() < end:
        try:
            sock.sendto(ready[count % len(ready)], (SERVER, 0))
            sent += 1
        except OSError:  # the TUN's queue is full: the agent is as busy as it gets
            pass
        count += 1
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
