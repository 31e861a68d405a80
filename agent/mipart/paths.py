"""Where mipart keeps what it generates (/run/mipart) and what must survive reboots."""

from __future__ import annotations

import os
from pathlib import Path

from mipart.names import (
    DEFAULT_RUN_DIR,
    DEFAULT_SERVING_DIR,
    DEFAULT_STATE_DIR,
    INSTANCE_SOCKET,
    LAUNCHED_DIR,
    PROFILE_OVERRIDE,
    RUN_DIR_VAR,
    SERVING_DIR_VAR,
    SOCKETS_DIR,
    STATE_DIR_VAR,
    SWEEP_LOCK,
)


def run_dir() -> Path:
    return Path(os.environ.get(RUN_DIR_VAR, DEFAULT_RUN_DIR))


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_VAR, DEFAULT_STATE_DIR))


def instance_home(number: int) -> Path:
    """The HOME of a native server with a uid of its own (0700): vLLM's, torch's and Triton's caches."""
    return state_dir() / "home" / str(number)


def instance_spec_path(number: int, base: Path | None = None) -> Path:
    return (base or run_dir()) / "instances" / f"{number}.json"


def nginx_prefix(base: Path | None = None) -> Path:
    return (base or run_dir()) / "nginx"


def nginx_front_prefix(base: Path | None = None) -> Path:
    return (base or run_dir()) / "nginx-front"


def serving_dir() -> Path:
    """Root's, 0755: what lives with the servers (sockets, launch records), apart from the run dir."""
    return Path(os.environ.get(SERVING_DIR_VAR, DEFAULT_SERVING_DIR))


def sockets_dir(serving: Path | None = None) -> Path:
    """Root's, 0755: holds one directory per instance, which only that instance and nginx's workers enter."""
    return (serving or serving_dir()) / SOCKETS_DIR


def launched_dir(serving: Path | None = None) -> Path:
    """Root's, 0755: the launchers' records of the servers they exec'd (runners.records)."""
    return (serving or serving_dir()) / LAUNCHED_DIR


def instance_socket(number: int, sockets: Path) -> Path:
    """Where instance N listens (sockets: sockets_dir of the serving dir)."""
    return sockets / str(number) / INSTANCE_SOCKET


def instance_env_path(number: int, base: Path | None = None) -> Path:
    """The env file a container client reads (root only): beside the spec it comes from."""
    return (base or run_dir()) / "instances" / f"{number}.env"


def profile_override_path(base: Path | None = None) -> Path:
    """The profile override of `mipart bench sweep` (docs/bench.md): on tmpfs, so a reboot drops it."""
    return (base or run_dir()) / PROFILE_OVERRIDE


def sweep_lock_path(base: Path | None = None) -> Path:
    """Held by the one sweep that owns the override (bench.override.owned)."""
    return (base or run_dir()) / SWEEP_LOCK
