"""VRF backends: where a tunnel's socket, its name lookups and its TUN live.

- ``default``: the agent's own network namespace.
- ``netns``: the VRF is a network namespace. The tunnel's TCP socket is created
  inside it (so its routes and source address are the VRF's), its TUN too, and
  names are resolved there by a worker thread that entered the namespace and,
  as ``ip netns exec`` does, sees the files of ``/etc/netns/NAME/`` (for
  example ``resolv.conf`` and ``hosts``) in place of those of ``/etc``.
- ``vrf``: a Linux l3mdev VRF device: the socket is bound to it
  (SO_BINDTODEVICE) and the TUN is enslaved to it. Kernel support is checked at
  start; where it is missing that VRF is refused with a clear message and the
  others run.

Sockets and threads enter a namespace with setns(2), which acts on the calling
thread only; the event loop's thread returns to its own namespace at once.
Only the ``vrf`` backend speaks netlink, so only it loads pyroute2.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult

from appliance.exceptions import VrfError, VrfMissing
from overlay import namespace
from overlay.namespace import in_netns
from overlay.tun import Tun

BACKENDS = ("default", "netns", "vrf")
NETNS_ETC = Path("/etc/netns")
SocketFactory = Callable[[tuple[Any, ...]], socket.socket]

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SLAVE = 1 << 19


class Backend:
    """The ``default`` backend; the others refine it."""

    kind = "default"
    netns: str | None = None  # where the TUN is created

    async def check(self) -> None:
        """Raise :class:`VrfError` when this VRF cannot be used here."""

    def socket_factory(self) -> SocketFactory | None:
        return None

    def resolver(self) -> AbstractResolver | None:
        return None

    async def attach(self, tun: Tun) -> None:
        """Put a freshly created TUN where the VRF needs it."""

    def describe(self) -> str:
        return self.kind


class NamespaceBackend(Backend):
    kind = "netns"

    def __init__(self, name: str) -> None:
        self.namespace = name
        self.netns = name

    async def check(self) -> None:
        if not (Path("/run/netns") / self.namespace).exists():
            raise VrfMissing(
                f"network namespace {self.namespace!r} does not exist; create it first "
                f"(ip netns add {self.namespace}) or fix vrf.netns"
            )

    def socket_factory(self) -> SocketFactory:
        name = self.namespace

        def make(addr_info: tuple[Any, ...]) -> socket.socket:
            family, kind, proto = addr_info[0], addr_info[1], addr_info[2]
            with in_netns(name):
                return socket.socket(family, kind, proto)

        return make

    def resolver(self) -> AbstractResolver:
        return NamespaceResolver(self.namespace)

    def describe(self) -> str:
        return f"netns {self.namespace}"


class DeviceBackend(Backend):
    kind = "vrf"

    def __init__(self, device: str) -> None:
        self.device = device

    async def check(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        def find() -> list[Any]:
            with IPRoute() as ipr:
                return list(ipr.get_links(ifname=self.device))

        try:
            links = await asyncio.to_thread(find)  # pyroute2's sync API needs its own loop
        except NetlinkError:
            links = []
        if not links:
            if not Path("/sys/module/vrf").exists():
                raise VrfError(
                    f"this kernel has no VRF (l3mdev) support, so VRF device "
                    f'{self.device!r} cannot exist; use backend = "netns"'
                )
            raise VrfMissing(
                f"VRF device {self.device!r} does not exist; create it "
                f"(ip link add {self.device} type vrf table N) or fix vrf.device"
            )
        info = links[0].get("IFLA_LINKINFO")
        kind = info.get("IFLA_INFO_KIND") if info is not None else None
        if kind != "vrf":
            raise VrfError(f"{self.device!r} is a {kind or 'plain'} link, not a VRF device")

    def socket_factory(self) -> SocketFactory:
        device = self.device.encode()

        def make(addr_info: tuple[Any, ...]) -> socket.socket:
            sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device)
            return sock

        return make

    async def attach(self, tun: Tun) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        def enslave() -> None:
            with IPRoute() as ipr:
                master = ipr.link_lookup(ifname=self.device)[0]
                ipr.link("set", index=ipr.link_lookup(ifname=tun.name)[0], master=master)

        try:
            await asyncio.to_thread(enslave)
        except (NetlinkError, IndexError, OSError) as exc:
            raise VrfError(f"cannot enslave TUN {tun.name} to VRF {self.device}: {exc}") from None

    def describe(self) -> str:
        return f"vrf {self.device}"


def backend(kind: str, netns_name: str, device: str) -> Backend:
    if kind == "netns":
        return NamespaceBackend(netns_name)
    if kind == "vrf":
        return DeviceBackend(device)
    return Backend()


def enter_namespace(name: str) -> None:
    """Move the calling thread into namespace ``name``, with /etc/netns/NAME/* over /etc/*.

    For a worker thread that resolves names, as ``ip netns exec`` sets up a
    command: the mount namespace is private to this thread (unshare implies
    CLONE_FS), so the bind mounts are seen by nothing else.
    """
    namespace.enter(name)
    etc = NETNS_ETC / name
    if not etc.is_dir():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), f"cannot unshare the mount namespace for {name}")
    if libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        raise OSError(ctypes.get_errno(), "cannot make / a slave mount")
    for entry in sorted(etc.iterdir()):
        target = Path("/etc") / entry.name
        if (
            target.exists()
            and libc.mount(os.fsencode(entry), os.fsencode(target), None, _MS_BIND, None) != 0
        ):
            raise OSError(ctypes.get_errno(), f"cannot bind {entry} over {target}")


class NamespaceResolver(AbstractResolver):
    """getaddrinfo() in a thread that lives in the VRF's namespace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(
            1, thread_name_prefix=f"resolve-{name}", initializer=enter_namespace, initargs=(name,)
        )

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.run_in_executor(
                self._pool, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise OSError(
                exc.errno, f"cannot resolve {host} in VRF namespace {self.name}: {exc.strerror}"
            ) from None
        return [
            ResolveResult(
                hostname=host,
                host=str(address[0]),
                port=int(address[1]),
                family=fam,
                proto=proto,
                flags=socket.AI_NUMERICHOST,
            )
            for fam, _, proto, _, address in infos
        ]

    async def close(self) -> None:
        self._pool.shutdown(wait=False)
