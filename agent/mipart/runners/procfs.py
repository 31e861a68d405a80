"""Reading /proc: facts the kernel reports about a process (its state, session, owner, start time).

Files are read with os.open/os.read, three system calls each: a file object adds four more
(fstat, the isatty ioctl, lseek, a second read), and the agent's periodic scans read one file
of every process on the host.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def read(pid: int | str, name: str) -> bytes:
    """/proc/PID/NAME whole; b"" when it cannot be read (the process is gone, or not ours to read)."""
    try:
        fd = os.open(f"{PROC}/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return b""
    finally:
        os.close(fd)


def environ_of(pid: int) -> dict[str, str]:
    raw = read(pid, "environ")
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces and parentheses): field 3 first."""
    parts = read(pid, "stat").decode(errors="replace").rsplit(")", 1)
    return parts[1].split() if len(parts) == 2 else []


def start_time(pid: int, live: bool = False) -> int | None:
    """When the process started, in clock ticks after boot (field 22): with the pid, it names one process.

    live: None for a zombie too (it keeps its start time), from the same read.
    """
    fields = _stat_fields(pid)
    if live and fields[:1] == ["Z"]:
        return None
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
    lines = read(pid, "cgroup").decode(errors="replace").splitlines()
    if not lines:
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
        for line in read(pid, "status").decode(errors="replace").splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (IndexError, ValueError):
        return None
    return None


def session_leader(pid: int) -> bool:
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]
