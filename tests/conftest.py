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


@pytest.fixture
def host(tmp_path):
    """Env for the CLI on a simulated 8 x MI300X host in DPX/NPS2 (16 logical GPUs)."""
    root = tmp_path / "sys"
    assert (
        mipart(
            "sim", "create", root, "--model", "mi300x", "--gpus", "8", "--compute", "DPX", "--memory", "NPS2"
        ).returncode
        == 0
    )
    return {"MIPART_SYSFS_ROOT": str(root), "MIPART_RUN_DIR": str(tmp_path / "run")}


TIER_FOLDERS = ("nginx", "system", "vllm")  # tests/<tier>/ carries the marker of that name; tests/unit/ none


def pytest_collection_modifyitems(config, items):
    """The folder is the tier: a test under tests/nginx/ is marked nginx, and so on."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        if parts[0] in TIER_FOLDERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
