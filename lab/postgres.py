"""A PostgreSQL cluster of our own for the lab's fleet and the tests, never a system service.

Its data, socket and log live under one directory of the lab or the test; the
files belong to the ``postgres`` user, because PostgreSQL refuses to run as
root. It listens on its Unix socket and, when given one, on an address inside
a namespace the lab made. Local connections of the ``postgres`` superuser are
trusted (it sets the cluster up); the servers log in as the ``overlay`` role
with a scram-sha-256 password from a file, as an operator's would.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from lab import netns

ROLE = "overlay"
SUPERUSER = "postgres"
PG_HBA = f"""\
local all {ROLE} scram-sha-256
host all {ROLE} 0.0.0.0/0 scram-sha-256
local all {SUPERUSER} trust
"""


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's programs (Debian's layout), if any."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parent.parent.name
    )
    return found[-1].parent if found else None


class Cluster:
    """One cluster under ``root``, optionally run inside namespace ``ns`` and listening on
    ``address`` (else on its Unix socket only)."""

    def __init__(self, root: Path, ns: str | None = None, address: str = "") -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError("PostgreSQL is not installed: run scripts/setup")
        self.bin = found
        self.root, self.ns, self.address = root, ns, address
        self.data = root / "data"
        self.socket_dir = root / "run"
        self.log = root / "postgres.log"
        self.password_file = root / "password"

    def start(self) -> None:
        """Make the cluster (the first time) and start it; leftovers of a killed run go first."""
        self.stop()
        if not (self.data / "PG_VERSION").exists():
            self._init()
        options = f"-k {self.socket_dir} -c listen_addresses='{self.address}'"
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options]
        result = self._run([*argv, "-l", str(self.log), "-w", "-t", "60", "start"], ns=self.ns)
        if result.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {result.stdout}{result.stderr}{tail}")

    def stop(self) -> None:
        """Stop the cluster by its pid (immediate shutdown), if it runs."""
        netns.stop_pid(self.data / "postmaster.pid", signal.SIGQUIT)  # immediate shutdown

    def pid(self) -> int:
        """The postmaster's pid (its first line of postmaster.pid); the cluster runs."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser over the socket; return what psql printed."""
        result = self._run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ]
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> None:
        """A fresh database ``name`` owned by the overlay role (dropped first if it exists)."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}" OWNER {ROLE}')

    def url(self, database: str, host: str | None = None) -> str:
        """The libpq URL the servers use: over the socket, or to ``host`` (an address)."""
        if host is None:
            return f"postgresql://{ROLE}@/{database}?host={self.socket_dir}"
        return f"postgresql://{ROLE}@{host}/{database}"

    def _init(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.socket_dir.mkdir()
        owner = pwd.getpwnam(SUPERUSER) if os.getuid() == 0 else pwd.getpwuid(os.getuid())
        for path in (self.root, self.socket_dir):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        if self._run(["test", "-w", str(self.root)]).returncode != 0:
            raise RuntimeError(
                f"the {owner.pw_name} user cannot reach {self.root}: put it (the lab: "
                "OVL_LAB_DIR) under a directory that every user may enter, like /var/tmp"
            )
        result = self._run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", SUPERUSER]
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")
        (self.data / "pg_hba.conf").write_text(PG_HBA)
        password = secrets.token_urlsafe(18)
        self.password_file.write_text(password + "\n")
        self.password_file.chmod(0o600)
        options = f"-k {self.socket_dir} -c listen_addresses=''"
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-w"]
        self._run([*argv, "-l", str(self.log), "start"], check=True)
        self.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        self._run([*argv, "-m", "fast", "stop"], check=True)

    def _run(
        self, argv: list[str], ns: str | None = None, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL program as the cluster's owner (in ``ns`` if given)."""
        if os.getuid() == 0:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        if ns is not None:
            argv = netns.exec_argv(ns, argv)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)
