"""The Vagrant provisioning, exercised without VMs.

``scripts/provision`` installs each role under ``--root``, changing nothing
outside it; the test then starts exactly what the installed systemd units say,
in namespaces, and checks that the tunnel comes up. ``vagrant validate`` checks
the Vagrantfile, libvirt block included.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import deploy, netns
from tests.integration.conftest import PASSWORD, REPO, SRV, Overlay

pytestmark = pytest.mark.netns

PROVISION = REPO / "scripts" / "provision"


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(PROVISION), *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_provisioned_server_and_device_bring_the_tunnel_up(
    overlay: Overlay, tmp_path: Path
) -> None:
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    server = provision(
        "server",
        "--root",
        str(tmp_path / "srv"),
        "--pki",
        str(overlay.pki_dir),
        "--password-file",
        str(password),
        "--listen",
        "198.18.0.1",
        "--enroll",
        "SN-PROV-0001",
    )
    assert "skipped (--root): systemctl enable overlay.service" in server.stdout
    srv_etc = tmp_path / "srv" / "etc"
    assert (srv_etc / "overlay" / "pki" / "server.key").stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (srv_etc / "overlay" / "server.toml").read_text()

    device = provision(
        "device",
        "--root",
        str(tmp_path / "dev"),
        "--id",
        "SN-PROV-0001",
        "--url",
        "wss://198.18.0.1/tun",
        "--ca",
        str(overlay.ca_file),
        "--password-file",
        str(password),
        "--vrf",
        "main-vrf",
        "--route",
        "198.18.0.0/24",
        "--via",
        "198.19.0.254",
    )
    assert "skipped (--root): ip route replace 198.18.0.0/24 via 198.19.0.254" in device.stdout

    units = [
        srv_etc / "systemd" / "system" / "overlay.service",
        tmp_path / "dev" / "etc" / "systemd" / "system" / "appliance.service",
    ]
    for unit in units:
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert verify.returncode == 0, verify.stderr
        assert "Restart=on-failure" in unit.read_text()
        assert "After=network-online.target" in unit.read_text()

    dev = overlay.add_device("prov")
    overlay.processes.append(netns.spawn(SRV, exec_start(units[0]), tmp_path / "srv.log"))
    overlay.processes.append(netns.spawn(dev.ns, exec_start(units[1]), tmp_path / "dev.log"))
    socket = tmp_path / "dev" / "run" / "appliance" / "SN-PROV-0001.sock"
    up = deploy.wait_for(
        "provisioned tunnel up", deploy.tunnel_up(socket), timeout=30, log=tmp_path / "dev.log"
    )
    assert (up["vrf"], up["address"]) == ("main-vrf", "169.254.1.1")
    assert netns.run(SRV, ["ping", "-c", "1", "-W", "2", "169.254.1.1"]).returncode == 0


def test_provisioned_nat_rules_load(tmp_path: Path) -> None:
    result = provision(
        "nat", "--root", str(tmp_path), "--lan", "198.19.0.0/24", "--wan", "198.18.0.0/24"
    )
    assert "skipped (--root): nft -f" in result.stdout
    rules = tmp_path / "etc" / "overlay" / "nat.nft"
    assert "ip saddr 198.19.0.0/24 ip daddr 198.18.0.0/24 masquerade" in rules.read_text()
    netns.create("ovlt-nat")
    try:
        loaded = netns.run("ovlt-nat", ["nft", "-f", str(rules)])
        assert loaded.returncode == 0, loaded.stderr
        listed = netns.run("ovlt-nat", ["nft", "list", "chain", "ip", "ovl_nat", "forward"])
        assert "policy drop" in listed.stdout
    finally:
        netns.remove("ovlt-nat")


def test_vagrantfile_validates(tmp_path: Path) -> None:
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")
    env = os.environ | {
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    result = subprocess.run(
        ["vagrant", "validate"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully." in result.stdout
    pki = tmp_path / ".vagrant" / "ovl-pki"
    assert (pki / "server.key").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in pki.iterdir()) == [
        "ca.pem",
        "password",
        "server.key",
        "server.pem",
    ]
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-x509_strict",
            "-CAfile",
            str(pki / "ca.pem"),
            str(pki / "server.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.stdout.strip() == f"{pki / 'server.pem'}: OK", verify.stderr
