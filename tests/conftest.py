"""Tests that need root and network namespaces run in CI; they skip only outside it."""

from __future__ import annotations

import itertools
import os
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from lab import postgres as pg
from overlay import certs
from overlay.server.certificate import tls_context


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("CI must run the tests as root: the netns tests may not be skipped")
    skip = pytest.mark.skip(reason="needs root for network namespaces and TUN (runs in CI as root)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def server_tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's TLS context with a fresh certificate for overlay.test, and a client's
    context that trusts the CA behind it."""
    certs.init(tmp_path, ["overlay.test"])
    config = SimpleNamespace(
        cert_file=tmp_path / certs.CERT_FILE,
        key_file=tmp_path / certs.KEY_FILE,
        client_ca_file=None,
        client_crl_file=None,
    )
    return tls_context(config), ssl.create_default_context(cafile=tmp_path / certs.CA_FILE)


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg.Cluster]:
    """A throwaway PostgreSQL cluster on a Unix socket, for the tests' whole session."""
    if pg.bin_dir() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed, and CI must test the fleet store with it")
        pytest.skip("PostgreSQL is not installed: scripts/setup installs it")
    cluster = pg.Cluster(Path(f"/tmp/ovl-test-postgres-{os.getuid()}"))
    cluster.remove()  # what a killed run left
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.remove()
        if os.environ.get("CI"):
            raise
        pytest.skip(f"cannot run PostgreSQL here (root without capabilities?): {exc}")
    try:
        yield cluster
    finally:
        cluster.remove()


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres: pg.Cluster) -> str:
    """The URL of a fresh database of the test's own."""
    name = f"test_{next(_databases)}"
    postgres.create_database(name)
    return postgres.url(name)
