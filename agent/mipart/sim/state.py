"""The simulated host's state: one JSON file under ROOT/.mipart-sim, changed under flock.

Several processes (the CLI, the tests, the agent) drive one simulated host, so every
change is read-modify-write under the lock, and the file is replaced atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mipart.errors import UserError
from mipart.gpu.modes import USER_PARTT_MODE
from mipart.gpu.pair_tables import MAINLINE, memory_modes_of, pairs_for
from mipart.gpu.parts import MODELS, GpuModel

SIM_DIR = ".mipart-sim"
AUTO = USER_PARTT_MODE["AUTO"]


@dataclass
class SimState:
    model: str
    gpus: list[dict[str, str]]  # per GPU in PCI order: bdf, compute, memory; xcp_config once previewed
    rules: str = MAINLINE  # the kernel's pair table (gpu.pair_tables.RULE_SETS), the same for every process
    partition_config: bool = True  # the kernel has compute_partition_config/ (older ones do not)
    bmc_ast: bool = False  # a BMC's `ast` DRM driver is loaded and holds a DRM minor
    sriov_vf: bool = False  # the GPUs are SR-IOV VFs: the host sets their partitions
    user_partt_mode: int = AUTO
    hives: int = 1  # XGMI hives, GPUs split evenly in PCI order; 0: no hive (each GPU on its own)
    pending_memory: dict[str, str] = field(default_factory=dict)  # hive -> requested NPS mode, applied at reload
    generation: int = 1  # KFD's topology/generation_id: changes with every layout change
    node_order: list[int] = field(default_factory=list)  # physical GPUs in KFD list order; []: PCI order
    holders: dict[int, list[int]] = field(default_factory=dict)  # pid -> physical indices (`mipart sim hold`)
    # pid -> {kfd, drm, cgroup}: who has device files open, as last seen (sim/devices.py: openers)
    openers: dict[int, dict[str, Any]] = field(default_factory=dict)
    kfd_lock: str = "per-device"  # or "global": older kernels refuse every switch while any KFD process runs
    busy_after_exit: int = 0  # switches of a GPU refused with EBUSY after its KFD user exits (6.17-stable)
    teardown: dict[str, int] = field(default_factory=dict)  # GPU index -> EBUSY answers left (sim/users.py)
    resetting: list[int] = field(default_factory=list)
    ras_saved: dict[str, dict[str, str]] = field(default_factory=dict)  # GPU -> its RAS files before a reset
    init_failed: bool = False  # the last load failed GPU init (a user_partt_mode its memory mode refuses)
    # writes: to current_*_partition, refused or not (a preview through xcp_config is no write)
    counters: dict[str, int] = field(default_factory=lambda: {"writes": 0, "reloads": 0})

    @property
    def spec(self) -> GpuModel:
        return MODELS[self.model]

    @property
    def pairs(self) -> dict[str, tuple[str, ...]]:
        """The simulated kernel's table: compute mode -> the memory modes it runs under."""
        return pairs_for(self.rules, self.spec.xcc_count, self.spec.memory_modes, self.spec.gc)

    @property
    def memory_modes(self) -> tuple[str, ...]:
        return memory_modes_of(self.rules, self.spec.memory_modes)

    @property
    def switches_nps(self) -> bool:
        """Whether the platform can switch memory mode: not on an APU, not in a VF (amdgpu_xcp_cfg_sysfs_init)."""
        return not (self.spec.apu or self.sriov_vf)

    def hive_of(self, index: int) -> str:
        """The hive (as a key of pending_memory) GPU `index` is in: the memory request is per hive."""
        return str(index * self.hives // len(self.gpus)) if self.hives else f"gpu{index}"

    def kfd_order(self) -> list[int]:
        """Physical GPUs in KFD's device list order: PCI order after a load, a switched GPU last."""
        return self.node_order or list(range(len(self.gpus)))


def is_sim(root: Path) -> bool:
    return (Path(root) / SIM_DIR).is_dir()


def read_state(root: Path) -> SimState:
    path = Path(root) / SIM_DIR / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: not a simulated host (make one with 'mipart sim create')") from None
    for users in ("holders", "openers"):
        data[users] = {int(pid): held for pid, held in data.get(users, {}).items()}
    return SimState(**data)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    sim = root / SIM_DIR
    if not sim.is_dir():
        raise UserError(f"{root}: not a simulated host (make one with 'mipart sim create')")
    with open(sim / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def save(root: Path, state: SimState) -> None:
    sim = root / SIM_DIR
    fd, tmp = tempfile.mkstemp(dir=sim, prefix=".state-")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, sim / "state.json")
