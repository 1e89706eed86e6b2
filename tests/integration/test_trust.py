"""Trust that lasts, tried from outside: certificates renewed and reloaded with tunnels up,
and what testssl.sh finds in the server's TLS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN
from overlay import certs
from tests.integration.conftest import PASSWORD, SERVER_IP, Overlay, make_overlay, wait_log

pytestmark = pytest.mark.netns


@pytest.fixture
def own_pki(tmp_path: Path) -> Iterator[Overlay]:
    """An overlay with a PKI of its own, which the test may renew."""
    directory = tmp_path / "pki"
    yield from make_overlay(
        tmp_path, (deploy.pki(directory, ["overlay.test", SERVER_IP]), directory)
    )


def served_serial(overlay: Overlay, ns: str) -> str:
    """The serial of the certificate a new handshake from ``ns`` gets (openssl s_client)."""
    result = netns.run(
        ns,
        [
            "sh",
            "-c",
            f"openssl s_client -connect {SERVER_IP}:443 -CAfile {overlay.ca_file} "
            "-verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ],
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().removeprefix("serial=").lower().lstrip("0")


def overlay_cli(overlay: Overlay, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "overlay"), *argv], capture_output=True, text=True, timeout=30)


def test_renewed_certificates_reload_without_dropping_a_tunnel(own_pki: Overlay) -> None:
    overlay = own_pki
    overlay.server_config = deploy.server_config(
        overlay.root / "server", overlay.pki_dir, PASSWORD, listen='names = ["overlay.test"]'
    )
    server = overlay.start_server()
    devices = [overlay.add_device(f"dev{n}") for n in (1, 2)]
    for device in devices:
        overlay.start_device(device)
    before = overlay.server_status()
    first = served_serial(overlay, devices[0].ns)

    # certbot's deploy hook, or the operator: renew, then SIGHUP
    renewed = overlay_cli(overlay, "certs", "renew", str(overlay.pki_dir))
    assert renewed.returncode == 0 and "overlay reload" in renewed.stdout
    os.kill(server.pid, signal.SIGHUP)
    wait_log(overlay.server_log, "certificate reloaded")
    second = served_serial(overlay, devices[0].ns)
    assert second != first

    # `overlay reload` asks the running server over its control socket
    overlay_cli(overlay, "certs", "renew", str(overlay.pki_dir))
    reloaded = overlay_cli(overlay, "reload", "--config", str(overlay.server_config))
    assert reloaded.returncode == 0, reloaded.stderr
    third = served_serial(overlay, devices[1].ns)
    assert third not in (first, second) and f"serial {third}" in reloaded.stdout

    # A key that is not the certificate's: refused in one line, the certificate in use stays
    (overlay.pki_dir / certs.KEY_FILE).unlink()
    overlay_cli(overlay, "certs", "init", str(overlay.pki_dir / "other"), "--name", "x.test")
    (overlay.pki_dir / certs.KEY_FILE).write_bytes(
        (overlay.pki_dir / "other" / certs.KEY_FILE).read_bytes()
    )
    refused = overlay_cli(overlay, "reload", "--config", str(overlay.server_config))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: reload refused, the certificate in use stays")
    assert served_serial(overlay, devices[1].ns) == third

    after = overlay.server_status()
    assert after["server"]["handshakes"] == before["server"]["handshakes"]  # nobody reconnected
    assert [s["since"] for s in after["sessions"]] == [s["since"] for s in before["sessions"]]
    assert after["certificate"]["reloads"] == 2 and after["certificate"]["failed_reloads"] == 1
    for device in devices:
        ping = overlay.run(device.ns, "ping", "-c", "1", "-W", "2", "169.254.0.1")
        assert ping.returncode == 0, ping.stdout


# What testssl.sh may report at LOW or above, and why a private CA cannot avoid it
# (docs/security.md, "What testssl.sh reports").
TESTSSL_ACCEPTED = {
    # HIGH "Neither CRL nor OCSP URI provided": devices check the server against the private
    # CA or a key pin and fetch nothing; a lost server key means a new CA or a new pin.
    "cert_revocation",
    # LOW "--": no DNS CAA record. CAA tells public CAs who may issue for a domain; the
    # server is reached by address here, and a private CA never consults DNS.
    "DNS_CAArecord",
}


def test_testssl_finds_nothing_a_private_ca_could_avoid(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.attach("scan", "198.18.0.99")
    report = overlay.root / "testssl.json"
    result = netns.run(
        device,
        [
            "testssl",
            "--add-ca",
            str(overlay.ca_file),
            "--severity",
            "LOW",
            "--jsonfile",
            str(report),
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--sneaky",
            f"{SERVER_IP}:443",
        ],
        timeout=600,
        # GOST suites need an OpenSSL engine that Debian does not install by default, and
        # Python's ssl cannot offer them anyway; without this, testssl reports its own
        # missing engine (engine_problem, WARN) on some hosts.
        env={**os.environ, "NO_ENGINE": "true"},
    )
    (overlay.root / "testssl.txt").write_text(result.stdout)
    findings = json.loads(report.read_text())
    found = {f["id"]: f"{f['severity']}: {f['finding']}" for f in findings}
    print(json.dumps(found, indent=2))
    unexpected = {key: value for key, value in found.items() if key not in TESTSSL_ACCEPTED}
    assert not unexpected, result.stdout
