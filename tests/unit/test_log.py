import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from overlay import log


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """log.configure writes to the stderr of its moment (capsys's, here): later tests must not
    log into that closed capture, or the libraries' log calls raise inside their handlers."""
    handlers, level = logging.getLogger().handlers[:], logging.getLogger().level
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)


def test_library_tracebacks_become_one_structured_line(capsys):
    log.configure("info", json=True)
    try:
        raise ValueError("Got more than 8190 bytes when reading\nsecond line")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from 198.18.0.12")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["event"] == "Error handling request from 198.18.0.12"
    assert entry["logger"] == "aiohttp.server"
    assert entry["error"] == "Got more than 8190 bytes when reading second line"
    assert entry["level"] == "error"


def test_debug_lines_are_dropped_at_info(capsys):
    log.configure("info", json=True)
    logging.getLogger("pyroute2").debug("noise")
    assert capsys.readouterr().err == ""


def test_every_line_names_the_node(capsys):
    log.configure("info", json=True, node="fra-1")
    structlog.get_logger("t").info("session open", device="SN-1", vrf="main-vrf")
    logging.getLogger("aiohttp.server").warning("slow client")
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [(e["event"], e["node"]) for e in lines] == [
        ("session open", "fra-1"),
        ("slow client", "fra-1"),
    ]
    assert lines[0]["device"] == "SN-1" and lines[0]["vrf"] == "main-vrf"


def test_each_line_is_one_write_so_workers_sharing_stderr_never_merge_lines():
    writes: list[str] = []

    class Unbuffered:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

        def isatty(self) -> bool:
            return False

    stderr = Unbuffered()
    saved, sys.stderr = sys.stderr, stderr
    try:
        log.configure("info", json=True, node="srv-w1")
        structlog.get_logger("t").info("certificate reloaded")
    finally:
        sys.stderr = saved
    assert len(writes) == 1 and writes[0].endswith("}\n")
    assert json.loads(writes[0])["event"] == "certificate reloaded"
