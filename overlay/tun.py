"""A TUN device (Documentation/networking/tuntap.rst) with batched, non-blocking I/O.

The device carries IP packets, each behind a 10-byte virtio-net header
(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, :mod:`overlay.offload`): one read() returns
one header and packet, one write() injects one. With offload switched on
(:meth:`Tun.set_offload`), a read may return a TCP segment of up to 64 KiB that
the header says how to cut, and checksums left for the far end to finish; with
it off the kernel does both itself and the header says nothing. Reads drain
the device until it would block, so that everything the kernel queued since
the last wake-up leaves as one WebSocket frame. The device vanishes when its
file descriptor closes, so a crashed process leaves nothing behind.

Address, MTU, queue length and link state are set with the interface ioctls
(SIOCSIFADDR and friends, netdevice(7)) on a socket made in the device's
namespace: the few calls that configure one device, without netlink's library
(pyroute2 costs a device agent 13 MB) and without a thread. IPv6 is turned off
on the device before it goes up: protocol v1 carries IPv4, and a fresh link
would otherwise send router solicitations into the tunnel (where /proc/sys is
read-only to the process, it gets no IPv6 address instead, by netlink).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
from typing import Protocol

import pytun

from overlay import rtnl
from overlay.exceptions import TunError
from overlay.namespace import in_netns
from overlay.offload import MAX_RECORD

IFNAMSIZ = 15
_WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)
# include/uapi/linux/if_tun.h
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01  # the far end may finish checksums
TUN_F_TSO4 = 0x02  # TCPv4 segments larger than the MTU
# include/uapi/linux/sockios.h; struct ifreq is a 16-byte name and a 24-byte union
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCSIFMTU = 0x8922
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1


def _ifreq_address(name: bytes, address: ipaddress.IPv4Address) -> bytes:
    """An ifreq holding a sockaddr_in (family in host order, port 0, the address)."""
    return struct.pack("=16sH2s4s8x", name, socket.AF_INET, b"", address.packed)


def _ifreq_int(name: bytes, value: int) -> bytes:
    return struct.pack("=16si20x", name, value)


class TunDevice(Protocol):
    """What the router and the bridge need of a TUN: a descriptor to watch for reading
    (``loop.add_reader``), batched reads and single writes of header and packet. Tests
    give them a stand-in on a socketpair (tests/faketun.py)."""

    name: str
    fd: int
    offload: bool

    def read_batch(self, max_bytes: int) -> list[bytes]: ...
    def write(self, *parts: bytes | memoryview) -> bool: ...


class Tun:
    """An open TUN device."""

    def __init__(self, device: pytun.TunTapDevice, netns_name: str | None) -> None:
        self._device = device
        self.name: str = device.name
        self.netns = netns_name
        self.fd: int = device.fileno()
        self.offload = False
        self.address: ipaddress.IPv4Interface | None = None
        self.routes: frozenset[ipaddress.IPv4Network] = frozenset()  # ours, through the device
        os.set_blocking(self.fd, False)

    @classmethod
    def create(cls, name: str, netns_name: str | None = None) -> Tun:
        """Create the device (down, no address); needs root or CAP_NET_ADMIN."""
        if not name or len(name) > IFNAMSIZ:
            raise TunError(f"TUN name {name!r} must be 1 to {IFNAMSIZ} characters")
        with in_netns(netns_name):
            try:
                device = pytun.TunTapDevice(
                    name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | pytun.IFF_VNET_HDR
                )
            except pytun.Error as exc:
                code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
                if code in (errno.EPERM, errno.EACCES):
                    raise TunError(
                        f"cannot create TUN {name}: permission denied; "
                        "run as root or grant CAP_NET_ADMIN"
                    ) from None
                if code == errno.EBUSY:
                    raise TunError(f"cannot create TUN {name}: another process holds it") from None
                if code == errno.ENOENT:
                    raise TunError(
                        f"cannot create TUN {name}: /dev/net/tun is missing; load the tun module"
                    ) from None
                raise TunError(f"cannot create TUN {name}: {exc}") from None
            _disable_ipv6(name)
        return cls(device, netns_name)

    async def configure(
        self, address: ipaddress.IPv4Interface, mtu: int, queue_length: int | None = None
    ) -> None:
        """Give the device its address, MTU and (when given) queue length, and bring it
        up; safe to call again.

        The queue length bounds the kernel's ring of packets waiting for us to read
        them (500 by default). It is the queue the overlay's inner TCP flows fill while
        the tunnel's socket is busy, so it sets the delay under load: at 200 Mbit/s,
        500 packets of 1,400 bytes wait 28 ms, 64 packets 3.6 ms.
        """
        name = self.name.encode()
        try:
            with in_netns(self.netns), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                if self.address != address:  # SIOCSIFADDR replaces the address it had
                    fcntl.ioctl(sock, SIOCSIFADDR, _ifreq_address(name, address.ip))
                    fcntl.ioctl(sock, SIOCSIFNETMASK, _ifreq_address(name, address.netmask))
                if queue_length is not None:
                    fcntl.ioctl(sock, SIOCSIFTXQLEN, _ifreq_int(name, queue_length))
                fcntl.ioctl(sock, SIOCSIFMTU, _ifreq_int(name, mtu))
                ifreq = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("=16s24x", name))
                flags = struct.unpack_from("=16sh", ifreq)[1]
                fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("=16sh22x", name, flags | IFF_UP))
        except OSError as exc:
            raise TunError(
                f"cannot configure TUN {self.name} with {address} mtu {mtu}: {exc.strerror}"
            ) from None
        self.address = address

    def route(self, networks: frozenset[ipaddress.IPv4Network]) -> None:
        """Route exactly ``networks`` through the device (the management LAN a hello
        names): the ones no longer named go. TunError naming the route that failed."""
        changes = [(rtnl.RTM_DELROUTE, n) for n in sorted(self.routes - networks)]
        changes += [(rtnl.RTM_NEWROUTE, n) for n in sorted(networks - self.routes)]
        with in_netns(self.netns):
            for kind, network in changes:
                try:
                    rtnl.change_route(kind, network, self.name)
                except OSError as exc:
                    raise TunError(
                        f"cannot change a route through TUN {self.name}: {exc}"
                    ) from None
                if kind == rtnl.RTM_NEWROUTE:
                    self.routes |= {network}
                else:
                    self.routes -= {network}

    def set_offload(self, on: bool) -> None:
        """Let the kernel hand over large TCP segments and unfinished checksums, or not."""
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 if on else 0)
        except OSError as exc:
            raise TunError(f"cannot set offloads on TUN {self.name}: {exc.strerror}") from None
        self.offload = on

    def read_batch(self, max_bytes: int) -> list[bytes]:
        """Read headers and packets until the device would block or ``max_bytes`` are
        gathered."""
        return read_records(self.fd, max_bytes)

    def write(self, *parts: bytes | memoryview) -> bool:
        """Inject one header and packet, given whole or in parts (``PLAIN, packet``);
        False when the kernel refused it (queue full, link down, a header it does not take)."""
        return write_record(self.fd, parts)

    def close(self) -> None:
        """Close the device; the kernel removes it with its address and routes."""
        self._device.close()


def read_records(fd: int, max_bytes: int) -> list[bytes]:
    """Read one record (header and packet) per read until ``fd`` would block or
    ``max_bytes`` are gathered."""
    records: list[bytes] = []
    size = 0
    read = os.read
    while size < max_bytes:
        try:
            record = read(fd, MAX_RECORD)  # also with offload off: segments read
            # before it went off may still wait in the queue
        except BlockingIOError:
            break
        records.append(record)
        size += len(record)
    return records


def write_record(fd: int, parts: tuple[bytes | memoryview, ...]) -> bool:
    """Write one record from its parts; False when it was refused (full, down, bad header)."""
    try:
        os.writev(fd, parts)
    except OSError as exc:
        if exc.errno in _WOULD_BLOCK or exc.errno in (errno.ENOBUFS, errno.EIO, errno.EINVAL):
            return False
        raise
    return True


def _disable_ipv6(name: str) -> None:
    """Turn IPv6 off on the device; where /proc/sys is not ours to write (a service user
    with CAP_NET_ADMIN only, ProtectKernelTunables=), at least give it no address."""
    path = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    try:
        with open(path, "w") as knob:
            knob.write("1")
    except FileNotFoundError:
        pass  # IPv6 is off in this kernel or namespace: nothing to silence
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        _no_ipv6_address(socket.if_nametoindex(name))


RTM_SETLINK = 19
NLM_F_REQUEST_ACK = 0x1 | 0x4
IFLA_AF_SPEC = 26
IFLA_INET6_ADDR_GEN_MODE = 8
IN6_ADDR_GEN_MODE_NONE = 1


def _no_ipv6_address(index: int) -> None:
    """RTM_SETLINK with addr_gen_mode none (rtnetlink(7)): the link gets no IPv6 address,
    so it sends no router solicitation, by netlink, which CAP_NET_ADMIN may use."""
    mode = struct.pack("=HHB3x", 5, IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE)
    inet6 = struct.pack("=HH", 4 + len(mode), socket.AF_INET6) + mode
    spec = struct.pack("=HH", 4 + len(inet6), IFLA_AF_SPEC) + inet6
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + spec
    message = struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.send(message)
        answer = sock.recv(4096)
    (code,) = struct.unpack_from("=i", answer, 16)  # nlmsgerr: 0 is the acknowledgement
    if code:
        raise OSError(-code, f"cannot set addr_gen_mode on interface {index}")
