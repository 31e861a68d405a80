"""Compute/memory partition rules of the amdgpu driver (hardware.md), as pure functions.

Shared by the profile validator (reject impossible pairs before any write), the amdgpu
backend (its pair table, which the planner reads), and the simulator (which must refuse
exactly what the kernel refuses).
"""

from __future__ import annotations

COMPUTE_MODES: tuple[str, ...] = ("SPX", "DPX", "QPX", "CPX")
MEMORY_MODES: tuple[str, ...] = ("NPS1", "NPS2", "NPS4")
# The driver also knows TPX (3 partitions) for 6-XCC parts; it never fits 8 XCCs.
KERNEL_COMPUTE_MODES: tuple[str, ...] = ("SPX", "DPX", "TPX", "QPX", "CPX")

# amdgpu.user_partt_mode values; -2 is AUTO (derive compute from NPS at load).
USER_PARTT_MODE = {"AUTO": -2, "SPX": 0, "DPX": 1, "TPX": 2, "QPX": 3, "CPX": 4}
AUTO_COMPUTE_FOR_MEMORY = {"NPS1": "SPX", "NPS2": "DPX", "NPS4": "CPX", "NPS8": "CPX"}


def partitions_per_gpu(compute: str, xcc_count: int = 8) -> int:
    """Logical GPUs one physical GPU shows in a compute mode."""
    fixed = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4}
    return xcc_count if compute == "CPX" else fixed[compute]


def nps_count(memory: str) -> int:
    return int(memory[3:])


def compute_fits_xccs(compute: str, xcc_count: int = 8) -> bool:
    return xcc_count % partitions_per_gpu(compute, xcc_count) == 0


def compatible(compute: str, memory: str, xcc_count: int = 8) -> bool:
    """The driver's rule for a compute mode under a memory mode (MI300-class)."""
    if not compute_fits_xccs(compute, xcc_count):
        return False
    if compute == "SPX":
        return memory == "NPS1"
    if compute == "DPX":
        return memory in ("NPS1", "NPS2")
    if compute == "QPX":
        return memory in ("NPS1", "NPS4")
    if compute == "TPX":
        return memory == "NPS1"
    return xcc_count % nps_count(memory) == 0  # CPX


def memory_modes_for(compute: str, xcc_count: int = 8) -> list[str]:
    """What a user could pair with `compute`; used in 'what would be right' hints."""
    return [m for m in MEMORY_MODES if compatible(compute, m, xcc_count)]
