"""The docs name every key the example configs hold, so they cannot drift apart silently."""

import tomllib
from pathlib import Path

import pytest

from appliance.config import EXAMPLE as APPLIANCE_EXAMPLE
from overlay.server.config import EXAMPLE as SERVER_EXAMPLE

DOC = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()


def keys(table: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in table.items():
        if isinstance(value, dict):
            found += keys(value, f"{prefix}{key}.")
        else:
            found.append(f"{prefix}{key}")
    return found


@pytest.mark.parametrize(
    "example", [SERVER_EXAMPLE, APPLIANCE_EXAMPLE], ids=["server", "appliance"]
)
def test_configuration_doc_names_every_example_key(example):
    for key in keys(tomllib.loads(example.read_text())):
        assert f"`{key}`" in DOC or f"`{key} " in DOC, f"docs/configuration.md does not name {key}"
