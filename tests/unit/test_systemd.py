"""Readiness to systemd over a real datagram socket, and journald's severity prefixes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from overlay import systemd


def test_notify_reaches_the_socket_systemd_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert systemd.notify("READY=1", "STATUS=serving 0 tunnels")
        assert listener.recv(1024) == b"READY=1\nSTATUS=serving 0 tunnels"


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"overlay-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STOPPING=1")
        assert listener.recv(1024) == b"STOPPING=1"


def test_outside_systemd_nothing_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert not systemd.notify("READY=1")  # nobody listens: no error either


LOG_SOME = """
import structlog
from overlay import log
log.configure("info")
structlog.get_logger().error("store lost", device="SN-1")
structlog.get_logger().info("tunnel up")
"""


def test_under_the_journal_lines_carry_their_severity_and_no_timestamp(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with open(journal, "wb") as stderr:
        status = os.fstat(stderr.fileno())
        env = os.environ | {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        subprocess.run([sys.executable, "-c", LOG_SOME], stderr=stderr, env=env, check=True)
    assert journal.read_text().splitlines() == [
        "<3>level='error' event='store lost' device='SN-1'",
        "<6>level='info' event='tunnel up'",
    ]


def test_a_stale_journal_stream_is_not_believed(tmp_path: Path) -> None:
    """A JOURNAL_STREAM inherited by a program whose stderr is elsewhere: plain JSON."""
    out = tmp_path / "file.log"
    with open(out, "wb") as stderr:
        env = os.environ | {"JOURNAL_STREAM": "1:1"}
        subprocess.run([sys.executable, "-c", LOG_SOME], stderr=stderr, env=env, check=True)
    first = out.read_text().splitlines()[0]
    assert first.startswith("{") and '"timestamp"' in first
