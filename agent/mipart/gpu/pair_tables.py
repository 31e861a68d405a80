"""Pair tables (compute mode -> the memory modes it runs under) as kernels ship them: pure data.

A host's own table, read from `compute_partition_config/` by the amdgpu backend, is the
authority. These are the fallback where a kernel has no such directory (mainline's
rules) and the rule sets the simulator emulates. Sources (docs/partitioning.md, "Which pairs
a kernel accepts"): mainline aqua_vanjaram.c; the ROCm host's `amd-smi partition --accelerator`
table in AMD's partitioning blog.
"""

from __future__ import annotations

from dataclasses import dataclass

from mipart.gpu import parts
from mipart.gpu.modes import COMPUTE_MODES

MAINLINE = "mainline"
MAINLINE_BEFORE_6_16 = "mainline-before-6.16"
ROCM_MI300X = "rocm-mi300x"
# Where a table came from, as `plan`, `export` and /v1/status show it.
FROM_KERNEL = "kernel"
FROM_FALLBACK = "mainline fallback"

RULE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    # aqua_vanjaram.c, the pairs every GC 9.4.3 part takes (GC 9.5 adds to them: GC95_ADDS).
    MAINLINE: {
        "SPX": ("NPS1",),
        "DPX": ("NPS1", "NPS2"),
        "TPX": ("NPS1", "NPS4"),
        "QPX": ("NPS1", "NPS4"),
        "CPX": ("NPS1", "NPS4"),
    },
    # The ROCm host of AMD's partitioning blog (8 x MI300X): MEMORY_PARTITION_CAPS per ACCELERATOR_TYPE.
    ROCM_MI300X: {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS2"), "CPX": ("NPS1", "NPS2")},
}
# Kernels from before 6.16-stable, among them every one without compute_partition_config/: the same
# table, with no GC 9.5 additions (NPS2 with CPX only in an SR-IOV VF, which mipart does not drive).
RULE_SETS[MAINLINE_BEFORE_6_16] = RULE_SETS[MAINLINE]
# "Update supported modes for GC v9.5.0" (6.16-stable): on MI350X and MI355X QPX and CPX also take NPS2.
GC95_ADDS = {"QPX": ("NPS2",), "CPX": ("NPS2",)}


@dataclass(frozen=True)
class PairTable:
    """One GPU's rule: compute mode -> memory modes, and where it was read."""

    pairs: dict[str, tuple[str, ...]]
    source: str  # FROM_KERNEL, or FROM_FALLBACK with the reason after it


def compute_modes_for(xcc_count: int) -> tuple[str, ...]:
    """Mainline: the compute modes a part with this many XCCs has at all."""
    fits = {
        "SPX": True,
        "DPX": xcc_count % 4 == 0,
        "TPX": xcc_count % 3 == 0,
        "QPX": xcc_count % 4 == 0 and xcc_count // 4 >= 2,
        "CPX": xcc_count > 1,
    }
    return tuple(mode for mode in COMPUTE_MODES if fits[mode])


def pairs_for(
    rule_set: str, xcc_count: int, memory_modes: tuple[str, ...], gc: tuple[int, int, int] = parts.GC943
) -> dict[str, tuple[str, ...]]:
    """A rule set's table for one part (its XCC count, its GC version), masked by the platform's memory modes."""
    table = RULE_SETS[rule_set]
    adds = GC95_ADDS if rule_set == MAINLINE and gc >= parts.GC95 else {}
    pairs = {}
    for compute in compute_modes_for(xcc_count):
        allowed = set(table.get(compute, ())) | set(adds.get(compute, ()))
        memory = tuple(m for m in memory_modes if m in allowed)
        if memory:
            pairs[compute] = memory
    return pairs


def memory_modes_of(rule_set: str, memory_modes: tuple[str, ...]) -> tuple[str, ...]:
    """The platform's memory modes that some compute mode of the rule set runs under."""
    used = {m for modes in RULE_SETS[rule_set].values() for m in modes}
    return tuple(m for m in memory_modes if m in used)
