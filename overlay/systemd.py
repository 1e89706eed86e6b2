"""What the programs tell systemd, when systemd runs them: readiness and log severities.

Both are plain protocols (sd_notify(3) and sd-daemon(3)'s ``<N>`` prefixes),
so they need no library: a datagram to ``$NOTIFY_SOCKET``, and a prefix on
each line written to a stderr that ``$JOURNAL_STREAM`` says is the journal.
Outside systemd both do nothing.
"""

from __future__ import annotations

import os
import socket
import sys

# sd-daemon(3): the syslog priority of each of our levels
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def notify(*assignments: str) -> bool:
    """Send ``READY=1``, ``STATUS=…`` and the like to systemd; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(assignments).encode(), address)
        except OSError:
            return False  # systemd went away or never listened: nothing to tell
    return True


def journal_stream() -> bool:
    """Whether stderr is the journal (``$JOURNAL_STREAM`` names its device and inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not device.isdigit() or not inode.isdigit():
        return False
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def priority(level: str) -> str:
    """The ``<N>`` prefix journald reads as the line's severity."""
    return f"<{PRIORITIES.get(level, 6)}>"
