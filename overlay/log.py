"""Structured logging set up once, by the command-line entry points only.

Modules call ``structlog.get_logger()`` and bind the device, VRF and overlay
address of the session they speak of. Lines go to stderr: ``key=value`` on a
terminal, JSON elsewhere (files, log shippers), and under systemd's journal
``key=value`` with the ``<N>`` severity prefix journald reads and no timestamp
of our own (the journal stamps each line), so that ``journalctl -p err -u
overlay`` shows the errors.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from overlay import systemd

LEVELS = ("debug", "info", "warning", "error")


class _OneLine(logging.Handler):
    """Libraries' stdlib log records (aiohttp, pyroute2) as one structured line each.

    aiohttp logs a full traceback for every malformed request (a header line
    over 8 KiB, say); an operator needs the one line saying what was refused.
    """

    def emit(self, record: logging.LogRecord) -> None:
        event = record.getMessage().splitlines()[0] if record.getMessage() else record.name
        details = {"logger": record.name}
        if record.exc_info and record.exc_info[1] is not None:
            details["error"] = " ".join(str(record.exc_info[1]).split())[:300]
        structlog.get_logger(record.name).log(record.levelno, event, **details)


def _journal_line(
    logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
) -> str:
    """``<N>level=… event=…``: the severity for journald, then the line."""
    prefix = systemd.priority(event.get("level", "info"))
    return prefix + structlog.processors.KeyValueRenderer(
        key_order=["level", "event"], drop_missing=True
    )(logger, name, event)


def _with_node(node: str) -> structlog.typing.Processor:
    def add(
        logger: structlog.typing.WrappedLogger, name: str, event: structlog.typing.EventDict
    ) -> structlog.typing.EventDict:
        event.setdefault("node", node)
        return event

    return add


def configure(level: str = "info", json: bool | None = None, node: str | None = None) -> None:
    """Log to stderr at ``level``; with ``node``, every line says which server wrote it."""
    journal = json is None and systemd.journal_stream()
    if json is None:
        json = not journal and not sys.stderr.isatty()
    renderer: structlog.typing.Processor
    if journal:
        renderer = _journal_line
    elif json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    stamp = [] if journal else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([_with_node(node)] if node else []),
            structlog.processors.add_log_level,
            *stamp,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # one write per line (print writes the newline apart): the workers of a server
        # share stderr, and unbuffered (PYTHONUNBUFFERED) their lines would run together
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_OneLine()]
    root.setLevel(logging.getLevelName(level.upper()))


def tls_key_log() -> str | None:
    """Where to write TLS session keys: ``SSLKEYLOGFILE``, for decrypting captures. Off unless set.

    Anyone holding that file can read every tunnel captured meanwhile, so each
    program that honours it says so loudly when it starts.
    """
    path = os.environ.get("SSLKEYLOGFILE") or None
    if path is not None:
        structlog.get_logger("overlay.tls").warning(
            "TLS KEYS ARE BEING WRITTEN (SSLKEYLOGFILE): anyone with this file can decrypt "
            "captured tunnels",
            file=path,
        )
    return path
