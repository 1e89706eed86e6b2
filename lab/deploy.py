"""Write the files a server or a device needs, and start and watch their processes.

Shared by ``scripts/lab`` and the integration tests, so that both run the
product exactly as an operator would: real config files, real certificates,
the installed ``overlay`` and ``appliance`` commands inside namespaces.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab import netns
from overlay import certs, control
from overlay.exceptions import ControlError
from overlay.server.auth import hash_password
from overlay.status import AgentStatus, ServerStatus, TunnelStatus
from overlay.status import agent_status as as_agent_status
from overlay.status import server_status as as_server_status

BIN = Path(sys.executable).parent
USERNAME = "VPN"
# Every server deployed here (tests, lab, bench) runs as this many workers when set and
# its listen lines do not say: the whole suite runs with workers on (docs/development.md).
WORKERS = os.environ.get("OVERLAY_TEST_WORKERS")


def pki(directory: Path, names: list[str]) -> Path:
    """Development certificates in ``directory`` (made once); returns the CA file."""
    if not (directory / certs.KEY_FILE).exists():
        certs.init(directory, names)
    return directory / certs.CA_FILE


def firewall_rules(*rules: str) -> str:
    """``[[firewall.rule]]`` tables: the default ovoc-management profile, then ``rules``,
    each the inside of one table (``'direction = "to-device"\\nports = "7"'``)."""
    tables = ['profile = "ovoc-management"', *rules]
    return "".join(f"\n[[firewall.rule]]\n{table}\n" for table in tables)


def server_config(
    directory: Path,
    pki_dir: Path,
    password: str,
    host: str = "0.0.0.0",
    port: int = 443,
    ping_interval: int = 60,
    keepalive_misses: int = 3,
    extra: str = "",
    password_hash: str | None = None,
    auth: str = "",
    auto_enroll: bool = True,
    overlay: str = "",
    listen: str = "",
) -> Path:
    """A server.toml in ``directory`` whose state lives in ``directory/state``;
    ``overlay`` and ``listen`` add lines to those tables (``"mtu = 9000"``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "server.toml"
    if WORKERS and "workers" not in listen:
        listen += f"\nworkers = {int(WORKERS)}"
    path.write_text(f"""\
[listen]
host = "{host}"
port = {port}
cert_file = "{pki_dir / certs.CERT_FILE}"
key_file = "{pki_dir / certs.KEY_FILE}"
{listen}

[overlay]
ping_interval = {ping_interval}
keepalive_misses = {keepalive_misses}
{overlay}

[auth]
username = "{USERNAME}"
password_hash = "{password_hash or hash_password(password)}"
auto_enroll = {"true" if auto_enroll else "false"}
{auth}

[state]
dir = "state"
{extra}""")
    return path


def appliance_config(
    directory: Path,
    device_id: str,
    urls: list[str],
    ca_file: Path,
    password: str,
    vrf: str | None = "default",
    server_name: str | None = None,
    extra: str = "",
) -> Path:
    """An appliance.toml (and its password file) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "password").write_text(password + "\n")
    (directory / "password").chmod(0o600)
    path = directory / "appliance.toml"
    name = f'server_name = "{server_name}"\n' if server_name else ""
    path.write_text(f"""\
[device]
id = "{device_id}"
{f'vrf = "{vrf}"' if vrf else ""}

[server]
urls = [{", ".join(f'"{u}"' for u in urls)}]
ca_file = "{ca_file}"
{name}username = "{USERNAME}"
password_file = "password"

[reconnect]
min_delay = 0.5
max_delay = 2

[state]
dir = "state"
{extra}""")
    return path


def start_server(
    ns: str, config: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return netns.spawn(
        ns,
        [str(BIN / "overlay"), "serve", "--config", str(config)],
        config.parent / "server.log",
        env=env,
    )


def start_appliance(ns: str, config: Path) -> subprocess.Popen[bytes]:
    return netns.spawn(
        ns,
        [str(BIN / "appliance"), "run", "--config", str(config)],
        config.parent / "appliance.log",
    )


def server_status(socket: Path) -> ServerStatus | None:
    """The status of the server behind ``socket``, or None when it does not answer."""
    data = _status(socket)
    return None if data is None else as_server_status(data)


def agent_status(socket: Path) -> AgentStatus | None:
    """The status of the agent behind ``socket``, or None when it does not answer."""
    data = _status(socket)
    return None if data is None else as_agent_status(data)


def _status(socket: Path) -> dict[str, Any] | None:
    try:
        return asyncio.run(control.fetch_status(socket))
    except ControlError:
        return None


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 20,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> Any:
    """Poll ``check`` until it returns something true; fail with the log tail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what} did not happen within {timeout} s\n{tail}")


def tunnels_up(socket: Path) -> Callable[[], list[TunnelStatus] | None]:
    """A check for :func:`wait_for`: every tunnel row of the device, once all are up."""

    def check() -> list[TunnelStatus] | None:
        data = agent_status(socket)
        if data is None or any(row["state"] != "up" for row in data["tunnels"]):
            return None
        return data["tunnels"]

    return check


def tunnel_up(socket: Path) -> Callable[[], TunnelStatus | None]:
    """A check for :func:`wait_for`: the device's tunnel row once its state is up."""

    def check() -> TunnelStatus | None:
        data = agent_status(socket)
        if data is None:
            return None
        row = data["tunnels"][0]
        return row if row["state"] == "up" else None

    return check
