"""SIP-aware flows with SIPp: a phone on the device registers through the overlay with a
registrar on the server side, which calls it after the plain UDP flow would have aged out;
the held flow shows in overlay status and in the OVERLAY-MIB over snmpd."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lab import deploy, netns, services
from lab.deploy import BIN
from tests.integration.conftest import PASSWORD, SRV, Overlay

pytestmark = pytest.mark.netns

SCENARIOS = Path(__file__).with_name("sip")
MIBS = Path(__file__).resolve().parents[2] / "overlay" / "server"
REGISTRAR = "169.254.0.1"
DEVICE = "169.254.1.1"
PHONE_PORT = 5062  # not 5060: no rule of cisco-uc lets a call in to it
QUIET_MS = 5000  # the registrar's silence before it calls: past the UDP idle time
SIP_RULE = 'direction = "from-device"\nprotocol = "udp"\nports = "5060"'


def start(overlay: Overlay, rule: str) -> None:
    overlay.server_config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        extra="[firewall]\nudp_timeout = 2\n" + deploy.firewall_rules(rule),
    )
    overlay.start_server()
    overlay.start_device(overlay.add_device("dev1"))


def sipp(overlay: Overlay, role: str, *argv: str) -> list[str]:
    """SIPp for one call; its errors go to ROLE-errors.log in the test's directory."""
    return ["sipp", "-sf", str(SCENARIOS / f"{role}.xml"), "-m", "1", "-t", "u1", "-nostdin",
            "-trace_err", "-error_file", str(overlay.root / f"{role}-errors.log"),
            "-timeout", "30s", *argv]  # fmt: skip


def call(overlay: Overlay) -> tuple[subprocess.Popen[bytes], subprocess.CompletedProcess[str]]:
    """Run the registrar, then the phone; return both once the phone is done."""
    argv = ["-i", REGISTRAR, "-p", "5060", "-d", str(QUIET_MS), "-key", "phone",
            f"{DEVICE}:{PHONE_PORT}"]  # fmt: skip
    registrar = overlay.spawn(SRV, sipp(overlay, "registrar", *argv), "registrar.log")
    time.sleep(0.5)  # SIPp binds its socket at once
    phone = netns.run(
        "ovlt-dev1",
        sipp(overlay, "phone", REGISTRAR + ":5060", "-i", DEVICE, "-p", str(PHONE_PORT)),
        timeout=40,
    )
    return registrar, phone


@pytest.mark.parametrize(
    "rule",
    ['profile = "cisco-uc"', SIP_RULE + '\nsip = "registrar"'],
    ids=["cisco-uc", "sip-option"],
)
def test_a_registered_phone_is_called_after_the_udp_flow_would_have_aged_out(
    overlay: Overlay, rule: str, tmp_path: Path
) -> None:
    start(overlay, rule)
    registrar, phone = call(overlay)
    assert phone.returncode == 0, phone.stdout + phone.stderr
    assert registrar.wait(timeout=20) == 0, (overlay.root / "registrar.log").read_text()
    firewall = overlay.server_status()["firewall"]
    assert firewall["sip"]["register"] == 1 and firewall["sip"]["registered"] == 1
    (held,) = [f for f in overlay.device_status("dev1")["flows"] if f["sip_held"]]
    assert (held["protocol"], held["remote"], held["remote_port"], held["device_port"]) == (
        "udp",
        REGISTRAR,
        5060,
        PHONE_PORT,
    )
    assert held["expires_in"] > 3000  # the registration's hour, not the UDP idle time

    # The same flow in the OVERLAY-MIB, by name, through snmpd and overlay snmp-agent.
    conf = tmp_path / "snmpd.conf"
    conf.write_text(
        "agentAddress udp:127.0.0.1:1161\nrocommunity monitor 127.0.0.1\n"
        f"pass_persist .1.3.6.1.4.1.8072.9999.9999.42 {BIN / 'overlay'} snmp-agent "
        f"--config {overlay.server_config}\n"
    )
    overlay.processes.append(services.run_snmpd(SRV, conf, tmp_path))
    time.sleep(1)
    walk_argv = ["snmpwalk", "-v2c", "-c", "monitor", "-t", "5", "-M", f"+{MIBS}",
                 "-m", "OVERLAY-MIB", "127.0.0.1:1161", "OVERLAY-MIB::overlayMIB"]  # fmt: skip
    walk = netns.run(SRV, walk_argv, env=services.snmp_env(tmp_path))
    assert walk.returncode == 0, walk.stderr
    row = f"{DEVICE}.17.{REGISTRAR}.5060.{PHONE_PORT}"
    assert f"OVERLAY-MIB::ovlFlowSipHeld.{row} = INTEGER: true(1)" in walk.stdout
    assert f"OVERLAY-MIB::ovlFlowRemoteAddress.{row} = IpAddress: {REGISTRAR}" in walk.stdout
    assert "OVERLAY-MIB::ovlSipHeldFlows.0 = Gauge32: 1" in walk.stdout
    assert "OVERLAY-MIB::ovlSipRegistrations.0 = Counter64: 1" in walk.stdout
    assert "OVERLAY-MIB::ovlRuleHits.20 = Counter64:" in walk.stdout
    assert "OVERLAY-MIB::ovlFlows.0 = Gauge32:" in walk.stdout


def test_without_the_sip_option_the_call_is_dropped(overlay: Overlay) -> None:
    start(overlay, SIP_RULE)
    registrar, phone = call(overlay)
    assert phone.returncode != 0  # registered, but the INVITE never came
    netns.stop(registrar)
    status = overlay.server_status()
    assert not status["firewall"]["sip"]
    assert status["drops"]["policy"] >= 1
