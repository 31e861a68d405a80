"""Which processes have given files open, found as `fuser` finds them: the links in /proc/PID/fd.

A driver unload needs every amdgpu device file closed, not only KFD's: any open card* or
renderD* keeps the module in use (docs/partitioning.md, "Driver reload").
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

PROC = Path("/proc")


def holding(paths: Collection[str], proc: Path = PROC) -> dict[int, set[str]]:
    """pid -> which of `paths` it has open (processes not ours to look at are passed over)."""
    wanted = set(paths)
    found: dict[int, set[str]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        fd_dir = proc / name / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target in wanted:
                found.setdefault(int(name), set()).add(target)
    return found
