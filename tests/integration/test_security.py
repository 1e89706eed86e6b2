"""Who gets in: well-known passwords refused, guessing rate-limited, hostile requests answered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN, wait_for
from overlay import certs, identity
from overlay.server.auth import hash_password
from tests.integration.conftest import PASSWORD, SRV, URL, Device, Overlay, wait_log

pytestmark = pytest.mark.netns


def curl(overlay: Overlay, ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An HTTPS request to the tunnel endpoint, as a WebSocket upgrade; prints the status."""
    return netns.run(
        ns,
        [
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
            str(overlay.ca_file),
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            "Sec-WebSocket-Protocol: ovl.v1",
            "-H",
            "X-Ovl-Device: SN-X",
            *args,
            URL.replace("wss://", "https://"),
        ],
    )


def status_of(result: subprocess.CompletedProcess[str]) -> int:
    return int(result.stdout.split()[1]) if result.stdout.startswith("HTTP/") else 0


@pytest.mark.parametrize("allowed", [False, True])
def test_a_well_known_password_is_refused_unless_allowed(overlay: Overlay, allowed: bool) -> None:
    config = deploy.server_config(
        overlay.root / "weak",
        overlay.pki_dir,
        "123456",
        password_hash=hash_password("123456"),
        auth=f"allow_weak_password = {'true' if allowed else 'false'}",
    )
    if not allowed:
        result = netns.run(SRV, [str(BIN / "overlay"), "serve", "--config", str(config)])
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            "error: auth.password_hash is the hash of the well-known password '123456': set a "
            "strong one (overlay hash-password), or start with auth.allow_weak_password = true"
        )
        return
    server = deploy.start_server(SRV, config)
    overlay.processes.append(server)
    control = config.parent / "state" / "control.sock"
    deploy.wait_for(
        "server start",
        lambda: deploy.server_status(control),
        process=server,
        log=config.parent / "server.log",
    )
    assert "RUNNING WITH A WELL-KNOWN TUNNEL PASSWORD" in (config.parent / "server.log").read_text()


def test_guessing_is_locked_out_per_source(overlay: Overlay) -> None:
    overlay.server_config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        auth="max_failures = 3\nfailure_window = 60\nlockout = 30",
    )
    overlay.start_server()
    guesser = overlay.add_device("guesser")
    honest = overlay.add_device("honest")
    statuses = [status_of(curl(overlay, guesser.ns, "-u", f"VPN:guess{n}")) for n in range(4)]
    assert statuses == [401, 401, 401, 429]
    locked = curl(overlay, guesser.ns, "-u", f"VPN:{PASSWORD}")  # even the right password waits
    assert status_of(locked) == 429
    assert "retry-after: 3" in locked.stdout.lower()  # about 30 s
    assert status_of(curl(overlay, honest.ns, "-u", "VPN:wrong")) == 401  # others unaffected
    overlay.start_device(honest)  # and a good device from another address gets in
    refusals = overlay.server_status()["refusals"]
    assert refusals["bad-credentials"] == 4 and refusals["rate-limited"] == 2
    log = overlay.server_log.read_text()
    assert "address locked out after failed logins" in log and "guess" not in log


def test_hostile_requests_get_http_answers_and_the_server_keeps_serving(overlay: Overlay) -> None:
    overlay.start_server()
    device = overlay.add_device("dev1")
    overlay.start_device(device)
    attacker = overlay.add_device("attacker")
    huge = curl(overlay, attacker.ns, "-u", "VPN:x", "-H", "X-Filler: " + "a" * 20000)
    assert status_of(huge) in (400, 431)

    def http_code(*args: str) -> str:
        command = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", *args]
        return netns.run(attacker.ns, command).stdout

    # plain HTTP to the TLS port: no answer worth having
    assert http_code("http://198.18.0.1:443/tun") in ("000", "400")
    assert http_code("--cacert", str(overlay.ca_file), "https://198.18.0.1/tun") == "400"
    assert http_code("--cacert", str(overlay.ca_file), "https://198.18.0.1/admin") == "404"
    # a client that opens TCP and never starts TLS is dropped by the handshake timeout
    code = (
        "import socket,time\n"
        "s=socket.create_connection(('198.18.0.1',443))\n"
        "s.settimeout(20)\n"
        "t=time.monotonic()\n"
        "print(s.recv(1), round(time.monotonic()-t))\n"
    )
    silent = netns.run(attacker.ns, [str(BIN / "python"), "-c", code], timeout=30)
    assert silent.stdout.startswith("b'' ")  # closed by the server
    assert int(silent.stdout.split()[1]) <= 12  # handshake_timeout = 10 s
    assert netns.run(SRV, ["ping", "-c", "1", "-W", "2", "169.254.1.1"]).returncode == 0
    assert overlay.server_status()["leases"][0]["device"] == "dev1"
    assert Path(device.log).exists()


