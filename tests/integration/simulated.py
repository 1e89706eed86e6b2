"""Simulated devices (lab.loadgen) in a namespace of the test's, read as they come up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab import netns
from lab.bench.reconnect import Events
from tests.integration.conftest import REPO


def start_loadgen(
    ns: str,
    url: str,
    ca: Path,
    password_file: Path,
    devices: int,
    addresses: Path,
    first: int = 0,
    once: bool = False,
) -> tuple[subprocess.Popen[str], Events]:
    """Devices SIM-first… towards ``url``; their addresses go to ``addresses`` at "up"."""
    argv = [
        sys.executable,
        "-m",
        "lab.loadgen",
        "--url",
        url,
        "--ca",
        str(ca),
        "--password-file",
        str(password_file),
        "--devices",
        str(devices),
        "--first",
        str(first),
        "--addresses",
        str(addresses),
        "--max-delay",
        "2",
        *(["--once"] if once else []),
    ]
    process = subprocess.Popen(
        netns.exec_argv(ns, argv),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    return process, Events(process)
