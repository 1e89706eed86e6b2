"""``--profile``: where the overlay's server and device spend their time (py-spy), as a summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab.bench.measure import DEV, SRV, iperf


def profile_overlay(directory: Path, pids: dict[str, int], seconds: float) -> None:
    """Sample the server and the device with py-spy while iperf3 runs each way; write
    the stacks and a summary of the top functions (by own samples) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for direction, reverse in (("up", False), ("down", True)):
        spies = {
            role: subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--native",
                    "--rate",
                    "250",
                    "--duration",
                    str(int(seconds)),
                    "--format",
                    "raw",
                    "--pid",
                    str(pid),
                    "--output",
                    str(directory / f"{role}-{direction}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for role, pid in pids.items()
        }
        iperf(DEV, SRV, "169.254.0.1", seconds + 1, reverse=reverse)
        for spy in spies.values():
            spy.wait(timeout=60)
    with open(directory / "summary.txt", "w") as summary:
        for stacks in sorted(directory.glob("*-*.txt")):
            summary.write(f"{stacks.stem}\n{top_functions(stacks)}\n")


def top_functions(stacks: Path, count: int = 12) -> str:
    """Where the event loop thread spends its samples: the Python functions most often
    on its stack (inclusive), and the frames it is in when sampled (own time), each as
    % of all its samples. py-spy's raw format: one ``frame;frame;… samples`` per line."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in stacks.read_text().splitlines():
        stack, _, field = line.rpartition(" ")
        if "Thread._bootstrap" in stack:  # idle worker threads (netlink, DNS)
            continue
        samples = int(field)
        total += samples
        frames = stack.split(";")
        leaf = frames[-1].split(" (")[0]
        own[leaf] = own.get(leaf, 0) + samples
        for name in {f.split(" (")[0] for f in frames if ".py:" in f}:
            inclusive[name] = inclusive.get(name, 0) + samples

    def ranked(counts: dict[str, int]) -> list[str]:
        top = [item for item in sorted(counts.items(), key=lambda i: -i[1]) if item[1] < total]
        return [f"{100 * n / total:6.1f}%  {name}" for name, n in top[:count]]

    return "\n".join(
        ["Python functions, inclusive:", *ranked(inclusive), "own time:", *ranked(own)]
    )
