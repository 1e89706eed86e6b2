"""``scripts/bench --chart FILE``: the paths side by side as a PNG (matplotlib, the
``bench`` extra that scripts/bench installs when asked for a chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(results: dict[str, Any], path: Path) -> None:
    """Throughput both ways, idle RTT and RTT under load, one bar group per path."""
    import matplotlib

    matplotlib.use("Agg")  # no screen
    import matplotlib.pyplot as plt

    rows = results["paths"]
    names = [row["path"] for row in rows]
    figure, (throughput, idle, loaded) = plt.subplots(1, 3, figsize=(13, 4.2))
    positions = range(len(rows))
    width = 0.4
    throughput.bar(
        [p - width / 2 for p in positions], [r["up_mbit"] for r in rows], width, label="up"
    )
    throughput.bar(
        [p + width / 2 for p in positions], [r["down_mbit"] for r in rows], width, label="down"
    )
    throughput.set_yscale("log")
    throughput.set_title("TCP throughput, Mbit/s (log)")
    throughput.legend()
    idle.bar(positions, [r["idle_rtt_ms"] for r in rows], color="tab:green")
    idle.set_title("idle ping RTT, ms (median)")
    loaded.bar(positions, [r["loaded_rtt_ms"] for r in rows], color="tab:red")
    loaded.set_title("ping RTT, 200 Mbit/s bottleneck, ms")
    for axes, fmt in ((throughput, "%.0f"), (idle, "%.3g"), (loaded, "%.3g")):
        axes.set_xticks(list(positions), names, rotation=20, ha="right")
        for bars in axes.containers:
            axes.bar_label(bars, fmt=fmt, fontsize=7)
    figure.suptitle(f"scripts/bench --part paths, {results['date']}, {results['machine']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
