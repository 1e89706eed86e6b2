"""The Debian package as an operator meets it: built by scripts/package, installed with
dpkg in a clean Debian 12 (a chroot that scripts/setup made with debootstrap), configured
as docs/deploy.md says, upgraded without touching the operator's file, purged."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.debian import run, stat_of

pytestmark = pytest.mark.netns  # root, and CI's setup


def test_install_configure_upgrade_purge(package: Path, debian_root: Callable[[str], Path]) -> None:
    debian = debian_root("debian")
    shutil.copy(package, debian / "tmp" / "overlay.deb")
    installed = run(debian, "dpkg", "-i", "/tmp/overlay.deb")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert run(debian, "overlay", "--version").stdout == f"overlay {version(package)}\n"
    assert run(debian, "appliance", "--version").returncode == 0
    assert run(debian, "getent", "passwd", "overlay").returncode == 0
    config = debian / "etc/overlay/server.toml"
    assert stat_of(debian, "/etc/overlay/server.toml") == (0o640, "root", "overlay")
    state = debian / "var/lib/overlay"
    assert stat_of(debian, "/var/lib/overlay") == (0o700, "overlay", "overlay")
    for path in (
        "lib/systemd/system/overlay.service",
        "lib/systemd/system/appliance.service",
        "usr/share/man/man1/overlay.1.gz",
        "usr/share/bash-completion/completions/overlay",
        "usr/share/snmp/mibs/OVERLAY-MIB.txt",
    ):
        assert (debian / path).is_file(), path

    # Not configured yet: one line saying what to do, no traceback, no flags needed.
    unconfigured = run(debian, "overlay", "check-config")
    assert unconfigured.returncode == 1
    assert unconfigured.stderr.startswith("error: /etc/overlay/server.toml: auth.password_hash")
    assert "Traceback" not in unconfigured.stderr
    # docs/deploy.md's steps: certificates, a password hash, check-config.
    made = run(debian, "overlay", "certs", "init", "/etc/overlay", "--name", "overlay.test")
    assert made.returncode == 0, made.stderr
    key = debian / "etc/overlay/server.key"
    assert stat_of(debian, "/etc/overlay/server.key") == (0o640, "root", "overlay")
    (debian / "tmp/password").write_text("a-long-tunnel-password\n")
    hashed = run(debian, "sh", "-c", "overlay hash-password < /tmp/password")
    assert hashed.returncode == 0, hashed.stderr
    placeholder = "REPLACE-ME: run overlay hash-password"
    text = config.read_text().replace(placeholder, hashed.stdout.strip())
    config.write_text(text)
    checked = run(debian, "overlay", "check-config")
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stderr

    # An upgrade (the same package again) keeps the operator's configuration.
    again = run(debian, "dpkg", "-i", "/tmp/overlay.deb")
    assert again.returncode == 0, again.stderr
    assert config.read_text() == text

    purged = run(debian, "dpkg", "--purge", "overlay")
    assert purged.returncode == 0, purged.stderr
    assert not (debian / "opt/overlay").exists()
    assert not state.exists() and not config.exists()
    assert run(debian, "getent", "passwd", "overlay").returncode == 2
    assert key.exists()  # what the operator made stays


def version(deb: Path) -> str:
    return deb.name.split("_")[1]
