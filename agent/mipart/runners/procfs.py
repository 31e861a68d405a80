"""Reading /proc: facts the kernel reports about a process (its state, session, owner, start time)."""

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


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): field 3 first."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def start_time(pid: int) -> int | None:
    """When the process started, in clock ticks after boot (field 22): with the pid, it names one process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def alive(pid: int) -> bool:
    """True for a live process (a zombie counts as dead)."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] != "Z"


def stopped(pid: int) -> bool:
    """Frozen by SIGSTOP (or a tracer): it can act on no signal but SIGKILL until it is continued."""
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] in ("T", "t")


def session_of(pid: int) -> int | None:
    """The process's session id (field 6): a process cannot join a session another one leads."""
    fields = _stat_fields(pid)
    return int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None


def cgroup_of(pid: int) -> str | None:
    """The process's control group as the kernel reports it (the unified line, else systemd's own)."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    paths = {hierarchy: path for hierarchy, _, path in (line.partition(":")[2].partition(":") for line in lines)}
    return paths.get("") or paths.get("name=systemd")


def unit_in(cgroup: str | None) -> str | None:
    """The unit a control group path names (its last .service or .scope): only a claim until systemd confirms it."""
    for part in reversed((cgroup or "").split("/")):
        if part.endswith((".service", ".scope")):
            return part
    return None


def netns_of(pid: int | str) -> tuple[int, int] | None:
    """The network namespace a process is in, as (device, inode) of /proc/PID/ns/net."""
    try:
        info = os.stat(PROC / str(pid) / "ns" / "net")
    except OSError:
        return None
    return info.st_dev, info.st_ino


def uid_of(pid: int) -> int | None:
    """The real uid, as the kernel maps it into our user namespace (/proc/PID/status)."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return None


def session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]
