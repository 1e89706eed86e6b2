"""The agent's QoE sender against a control socket on disk: refusals before any connection."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import qoe
from appliance.config import load_appliance_config
from appliance.exceptions import ConnectError
from overlay import control


def agent_config(directory: Path, vrfs: str) -> Path:
    (directory / "password").write_text("device-pass-123\n")
    path = directory / "appliance.toml"
    path.write_text(
        f"""
[device]
id = "SN-1"
{vrfs}

[server]
urls = ["wss://127.0.0.1:1/tun"]
username = "VPN"
password_file = "password"

[state]
dir = "state"
"""
    )
    return path


async def test_a_vrf_the_running_agent_does_not_have_is_one_clear_error(tmp_path: Path) -> None:
    config = load_appliance_config(agent_config(tmp_path, 'vrf = "main-vrf"'))
    config.state_dir.mkdir()
    runner = await control.start(config.control_socket, lambda: {"device": "SN-1", "tunnels": []})
    try:
        with pytest.raises(ConnectError, match="no tunnel for VRF main-vrf"):
            await qoe.send_reports(config, config.vrfs[0], [b"{}"])
    finally:
        await runner.cleanup()
