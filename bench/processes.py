"""Run a benchmark variant in its own process and read its whole-process peak memory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def run_measured(command: list[str], log: Path) -> tuple[float, float]:
    """Run `command` to completion, its output into `log`; return (wall seconds, its peak RSS in MB)
    from wait4, so every variant's figure covers the same thing: start-up, loading, training, saving."""
    began = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}); see {log}:\n"
                         + "\n".join(log.read_text().splitlines()[-25:]))
    return time.perf_counter() - began, usage.ru_maxrss / 1024  # Linux reports KiB
