"""The partition engine (plan, apply, assert) against a second GPU backend, through the protocols.

The backend here lives in memory and has rules of its own (a 4-XCC part whose driver
takes CPX only under NPS2), so passing proves that the engine reads a host's rules
from its backend rather than from amdgpu's. It is partitioning and holders only (no
health signals, no registry entry): the engine asks for no more.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mipart.errors import UserError
from mipart.gpu.backend import GpuBackend
from mipart.gpu.health_signals import HealthSignals
from mipart.gpu.holders import GpuHolders
from mipart.gpu.modes import AUTO_COMPUTE_FOR_MEMORY, logical_number
from mipart.gpu.pair_tables import PairTable
from mipart.gpu.partitioning import MEMORY_ATTR, Partitioning
from mipart.partition.apply import GpuBusyError, apply, plan_host
from mipart.partition.plan import PlanError, assert_lines
from mipart.profile.schema import GpuSpec
from mipart.values import GpuUser, HostState, LoadMode, LogicalGpu, PhysicalGpu


class MemoryBackend:
    PAIRS = {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "CPX": ("NPS2",)}
    PARTS = {"SPX": 1, "DPX": 2, "CPX": 4}

    def __init__(self, gpus: int = 2):
        self.root = Path("/nowhere")
        self.modes = [{"compute": "SPX", "memory": "NPS1"} for _ in range(gpus)]
        self.pending: str | None = None
        self.writes: list[tuple[int, str, str]] = []
        self.reloads = 0
        self.users: list[GpuUser] = []

    def discover(self) -> HostState:
        physical = tuple(
            PhysicalGpu(
                i,
                f"mem:{i}",
                0,
                m["compute"],
                tuple(self.PAIRS),
                m["memory"],
                ("NPS1", "NPS2"),
                self.root / str(i),
                hive_id=1,  # both in one hive: one memory request
            )
            for i, m in enumerate(self.modes)
        )
        logical: list[LogicalGpu] = []
        for gpu in physical:
            for part in range(self.PARTS[gpu.compute]):
                n = logical_number(gpu.index, part)
                logical.append(LogicalGpu(n, len(logical), 100 + n, 128 + n, gpu.index, part, gpu.bdf))
        return HostState(physical, tuple(logical))

    def pair_table(self, gpu: PhysicalGpu) -> PairTable:
        return PairTable(self.PAIRS, "in-memory driver")

    def drm_conflicts(self) -> tuple[str, ...]:
        return ()

    def partitions(self, gpu: PhysicalGpu, compute: str) -> int:
        return self.PARTS[compute]

    def load_mode(self) -> LoadMode:
        return LoadMode("AUTO", "")

    def write_attribute(self, gpu: PhysicalGpu, name: str, value: str) -> None:
        self.writes.append((gpu.index, name, value))
        mode = self.modes[gpu.index]
        if name == MEMORY_ATTR:
            self.pending = value
        elif any(gpu.index in u.physical_indices for u in self.users):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        elif mode["memory"] not in self.PAIRS.get(value, ()):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        else:
            mode["compute"] = value

    def describe_write_error(self, exc: OSError, gpu: PhysicalGpu, name: str, value: str) -> str:
        return f"GPU {gpu.index}: {name}={value} refused: {exc.strerror}"

    def reload_command(self) -> str:
        return "in-memory reload"

    def reload(self, wait_until_back) -> None:
        self.reloads += 1
        for mode in self.modes:
            mode["memory"] = self.pending or mode["memory"]
            mode["compute"] = AUTO_COMPUTE_FOR_MEMORY[mode["memory"]]
        self.pending = None
        assert wait_until_back()

    def gpu_users(self, state: HostState) -> list[GpuUser]:
        return list(self.users)

    def device_openers(self, state: HostState) -> list[GpuUser]:
        return list(self.users)

    def device_env(self, devices) -> dict[str, str]:
        return {}

    def rocm_devices(self, environ) -> tuple[str, ...]:
        return ()


class Log:
    def __init__(self):
        self.events: list[str] = []

    def info(self, event: str, **fields) -> None:
        self.events.append(event)


def test_the_in_memory_backend_is_partitioning_and_holders_only():
    backend = MemoryBackend()
    assert isinstance(backend, Partitioning) and isinstance(backend, GpuHolders)
    assert not isinstance(backend, HealthSignals) and not isinstance(backend, GpuBackend)


def test_plan_apply_assert_run_on_a_second_backend():
    backend = MemoryBackend()
    spec = GpuSpec(compute="CPX", memory="NPS2")
    state, plan = plan_host(spec, backend)
    assert len(state.logical) == 2
    assert plan.reload and [(w.gpu, w.attribute, w.value, w.after_reload) for w in plan.writes] == [
        (0, "current_memory_partition", "NPS2", False),
        (0, "current_compute_partition", "CPX", True),
        (1, "current_compute_partition", "CPX", True),
    ]
    assert len(plan.logical) == 8  # the backend's count: 4 per GPU in CPX
    assert assert_lines(plan) == [
        "GPU 0 (mem:0): compute SPX, want CPX; memory NPS1, want NPS2",
        "GPU 1 (mem:1): compute SPX, want CPX; memory NPS1, want NPS2",
    ]

    log = Log()
    result = apply(spec, backend, log)
    assert (result.writes, result.reloads, result.logical_gpus) == (3, 1, 8)
    assert (len(backend.writes), backend.reloads) == (3, 1)
    assert log.events == ["partition.write", "partition.reload", "partition.write", "partition.write"]
    assert assert_lines(plan_host(spec, backend)[1]) == []

    again = apply(spec, backend, Log())
    assert (again.writes, again.reloads, len(backend.writes)) == (0, 0, 3)


def test_a_pair_the_backend_refuses_stops_the_plan_before_any_write():
    backend = MemoryBackend()
    with pytest.raises(PlanError) as caught:
        apply(GpuSpec(compute="CPX", memory="NPS1"), backend, Log())
    assert str(caught.value) == (
        "GPU 0 (mem:0): compute CPX cannot run under memory NPS1; set gpus.memory to NPS2: "
        "CPX takes NPS2 on this host (per the in-memory driver); nothing was written or reloaded"
    )
    assert backend.writes == [] and backend.reloads == 0


def test_a_gpu_user_on_the_second_backend_stops_the_apply_before_any_write():
    backend = MemoryBackend()
    backend.users = [GpuUser(2**22 + 1, (1,))]  # no such PID: described as exited
    with pytest.raises(GpuBusyError) as caught:
        apply(GpuSpec(compute="DPX"), backend, Log())
    assert str(caught.value).startswith("GPUs in use: PID 4194305 (exited, no unit) on GPU 1; nothing was changed")
    assert backend.writes == []


def test_a_write_refused_midway_is_the_backends_line_then_the_layout_the_host_is_in():
    """Finding 8: GPU 0 was switched before GPU 1 refused; the error says so, and what to run next."""
    backend = MemoryBackend()
    backend.PAIRS = {**MemoryBackend.PAIRS, "DPX": ("NPS1",)}  # the driver says yes ...
    backend.modes[1]["memory"] = "NPS2"  # ... but GPU 1 is under NPS2, so its kernel refuses
    with pytest.raises(UserError) as caught:
        apply(GpuSpec(compute="DPX"), backend, Log())
    assert str(caught.value).splitlines() == [
        "GPU 1: current_compute_partition=DPX refused: Invalid argument",
        "the host now:",
        "  GPU 0 (mem:0): DPX/NPS1, as the profile wants",
        "  GPU 1 (mem:1): SPX/NPS2, the profile wants DPX/NPS2",
        "next: do what the first line says, then rerun `mipart partition apply` (while mipart-agent serves: "
        "`systemctl reload mipart-agent`); it does only what is left",
    ]
    assert backend.writes == [(0, "current_compute_partition", "DPX"), (1, "current_compute_partition", "DPX")]
