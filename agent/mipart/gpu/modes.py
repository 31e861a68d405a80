"""Compute/memory partition names and the rules that hold on EVERY amdgpu kernel, as pure functions.

Kernels differ in which pairs they accept (docs/partitioning.md, "Which pairs a kernel
accepts"), so offline validation refuses only what no kernel allows: SPX with more
than one memory partition. A host's own table is in gpu/pair_tables.py (and the backend).
"""

from __future__ import annotations

COMPUTE_MODES: tuple[str, ...] = ("SPX", "DPX", "TPX", "QPX", "CPX")
MEMORY_MODES: tuple[str, ...] = ("NPS1", "NPS2", "NPS4")

# amdgpu.user_partt_mode values; -2 is AUTO (derive compute from NPS at load).
USER_PARTT_MODE = {"AUTO": -2, "SPX": 0, "DPX": 1, "TPX": 2, "QPX": 3, "CPX": 4}
AUTO_COMPUTE_FOR_MEMORY = {"NPS1": "SPX", "NPS2": "DPX", "NPS4": "CPX", "NPS8": "CPX"}


def partitions_per_gpu(compute: str, xcc_count: int = 8) -> int:
    """Logical GPUs one physical GPU shows in a compute mode."""
    fixed = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4}
    return xcc_count if compute == "CPX" else fixed[compute]


def compatible(compute: str, memory: str) -> bool:
    """Whether some kernel runs `compute` under `memory`: only SPX+NPS>1 is refused by all."""
    return compute != "SPX" or memory == "NPS1"


def memory_modes_for(compute: str) -> list[str]:
    """What a user could pair with `compute` on some kernel; used in 'what would be right' hints."""
    return [m for m in MEMORY_MODES if compatible(compute, m)]