def overlay_cli(overlay: Overlay, *args: str) -> subprocess.CompletedProcess[str]:
    assert overlay.server_config is not None
    return subprocess.run(
        [str(BIN / "overlay"), *args, "--config", str(overlay.server_config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_enrollment_own_passwords_unbind_and_remove(overlay: Overlay) -> None:
    overlay.server_config = deploy.server_config(
        overlay.root / "server", overlay.pki_dir, PASSWORD, auto_enroll=False
    )
    overlay.start_server()
    dev1 = overlay.add_device("dev1")
    overlay.start_device(dev1, wait=False)
    text = wait_log(dev1.log, "not enrolled")
    assert "the server refused device 'dev1': not enrolled, or unbound (HTTP 403)" in text
    assert overlay_cli(overlay, "device", "add", "dev1").returncode == 0
    first = wait_for(
        "dev1 up once enrolled", deploy.tunnel_up(dev1.socket), timeout=15, log=dev1.log
    )

    added = overlay_cli(overlay, "device", "add", "dev2", "--generate")
    assert added.returncode == 0, added.stderr
    own = added.stdout.strip().splitlines()[-1]
    assert len(own) >= 20 and own not in overlay.server_log.read_text()
    shared_login = overlay.add_device("dev2")  # the shared credential no longer opens dev2
    overlay.start_device(shared_login, wait=False)
    wait_log(shared_login.log, "refused the credentials")
    netns.stop(shared_login.process)  # type: ignore[arg-type]
    shared_login.config.write_text(
        shared_login.config.read_text().replace('username = "VPN"', 'username = "dev2"')
    )
    (shared_login.config.parent / "password").write_text(own + "\n")
    overlay.start_device(shared_login)

    listed = overlay_cli(overlay, "device", "list", "--json")
    rows = {row["device"]: row for row in json.loads(listed.stdout)}
    assert (rows["dev1"]["own_password"], rows["dev2"]["own_password"]) == (False, True)
    assert rows["dev1"]["leases"] == [f"default={first['address']}"]

    unbound = json.loads(overlay_cli(overlay, "device", "unbind", "dev1", "--json").stdout)
    assert unbound == {"device": "dev1", "closed": 1, "released": [first["address"]]}
    wait_log(dev1.log, "device removed or unbound on the server (4003)")
    again = wait_for(
        "dev1 back with a fresh lease", deploy.tunnel_up(dev1.socket), timeout=20, log=dev1.log
    )
    assert again["address"] != first["address"]

    removed = json.loads(overlay_cli(overlay, "device", "remove", "dev1", "--json").stdout)
    assert removed["removed"] is True and removed["closed"] == 1
    again_removed = overlay_cli(overlay, "device", "remove", "dev1")
    assert again_removed.returncode == 1
    assert again_removed.stderr == "error: no device 'dev1' is enrolled; see overlay device list\n"
    wait_for(
        "dev1 refused after removal",
        lambda: dev1.log.read_text().count("not enrolled, or unbound (HTTP 403)") >= 2,
        timeout=20,
        log=dev1.log,
    )
    assert any(s["device"] == "dev2" for s in overlay.server_status()["sessions"])

    bad = overlay_cli(overlay, "device", "add", "bad id")
    assert bad.returncode == 1 and bad.stderr.startswith("error: 'bad id' is not a device id")
    assert (
        json.loads(overlay_cli(overlay, "device", "list", "--json").stdout)[0]["device"] == "dev2"
    )


IDLE_TLS = """
import socket, ssl, sys, time
context = ssl.create_default_context(cafile=sys.argv[1])
held = []
for _ in range(int(sys.argv[2])):
    raw = socket.create_connection(("198.18.0.1", 443), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="198.18.0.1")  # TLS up, then no request
    held.append((time.monotonic(), tls))
for started, tls in reversed(held):  # the newest first: it must be closed at once
    tls.settimeout(10)
    try:
        data = tls.recv(1)
    except (ssl.SSLError, OSError):
        data = b""
    print(round(time.monotonic() - started, 1), data == b"")
"""


def test_pending_connections_are_capped_and_timed_out(overlay: Overlay) -> None:
    overlay.server_config = deploy.server_config(overlay.root / "server", overlay.pki_dir, PASSWORD)
    text = overlay.server_config.read_text().replace(
        "port = 443\n", "port = 443\nhandshake_timeout = 3\nmax_pending = 5\n"
    )
    overlay.server_config.write_text(text)
    overlay.start_server()
    # the cap is each worker's (with OVERLAY_TEST_WORKERS): one more than all can hold
    workers = len(overlay.server_status().get("workers", [])) or 1
    idle = 5 * workers + 1
    attacker = overlay.add_device("attacker")
    argv = [str(BIN / "python"), "-c", IDLE_TLS, str(overlay.ca_file), str(idle)]
    result = netns.run(attacker.ns, argv, timeout=60)
    closed = [line.split() for line in result.stdout.splitlines()]
    assert len(closed) == idle, result.stdout + result.stderr
    assert all(ok == "True" for _, ok in closed), closed  # every idle connection was closed
    refusals = overlay.server_status()["refusals"]
    over = refusals["pending-limit"]  # a worker that got more than 5 refused the rest
    assert over >= 1 and refusals["handshake-timeout"] == idle - over
    if workers == 1:  # the sixth (over the cap) at once, the first five after the deadline
        assert [float(seconds) >= 2.5 for seconds, _ in closed] == [False] + [True] * 5, closed
    device = overlay.add_device("dev1")
    assert overlay.start_device(device) is not None  # real devices still get in
    assert overlay.server_status()["server"]["pending"] == 0


def with_server_settings(device: Device, settings: str) -> None:
    """Put ``settings`` (TOML lines) into the device's [server] table."""
    text = device.config.read_text()
    head, tail = text.split('password_file = "password"\n', 1)
    device.config.write_text(head + 'password_file = "password"\n' + settings + "\n" + tail)


def test_client_certificates_and_server_key_pins(overlay: Overlay) -> None:
    clients = overlay.root / "clients"
    certs.issue_clients(clients, ["dev1", "dev2"])
    overlay.server_config = deploy.server_config(
        overlay.root / "server",
        overlay.pki_dir,
        PASSWORD,
        auto_enroll=False,
        auth=f'client_ca_file = "{clients / certs.CLIENT_CA_FILE}"',
    )
    overlay.start_server()
    assert overlay_cli(overlay, "device", "add", "dev1", "--require-cert").returncode == 0
    assert overlay_cli(overlay, "device", "add", "dev2").returncode == 0
    listed = json.loads(overlay_cli(overlay, "device", "list", "--json").stdout)
    assert [(row["device"], row["client_cert"]) for row in listed] == [
        ("dev1", True),
        ("dev2", False),
    ]

    # dev1 must show a certificate naming it: none, then dev2's, are refused.
    dev1 = overlay.add_device("dev1")
    overlay.start_device(dev1, wait=False)
    wait_log(dev1.log, "and the client certificate, if the device is enrolled with --require-cert")
    netns.stop(dev1.process)  # type: ignore[arg-type]
    with_server_settings(
        dev1, f'client_cert_file = "{clients}/dev2.pem"\nclient_key_file = "{clients}/dev2.key"'
    )
    overlay.start_device(dev1, wait=False)
    wait_for(
        "two refusals",
        lambda: overlay.server_status()["refusals"].get("client-certificate") == 2,
        log=overlay.server_log,
    )
    netns.stop(dev1.process)  # type: ignore[arg-type]
    server_pin = identity.pin_of_file(overlay.pki_dir / certs.CERT_FILE)
    dev1.config.write_text(dev1.config.read_text().replace("dev2.", "dev1."))
    with_server_settings(dev1, f'pin_sha256 = ["{server_pin}"]')
    overlay.start_device(dev1)

    # dev2 pins another key: it refuses the server before sending a single credential.
    dev2 = overlay.add_device("dev2")
    wrong_pin = identity.pin_of_file(clients / certs.CLIENT_CA_FILE)
    with_server_settings(dev2, f'pin_sha256 = ["{wrong_pin}"]')
    handshakes = overlay.server_status()["server"]["handshakes"]
    overlay.start_device(dev2, wait=False)
    wait_log(
        dev2.log, f"the server's public key (pin {server_pin}) matches none of server.pin_sha256"
    )
    status = overlay.server_status()
    assert status["server"]["handshakes"] == handshakes
    assert "dev2" not in overlay.server_log.read_text()
    assert [s["device"] for s in status["sessions"]] == ["dev1"]
