"""Reading /proc: which server runs which instance spec, whoever started it."""

from __future__ import annotations

import os
from pathlib import Path

from mipart.names import INSTANCE_VAR, RUN_DIR_VAR

PROC = Path("/proc")


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def alive(pid: int) -> bool:
    """True for a live process (a zombie counts as dead)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stopped(pid: int) -> bool:
    """Frozen by SIGSTOP (or a tracer): it can act on no signal but SIGKILL until it is continued."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def tagged_servers(run_dir: str, instance_var: str = INSTANCE_VAR, run_dir_var: str = RUN_DIR_VAR) -> dict[int, int]:
    """instance number -> pid of each live server started for `run_dir`.

    Servers start in their own session, so the server is the session leader; its children
    (vLLM's engine core, a resource tracker) inherit the tags but are not it.
    """
    found = {}
    for pid in pids():
        env = environ_of(pid)
        tag = env.get(instance_var, "")  # any process may carry any value: ASCII digits only ('²'.isdigit() is True)
        if env.get(run_dir_var) == run_dir and tag.isascii() and tag.isdigit() and session_leader(pid) and alive(pid):
            found[int(tag)] = pid
    return found
