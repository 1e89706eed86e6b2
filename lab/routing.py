"""BIRD and FRR in network namespaces, for the lab and the tests, never as system services.

Their configuration, sockets, pid files and logs live in one directory of the
lab or the test. FRR's daemons drop to the ``frr`` user, so their directory
belongs to it (and lies where that user may enter: /tmp or /var/tmp, not
under a 0700 pytest directory). Both are stopped by their pids.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from lab import netns

FRR_DAEMONS = ("zebra", "bfdd", "bgpd")


class Bird:
    """BIRD 2 in ``ns`` with ``config``; its control socket in ``directory``."""

    def __init__(self, directory: Path, ns: str) -> None:
        self.dir, self.ns = directory, ns
        self.config = directory / "bird.conf"
        self.socket = directory / "bird.ctl"
        self.pidfile = directory / "bird.pid"

    def start(self, config: str) -> None:
        self.stop()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config)
        argv = ["bird", "-c", str(self.config), "-s", str(self.socket), "-P", str(self.pidfile)]
        result = netns.run(self.ns, argv)
        if result.returncode != 0:
            raise RuntimeError(f"bird did not start: {(result.stderr or result.stdout).strip()}")

    def birdc(self, command: str) -> str:
        return netns.run(self.ns, ["birdc", "-s", str(self.socket), command]).stdout

    def stop(self) -> None:
        netns.stop_pid(self.pidfile)


class Frr:
    """FRR's zebra, bfdd and bgpd in ``ns``, with ``frr.conf`` and their sockets in
    ``directory`` (owned by the frr user)."""

    def __init__(self, directory: Path, ns: str) -> None:
        self.dir, self.ns = directory, ns

    def start(self, config: str) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        (self.dir / "frr.conf").write_text(config)
        user = pwd.getpwnam("frr")
        for path in (self.dir, self.dir / "frr.conf"):
            os.chown(path, user.pw_uid, user.pw_gid)
        for daemon in FRR_DAEMONS:
            argv = [
                f"/usr/lib/frr/{daemon}",
                "-d",
                "-u",
                "frr",
                "-g",
                "frr",
                "-f",
                str(self.dir / "frr.conf"),
                "-i",
                str(self.dir / f"{daemon}.pid"),
                "-z",
                str(self.dir / "zserv.api"),
                "--vty_socket",
                str(self.dir),
                "-A",
                "127.0.0.1",
                "--log",
                f"file:{self.dir / daemon}.log",
            ]
            result = netns.run(self.ns, argv)
            if result.returncode != 0:
                raise RuntimeError(f"FRR's {daemon} did not start: {result.stderr.strip()}")

    def vtysh(self, command: str) -> str:
        result = netns.run(self.ns, ["vtysh", "--vty_socket", str(self.dir), "-c", command])
        return result.stdout

    def stop(self) -> None:
        for daemon in reversed(FRR_DAEMONS):
            netns.stop_pid(self.dir / f"{daemon}.pid")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def frr_peer_config(local_as: int, router_id: str, peers: dict[str, int], bfd: bool) -> str:
    """An FRR router that takes what the overlay nodes announce (``peers``: address → AS)."""
    lines = [
        "frr defaults traditional",
        "hostname lan",
        "!",
        f"router bgp {local_as}",
        f" bgp router-id {router_id}",
        " no bgp ebgp-requires-policy",
    ]
    for address, asn in peers.items():
        lines.append(f" neighbor {address} remote-as {asn}")
        lines.append(f" neighbor {address} timers 3 9")
        lines.append(f" neighbor {address} timers connect 1")
        if bfd:
            lines.append(f" neighbor {address} bfd")
    return "\n".join([*lines, "!", ""])
