"""The admin API in memory against a real node's status: the token, and /metrics as
Prometheus' own parser reads it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

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
    tunnel_bytes = families["overlay_tunnel_bytes"].samples
    assert {s.labels["direction"] for s in tunnel_bytes if s.name.endswith("_total")} == {
        "rx",
        "tx",
    }
