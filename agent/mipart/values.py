"""Value types shared across the seams: what a GPU backend reports and what a runner reports.

Frozen dataclasses, no behaviour beyond derived names: planners take them, backends and
runners make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PhysicalGpu:
    index: int  # position in PCI address order; the "GPU index" the profile's select uses
    bdf: str
    device_id: int
    compute: str
    compute_available: tuple[str, ...]
    memory: str  # "" when the driver exposes no memory partitioning
    memory_available: tuple[str, ...]
    path: Path  # the PCI device dir that carries the partition attributes
    xcc_count: int = 0  # XCCs, from KFD's num_xcc (0: not known from KFD; gpu.amdgpu.xcc_count falls back)
    hive_id: int = 0  # KFD's hive_id: GPUs of one XGMI hive share it; 0: in no hive


@dataclass(frozen=True)
class LogicalGpu:
    # mipart's logical GPU number, a slot: PARTITION_SLOTS x physical_index + partition
    # (gpu.modes.logical_number). Never KFD node order, which a runtime switch changes: the
    # visible-devices index ROCm wants is resolved when a server starts (gpu.rocm_order).
    index: int
    node_id: int
    gpu_id: int
    render_minor: int
    physical_index: int
    partition: int  # order within its physical GPU (by render minor)
    bdf: str

    @property
    def render_node(self) -> str:
        return f"/dev/dri/renderD{self.render_minor}"


@dataclass(frozen=True)
class HostState:
    physical: tuple[PhysicalGpu, ...]
    logical: tuple[LogicalGpu, ...]


@dataclass(frozen=True)
class LoadMode:
    """amdgpu.user_partt_mode as the next driver load reads it (gpu/modprobe.py)."""

    mode: str  # "AUTO", a compute mode name, or the value as given when the driver knows no such mode
    where: str  # the file and line or the kernel command line; "" for the driver's default


@dataclass(frozen=True)
class PendingMemory:
    """A memory (NPS) request mipart wrote and no reload has applied yet (partition/pending.py)."""

    memory: str  # the mode asked for
    bdfs: tuple[str, ...]  # the GPUs it was written on, one per hive
    since: float  # when, seconds since the epoch


@dataclass(frozen=True)
class GpuUser:
    pid: int
    physical_indices: tuple[int, ...]


@dataclass(frozen=True)
class UnitState:
    """A unit (or the process runner's server) in systemd's words. Its properties are the one
    way mipart asks whether a unit runs; nothing compares the state words elsewhere."""

    active_state: str  # active, reloading, activating, deactivating, inactive, failed
    sub_state: str = ""
    main_pid: int = 0  # its main process; 0 when none or unknown

    @property
    def active(self) -> bool:
        """Running or on its way (activating counts): nothing needs to start it."""
        return self.active_state in ("active", "activating", "reloading")

    @property
    def up(self) -> bool:
        """Running and done starting (what `systemctl is-active` calls active): a reload reaches it."""
        return self.active_state in ("active", "reloading")

    @property
    def stopped(self) -> bool:
        """Nothing of it runs any more (a deactivating unit still has processes)."""
        return self.active_state in ("inactive", "failed")

    @property
    def failed(self) -> bool:
        """systemd holds a failure against it: a start needs a reset-failed first."""
        return self.active_state == "failed"


@dataclass(frozen=True)
class GpuSignals:
    """A physical GPU's own health readings: RAS counters and hwmon (docs/gpu-health.md).

    errors: (block, uncorrectable, correctable) per RAS block; empty where the driver has no RAS.
    temperatures: (sensor, degrees Celsius) per hwmon sensor; power_w None where absent.
    """

    index: int
    bdf: str
    errors: tuple[tuple[str, int, int], ...] = ()
    temperatures: tuple[tuple[str, float], ...] = ()
    power_w: float | None = None

    @property
    def uncorrectable(self) -> int:
        return sum(ue for _, ue, _ in self.errors)

    @property
    def correctable(self) -> int:
        return sum(ce for _, _, ce in self.errors)
