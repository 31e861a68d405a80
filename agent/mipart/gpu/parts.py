"""The AMD Instinct GPU models mipart knows, keyed by name and by PCI device id.

Used to label discovered GPUs (their XCC count) and by the simulator to build a host.
Compute modes follow from the XCC count (gpu/pair_tables.py); the memory modes are the
simulator's choice of platform: on a real host the kernel's `compute_partition_config/`
and `available_*_partition` files are the authority.
"""

from __future__ import annotations

from dataclasses import dataclass

from mipart.gpu.modes import MEMORY_MODES


@dataclass(frozen=True)
class GpuModel:
    name: str
    marketing_name: str
    device_id: int
    xcc_count: int
    cus_per_xcc: int
    memory_gb: int
    memory_modes: tuple[str, ...]  # what the platform offers (the simulator's choice)
    gc: tuple[int, int, int]  # its graphics core's version: kernels' pair tables differ by it
    apu: bool = False  # an APU: the platform cannot switch memory mode (no supported_nps_configs)


GC943 = (9, 4, 3)  # MI300 series (gfx942)
GC95 = (9, 5, 0)  # MI350 series (gfx950)

# docs/partitioning.md, "Compute and memory partitions"; PCI device ids as `lspci -nn` shows them.
MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("mi300a", "AMD Instinct MI300A", 0x74A0, 6, 38, 128, ("NPS1",), GC943, apu=True),
        GpuModel("mi300x", "AMD Instinct MI300X", 0x74A1, 8, 38, 192, MEMORY_MODES, GC943),
        GpuModel("mi325x", "AMD Instinct MI325X", 0x74A5, 8, 38, 256, MEMORY_MODES, GC943),
        GpuModel("mi350x", "AMD Instinct MI350X", 0x75A0, 8, 32, 288, MEMORY_MODES, GC95),
        GpuModel("mi355x", "AMD Instinct MI355X", 0x75A3, 8, 32, 288, MEMORY_MODES, GC95),
    )
}


def model_for_device(device_id: int) -> GpuModel | None:
    """The model with this PCI device id, or None for a GPU mipart has no table for."""
    return next((m for m in MODELS.values() if m.device_id == device_id), None)
