"""What an operator sees when something is wrong, and how the tunnel comes back."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from overlay import certs
from tests.integration.conftest import SERVER_IP, SRV, Overlay, wait_log

pytestmark = pytest.mark.netns


def tun_addresses(ns: str) -> list[str]:
    with IPRoute(netns=ns) as ipr:
        index = ipr.link_lookup(ifname="ovl0")
        if not index:
            return []
        return [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=index[0])]


def test_wrong_password_is_reported_and_counted(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1", password="not-the-password")
    overlay.start_device(device, wait=False)
    text = wait_log(device.log, "refused the credentials")
    assert (
        "refused the credentials of user 'VPN'; check username and password (and the client "
        "certificate, if the device is enrolled with --require-cert) (HTTP 401)" in text
    )
    assert "not-the-password" not in text
    assert "Traceback" not in text
    assert device.process is not None and device.process.poll() is None  # backs off, keeps trying
    assert overlay.server_status()["refusals"]["bad-credentials"] >= 1
    assert "not-the-password" not in overlay.server_log.read_text()


def test_untrusted_certificate_is_reported(overlay: Overlay, tmp_path: Path) -> None:
    overlay.start_server()
    other_ca = tmp_path / "other-ca"
    certs.init(other_ca, ["overlay.test"])
    device = overlay.add_device("dev1", ca_file=other_ca / certs.CA_FILE)
    overlay.start_device(device, wait=False)
    text = wait_log(device.log, "did not verify")
    assert f"the server certificate did not verify for '{SERVER_IP}'" in text
    assert "unable to get local issuer certificate" in text
    assert "Traceback" not in text


def test_wrong_server_name_is_reported(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1", extra="")
    device.config.write_text(
        device.config.read_text().replace(
            'username = "VPN"', 'server_name = "wrong.test"\nusername = "VPN"'
        )
    )
    overlay.start_device(device, wait=False)
    text = wait_log(device.log, "did not verify")
    assert "did not verify for 'wrong.test'" in text
    assert "Hostname mismatch" in text


def test_wrong_path_is_reported(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1", urls=[f"wss://{SERVER_IP}/nope"])
    overlay.start_device(device, wait=False)
    text = wait_log(device.log, "no tunnel endpoint")
    assert (
        "the server has no tunnel endpoint at /nope; check the path in the URL (HTTP 404)" in text
    )


def test_unreachable_server_is_reported(overlay: Overlay) -> None:
    device = overlay.add_device("dev1", urls=[f"wss://{SERVER_IP}:8443/tun"])
    overlay.start_device(device, wait=False)
    text = wait_log(device.log, "cannot connect")
    assert f"cannot connect to {SERVER_IP}:8443: connection refused" in text


def test_no_permission_for_a_tun_is_one_clear_line(overlay: Overlay) -> None:
    device = overlay.add_device("dev1")
    result = subprocess.run(
        netns.exec_argv(
            device.ns,
            [
                "setpriv",
                "--bounding-set=-net_admin",
                "--inh-caps=-net_admin",
                str(BIN / "appliance"),
                "run",
                "--config",
                str(device.config),
            ],
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: cannot create TUN ovl0: permission denied; run as root or grant CAP_NET_ADMIN"
    )


@pytest.mark.parametrize("program", ["overlay serve", "appliance run"])
def test_missing_config_is_one_clear_line(tmp_path: Path, program: str) -> None:
    command, verb = program.split()
    result = subprocess.run(
        [str(BIN / command), verb, "--config", str(tmp_path / "x.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {tmp_path / 'x.toml'}: config file not found\n"


def test_device_comes_back_with_its_address_after_server_restarts(overlay: Overlay) -> None:
    overlay.start_server()
    first, second = overlay.add_device("dev1"), overlay.add_device("dev2")
    assert overlay.start_device(first)["address"] == "169.254.1.1"
    assert overlay.start_device(second)["address"] == "169.254.1.2"
    assert overlay.server is not None
    overlay.server.send_signal(signal.SIGKILL)
    overlay.server.wait()
    down = wait_for(
        "dev1 notices",
        lambda: (
            (s := deploy.agent_status(first.socket))
            and s["tunnels"][0]["state"] != "up"
            and s["tunnels"][0]
        ),
    )
    assert down["address"] == "169.254.1.1"
    assert tun_addresses(first.ns) == ["169.254.1.1"]  # the TUN keeps its address meanwhile
    overlay.start_server()
    # whichever reconnects first, the lease store, not arrival order, decides the address
    back2 = wait_for("dev2 back", deploy.tunnel_up(second.socket), timeout=30, log=second.log)
    back1 = wait_for("dev1 back", deploy.tunnel_up(first.socket), timeout=30, log=first.log)
    assert (back1["address"], back2["address"]) == ("169.254.1.1", "169.254.1.2")
    ping = overlay.run(SRV, "ping", "-c", "2", "-i", "0.2", "-W", "2", "169.254.1.1")
    assert "2 received" in ping.stdout


def test_sigterm_closes_cleanly_on_both_sides(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    assert overlay.stop_server() == 0
    text = wait_log(device.log, "server going away (1001)")
    assert "Traceback" not in text
    assert "Traceback" not in overlay.server_log.read_text()
    assert device.process is not None
    assert netns.stop(device.process) == 0
    assert tun_addresses(device.ns) == []  # the TUN is gone with the agent
    assert '"tunnel stopped"' in device.log.read_text()


def test_insecure_is_explicit_and_loud(overlay: Overlay, tmp_path: Path) -> None:
    overlay.start_server()
    other_ca = tmp_path / "other-ca"
    certs.init(other_ca, ["overlay.test"])
    device = overlay.add_device("dev1", ca_file=other_ca / certs.CA_FILE)
    device.config.write_text(
        device.config.read_text().replace('username = "VPN"', 'insecure = true\nusername = "VPN"')
    )
    assert overlay.start_device(device) is not None  # an untrusted certificate, accepted
    text = wait_log(device.log, "SERVER CERTIFICATE NOT VERIFIED")
    assert "server.insecure = true" in text
