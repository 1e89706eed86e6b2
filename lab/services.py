"""The lab's management services, from Debian packages, each with a private config in the lab dir.

Server side (namespace ovl-srv, on 169.254.0.1): rsyslog (UDP and TCP 514),
chrony (NTP), an HTTP file server (port 80) and, inside ``overlay serve``, the
QoE collector (5001). Device side (ovl-devN, on its overlay address): snmpd
(v2c and v3 authPriv). No system daemon, system file or default port outside
the lab's namespaces is touched; every process dies with its namespace.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from lab import netns

SERVER = "169.254.0.1"
COMMUNITY = "ovl-lab"
SNMP_USER = "ovl-admin"
FIRMWARE = "firmware.bin"


@dataclass(frozen=True)
class Secrets:
    """The lab's SNMPv3 passwords: random, made once, kept in the lab dir."""

    auth: str
    priv: str

    @classmethod
    def load(cls, directory: Path) -> Secrets:
        path = directory / "snmp-secrets"
        if not path.exists():
            path.write_text(f"{os.urandom(10).hex()}\n{os.urandom(10).hex()}\n")
            path.chmod(0o600)
        auth, priv = path.read_text().split()
        return cls(auth, priv)


def snmp_env(directory: Path) -> dict[str, str]:
    """net-snmp keeps state in SNMP_PERSISTENT_DIR; point clients and agents at the lab's."""
    persistent = directory / "snmp-client"
    persistent.mkdir(parents=True, exist_ok=True)
    return os.environ | {"SNMP_PERSISTENT_DIR": str(persistent)}


def start_server_side(directory: Path, ns: str) -> None:
    """rsyslog, chrony and the HTTP file server in the server's namespace."""
    work = directory / "services"
    (work / "rsyslog").mkdir(parents=True, exist_ok=True)
    rsyslog_conf = work / "rsyslog.conf"
    rsyslog_conf.write_text(f"""\
global(workDirectory="{work / "rsyslog"}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" address="{SERVER}" port="514")
input(type="imtcp" address="{SERVER}" port="514")
template(name="lab" type="string"
         string="%timegenerated:::date-rfc3339% %fromhost-ip% %syslogtag% %msg%\\n")
action(type="omfile" file="{syslog_file(directory)}" template="lab")
""")
    netns.spawn(
        ns,
        ["rsyslogd", "-n", "-f", str(rsyslog_conf), "-i", str(work / "rsyslogd.pid")],
        work / "rsyslogd.log",
    )

    chrony_conf = work / "chrony.conf"
    chrony_conf.write_text(f"""\
local stratum 8
allow 169.254.0.0/16
bindaddress {SERVER}
cmdport 0
pidfile {work / "chronyd.pid"}
driftfile {work / "chrony.drift"}
""")
    netns.spawn(
        ns, ["chronyd", "-d", "-x", "-u", "root", "-f", str(chrony_conf)], work / "chronyd.log"
    )

    files = directory / "files"
    files.mkdir(exist_ok=True)
    if not (files / FIRMWARE).exists():
        (files / FIRMWARE).write_bytes(os.urandom(1 << 20))
    netns.spawn(
        ns,
        [sys.executable, "-m", "http.server", "--bind", SERVER, "--directory", str(files), "80"],
        work / "http.log",
    )


def syslog_file(directory: Path) -> Path:
    return directory / "services" / "syslog.log"


def firmware_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / "files" / FIRMWARE).read_bytes()).hexdigest()


def start_snmpd(directory: Path, ns: str, name: str, address: str, nms: str) -> None:
    """snmpd on the device's overlay address, answering only the service range and
    the management LAN ``nms`` (a network)."""
    secrets = Secrets.load(directory.parent)
    conf = directory / "snmpd.conf"
    conf.write_text(f"""\
agentAddress udp:{address}:161
rocommunity {COMMUNITY} 169.254.0.0/24
rocommunity {COMMUNITY} {nms}
createUser {SNMP_USER} SHA {secrets.auth} AES {secrets.priv}
rouser {SNMP_USER} priv
sysName {name}
sysLocation ovl-lab {name}
sysContact lab operator
""")
    run_snmpd(ns, conf, directory)


def run_snmpd(ns: str, conf: Path, directory: Path) -> subprocess.Popen[bytes]:
    """snmpd in the foreground in ``ns``, with its pid file, log and persistent state in
    ``directory``: nothing of the system's snmpd is touched."""
    state = directory / "snmp"
    state.mkdir(parents=True, exist_ok=True)
    argv = [
        "snmpd",
        "-f",
        "-C",
        "-c",
        str(conf),
        "-p",
        str(directory / "snmpd.pid"),
        "-Lf",
        str(directory / "snmpd.log"),
        "-m",
        "",
    ]
    return netns.spawn(
        ns, argv, directory / "snmpd.out", env=os.environ | {"SNMP_PERSISTENT_DIR": str(state)}
    )
