"""The lab: an overlay server and devices behind a masquerading NAT, all in network namespaces.

::

    ovl-srv                        ovl-nat                          ovl-devN
    eth0 198.18.0.1/24 ---- wan0 198.18.0.254/24
                                   lanN 198.19.N.1/24 ---------- eth0 198.19.N.11/24
    overlay server, ovl0           masquerade out of wan0,          appliance, ovl0
    169.254.0.1/16                 no port forwarding, new          169.254.x.y/16
                                   connections from wan0 dropped

The underlay exists only inside these namespaces (198.18.0.0/15, the
benchmarking range); nothing is sent from the root namespace. The server has a
route to the devices' networks through the NAT, and the NAT refuses every
connection opened from its outside, as a home or branch router does: the
devices are reachable only through the overlay.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import deploy, netns, services

SRV, NAT = "ovl-srv", "ovl-nat"
SERVER_IP, NAT_WAN = "198.18.0.1", "198.18.0.254"
WAN_NET, LAN_NET = "198.18.0.0/24", "198.19.0.0/16"
URL = f"wss://{SERVER_IP}:443/tun"
ADMIN_URL = "http://127.0.0.1:9180"  # inside ovl-srv; the token is in server/state/admin-token
VRF = "main-vrf"
VOICE_VRF = "voice-vrf"
DEFAULT_DIR = Path(os.environ.get("OVL_LAB_DIR", "/var/tmp/ovl-lab"))

NAT_RULES = Path(__file__).parents[1] / "deploy" / "nat.nft"


def masquerade(ns: str, lan: str, wan: str) -> None:
    """Make ``ns`` a NAT router from ``lan`` to ``wan`` (deploy/nat.nft); forwarding on."""
    netns.sysctl(ns, "net.ipv4.ip_forward", "1")
    rules = NAT_RULES.read_text().replace("@LAN@", lan).replace("@WAN@", wan)
    subprocess.run(netns.exec_argv(ns, ["nft", "-f", "-"]), input=rules, text=True, check=True)


@dataclass(frozen=True)
class Vrf:
    """One VRF of a lab device: where its tunnel's socket and TUN live, and its uplink."""

    name: str
    ns: str
    underlay: str
    gateway: str
    nat_link: str  # the NAT's interface towards this uplink


@dataclass(frozen=True)
class Device:
    index: int

    @property
    def name(self) -> str:
        return f"dev{self.index}"

    @property
    def id(self) -> str:
        return f"SN-LAB-{self.index:04d}"

    @property
    def ns(self) -> str:
        return f"ovl-{self.name}"

    @property
    def underlay(self) -> str:
        return self.vrfs[0].underlay

    @property
    def vrfs(self) -> list[Vrf]:
        """main-vrf in the device's namespace; dev1 also has voice-vrf, a netns VRF."""
        i = self.index
        vrfs = [Vrf(VRF, self.ns, f"198.19.{i}.11", f"198.19.{i}.1", f"lan{i}")]
        if i == 1:
            vrfs.append(
                Vrf(
                    VOICE_VRF,
                    f"{self.ns}-voice",
                    f"198.19.{100 + i}.11",
                    f"198.19.{100 + i}.1",
                    f"lan{100 + i}",
                )
            )
        return vrfs


