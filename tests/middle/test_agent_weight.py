"""The agent loads only what its configuration uses: no certificate-making library, and no
netlink library for the default VRF backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from overlay import certs
from tests.middle.test_qoe_sender import agent_config

REPO = Path(__file__).resolve().parents[2]
# What `appliance run` does before its TUN exists and the loop runs: read the config,
# check the VRF's backend, build its tunnel (TLS context with pins and a client
# certificate), on a stand-in TUN since this test has no root.
START = """
import asyncio, json, sys
import appliance.cli
from appliance.config import load_appliance_config
from appliance.tunnel import DeviceTunnel
from appliance.vrf import backend
from tests.faketun import FakeTun

config = load_appliance_config(sys.argv[1])
vrf = config.vrfs[0]
chosen = backend(vrf.backend, vrf.netns, vrf.device)
asyncio.run(chosen.check())
DeviceTunnel(config, vrf, FakeTun(), chosen)
print(json.dumps(sorted(name.split(".")[0] for name in sys.modules)))
"""


def test_a_default_backend_agent_loads_no_trustme_cryptography_or_pyroute2(
    tmp_path: Path,
) -> None:
    certs.init(tmp_path / "pki", ["overlay.test"])
    certs.issue_clients(tmp_path / "pki", ["SN-1"])
    path = agent_config(tmp_path, 'vrf = "main-vrf"')
    path.write_text(
        path.read_text().replace(
            'username = "VPN"',
            f'username = "VPN"\nca_file = "pki/{certs.CA_FILE}"\n'
            'pin_sha256 = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]\n'
            'client_cert_file = "pki/SN-1.pem"\nclient_key_file = "pki/SN-1.key"',
        )
    )
    started = subprocess.run(
        [sys.executable, "-c", START, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(started.stdout))
    assert "appliance" in loaded and "aiohttp" in loaded  # it did load the agent
    assert not loaded & {"trustme", "cryptography", "pyroute2"}
