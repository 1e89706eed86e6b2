"""A server namespace and device namespaces joined by veth over a bridge, with real processes.

Underlay 198.18.0.0/24 exists only inside these namespaces: the server is
198.18.0.1 (on a bridge), device N is 198.18.0.(10+N). Namespaces are named
``ovlt-*``; leftovers of a killed run are removed before the first test and
everything a test made is removed after it, pass or fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import deploy, netns
from tests.integration import debian

PREFIX = "ovlt-"
SRV = "ovlt-srv"
SERVER_IP = "198.18.0.1"
URL = f"wss://{SERVER_IP}:443/tun"
PASSWORD = "test-tunnel-pass"
# The echo servers of the tests: 7001 and 7100 on the server, 7002 on a device.
TEST_RULES = deploy.firewall_rules(
    'direction = "from-device"\nports = "7001,7100"\nprotocol = "tcp"',
    'direction = "from-device"\nports = "7001"\nprotocol = "udp"',
    'direction = "to-device"\nports = "7002"\nprotocol = "tcp"',
    'direction = "to-device"\nports = "7002"\nprotocol = "udp"',
)
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.netns


@dataclass
class Device:
    name: str
    ns: str
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.config.parent / "state" / f"{self.name}.sock"

    @property
    def log(self) -> Path:
        return self.config.parent / "appliance.log"


@dataclass
class Overlay:
    """One test's world: a server namespace, devices, and the processes in them."""

    root: Path
    ca_file: Path
    pki_dir: Path
    devices: dict[str, Device] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    server_config: Path | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def build(self) -> None:
        netns.create(SRV)
        netns.bridge(SRV, "br0")
        netns.address(SRV, "br0", f"{SERVER_IP}/24")

    def add_device(
        self,
        name: str,
        password: str = PASSWORD,
        urls: list[str] | None = None,
        ca_file: Path | None = None,
        extra: str = "",
        server_name: str | None = None,
    ) -> Device:
        index = len(self.devices) + 1
        ns = self.attach(name, f"198.18.0.{10 + index}")
        config = deploy.appliance_config(
            self.root / name,
            name,
            urls or [URL],
            ca_file or self.ca_file,
            password,
            server_name=server_name,
            extra=extra,
        )
        device = Device(name, ns, config)
        self.devices[name] = device
        return device

    def attach(self, name: str, address: str) -> str:
        """A namespace ``ovlt-NAME`` on the underlay bridge with ``address``/24."""
        ns = f"{PREFIX}{name}"
        netns.create(ns)
        netns.veth(ns, "eth0", SRV, f"v{name}")
        netns.enslave(SRV, f"v{name}", "br0")
        netns.address(ns, "eth0", f"{address}/24")
        return ns

    def start_extra_server(self, ns: str, name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Another overlay server, in namespace ``ns``; returns it and its control socket."""
        config = deploy.server_config(self.root / name, self.pki_dir, PASSWORD)
        process = deploy.start_server(ns, config)
        self.processes.append(process)
        control = config.parent / "state" / "control.sock"
        deploy.wait_for(
            f"{name} start",
            lambda: deploy.server_status(control),
            process=process,
            log=config.parent / "server.log",
        )
        return process, control

    def start_server(
        self, ping_interval: int = 60, keepalive_misses: int = 3
    ) -> subprocess.Popen[bytes]:
        if self.server_config is None:
            self.server_config = deploy.server_config(
                self.root / "server",
                self.pki_dir,
                PASSWORD,
                ping_interval=ping_interval,
                keepalive_misses=keepalive_misses,
                extra=TEST_RULES,
            )
        self.server = deploy.start_server(SRV, self.server_config)
        self.processes.append(self.server)
        deploy.wait_for(
            "server start",
            lambda: deploy.server_status(self.control),
            process=self.server,
            log=self.server_log,
        )
        return self.server

    def stop_server(self) -> int:
        assert self.server is not None
        return netns.stop(self.server)

    @property
    def control(self) -> Path:
        assert self.server_config is not None
        return self.server_config.parent / "state" / "control.sock"

    @property
    def server_log(self) -> Path:
        assert self.server_config is not None
        return self.server_config.parent / "server.log"

    def server_status(self) -> dict:
        data = deploy.server_status(self.control)
        assert data is not None, "the server does not answer on its control socket"
        return data

    def device_status(self, device: str) -> dict:
        """``overlay status DEVICE --json``: the device's sessions and its flows."""
        assert self.server_config is not None
        shown = subprocess.run(
            [str(deploy.BIN / "overlay"), "status", device, "--json",
             "--config", str(self.server_config)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return dict(json.loads(shown.stdout))

    def start_device(self, device: Device, wait: bool = True) -> dict | None:
        device.process = deploy.start_appliance(device.ns, device.config)
        self.processes.append(device.process)
        if not wait:
            return None
        return deploy.wait_for(
            f"{device.name} tunnel up",
            deploy.tunnel_up(device.socket),
            process=device.process,
            log=device.log,
        )

    def run(self, ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return netns.run(ns, argv, timeout=timeout)

    def python(self, ns: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``python -m tests.integration.peer …`` inside ``ns``."""
        return subprocess.run(
            netns.exec_argv(ns, [sys.executable, "-m", *argv]),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.root / log, "wb") as out:
            process = subprocess.Popen(
                netns.exec_argv(ns, argv), cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def teardown(self) -> None:
        for process in reversed(self.processes):
            netns.stop(process, timeout=5)
        for ns in netns.names(PREFIX):
            netns.remove(ns)


def wait_log(path: Path, text: str, timeout: float = 20) -> str:
    """Wait until ``text`` is in the log at ``path``; return the whole log."""
    return deploy.wait_for(
        f"{text!r} in {path.name}",
        lambda: path.exists() and text in path.read_text() and path.read_text(),
        timeout=timeout,
        log=path,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A CA and a server certificate for overlay.test and 198.18.0.1 (trustme)."""
    directory = tmp_path_factory.mktemp("pki")
    return deploy.pki(directory, ["overlay.test", SERVER_IP]), directory


@pytest.fixture(scope="session", autouse=True)
def no_leftovers() -> Iterator[None]:
    """Remove namespaces left by an earlier, killed run before any test."""
    for ns in netns.names(PREFIX):
        netns.remove(ns)
    yield


def make_overlay(root: Path, pki: tuple[Path, Path]) -> Iterator[Overlay]:
    overlay = Overlay(root, pki[0], pki[1])
    try:
        overlay.build()
        yield overlay
    finally:
        overlay.teardown()


@pytest.fixture
def overlay(tmp_path: Path, pki: tuple[Path, Path]) -> Iterator[Overlay]:
    """A fresh server namespace for one test (no processes started yet)."""
    yield from make_overlay(tmp_path, pki)


@pytest.fixture(scope="session")
def package() -> Path:
    """dist/overlay_VERSION_ARCH.deb, built once per run by scripts/package."""
    return debian.build_package()


@pytest.fixture
def debian_root(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes fresh copies of the clean Debian 12 (removed after the test)."""
    if not (debian.CLEAN / "usr/bin/python3.11").exists():
        pytest.skip("no clean Debian in .cache/debian-bookworm: run scripts/setup")
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(debian.copy(tmp_path / name))
        return made[-1]

    yield make
    for root in made:
        shutil.rmtree(root, ignore_errors=True)
