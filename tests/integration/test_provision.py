"""The Vagrant provisioning, exercised without VMs.

``scripts/provision`` runs, for real, in clean Debian 12 systems (chroots in the lab's
namespaces): it installs the package, writes the configuration and the device's route;
the test then starts what the installed units say, as their users, and checks that the
tunnel comes up. ``vagrant validate`` checks the Vagrantfile, libvirt block included.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import deploy, netns
from tests.integration import debian
from tests.integration.conftest import PASSWORD, REPO, SERVER_IP, SRV, Overlay

pytestmark = pytest.mark.netns

PROVISION = REPO / "scripts" / "provision"


def provision(root: Path, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/provision inside ``root`` and ``ns``, with what it reads copied in."""
    shutil.copy(PROVISION, root / "tmp" / "provision")
    result = debian.run(root, "bash", "/tmp/provision", *args, ns=ns, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_unit_runs_it(root: Path, unit: str) -> list[str]:
    """The unit's ExecStart= as its User= with its AmbientCapabilities= (setpriv)."""
    text = (root / "lib/systemd/system" / unit).read_text().splitlines()
    fields = dict(line.split("=", 1) for line in text if "=" in line and line[0].isupper())
    caps = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in
                    fields["AmbientCapabilities"].split())  # fmt: skip
    user = fields["User"]
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
            f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{caps}", "--no-new-privs",
            *shlex.split(fields["ExecStart"])]  # fmt: skip


def test_provisioned_server_and_device_bring_the_tunnel_up(
    overlay: Overlay, package: Path, debian_root: Callable[[str], Path], tmp_path: Path
) -> None:
    srv, dev = debian_root("srv"), debian_root("dev")
    for root in (srv, dev):
        shutil.copy(package, root / "tmp" / "overlay.deb")
        (root / "tmp" / "password").write_text(PASSWORD + "\n")
    shutil.copytree(overlay.pki_dir, srv / "tmp" / "pki")
    shutil.copy(overlay.ca_file, dev / "tmp" / "ca.pem")

    server_args = ["server", "--deb", "/tmp/overlay.deb", "--pki", "/tmp/pki",
                   "--password-file", "/tmp/password", "--listen", SERVER_IP,
                   "--enroll", "SN-PROV-0001"]  # fmt: skip
    server = provision(srv, SRV, *server_args)
    assert "systemd is not running here: overlay.service is installed" in server.stdout
    config = srv / "etc/overlay/server.toml"
    assert PASSWORD not in config.read_text()
    assert debian.stat_of(srv, "/etc/overlay/server.toml") == (0o640, "root", "overlay")
    assert debian.stat_of(srv, "/etc/overlay/server.key") == (0o640, "root", "overlay")
    registry = next((srv / "var/lib/overlay").glob("*.sqlite"))
    assert debian.stat_of(srv, f"/var/lib/overlay/{registry.name}")[1] == "overlay"

    dev_ns = overlay.attach("prov", "198.18.0.11")
    device_args = ["device", "--deb", "/tmp/overlay.deb", "--id", "SN-PROV-0001",
                   "--url", f"wss://{SERVER_IP}/tun", "--ca", "/tmp/ca.pem",
                   "--password-file", "/tmp/password", "--vrf", "main-vrf",
                   "--route", "198.19.99.0/24", "--via", SERVER_IP]  # fmt: skip
    provision(dev, dev_ns, *device_args)
    routes = netns.run(dev_ns, ["ip", "route", "show", "198.19.99.0/24"]).stdout
    assert f"via {SERVER_IP}" in routes
    drop_in = dev / "etc/systemd/system/appliance.service.d/underlay-route.conf"
    assert f"route replace 198.19.99.0/24 via {SERVER_IP}" in drop_in.read_text()
    assert debian.stat_of(dev, "/etc/appliance/password") == (0o640, "root", "appliance")

    for root, unit in ((srv, "overlay.service"), (dev, "appliance.service")):
        installed = (root / "lib/systemd/system" / unit).read_text()
        checked = tmp_path / unit  # systemd-analyze checks ExecStart= on this host's paths
        checked.write_text(installed.replace("/opt/overlay/", f"{root}/opt/overlay/"))
        verify = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", str(checked)], capture_output=True, text=True
        )
        assert verify.returncode == 0, verify.stderr

    # What systemd would do: RuntimeDirectory=, then ExecStart= as User= with the caps.
    debian.run(dev, "install", "-d", "-o", "appliance", "-g", "appliance", "/run/appliance")
    logs = tmp_path / "srv.log", tmp_path / "dev.log"
    overlay.processes.append(
        debian.spawn(srv, SRV, as_unit_runs_it(srv, "overlay.service"), logs[0])
    )
    overlay.processes.append(
        debian.spawn(dev, dev_ns, as_unit_runs_it(dev, "appliance.service"), logs[1])
    )
    socket = dev / "run/appliance/SN-PROV-0001.sock"
    up = deploy.wait_for("provisioned tunnel up", deploy.tunnel_up(socket), timeout=30, log=logs[1])
    assert (up["vrf"], up["address"]) == ("main-vrf", "169.254.1.1")
    assert netns.run(SRV, ["ping", "-c", "1", "-W", "2", "169.254.1.1"]).returncode == 0

    # Provisioning again never overwrites what the operator changed.
    edited = config.read_text() + "# the operator's own line\n"
    config.write_text(edited)
    again = provision(srv, SRV, *server_args)
    assert "kept /etc/overlay/server.toml (changed since it was installed)" in again.stdout
    assert config.read_text() == edited
    assert "password_hash" in (srv / "etc/overlay/server.toml.provision-new").read_text()


def test_provisioned_nat_rules_load(tmp_path: Path) -> None:
    argv = ["nat", "--root", str(tmp_path), "--lan", "198.19.0.0/24", "--wan", "198.18.0.0/24"]
    result = subprocess.run([str(PROVISION), *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
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
