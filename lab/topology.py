"""The lab: an overlay server and devices behind a masquerading NAT, all in network namespaces.

::

    ovl-srv                        ovl-nat                          ovl-devN
    eth0 198.18.0.1/24 ---- wan0 (bridge) 198.18.0.254/24
                                   lanN 198.19.N.1/24 ---------- eth0 198.19.N.11/24
    overlay server, ovl0           masquerade out of wan0,          appliance, ovl0
    169.254.0.1/16                 no port forwarding, new          169.254.x.y/16
                                   connections from wan0 dropped
    ovl-srv2 … (--servers N)
    eth0 198.18.0.N/24 ---- wan0   more nodes of a fleet
    ovl-db
    eth0 198.18.0.250/24 -- wan0   PostgreSQL, the fleet's store (only with --servers 2 or more)

    ovl-srv…                       ovl-lan                          ovl-nms
    lan0 198.18.1.N/24 ---- mgmt0 (bridge) 198.18.1.254/24
    BIRD: the node's            FRR (zebra, bfdd, bgpd), AS 65000
    tunnels, AS 65010                  nms0 198.18.2.1/24 ----------- eth0 198.18.2.10/24
                                                                    net-snmp tools

The management LAN: every node runs BIRD, which announces its tunnels'
routable addresses (``[lan] prefix`` 198.18.128.0/17, device 169.254.1.7 is
198.18.129.7) over BGP with BFD to FRR in ``ovl-lan``, the customer's router;
``ovl-nms`` reaches the devices at those addresses through it, wherever their
tunnels land. The nodes route 198.18.2.0/24, the NMS's network, to the router,
and push it to the devices in the hello.

With several servers, node 1 keeps ``srv`` (``ovl-srv``); node N is ``srvN``
in ``ovl-srvN``; devices list every node in their URLs, node 1 first, and the
nodes share PostgreSQL in ``ovl-db``, whose data lives in the lab directory.
The underlay exists only inside these namespaces (198.18.0.0/15, the
benchmarking range); nothing is sent from the root namespace. The server has a
route to the devices' networks through the NAT, and the NAT refuses every
connection opened from its outside, as a home or branch router does: the
devices are reachable only through the overlay.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import deploy, netns, services
from lab import postgres as pg
from lab.routing import Bird, Frr, frr_peer_config
from overlay.server.lan import Lan as LanMap

SRV, NAT, DB = "ovl-srv", "ovl-nat", "ovl-db"
ROUTER, NMS = "ovl-lan", "ovl-nms"
ROUTER_IP, NMS_GATEWAY, NMS_IP = "198.18.1.254", "198.18.2.1", "198.18.2.10"
NMS_NET = "198.18.2.0/24"
LAN_PREFIX, POOL = "198.18.128.0/17", "169.254.1.0-169.254.127.254"  # the pool fits the prefix
LAN_MAP = LanMap(ipaddress.IPv4Network(LAN_PREFIX), ipaddress.IPv4Network("169.254.0.0/17"))
ROUTER_AS, NODE_AS = 65000, 65010
SERVER_IP, NAT_WAN, DB_IP = "198.18.0.1", "198.18.0.254", "198.18.0.250"
MAX_SERVERS = 9
WAN_NET, LAN_NET = "198.18.0.0/24", "198.19.0.0/16"
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
class Server:
    """One node of the lab's fleet (node 1 is the lab's only server without --servers)."""

    index: int

    @property
    def name(self) -> str:
        return "srv" if self.index == 1 else f"srv{self.index}"

    @property
    def ns(self) -> str:
        return f"ovl-{self.name}"

    @property
    def ip(self) -> str:
        return f"198.18.0.{self.index}"

    @property
    def url(self) -> str:
        return f"wss://{self.ip}:443/tun"

    @property
    def lan_ip(self) -> str:
        """Its address on the management LAN, where BIRD peers with the router."""
        return f"198.18.1.{self.index}"


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

    def __init__(self, directory: Path = DEFAULT_DIR, auto_enroll: bool = False) -> None:
        self.dir = directory
        self.state_file = directory / "lab.json"
        self.auto_enroll = auto_enroll  # the bench's load generator: devices nobody enrolled

    # -- what exists

    def _state(self, key: str, default: int) -> int:
        try:
            return int(json.loads(self.state_file.read_text()).get(key, default))
        except (FileNotFoundError, ValueError, AttributeError):
            return default

    def devices(self) -> list[Device]:
        return [Device(n) for n in range(1, self._state("devices", 0) + 1)]

    def servers(self) -> list[Server]:
        """The fleet's nodes; node 1 alone unless the lab was made with --servers."""
        return [Server(n) for n in range(1, self._state("servers", 1) + 1)]

    @property
    def workers(self) -> int:
        """Each server's listen.workers (--workers), on its own SQLite store, or on the
        fleet's with --servers."""
        return self._state("workers", 1)

    @property
    def shared_store(self) -> bool:
        return len(self.servers()) > 1

    def server(self, name: str) -> Server:
        """The node named ``name`` (``server`` is node 1); ValueError naming the choices."""
        servers = self.servers()
        found = next(
            (s for s in servers if s.name == name or (name == "server" and s.index == 1)), None
        )
        if found is None:
            have = ", ".join(s.name for s in servers) or "none"
            raise ValueError(f"no server {name!r} in the lab (have: {have})")
        return found

    def namespaces(self) -> list[str]:
        fleet = [DB] if self.shared_store else []
        return [
            *(s.ns for s in self.servers()),
            NAT,
            ROUTER,
            NMS,
            *fleet,
            *(d.ns for d in self.devices()),
        ]

    def is_up(self, count: int, servers: int, workers: int = 1) -> bool:
        return (
            len(self.devices()) == count
            and len(self.servers()) == servers
            and self.workers == workers
            and all(netns.exists(ns) for ns in self.namespaces())
            and all(deploy.server_status(self.control(s)) is not None for s in self.servers())
            and all(deploy.agent_status(self.device_control(d)) is not None for d in self.devices())
        )

    def config(self, server: Server) -> Path:
        return self.dir / ("server" if server.index == 1 else server.name) / "server.toml"

    def control(self, server: Server) -> Path:
        return self.config(server).parent / "state" / "control.sock"

    def bird(self, server: Server) -> Bird:
        return Bird(self.config(server).parent / "bird", server.ns)

    @property
    def frr(self) -> Frr:
        """The router's FRR; its files where the frr user may enter."""
        return Frr(self.dir / "lan-router", ROUTER)

    @property
    def server_config(self) -> Path:
        return self.config(Server(1))

    @property
    def server_control(self) -> Path:
        return self.control(Server(1))

    @property
    def db(self) -> pg.Cluster:
        """The fleet's PostgreSQL, in ovl-db with its data under the lab directory."""
        return pg.Cluster(self.dir / "db", ns=DB, address=DB_IP)

    def device_config(self, device: Device) -> Path:
        return self.dir / device.name / "appliance.toml"

    def device_control(self, device: Device) -> Path:
        return self.dir / device.name / "state" / f"{device.id}.sock"

    # -- building and removing

    def up(self, count: int, servers: int = 1, workers: int = 1) -> None:
        """Build the namespaces and start the servers and the devices; keep what is up."""
        if self.is_up(count, servers, workers):
            return
        if self.workers != workers:  # the servers' configs say how many workers
            self.down()
        self.down(keep_files=True)  # a partial or different lab: rebuild it, keeping leases
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps({"devices": count, "servers": servers, "workers": workers})
        )
        devices, nodes = self.devices(), self.servers()
        netns.create(NAT)
        netns.bridge(NAT, "wan0")
        netns.address(NAT, "wan0", f"{NAT_WAN}/24")
        for node in nodes:
            self._underlay(node.ns, f"w{node.name}", node.ip)
            netns.route(node.ns, LAN_NET, NAT_WAN)
        masquerade(NAT, LAN_NET, WAN_NET)
        self._management_lan(nodes)
        for device in devices:
            for vrf in device.vrfs:
                netns.create(vrf.ns)
                netns.veth(NAT, vrf.nat_link, vrf.ns, "eth0")
                netns.address(NAT, vrf.nat_link, f"{vrf.gateway}/24")
                netns.address(vrf.ns, "eth0", f"{vrf.underlay}/24")
                netns.route(vrf.ns, "0.0.0.0/0", vrf.gateway)

        password = self._password()
        pki = self.dir / "pki"
        names = ["overlay.lab", *(Server(n).ip for n in range(1, MAX_SERVERS + 1))]
        ca_file = deploy.pki(pki, names)
        store = self._store() if self.shared_store else ""
        for node in nodes:
            if not self.config(node).exists():
                deploy.server_config(
                    self.config(node).parent,
                    pki,
                    password,
                    host=node.ip,
                    auto_enroll=self.auto_enroll,
                    overlay=f'pool = "{POOL}"',
                    listen=f"workers = {workers}",
                    extra=f'{store}\n[node]\nname = "{node.name}"\n{self._reach(node)}',
                )
            self._start_bird(node)
            self.start(node)
        self.frr.start(
            frr_peer_config(ROUTER_AS, ROUTER_IP, {n.lan_ip: NODE_AS for n in nodes}, bfd=True)
        )
        services.start_server_side(self.dir, SRV)
        for device in devices:  # as an operator enrolls them: unknown devices get 403
            argv = [str(deploy.BIN / "overlay"), "device", "add", device.id]
            # on node 1, whose namespace reaches the fleet's store (never the root namespace)
            added = netns.run(SRV, [*argv, "--config", str(self.server_config)])
            if added.returncode != 0:
                raise RuntimeError(f"overlay device add {device.id}: {added.stderr.strip()}")
        for device in devices:
            extra = "".join(
                f'\n[[vrf]]\nname = "{v.name}"\n'
                + (f'backend = "netns"\nnetns = "{v.ns}"\n' if v.ns != device.ns else "")
                for v in device.vrfs
            )
            config = deploy.appliance_config(
                self.device_config(device).parent,
                device.id,
                [node.url for node in nodes],
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
                    self.device_config(device).parent,
                    device.ns,
                    device.name,
                    row["overlay"],
                    NMS_NET,
                )
        self.wait_routes()

    def _management_lan(self, nodes: list[Server]) -> None:
        """The customer's router and NMS, and each node's link to the router."""
        netns.create(ROUTER)
        netns.sysctl(ROUTER, "net.ipv4.ip_forward", "1")
        netns.bridge(ROUTER, "mgmt0")
        netns.address(ROUTER, "mgmt0", f"{ROUTER_IP}/24")
        netns.create(NMS)
        netns.veth(ROUTER, "nms0", NMS, "eth0")
        netns.address(ROUTER, "nms0", f"{NMS_GATEWAY}/24")
        netns.address(NMS, "eth0", f"{NMS_IP}/24")
        netns.route(NMS, "0.0.0.0/0", NMS_GATEWAY)
        for node in nodes:
            netns.veth(node.ns, "lan0", ROUTER, f"m{node.name}")
            netns.enslave(ROUTER, f"m{node.name}", "mgmt0")
            netns.address(node.ns, "lan0", f"{node.lan_ip}/24")
            netns.route(node.ns, NMS_NET, ROUTER_IP)
            netns.sysctl(node.ns, "net.ipv4.ip_forward", "1")

    def _reach(self, node: Server) -> str:
        """The [lan] and [bgp] tables of a node's server.toml."""
        return f"""
[lan]
prefix = "{LAN_PREFIX}"
management = ["{NMS_NET}"]

[bgp]
local_as = {NODE_AS}
router_id = "{node.lan_ip}"
bird_socket = "{self.bird(node).socket}"
[[bgp.neighbor]]
address = "{ROUTER_IP}"
as = {ROUTER_AS}
"""

    def _start_bird(self, node: Server) -> None:
        """BIRD in the node's namespace, configured by ``overlay bird-config``."""
        made = netns.run(
            node.ns,
            [str(deploy.BIN / "overlay"), "bird-config", "--config", str(self.config(node))],
        )
        if made.returncode != 0:
            raise RuntimeError(f"overlay bird-config for {node.name}: {made.stderr.strip()}")
        self.bird(node).start(made.stdout)

    def _underlay(self, ns: str, port: str, address: str) -> None:
        """Namespace ``ns`` on the NAT's outside bridge, with ``address``/24 on eth0."""
        netns.create(ns)
        netns.veth(ns, "eth0", NAT, port)
        netns.enslave(NAT, port, "wan0")
        netns.address(ns, "eth0", f"{address}/24")

    def _store(self) -> str:
        """Start the fleet's PostgreSQL in ovl-db; the [store] table of the nodes' configs."""
        self._underlay(DB, "wdb", DB_IP)
        db = self.db
        db.start()
        if db.psql("SELECT 1 FROM pg_database WHERE datname = 'overlay'") != "1":
            db.psql(f"CREATE DATABASE overlay OWNER {pg.ROLE}")
        return (
            f'[store]\nurl = "{db.url("overlay", host=DB_IP)}"\n'
            f'password_file = "{db.password_file}"\n'
        )

    def start(self, node: Server) -> None:
        """Start node's server and wait until it answers."""
        deploy.start_server(node.ns, self.config(node))
        deploy.wait_for(
            f"overlay server {node.name} start",
            lambda: deploy.server_status(self.control(node)),
            log=self.config(node).parent / "server.log",
        )

    def signal(self, node: Server, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to the overlay server in the node's namespace; its pids."""
        pids = [pid for pid in netns.pids_in(node.ns) if b"overlay\x00serve" in read_cmdline(pid)]
        for pid in pids:
            os.kill(pid, sig)
        return pids

    def _password(self) -> str:
        """The lab's tunnel password: random, made once, kept with the lab's files."""
        path = self.dir / "tunnel-password"
        if not path.exists():
            path.write_text(os.urandom(12).hex())
            path.chmod(0o600)
        return path.read_text().strip()

    def down(self, keep_files: bool = False) -> None:
        """Stop every lab process and remove every lab namespace (and, unless kept, the files)."""
        if self.db.data.exists():
            self.db.stop()  # cleanly, before its namespace goes
        self.frr.stop()
        for node in self.servers():
            self.bird(node).stop()
        for ns in netns.names("ovl-"):
            if ns in (SRV, NAT, DB, ROUTER, NMS) or ns.startswith(("ovl-dev", "ovl-srv")):
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

    def router_routes(self) -> set[str]:
        """The prefixes the management LAN's router learned over BGP."""
        text = self.frr.vtysh("show ip route bgp json")
        return set(json.loads(text or "{}"))

    def wait_routes(self, timeout: float = 60) -> None:
        """Wait until the router has every device's routable address from a node."""
        wanted = {f"{row['lan']}/32" for row in self.status()["devices"] if row["lan"]}
        deploy.wait_for(
            "the management LAN's router learning every device",
            lambda: wanted <= self.router_routes(),
            timeout=timeout,
            log=self.frr.dir / "bgpd.log",
        )

    def status(self) -> dict[str, Any]:
        """The lab contract (DESIGN.md): one row per (device, VRF), and the servers."""
        servers, holders = [], {}
        for node in self.servers() or [Server(1)]:
            running = deploy.server_status(self.control(node))
            servers.append(
                {
                    "name": node.name,
                    "netns": node.ns,
                    "overlay": "169.254.0.1",
                    "url": node.url,
                    "admin": ADMIN_URL,
                    "state": "up" if running else "down",
                    "sessions": len(running["sessions"]) if running else 0,
                    "workers": running.get("workers", []) if running else [],  # --workers
                }
            )
            for session in running["sessions"] if running else []:
                holders[(session["device"], session["vrf"])] = node.name
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
                        "server": holders.get((device.id, vrf.name)),
                        "lan": lan_address(tunnel.get("address")),
                    }
                )
        first = {key: value for key, value in servers[0].items() if key != "name"}
        return {
            "dir": str(self.dir),
            "server": first,
            "servers": servers,
            "lan": {"router": ROUTER, "nms": NMS, "prefix": LAN_PREFIX},
            "devices": rows,
        }


def read_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def lan_address(overlay: str | None) -> str | None:
    """A device's routable address on the management LAN (the lab's [lan] prefix)."""
    lan = LAN_MAP.lan_address(ipaddress.IPv4Address(overlay)) if overlay else None
    return None if lan is None else str(lan)
