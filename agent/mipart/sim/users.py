"""Who uses the simulated GPUs, as the kernel counts them (docs/partitioning.md, "Who holds a GPU").

- A KFD user holds GPUs: a process with /dev/kfd open every GPU partition its device cgroup
  allows (sim/devices.py), a holder `mipart sim hold` declares the GPUs it names. A compute
  switch of a GPU one holds is EBUSY; with the older kernels' global KFD lock
  (`--kfd-lock global`, before the 2025 per-device check) any KFD user makes every switch EBUSY.
- 6.17-stable answers EBUSY for a while after a KFD user exits (its teardown still runs)
  although proc/<pid> is gone: the simulator answers the next `busy_after_exit` switches of
  each GPU it held with EBUSY.
- A driver unload needs every device file closed: KFD users and card/render node openers alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from mipart.sim import devices
from mipart.sim.kfd import nodes_by_gpu
from mipart.sim.state import SimState

GLOBAL_LOCK = "global"
KFD_LOCKS = ("per-device", GLOBAL_LOCK)


def refresh(root: Path, state: SimState) -> bool:
    """Forget users whose process exited or closed its files, as the kernel does; a GPU one of
    them held starts its teardown. True when anything changed."""
    before = held_gpus(state)
    gone = [pid for pid in state.holders if not os.path.exists(f"/proc/{pid}")]
    for pid in gone:
        del state.holders[pid]
    openers = devices.openers(root)
    changed = bool(gone) or openers != state.openers
    state.openers = openers
    after = held_gpus(state)
    for pid, gpus in before.items():
        for index in gpus - after.get(pid, set()):
            if state.busy_after_exit:
                state.teardown[str(index)] = state.busy_after_exit
                changed = True
    return changed


def kfd_holds(state: SimState) -> dict[int, set[int]]:
    """pid -> the KFD gpu_ids it holds (what proc/<pid>/vram_<gpu_id> shows)."""
    partitions = nodes_by_gpu(state)
    holds: dict[int, set[int]] = {}
    for pid, held in state.holders.items():
        holds.setdefault(pid, set()).update(gpu_id for k in held for gpu_id, _ in partitions[k])
    for pid, opener in state.openers.items():
        if opener["kfd"]:
            allowed = opener["cgroup"]
            nodes = (node for gpu in partitions for node in gpu)
            holds.setdefault(pid, set()).update(g for g, minor in nodes if allowed is None or minor in allowed)
    return holds


def held_gpus(state: SimState) -> dict[int, set[int]]:
    """pid -> the physical GPUs its KFD devices are on."""
    owner = {gpu_id: k for k, gpu in enumerate(nodes_by_gpu(state)) for gpu_id, _ in gpu}
    return {pid: {owner[g] for g in gpu_ids} for pid, gpu_ids in kfd_holds(state).items() if gpu_ids}


def holders_of(state: SimState, index: int) -> list[int]:
    """PIDs that hold physical GPU `index`."""
    return sorted(pid for pid, gpus in held_gpus(state).items() if index in gpus)


def switch_busy(state: SimState, index: int) -> bool:
    """Whether a compute switch of GPU `index` is refused with EBUSY now; a refusal in teardown
    counts one of its answers down."""
    held = held_gpus(state)
    if any(index in gpus for gpus in held.values()) or (state.kfd_lock == GLOBAL_LOCK and held):
        return True
    left = state.teardown.get(str(index), 0)
    if left:
        if left > 1:
            state.teardown[str(index)] = left - 1
        else:
            del state.teardown[str(index)]
        return True
    return False


def unload_blockers(state: SimState) -> list[int]:
    """PIDs that keep amdgpu in use: KFD users and any process with a card or render node open."""
    return sorted(set(state.holders) | set(state.openers))
