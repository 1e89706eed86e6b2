"""Tests that need root and network namespaces run in CI; they skip only outside it."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError("CI must run the tests as root: the netns tests may not be skipped")
    skip = pytest.mark.skip(reason="needs root for network namespaces and TUN (runs in CI as root)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
