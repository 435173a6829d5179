"""`codelift serve` in a subprocess on a free loopback port, for the benchmarks that drive it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def running_server(model: str, *options: str) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """(base URL ending in /v1, the server process, seconds it took to answer /health) for the block;
    the server gets SIGTERM on the way out, as a supervisor would stop it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "codelift.cli", "serve", model, "--port", str(port), *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("codelift serve exited before answering") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1", server, time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(60)
