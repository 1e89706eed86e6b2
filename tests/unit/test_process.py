"""Ending a command: one line, an exit code, never a traceback."""

import os
import signal
import subprocess
import sys


def test_a_reader_that_goes_away_ends_a_command_quietly() -> None:
    """``overlay status | head``: the rest of the output has nowhere to go, and that is no
    error worth a traceback."""
    program = (
        "import sys\n"
        "from overlay import process\n"
        "sys.exit(process.quiet_pipe(lambda argv: print('x' * 200_000) or 0)(None))\n"
    )
    read, write = os.pipe()
    os.close(read)  # the reader is gone
    try:
        done = subprocess.run(
            [sys.executable, "-c", program], stdout=write, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write)
    assert done.stderr == b""
    assert done.returncode == 128 + signal.SIGPIPE
