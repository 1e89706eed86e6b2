"""Network namespaces, veth links, addresses, routes and processes for the lab and the tests.

Everything is done over netlink with pyroute2; nothing parses ``ip`` output.
Links are created inside the namespaces themselves, so the root namespace
never holds a lab interface, not even for a moment. Removing a namespace
first kills the processes still inside it (which would otherwise keep it
alive), so leftovers of a killed run are cleaned the same way as a normal end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from pyroute2 import IPRoute, netns

NETNS_DIR = Path("/run/netns")


def exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def names(prefix: str) -> list[str]:
    """The namespaces whose name starts with ``prefix``."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (what ``ip netns pids`` reports)."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(entry))
    return found


def remove(name: str, grace: float = 3.0) -> None:
    """Stop the processes in namespace ``name`` (SIGTERM, then SIGKILL) and remove it."""
    pids = pids_in(name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        if not pids:
            break
    if exists(name):
        netns.remove(name)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def create(name: str) -> None:
    """Create namespace ``name`` afresh (removing a leftover of the same name) with lo up."""
    if exists(name):
        remove(name)
    netns.create(name)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair with end ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b``, both up."""
    with IPRoute(netns=ns_a) as ipr:
        ipr.link("add", ifname=name_a, kind="veth", peer={"ifname": name_b, "net_ns_fd": ns_b})
        ipr.link("set", index=ipr.link_lookup(ifname=name_a)[0], state="up")
    with IPRoute(netns=ns_b) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name_b)[0], state="up")


def bridge(ns: str, name: str) -> None:
    """An empty bridge in ``ns``, up; add ports with :func:`enslave`."""
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")


def enslave(ns: str, port: str, master: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link(
            "set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=master)[0]
        )


def address(ns: str, ifname: str, cidr: str) -> None:
    ip, prefix = cidr.split("/")
    with IPRoute(netns=ns) as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=ifname)[0], address=ip, prefixlen=int(prefix))


def link_state(ns: str, ifname: str, up: bool) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up" if up else "down")


def route(ns: str, dst: str, gateway: str) -> None:
    with IPRoute(netns=ns) as ipr:
        ipr.route("replace", dst=dst, gateway=gateway)


def sysctl(ns: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl such as ``net.ipv4.ip_forward``."""
    netns.pushns(ns)
    try:
        Path("/proc/sys", *key.split(".")).write_text(value)
    finally:
        netns.popns()


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside ``ns`` (with /etc/netns/NS honoured)."""
    return ["ip", "netns", "exec", ns, *argv]


def run(
    ns: str,
    argv: Sequence[str],
    timeout: float = 30,
    check: bool = False,
    input: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command in ``ns`` to completion and capture its output."""
    return subprocess.run(
        exec_argv(ns, argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
        input=input,
        env=env,
    )


def spawn(
    ns: str,
    argv: Sequence[str],
    log: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running command in ``ns`` with stdout and stderr into ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            exec_argv(ns, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 10) -> int:
    """SIGTERM, wait, then SIGKILL: the exit code (negative for a signal)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def stop_pid(pidfile: Path, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop the daemon whose pid is in ``pidfile`` (``sig``, then SIGKILL after 5 s), if it
    runs."""
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
        pid = int(pidfile.read_text().split()[0])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
