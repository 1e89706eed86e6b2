"""Text for operators, shared by the server's and the agent's command lines."""

from __future__ import annotations

from collections.abc import Mapping


def duration(seconds: float) -> str:
    """A short age for a table column: ``4m07s``, ``3h12m``."""
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def counts(values: Mapping[str, int], separator: str = ", ", empty: str = "none") -> str:
    """Named counts as ``a=1, b=2`` in name order, or ``empty`` when there are none."""
    return separator.join(f"{k}={v}" for k, v in sorted(values.items())) or empty
