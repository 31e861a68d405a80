"""A memory request mipart placed and could not apply: remembered in the run dir, shown until applied.

The kernel keeps an NPS request per XGMI hive until the next driver load applies it, and
cannot withdraw one: writing the current mode is skipped and leaves it pending
(docs/partitioning.md, "Driver reload"). So mipart writes one only when its reload follows at
once; when that reload then fails, the next reload anyone runs applies it. No sysfs file shows
a pending request, so mipart remembers the one it placed, in /run/mipart/pending-memory.json:
the run dir lives exactly as long as the boot, and the request lives in the loaded driver,
which that boot's end unloads too; /var/lib would outlive the driver and claim a request no
driver holds. It is root's (the partition engine runs as root), and stale once the GPUs it
was written on read the mode asked for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from mipart.fsutil import write_atomic
from mipart.paths import run_dir
from mipart.values import HostState, PendingMemory

PENDING_NAME = "pending-memory.json"
PENDING_VERSION = 1


def describe(pending: PendingMemory, index_of: Mapping[str, int]) -> str:
    """One line for plan, status and an apply that failed after writing it; `index_of`: bdf -> GPU index."""
    gpus = [f"GPU {index_of[b]} ({b})" if b in index_of else b for b in pending.bdfs]
    return (
        f"a memory request for {pending.memory} mipart wrote on {', '.join(gpus)} is pending in the driver: the next "
        "driver reload (anyone's) applies it to that GPU's hive, and the kernel cannot withdraw it; run `mipart "
        "partition apply` to reload now and finish the layout"
    )


def place(memory: str, bdfs: tuple[str, ...]) -> None:
    """Remember a request just written; best effort, as the apply record (a read-only /run)."""
    data = {"version": PENDING_VERSION, "memory": memory, "bdfs": list(bdfs), "since": time.time()}
    try:
        write_atomic(run_dir() / PENDING_NAME, json.dumps(data) + "\n")
    except OSError:
        pass


def clear() -> None:
    """After a reload that applied it."""
    try:
        (run_dir() / PENDING_NAME).unlink()
    except OSError:
        pass


def current(state: HostState) -> PendingMemory | None:
    """The request mipart placed that `state` does not show applied yet; None when there is none."""
    try:
        data: Any = json.loads((run_dir() / PENDING_NAME).read_text())
        pending = PendingMemory(str(data["memory"]), tuple(map(str, data["bdfs"])), float(data["since"]))
        if data.get("version") != PENDING_VERSION:
            return None
    except (OSError, ValueError, TypeError, KeyError):
        return None
    written = [g for g in state.physical if g.bdf in pending.bdfs]
    if not written or all(g.memory == pending.memory for g in written):
        return None  # applied by a reload since, or another host's
    return pending