class Lab:
    """The lab's files live in ``directory``: certificates, configs, logs, lease store."""

    def __init__(self, directory: Path = DEFAULT_DIR) -> None:
        self.dir = directory
        self.state_file = directory / "lab.json"

    # -- what exists

    def devices(self) -> list[Device]:
        try:
            count = json.loads(self.state_file.read_text())["devices"]
        except (FileNotFoundError, ValueError, KeyError):
            return []
        return [Device(n) for n in range(1, count + 1)]

    def namespaces(self) -> list[str]:
        return [SRV, NAT, *(d.ns for d in self.devices())]

    def is_up(self, count: int) -> bool:
        return (
            len(self.devices()) == count
            and all(netns.exists(ns) for ns in self.namespaces())
            and deploy.server_status(self.server_control) is not None
            and all(deploy.agent_status(self.device_control(d)) is not None for d in self.devices())
        )

    @property
    def server_config(self) -> Path:
        return self.dir / "server" / "server.toml"

    @property
    def server_control(self) -> Path:
        return self.dir / "server" / "state" / "control.sock"

    def device_config(self, device: Device) -> Path:
        return self.dir / device.name / "appliance.toml"

    def device_control(self, device: Device) -> Path:
        return self.dir / device.name / "state" / f"{device.id}.sock"

    # -- building and removing

    def up(self, count: int) -> None:
        """Build the namespaces and start the server and the devices; keep what is up already."""
        if self.is_up(count):
            return
        self.down(keep_files=True)  # a partial or different lab: rebuild it, keeping leases
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"devices": count}))
        devices = self.devices()
        netns.create(SRV)
        netns.create(NAT)
        netns.veth(SRV, "eth0", NAT, "wan0")
        netns.address(SRV, "eth0", f"{SERVER_IP}/24")
        netns.address(NAT, "wan0", f"{NAT_WAN}/24")
        netns.route(SRV, LAN_NET, NAT_WAN)
        masquerade(NAT, LAN_NET, WAN_NET)
        for device in devices:
            for vrf in device.vrfs:
                netns.create(vrf.ns)
                netns.veth(NAT, vrf.nat_link, vrf.ns, "eth0")
                netns.address(NAT, vrf.nat_link, f"{vrf.gateway}/24")
                netns.address(vrf.ns, "eth0", f"{vrf.underlay}/24")
                netns.route(vrf.ns, "0.0.0.0/0", vrf.gateway)

        password = self._password()
        pki = self.dir / "pki"
        ca_file = deploy.pki(pki, ["overlay.lab", SERVER_IP])
        if not self.server_config.exists():
            deploy.server_config(
                self.server_config.parent, pki, password, host=SERVER_IP, auto_enroll=False
            )
        deploy.start_server(SRV, self.server_config)
        deploy.wait_for(
            "overlay server start",
            lambda: deploy.server_status(self.server_control),
            log=self.server_config.parent / "server.log",
        )
        services.start_server_side(self.dir, SRV)
        for device in devices:  # as an operator enrolls them: unknown devices get 403
            subprocess.run(
                [
                    str(deploy.BIN / "overlay"),
                    "device",
                    "add",
                    device.id,
                    "--config",
                    str(self.server_config),
                ],
                check=True,
                capture_output=True,
            )
        for device in devices:
            extra = "".join(
                f'\n[[vrf]]\nname = "{v.name}"\n'
                + (f'backend = "netns"\nnetns = "{v.ns}"\n' if v.ns != device.ns else "")
                for v in device.vrfs
            )
            config = deploy.appliance_config(
                self.device_config(device).parent,
                device.id,
                [URL],
                ca_file,
                password,
                vrf=None,
                extra=extra,
            )
            deploy.start_appliance(device.ns, config)
        self.wait_tunnels()
        for row in self.status()["devices"]:
            if row["vrf"] == VRF:
                device = next(d for d in devices if d.name == row["name"])
                services.start_snmpd(
                    self.device_config(device).parent, device.ns, device.name, row["overlay"]
                )

    def _password(self) -> str:
        """The lab's tunnel password: random, made once, kept with the lab's files."""
        path = self.dir / "tunnel-password"
        if not path.exists():
            path.write_text(os.urandom(12).hex())
            path.chmod(0o600)
        return path.read_text().strip()

    def down(self, keep_files: bool = False) -> None:
        """Stop every lab process and remove every lab namespace (and, unless kept, the files)."""
        for ns in netns.names("ovl-"):
            if ns in (SRV, NAT) or ns.startswith("ovl-dev"):
                netns.remove(ns)
        if not keep_files and self.dir.exists():
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.dir)], check=True)

    # -- looking at it

    def wait_tunnels(self, timeout: float = 30) -> None:
        """Wait until every VRF tunnel of every device is up."""
        for device in self.devices():
            deploy.wait_for(
                f"{device.name} tunnels up",
                deploy.tunnels_up(self.device_control(device)),
                timeout=timeout,
                log=self.device_config(device).parent / "appliance.log",
            )

    def status(self) -> dict[str, Any]:
        """The lab contract (DESIGN.md): one row per (device, VRF)."""
        rows = []
        for device in self.devices():
            data = deploy.agent_status(self.device_control(device))
            tunnels = {t["vrf"]: t for t in data["tunnels"]} if data else {}
            for vrf in device.vrfs:
                tunnel = tunnels.get(vrf.name, {})
                rows.append(
                    {
                        "name": device.name,
                        "id": device.id,
                        "netns": vrf.ns,
                        "vrf": vrf.name,
                        "overlay": tunnel.get("address"),
                        "underlay": vrf.underlay,
                        "state": tunnel.get("state", "down"),
                    }
                )
        server = deploy.server_status(self.server_control)
        return {
            "dir": str(self.dir),
            "server": {
                "netns": SRV,
                "overlay": "169.254.0.1",
                "url": URL,
                "admin": ADMIN_URL,
                "state": "up" if server else "down",
                "sessions": len(server["sessions"]) if server else 0,
            },
            "devices": rows,
        }
