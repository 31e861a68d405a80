"""Shared helpers: run the real `mipart` CLI as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "agent"


def mipart(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(AGENT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mipart", *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_mipart():
    return mipart


@pytest.fixture
def live_pids():
    """PIDs of real processes (sorted) for simulated KFD holders: the kernel, and the
    simulator, forget holders whose process has exited. Killed by PID afterwards."""
    started: list[subprocess.Popen] = []

    def make(count: int) -> list[int]:
        for _ in range(count):
            started.append(subprocess.Popen(["sleep", "300"]))
        return sorted(p.pid for p in started[-count:])

    yield make
    for proc in started:
        proc.kill()
        proc.wait()
