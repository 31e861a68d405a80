"""A GPU's own error counters: a rise in uncorrectable RAS errors takes every instance on that
GPU out of rotation, failed with the reason (a restart on a faulted GPU cannot help; reset or
replace the GPU, then restart mipart-agent). Correctable errors are only counted, in /metrics.

Each reading is compared with the one before, per block, not with a fixed baseline: on some
parts the driver resets a counter when it is read (docs/gpu-health.md), so a count can fall
back and rise again below its old value. A GPU once seen faulted stays faulted for this agent.
The counters are read through the GPU backend (backend.signals), at most once per health
interval for all GPUs (the probes of 64 instances are spread over the interval and share that
reading: idle CPU stays within its goal), in a worker thread: sysfs reads never run on the
agent's loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mipart.gpu import open_backend
from mipart.gpu.health_signals import HealthSignals
from mipart.health.probe import PASSED, ProbeResult
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec
from mipart.values import GpuSignals, PhysicalGpu

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

REDISCOVER = 30.0  # seconds: the GPUs are found again this often (their counters are read every round)
ADVICE = "reset or replace the GPU, then restart mipart-agent"


def rises(seen: dict[int, dict[str, int]], now: Mapping[int, GpuSignals]) -> dict[int, str]:
    """GPU index -> why it is faulted, for each GPU whose uncorrectable count rose.

    `seen`: per GPU, per block, the last real count (updated here). A GPU seen for the first time
    sets the counts it is compared with next (the agent accepts them). A block missing from a
    reading, as one that reads `Query currently inaccessible` during a reset, keeps its last real
    count: ue 3, inaccessible, ue 3 is no rise (docs/gpu-health.md).
    """
    found = {}
    for index, after in now.items():
        first = index not in seen
        counts = seen.setdefault(index, {})
        blocks = [
            f"{block} {counts.get(block, 0)} -> {ue}" for block, ue, _ in after.errors if ue > counts.get(block, 0)
        ]
        counts.update({block: ue for block, ue, _ in after.errors})
        if blocks and not first:
            found[index] = f"GPU {index} ({after.bdf}) uncorrectable RAS errors rose ({', '.join(blocks)}); {ADVICE}"
    return found


class GpuErrors:
    name = "gpu_errors"

    def __init__(self, root: Path | None = None, fresh_for: float | None = None):  # None: the health interval
        self.root, self.fresh_for = root, fresh_for
        self.faulted: dict[int, str] = {}  # GPU index -> the reason, kept for this agent's life
        self._seen: dict[int, dict[str, int]] = {}  # GPU -> block -> the last real uncorrectable count
        self._reading: asyncio.Future[None] | None = None
        self._taken = 0.0
        self._backend: HealthSignals | None = None
        self._gpus: tuple[PhysicalGpu, ...] = ()
        self._found_at = 0.0

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        await self.refresh(health.interval if self.fresh_for is None else self.fresh_for)
        reasons = [self.faulted[g] for g in spec.physical_gpus if g in self.faulted]
        return ProbeResult(False, "; ".join(reasons), decisive=True, restart=False) if reasons else PASSED

    async def refresh(self, fresh_for: float) -> None:
        """One reading shared by the probes within `fresh_for` seconds; a host that cannot be read gives no verdict."""
        reading = self._reading
        if reading is None or (reading.done() and time.monotonic() - self._taken >= fresh_for):
            self._taken = time.monotonic()
            self._reading = reading = asyncio.ensure_future(asyncio.to_thread(self._read))
        try:
            await asyncio.shield(reading)
        except Exception:  # no sysfs, a GPU gone mid-read: no verdict this round
            pass

    def _read(self) -> None:
        """Blocking; one runs at a time (the shared future)."""
        now = time.monotonic()
        backend = self._backend
        if backend is None or now - self._found_at > REDISCOVER:
            self._backend = backend = open_backend(self.root)
            self._gpus, self._found_at = backend.discover().physical, now
        reading = {gpu.index: backend.signals(gpu) for gpu in self._gpus}
        for index, reason in rises(self._seen, reading).items():
            self.faulted.setdefault(index, reason)
