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

# mipart's logical GPU number is a slot: PARTITION_SLOTS x physical index (PCI order) + partition
# index within that GPU, so it stays the same across any runtime switch or reload of any GPU
# (docs/partitioning.md, "Which GPU is which"). 8 is the most partitions a GPU has: CPX on 8 XCCs.
PARTITION_SLOTS = 8
# amdgpu pre-creates at most 64 partition platform devices, PARTITION_SLOTS - 1 per GPU
# (MAX_XCP_PLATFORM_DEVICE), so a host has at most 9 partitionable GPUs and 72 slots.
MAX_XCP_PLATFORM_DEVICE = 64
MAX_PARTITIONABLE_GPUS = MAX_XCP_PLATFORM_DEVICE // (PARTITION_SLOTS - 1)
LOGICAL_SLOTS = PARTITION_SLOTS * MAX_PARTITIONABLE_GPUS


def logical_number(physical: int, partition: int) -> int:
    """mipart's logical GPU number (and instance number) of a partition."""
    return PARTITION_SLOTS * physical + partition


# amdgpu gives GPU k render minors 128+8k .. 128+8k+7, one per partition: logical GPU N's render
# node is renderD(128 + N) (docs/partitioning.md, "DRM nodes").
FIRST_RENDER_MINOR = 128


def render_minor(number: int) -> int:
    return FIRST_RENDER_MINOR + number


def slot_of(number: int) -> tuple[int, int]:
    """(physical GPU, partition) that logical GPU `number` names."""
    return divmod(number, PARTITION_SLOTS)


# Partitions per GPU in each mode but CPX, which has one per XCC.
FIXED_PARTITIONS = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4}


def partitions_per_gpu(compute: str, xcc_count: int = 8) -> int:
    """Logical GPUs one physical GPU shows in a compute mode."""
    return xcc_count if compute == "CPX" else FIXED_PARTITIONS[compute]


def compatible(compute: str, memory: str) -> bool:
    """Whether some kernel runs `compute` under `memory`: only SPX+NPS>1 is refused by all."""
    return compute != "SPX" or memory == "NPS1"


def memory_modes_for(compute: str) -> list[str]:
    """What a user could pair with `compute` on some kernel; used in 'what would be right' hints."""
    return [m for m in MEMORY_MODES if compatible(compute, m)]
