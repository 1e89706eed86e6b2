"""The Debian package as an operator meets it: built by scripts/package, installed with
dpkg in a clean Debian 12 (a chroot that scripts/setup made with debootstrap), configured
as docs/deploy.md says, upgraded without touching the operator's file, purged."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLEAN_DEBIAN = REPO / ".cache" / "debian-bookworm"

pytestmark = pytest.mark.netns  # root, and CI's setup


@pytest.fixture(scope="module")
def package() -> Path:
    built = subprocess.run(
        ["bash", "scripts/package"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (deb,) = (REPO / "dist").glob("overlay_*.deb")
    return deb


@pytest.fixture
def debian(tmp_path: Path) -> Iterator[Path]:
    if not (CLEAN_DEBIAN / "usr/bin/python3.11").exists():
        pytest.skip("no clean Debian in .cache/debian-bookworm: run scripts/setup")
    root = tmp_path / "debian"
    subprocess.run(["cp", "-a", str(CLEAN_DEBIAN), str(root)], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def inside(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["chroot", str(root), *argv], capture_output=True, text=True, timeout=120, env=env
    )


def test_install_configure_upgrade_purge(package: Path, debian: Path) -> None:
    shutil.copy(package, debian / "tmp" / "overlay.deb")
    installed = inside(debian, "dpkg", "-i", "/tmp/overlay.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert inside(debian, "overlay", "--version").stdout == f"overlay {version(package)}\n"
    assert inside(debian, "appliance", "--version").returncode == 0
    assert inside(debian, "getent", "passwd", "overlay").returncode == 0
    config = debian / "etc/overlay/server.toml"
    assert (config.stat().st_mode & 0o777, group(debian, config)) == (0o640, "overlay")
    state = debian / "var/lib/overlay"
    assert state.stat().st_mode & 0o777 == 0o700 and owner(debian, state) == "overlay"
    for path in (
        "lib/systemd/system/overlay.service",
        "lib/systemd/system/appliance.service",
        "usr/share/man/man1/overlay.1.gz",
        "usr/share/bash-completion/completions/overlay",
        "usr/share/snmp/mibs/OVERLAY-MIB.txt",
    ):
        assert (debian / path).is_file(), path

    # Not configured yet: one line saying what to do, no traceback, no flags needed.
    unconfigured = inside(debian, "overlay", "check-config")
    assert unconfigured.returncode == 1
    assert unconfigured.stderr.startswith("error: /etc/overlay/server.toml: auth.password_hash")
    assert "Traceback" not in unconfigured.stderr
    # docs/deploy.md's steps: certificates, a password hash, check-config.
    made = inside(debian, "overlay", "certs", "init", "/etc/overlay", "--name", "overlay.test")
    assert made.returncode == 0, made.stderr
    key = debian / "etc/overlay/server.key"
    assert (key.stat().st_mode & 0o777, group(debian, key)) == (0o640, "overlay")
    (debian / "tmp/password").write_text("a-long-tunnel-password\n")
    hashed = inside(debian, "sh", "-c", "overlay hash-password < /tmp/password")
    assert hashed.returncode == 0, hashed.stderr
    placeholder = "REPLACE-ME: run overlay hash-password"
    text = config.read_text().replace(placeholder, hashed.stdout.strip())
    config.write_text(text)
    checked = inside(debian, "overlay", "check-config")
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr

    # An upgrade (the same package again) keeps the operator's configuration.
    again = inside(debian, "dpkg", "-i", "/tmp/overlay.deb")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == text

    purged = inside(debian, "dpkg", "--purge", "overlay")
    assert purged.returncode == 0, purged.stderr
    assert not (debian / "opt/overlay").exists()
    assert not state.exists() and not config.exists()
    assert inside(debian, "getent", "passwd", "overlay").returncode == 2
    assert key.exists()  # what the operator made stays


def version(deb: Path) -> str:
    return deb.name.split("_")[1]


def owner(root: Path, path: Path) -> str:
    return inside(root, "stat", "-c", "%U", "/" + str(path.relative_to(root))).stdout.strip()


def group(root: Path, path: Path) -> str:
    return inside(root, "stat", "-c", "%G", "/" + str(path.relative_to(root))).stdout.strip()
