"""The MI300-class GPU models mipart knows, keyed by name and by PCI device id.

Used to label discovered GPUs and by the simulator to build a host. The mode lists here
are the simulator's choice; on a real host the `available_*_partition` files are the
authority on what a GPU accepts.
"""

from __future__ import annotations

from dataclasses import dataclass

from mipart.gpu.modes import COMPUTE_MODES, MEMORY_MODES


@dataclass(frozen=True)
class GpuModel:
    name: str
    marketing_name: str
    device_id: int
    xcc_count: int
    cus_per_xcc: int
    memory_gb: int
    compute_modes: tuple[str, ...]
    memory_modes: tuple[str, ...]


MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("mi300x", "AMD Instinct MI300X", 0x74A1, 8, 38, 192, COMPUTE_MODES, MEMORY_MODES),
        GpuModel("mi325x", "AMD Instinct MI325X", 0x74A5, 8, 38, 256, COMPUTE_MODES, MEMORY_MODES),
        GpuModel("mi355x", "AMD Instinct MI355X", 0x75A3, 8, 32, 288, COMPUTE_MODES, MEMORY_MODES),
    )
}


def model_for_device(device_id: int) -> GpuModel | None:
    """The model with this PCI device id, or None for a GPU mipart has no table for."""
    return next((m for m in MODELS.values() if m.device_id == device_id), None)
