"""The admin API in memory against a real node's status: the token, and /metrics as
Prometheus' own parser reads it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

import overlay
from overlay.server import admin
from overlay.server.node import Node

TOKEN = "t0ken-for-tests"


@pytest.fixture
async def client(node: Node) -> AsyncIterator[TestClient[object, object]]:
    app = admin.application(
        TOKEN, node.status, {"unbind": node.unbind, "remove": node.remove}, False, node.refusals
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def test_the_api_needs_the_token_and_counts_refusals(
    client: TestClient[object, object], node: Node
) -> None:
    for given in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = await client.get("/api/v1/status", headers=given)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await client.post("/api/v1/devices/dev1/remove")
    assert response.status == 401
    assert node.refusals["admin-token"] == 4
    response = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    assert (await response.json())["server"]["overlay"] == "169.254.0.1"


async def test_metrics_parse_with_prometheus_own_parser(
    client: TestClient[object, object], node: Node
) -> None:
    node.refusals["bad-credentials"] += 2
    node.firewall.sip["unparsable"] += 3
    response = await client.get("/metrics")
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    assert families["overlay_sessions"].samples[0].value == 0
    assert families["overlay_pool_addresses"].samples[0].value == 20
    refusals = {
        s.labels["reason"]: s.value
        for s in families["overlay_refusals"].samples
        if s.name == "overlay_refusals_total"
    }
    assert refusals == {"bad-credentials": 2}
    sip = families["overlay_sip_messages"].samples
    assert [(s.labels["result"], s.value) for s in sip if s.name.endswith("_total")] == [
        ("unparsable", 3)
    ]
    assert families["overlay_sip_held_flows"].samples[0].value == 0
    (build,) = families["overlay_build_info"].samples
    assert build.labels == {"version": overlay.__version__, "node": "node-a"}
    assert build.value == 1
    tunnel_bytes = families["overlay_tunnel_bytes"].samples
    assert {s.labels["direction"] for s in tunnel_bytes if s.name.endswith("_total")} == {
        "rx",
        "tx",
    }


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("127.0.0.1:9180", True),
        ("[::1]:9180", True),
        ("localhost:9180", True),
        ("ops.example.net", True),  # in admin.names
        ("evil.example.com:9180", False),  # a name made to point here (DNS rebinding)
        ("", False),
    ],
)
def test_the_listener_answers_only_to_its_names(host: str, answered: bool) -> None:
    assert admin.named_here(host, frozenset({"ops.example.net"})) is answered


async def test_a_foreign_host_header_is_421_and_counted(
    client: TestClient[object, object], node: Node
) -> None:
    response = await client.get("/metrics", headers={"Host": "evil.example.com:9180"})
    assert response.status == 421
    assert node.refusals["admin-host"] == 1


async def test_a_token_that_is_not_utf8_is_a_401(
    client: TestClient[object, object], node: Node
) -> None:
    """aiohttp hands such bytes over as surrogates, which broke the token's comparison."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    writer.write(b"Authorization: Bearer t\xff\xfe\r\nConnection: close\r\n\r\n")
    assert (await reader.readline()).split()[1] == b"401"
    writer.close()
    assert node.refusals["admin-token"] == 1
