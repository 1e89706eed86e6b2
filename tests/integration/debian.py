"""A clean Debian 12 to install the package into: copies of the minimal system that
scripts/setup made with debootstrap, and the package that scripts/package builds."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from lab import netns

REPO = Path(__file__).resolve().parents[2]
CLEAN = REPO / ".cache" / "debian-bookworm"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def build_package() -> Path:
    built = subprocess.run(
        ["bash", "scripts/package"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (deb,) = (REPO / "dist").glob("overlay_*.deb")
    return deb


def copy(root: Path) -> Path:
    """A fresh copy of the clean Debian at ``root``, with /dev/net/tun mode 0666 as Debian's
    udev makes it (the host's device is not touched)."""
    subprocess.run(["cp", "-a", str(CLEAN), str(root)], check=True)
    tun = root / "dev" / "net" / "tun"
    tun.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(tun, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    tun.chmod(0o666)
    return root


def argv(root: Path, command: list[str]) -> list[str]:
    """``command`` run in ``root`` with /proc mounted, in a mount namespace of its own (the
    mount goes away with the process, whatever happens to the test)."""
    script = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root),
            *command]  # fmt: skip


def run(
    root: Path, *command: str, ns: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``command`` inside ``root`` (and inside network namespace ``ns`` when given)."""
    line = argv(root, list(command))
    return subprocess.run(
        netns.exec_argv(ns, line) if ns else line,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


def spawn(root: Path, ns: str, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    return netns.spawn(ns, argv(root, command), log, env=ENV)


def stat_of(root: Path, path: str) -> tuple[int, str, str]:
    """Mode, owner and group of ``path`` inside ``root``, by the names ``root`` knows."""
    shown = run(root, "stat", "-c", "%a %U %G", path).stdout.split()
    return int(shown[0], 8), shown[1], shown[2]
