"""Entering a network namespace from the calling thread, with setns(2).

A TUN, like a socket, belongs to the namespace it was created in for its whole
life, so code that must create one inside a VRF's namespace enters it for just
that call and comes back. setns(2) acts on the calling thread only. Named
namespaces are the files ``ip netns add`` makes under ``/run/netns``.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overlay.exceptions import TunError

NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` for good (a worker thread's start)."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body in network namespace ``name`` (the current one when None)."""
    if name is None:
        yield
        return
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot enter network namespace {name!r}: {exc.strerror}") from None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise TunError(f"cannot enter network namespace {name!r}: {exc.strerror}") from None
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
