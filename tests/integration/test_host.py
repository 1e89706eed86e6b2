"""The server as the hardened unit runs it: its own user with CAP_NET_ADMIN and
CAP_NET_BIND_SERVICE only, readiness and reload told to systemd, severities for journald;
root's offline commands leave files that user can write; both units score <= 3.0."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import deploy, netns
from lab.deploy import BIN
from tests.integration.conftest import PASSWORD, SRV, Overlay

UID = 64123  # no passwd entry needed: the unit's User= is a name, the kernel sees a number
CAPS = "+net_admin,+net_bind_service"
UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the service user can reach (pytest's are root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="ovl-host-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def service_python(directory: Path) -> list[str]:
    """A Python the service user can run: the project's own may live under /root (pyenv).
    Debian's interpreter, in a venv that reads the project's packages (the same CPython
    3.11 ABI)."""
    venv = directory / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python3*/site-packages")
    ours = sysconfig.get_paths()["purelib"]
    (site / "project.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return [str(venv / "bin" / "python"), "-c", "import sys; from overlay.server.cli import "
            "main; sys.exit(main())"]  # fmt: skip


def with_open_tun(directory: Path, argv: list[str]) -> list[str]:
    """``argv`` in a mount namespace whose /dev/net/tun is mode 0666, as Debian's udev makes
    it (this test machine has no udev and leaves it 0600; the host's is not touched)."""
    node = directory / "tun"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    node.chmod(0o666)
    script = f'mount --bind {node} /dev/net/tun && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def as_service_user(argv: list[str]) -> list[str]:
    """What the unit's User=, AmbientCapabilities= and NoNewPrivileges= do, with setpriv."""
    return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
            f"--inh-caps=-all,{CAPS}", f"--ambient-caps=-all,{CAPS}",
            f"--bounding-set=-all,{CAPS}", "--no-new-privs", *argv]  # fmt: skip


def test_the_server_runs_as_its_own_user_and_tells_systemd(
    overlay: Overlay, shared_dir: Path
) -> None:
    pki = shared_dir / "pki"
    shutil.copytree(overlay.pki_dir, pki)
    # [lan] too: the unit's user runs nft and writes routes with its capabilities alone
    lan = '[lan]\nprefix = "198.18.128.0/17"\n[[service]]\nport = 514\nto = "198.18.2.20"\n'
    config = deploy.server_config(
        shared_dir / "server",
        pki,
        PASSWORD,
        overlay='pool = "169.254.1.0-169.254.127.254"',
        extra=lan,
    )
    netns.sysctl(SRV, "net.ipv4.ip_forward", "1")
    state = config.parent / "state"
    state.mkdir(mode=0o700)
    os.chown(state, UID, UID)
    for path in (config, *pki.iterdir()):  # root:overlay 0640, as the package leaves them
        os.chown(path, 0, UID)
        path.chmod(0o640)
    os.chown(pki, 0, UID)
    pki.chmod(0o750)
    # root enrols a device with no server running: the files it leaves are the user's
    added = subprocess.run(
        [str(BIN / "overlay"), "device", "add", "dev1", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert {p.name: p.stat().st_uid for p in state.iterdir()} == dict.fromkeys(
        (p.name for p in state.iterdir()), UID
    )

    notify = shared_dir / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    os.chown(notify, UID, UID)
    listener.settimeout(20)
    log = config.parent / "server.log"
    with open(log, "wb") as stderr:
        journal = os.fstat(stderr.fileno())
        env = os.environ | {
            "NOTIFY_SOCKET": str(notify),
            "JOURNAL_STREAM": f"{journal.st_dev}:{journal.st_ino}",
        }
        serve = [*service_python(shared_dir), "serve", "--config", str(config)]
        argv = with_open_tun(shared_dir, as_service_user(serve))
        server = subprocess.Popen(
            netns.exec_argv(SRV, argv),
            stdout=stderr,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    overlay.processes.append(server)
    try:
        try:
            ready = listener.recv(4096).decode()
        except TimeoutError:
            raise AssertionError(f"no READY=1 within 20 s:\n{log.read_text()}") from None
        assert ready.startswith("READY=1\nSTATUS=listening on"), log.read_text()
        # ready means ready: the tunnel port accepts at once, and a device comes up
        probe = ["bash", "-c", "exec 3<>/dev/tcp/198.18.0.1/443"]
        assert netns.run(SRV, probe).returncode == 0
        overlay.server_config = config
        overlay.start_device(overlay.add_device("dev1"))
        assert (state / "control.sock").stat().st_uid == UID
        table = netns.run(SRV, ["nft", "list", "table", "ip", "overlay_lan"])
        assert "dnat prefix to 169.254.0.0/17" in table.stdout, table.stderr
        assert overlay.server_status()["server"]["routes"] == {"installed": 2, "errors": {}}

        server.send_signal(1)  # SIGHUP: the certificate reloads
        assert listener.recv(4096) == b"RELOADING=1"
        assert listener.recv(4096) == b"READY=1"
        assert netns.stop(server) == 0
        assert listener.recv(4096) == b"STOPPING=1"
        assert netns.run(SRV, ["nft", "list", "table", "ip", "overlay_lan"]).returncode != 0
    finally:
        listener.close()
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>level='info' event='server listening'") for line in lines)
    assert not any("timestamp" in line for line in lines)  # the journal stamps lines itself
    assert all(line.startswith("<") for line in lines), lines


@pytest.mark.parametrize(
    ("unit", "drop_in"),
    [
        ("overlay.service", None),
        ("appliance.service", None),
        ("appliance.service", "appliance-netns.conf"),
        ("appliance.service", "appliance-vrf.conf"),
    ],
)
def test_the_units_score_three_or_better(unit: str, drop_in: str | None, tmp_path: Path) -> None:
    """systemd-analyze security, also with each VRF backend's drop-in (its assignments
    added to the unit's, as systemd merges them)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    merged = tmp_path / unit
    merged.write_text(
        (UNITS / unit).read_text() + ((UNITS / drop_in).read_text() if drop_in else "")
    )
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(merged)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    last = result.stdout.strip().splitlines()[-1]
    score = float(last.split("level for ")[1].split(": ")[1].split()[0])
    assert score <= 3.0, result.stdout


def test_up_and_down_hooks_follow_the_tunnel(overlay: Overlay) -> None:
    record = overlay.root / "hooks.log"
    script = overlay.root / "hook.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$OVERLAY_EVENT $OVERLAY_DEVICE $OVERLAY_VRF $OVERLAY_ADDRESS/$OVERLAY_PREFIX '
        f'$OVERLAY_TUN $OVERLAY_SERVER" >> {record}\n'
    )
    script.chmod(0o755)
    hooks = f'[hooks]\nup = "{script}"\ndown = "{script}"\n'
    overlay.start_server()
    device = overlay.add_device("dev1", extra=hooks)
    up = overlay.start_device(device)
    assert up is not None
    deploy.wait_for("the up hook", lambda: record.exists() and record.read_text())
    assert record.read_text() == (
        f"up dev1 {up['vrf']} {up['address']}/16 ovl0 wss://198.18.0.1:443/tun\n"
    )
    assert device.process is not None
    assert netns.stop(device.process) == 0  # the down hook ends before the agent does
    assert record.read_text().splitlines()[1] == (
        f"down dev1 {up['vrf']} {up['address']}/16 ovl0 wss://198.18.0.1:443/tun"
    )
