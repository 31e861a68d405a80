"""Small helpers shared by the benchmarks: timing, medians, running the real CLI."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "agent")}


def wall(argv: list[str], env: dict | None = None, expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env or ENV, capture_output=True)
    elapsed = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return elapsed


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def mipart_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "mipart", *args]


def finish_client(client: subprocess.Popen, timeout: float) -> None:
    """Wait for a load client that writes its own results; a hung one is killed, so a bench ends."""
    try:
        client.wait(timeout=timeout)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
    if client.returncode != 0:
        raise SystemExit(f"the load client exited {client.returncode}")
