"""Reloading the amdgpu driver: the one step that makes a memory mode take effect."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu import modes

DEFAULT_RELOAD_CMD = "modprobe -r amdgpu && modprobe amdgpu"
# hardware.md: a reload takes up to about 140 s on a real 8-GPU node.
DEFAULT_RELOAD_TIMEOUT = 300.0
USER_PARTT_PARAM = "module/amdgpu/parameters/user_partt_mode"


class ReloadError(UserError):
    pass


def reload_command() -> str:
    return os.environ.get("MIPART_RELOAD_CMD", DEFAULT_RELOAD_CMD)


def reload_timeout() -> float:
    raw = os.environ.get("MIPART_RELOAD_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_RELOAD_TIMEOUT
    except ValueError:
        raise ReloadError(f"MIPART_RELOAD_TIMEOUT={raw!r} is not a number of seconds; e.g. MIPART_RELOAD_TIMEOUT=300")


def user_partt_mode(root: Path) -> str:
    """The compute mode the driver picks at load: AUTO unless amdgpu.user_partt_mode says otherwise."""
    try:
        value = int((root / USER_PARTT_PARAM).read_text().strip())
    except (OSError, ValueError):
        return "AUTO"
    if value >= 2**31:  # the kernel declares the parameter uint: AUTO (-2) reads 4294967294
        value -= 2**32
    names = {number: name for name, number in modes.USER_PARTT_MODE.items()}
    return names.get(value, "AUTO")


def run_reload(wait_until_back) -> None:
    """Run the reload command, then wait (bounded) until `wait_until_back()` is true."""
    command, timeout = reload_command(), reload_timeout()
    started = time.monotonic()
    try:
        done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReloadError(f"driver reload `{command}` did not finish in {timeout:g}s; check `journalctl -k`, then rerun `mipart partition apply`")
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        raise ReloadError(
            f"driver reload `{command}` failed (exit {done.returncode}): {detail}; "
            "the memory mode request stays pending: free the GPUs and rerun `mipart partition apply`"
        )
    while not wait_until_back():
        if time.monotonic() - started > timeout:
            raise ReloadError(f"GPUs did not come back within {timeout:g}s after `{command}`; check `journalctl -k` and `lspci -d 1002:`")
        time.sleep(0.2)

