"""Reading /proc: which server runs which instance spec, whoever started it."""

from __future__ import annotations

import os
from pathlib import Path

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


def session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]
