"""The host-side facts of the status API: partitions per GPU, the last apply, unit states, nginx.

Blocking (sysfs, systemd, /run): the API collects them in its own worker thread and caches
them for about a second, so no request reads the host on the agent's event loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from mipart.api.contract import LastApply, PartitionGpu, iso_utc
from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import SYSFS_ROOT_VAR
from mipart.nginx.files import NginxFiles
from mipart.partition import pending
from mipart.partition.host_rules import kept_rule_groups
from mipart.partition.plan import RuleGroup
from mipart.partition.record import last_apply
from mipart.partition.traps import hidden_partitions
from mipart.profile.schema import GpuSpec
from mipart.runners.base import Runner
from mipart.values import GpuSignals

NO_GPUS = f"no AMD Instinct GPU with partition support found (is amdgpu loaded? is {SYSFS_ROOT_VAR} right?)"


@dataclass
class HostSnapshot:
    taken: float = field(default_factory=time.monotonic)
    gpus: tuple[PartitionGpu, ...] = ()
    logical_gpus: int = 0
    partition_error: str = ""
    last_apply: LastApply | None = None
    units: dict[int, tuple[str, str]] | None = None  # number -> (ActiveState, SubState); None: unknown
    units_error: str = ""
    nginx_running: bool | None = None  # the back layer
    front_running: bool | None = None
    rules: tuple[RuleGroup, ...] = ()  # the kernel's pair tables (partition.host_rules)
    warnings: tuple[str, ...] = ()  # known traps seen on the host (partition.traps)
    signals: tuple[GpuSignals, ...] = ()  # each GPU's RAS counters and hwmon sensors
    pending_memory: str = ""  # a memory request mipart placed that no reload applied (partition.pending)

    @property
    def partitions_match(self) -> bool | None:
        """Every GPU in the modes the profile wants; None when unknown."""
        return all(g.matches for g in self.gpus) if self.gpus and not self.partition_error else None


def collect_host(
    sysfs_root: Path, runner: Runner, nginx: tuple[NginxFiles, NginxFiles], gpu_spec: GpuSpec | None
) -> HostSnapshot:
    """Never raises: what cannot be read is reported in the snapshot's error fields."""
    snap = HostSnapshot()
    try:
        backend = open_backend(sysfs_root)
        state = backend.discover()
    except (UserError, OSError) as exc:
        snap.partition_error = str(exc)
    else:
        snap.logical_gpus = len(state.logical)
        snap.gpus = tuple(_partition_gpu(gpu, state, gpu_spec) for gpu in state.physical)
        try:
            snap.rules = kept_rule_groups(backend, state)
        except (UserError, OSError) as exc:  # the table could not be read: say so, keep the rest
            snap.partition_error = f"partition rules: {exc}"
        implied = {g.index: {g.compute: backend.partitions(g, g.compute)} for g in state.physical}
        snap.warnings = tuple(hidden_partitions(state, implied, backend.drm_conflicts()))
        snap.signals = tuple(backend.signals(gpu) for gpu in state.physical)
        placed = pending.current(state)
        snap.pending_memory = pending.describe(placed, {g.bdf: g.index for g in state.physical}) if placed else ""
        if not state.physical:
            snap.partition_error = NO_GPUS
    snap.last_apply = _last_apply(last_apply())
    try:
        snap.units = {n: (s.active_state, s.sub_state) for n, s in runner.list_instances().items()}
    except Exception as exc:  # systemd unreachable, /proc unreadable: report, never fail the request
        snap.units, snap.units_error = None, str(exc) or exc.__class__.__name__
    snap.nginx_running, snap.front_running = (_running(runner, files) for files in nginx)
    return snap


def _running(runner: Runner, files: NginxFiles) -> bool | None:
    try:
        return bool(runner.nginx_running(files))
    except Exception:  # systemd unreachable: unknown
        return None


def _partition_gpu(gpu, state, gpu_spec: GpuSpec | None) -> PartitionGpu:
    compute_want = gpu_spec.compute_for(gpu.index) if gpu_spec else None
    memory_want = gpu_spec.memory if gpu_spec else None
    return PartitionGpu(
        index=gpu.index,
        bdf=gpu.bdf,
        compute=gpu.compute,
        memory=gpu.memory,
        compute_want=compute_want,
        memory_want=memory_want,
        matches=(compute_want is None or gpu.compute == compute_want)
        and (memory_want is None or gpu.memory == memory_want),
        logical_gpus=tuple(lg.index for lg in state.logical if lg.physical_index == gpu.index),
    )


def _last_apply(record) -> LastApply | None:
    """The record `mipart partition apply` left, checked field by field (it is a file anyone can edit)."""
    if not isinstance(record, dict):
        return None
    return LastApply(
        time=iso_utc(record.get("time")) if isinstance(record.get("time"), (int, float)) else None,
        ok=bool(record.get("ok")),
        error=str(record.get("error") or ""),
        profile_digest=str(record.get("profile_digest") or ""),
        result=record.get("result") if isinstance(record.get("result"), dict) else None,
    )
