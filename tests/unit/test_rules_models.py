"""Every Instinct model the simulator knows, under each kernel rule set: the kernel's table as
docs/partitioning.md gives it, every pair it offers applied with the right logical GPU count, and
every pair it does not offer refused before any write or reload.

The expected tables are written out here from docs/partitioning.md ("the host's kernel is the
authority"; seed 000's amd-smi table), not taken from mipart's code.
"""

from __future__ import annotations

import pytest

from mipart.gpu import open_backend
from mipart.log import get_logger
from mipart.partition.apply import apply
from mipart.partition.plan import PlanError
from mipart.profile.schema import GpuSpec
from mipart.sim import kernel
from mipart.sim.state import read_state

GPUS = 2
EIGHT_XCDS = ("mi300x", "mi325x", "mi350x", "mi355x")
MAINLINE_8 = {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS4"), "CPX": ("NPS1", "NPS4")}
# GC 9.5 (MI350X, MI355X) since 6.16-stable: QPX and CPX also take NPS2 ("Update supported modes for GC v9.5.0").
MAINLINE_GC95 = {**MAINLINE_8, "QPX": ("NPS1", "NPS2", "NPS4"), "CPX": ("NPS1", "NPS2", "NPS4")}
ROCM_MI300X_8 = {"SPX": ("NPS1",), "DPX": ("NPS1", "NPS2"), "QPX": ("NPS1", "NPS2"), "CPX": ("NPS1", "NPS2")}
# MI300A: 6 XCDs (SPX, TPX, CPX); an APU, whose platform cannot switch NPS (no supported_nps_configs):
# every mode runs under its one memory mode. Seed 000's table has no TPX row.
TABLES = {
    **{(m, "mainline"): MAINLINE_GC95 if m in ("mi350x", "mi355x") else MAINLINE_8 for m in EIGHT_XCDS},
    **{(m, "mainline-before-6.16"): MAINLINE_8 for m in EIGHT_XCDS},
    **{(m, "rocm-mi300x"): ROCM_MI300X_8 for m in EIGHT_XCDS},
    ("mi300a", "mainline"): {"SPX": ("NPS1",), "TPX": ("NPS1",), "CPX": ("NPS1",)},
    ("mi300a", "rocm-mi300x"): {"SPX": ("NPS1",), "CPX": ("NPS1",)},
}
XCDS = {"mi300a": 6, **{m: 8 for m in EIGHT_XCDS}}
PER_GPU = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4}  # CPX: one per XCD
ALL_COMPUTE = ("SPX", "DPX", "TPX", "QPX", "CPX")
ALL_MEMORY = ("NPS1", "NPS2", "NPS4")

OFFERED = [
    (model, rules, c, m) for (model, rules), table in TABLES.items() for c, modes in table.items() for m in modes
]
REFUSED = [
    (model, rules, c, m)
    for (model, rules), table in TABLES.items()
    for c in ALL_COMPUTE
    for m in ALL_MEMORY
    if m not in table.get(c, ())
]


def make_root(tmp_path, model: str, rules: str):
    root = tmp_path / "sys"
    kernel.create(root, model=model, gpus=GPUS, compute="SPX", memory="NPS1", rules=rules)
    return root


@pytest.mark.parametrize("model, rules", sorted(TABLES))
def test_the_kernel_table_is_read_from_compute_partition_config(tmp_path, model, rules):
    backend = open_backend(make_root(tmp_path, model, rules))
    for gpu in backend.discover().physical:
        table = backend.pair_table(gpu)
        assert (table.pairs, table.source) == (TABLES[model, rules], "kernel")


@pytest.mark.parametrize("model, rules, compute, memory", OFFERED, ids=["-".join(case) for case in OFFERED])
def test_every_offered_pair_applies_with_the_right_logical_gpu_count(tmp_path, model, rules, compute, memory):
    root = make_root(tmp_path, model, rules)
    result = apply(GpuSpec(compute=compute, memory=memory), open_backend(root), get_logger("test"))
    per_gpu = XCDS[model] if compute == "CPX" else PER_GPU[compute]
    state = open_backend(root).discover()
    assert [(g.compute, g.memory) for g in state.physical] == [(compute, memory)] * GPUS
    assert len(state.logical) == result.logical_gpus == GPUS * per_gpu
    assert read_state(root).counters["reloads"] == (0 if memory == "NPS1" else 1)


@pytest.mark.parametrize("model, rules, compute, memory", REFUSED, ids=["-".join(case) for case in REFUSED])
def test_every_pair_the_kernel_lacks_is_refused_before_any_write(tmp_path, model, rules, compute, memory):
    root = make_root(tmp_path, model, rules)
    with pytest.raises(PlanError) as refused:
        apply(GpuSpec(compute=compute, memory=memory), open_backend(root), get_logger("test"))
    offered = TABLES[model, rules]
    if compute in offered and memory in read_state(root).memory_modes:
        assert f"{compute} takes {' or '.join(offered[compute])} on this host" in str(refused.value)
    assert read_state(root).counters == {"writes": 0, "reloads": 0}


@pytest.mark.parametrize("model", sorted(XCDS))
def test_available_compute_partition_lists_the_modes_valid_under_the_current_memory_mode(tmp_path, model):
    root = make_root(tmp_path, model, "mainline")
    table = TABLES[model, "mainline"]
    for memory in sorted({m for modes in table.values() for m in modes}):
        kernel.kernel_write(root, "0000:05:00.0", "current_memory_partition", memory)
        kernel.reload(root)
        shown = (root / "bus/pci/devices/0000:05:00.0/available_compute_partition").read_text()
        assert shown == ", ".join(c for c in ALL_COMPUTE if memory in table.get(c, ())) + "\n"
