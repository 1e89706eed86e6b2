"""The command line an operator meets first: no flags needed, check-config, and a running
server that still answers while its file is being edited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from overlay import control
from overlay.server import cli
from overlay.server.cli import format_status
from overlay.server.config import load_server_config
from overlay.server.node import Node
from tests.faketun import FakeTun
from tests.middle.conftest import make_node, write_config


def test_check_config_says_ok_and_what_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("OVERLAY_CONFIG", str(path))  # no --config: the variable, then /etc
    assert cli.main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: OK (listen 127.0.0.1:1/tun, certificate ")
    assert out.rstrip().endswith("1 rules)")


def test_check_config_names_what_is_wrong_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path)
    path.write_text(path.read_text().replace("[overlay]", "[overlay\n"))
    assert cli.main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:") and err.count("\n") == 1
    path = write_config(tmp_path / "other")
    (tmp_path / "other" / "server.pem").write_text("")  # an emptied certificate
    assert cli.main(["check-config", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load certificate") and err.count("\n") == 1


def test_without_a_file_the_default_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OVERLAY_CONFIG", raising=False)
    monkeypatch.setattr(cli, "default_config", lambda: tmp_path / "etc" / "server.toml")
    assert cli.main(["check-config"]) == 1
    assert str(tmp_path / "etc" / "server.toml") in capsys.readouterr().err


async def test_status_and_rules_still_answer_while_the_file_is_broken(
    tmp_path: Path,
    node: Node,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A syntax error in the file on disk does not hide the running server: the commands
    ask it at the default control socket, and say why."""
    monkeypatch.setattr(cli, "DEFAULT_STATE_DIR", tmp_path / "default-state")
    (tmp_path / "default-state").mkdir()
    runner = await control.start(
        tmp_path / "default-state" / "control.sock",
        node.status,
        commands={"rules": node.change_rules},
    )
    broken = tmp_path / "broken.toml"
    broken.write_text("[listen\n")
    try:
        assert await asyncio.to_thread(cli.main, ["status", "--json", "--config", str(broken)]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["server"]["pool"] == "169.254.1.1-169.254.1.20"
        assert captured.err.startswith(f"warning: {broken}:")
        assert "asking the server at" in captured.err
        listed = await asyncio.to_thread(cli.main, ["rule", "list", "--config", str(broken)])
        assert listed == 0 and "profile ovoc-management" in capsys.readouterr().out
        added = await asyncio.to_thread(
            cli.main, ["rule", "add", "--direction", "to-device", "--config", str(broken)]
        )
        assert added == 1  # a change waits for a file that loads
    finally:
        await runner.cleanup()


async def test_status_shows_the_lan_and_each_lease_at_its_routable_address(
    tmp_path: Path, tun: FakeTun
) -> None:
    lan = '[lan]\nprefix = "198.18.128.0/17"\nmanagement = ["198.18.2.0/24"]\n'
    lan += '[[service]]\nport = 514\nto = "198.18.2.20"\n'
    config = load_server_config(write_config(tmp_path, lan, pool="169.254.1.7-169.254.1.7"))
    node = await make_node(config, tun)
    try:
        await node.store.lease("dev1", "default", 8, enroll=True)
        data = node.status()
        assert data["leases"][0]["lan_address"] == "198.18.129.7"
        text = format_status(data)
        assert "dev1/default=169.254.1.7 (198.18.129.7)" in text
        assert (
            "lan: 198.18.128.0/17 maps 169.254.0.0/17; management 198.18.2.0/24; "
            "services udp/514 -> 198.18.2.20:514" in text
        )
    finally:
        await node.store.close()
