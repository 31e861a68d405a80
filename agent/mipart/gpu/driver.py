"""Reloading the amdgpu driver: the one step that makes a memory mode take effect.

The amdgpu backend's reload; MIPART_RELOAD_CMD replaces the command (a simulated host,
a test that injects a failure).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import PurePath

from mipart.errors import UserError
from mipart.names import RELOAD_CMD_VAR, RELOAD_TIMEOUT_VAR

DEFAULT_RELOAD_CMD = "modprobe -r amdgpu && modprobe amdgpu"
# Programs that load or unload the real kernel module: never run for a simulated host.
MODULE_TOOLS = ("modprobe", "rmmod", "insmod")
# A reload takes up to about 140 s on a real 8-GPU node (docs/partitioning.md, "Driver reload").
DEFAULT_RELOAD_TIMEOUT = 300.0


class ReloadError(UserError):
    pass


def reload_command(default: str = DEFAULT_RELOAD_CMD) -> str:
    return os.environ.get(RELOAD_CMD_VAR, default)


def reloads_real_driver(command: str) -> bool:
    """Whether a reload command runs a kernel module tool (as a word of the shell line)."""
    return any(PurePath(word).name in MODULE_TOOLS for word in re.split(r"[\s;&|()<>`'\"]+", command) if word)


def reload_timeout() -> float:
    raw = os.environ.get(RELOAD_TIMEOUT_VAR, "")
    try:
        return float(raw) if raw else DEFAULT_RELOAD_TIMEOUT
    except ValueError:
        raise ReloadError(
            f"{RELOAD_TIMEOUT_VAR}={raw!r} is not a number of seconds; e.g. {RELOAD_TIMEOUT_VAR}=300"
        ) from None


def run_reload(command: str, wait_until_back: Callable[[], bool]) -> None:
    """Run the reload command, then wait (bounded) until `wait_until_back()` is true."""
    timeout = reload_timeout()
    started = time.monotonic()
    try:
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReloadError(
            f"driver reload `{command}` did not finish in {timeout:g}s; check `journalctl -k`, then rerun `mipart "
            "partition apply`"
        ) from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ReloadError(
            f"driver reload `{command}` failed (exit {done.returncode}): {detail}; "
            "the memory mode request stays pending: free the GPUs and rerun `mipart partition apply`"
        )
    while not wait_until_back():
        if time.monotonic() - started > timeout:
            raise ReloadError(
                f"GPUs did not come back within {timeout:g}s after `{command}`; check `journalctl -k` and `lspci -d "
                "1002:`"
            )
        time.sleep(0.2)
