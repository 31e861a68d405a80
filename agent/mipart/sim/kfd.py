"""The simulated KFD tree, ROOT/class/kfd/kfd: the topology and the per-process directories.

As amdkfd does (docs/partitioning.md, "KFD topology"): on every layout change the node
directories are removed and built again in place, GPUs in KFD's device list order (a GPU
switched at run time goes last: kfd_topology_update_device_list), and topology/generation_id
changes after them. A reader that walks meanwhile can find a node gone or half the nodes; it
must read generation_id before and after and walk again, as ROCm's libhsakmt does.
proc/<pid>/vram_<gpu_id> names each KFD node a process holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from pathlib import Path

from mipart.gpu.modes import logical_number, partitions_per_gpu, render_minor
from mipart.gpu.topology import GENERATION, KFD, NODES
from mipart.sim.state import SimState

CPU_NODES = 2
# DRM numbers 64 primary (card) minors; a BMC's `ast` driver takes card0, so amdgpu's 64th
# partition of a host gets no DRM node and ROCm does not see it (docs/partitioning.md, "Known traps").
DRM_CARD_MINORS = 64
PROPERTY_KEYS = (
    "cpu_cores_count",
    "simd_count",
    "mem_banks_count",
    "vendor_id",
    "device_id",
    "location_id",
    "domain",
    "drm_render_minor",
    "hive_id",
    "num_xcc",
    "unique_id",
)


def shown(state: SimState) -> int:
    """generation_id once the layout's nodes are built; two steps a change (removed, then added)."""
    return 2 * state.generation


def remove_stale(root: Path, state: SimState) -> None:
    """The nodes go first, the generation moving with them, before the PCI files show a new mode.

    As the driver does: a switch removes the GPU's KFD device before it changes the mode and adds
    it after (aqua_vanjaram's pre/post partition switch), and an unload removes every device;
    each removal moves generation_id (kfd_topology_remove_device). So no walk within one
    generation sees a new mode beside the old mode's nodes."""
    generation = root / GENERATION
    if generation.exists() and generation.read_text().strip() != str(shown(state)):
        _clear(root / NODES)
        _write(generation, f"{shown(state) - 1}\n")


def render(root: Path, state: SimState, holds: dict[int, set[int]]) -> None:
    """The topology when its generation moved, and proc/ (`holds`: pid -> KFD gpu_ids) always."""
    generation = root / GENERATION
    if not generation.exists() or generation.read_text().strip() != str(shown(state)):
        _topology(root / NODES, state)
        _write(generation, f"{shown(state)}\n")
    proc = root / KFD / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) not in holds:
            shutil.rmtree(entry, ignore_errors=True)
    for pid, gpu_ids in holds.items():
        (proc / str(pid)).mkdir(exist_ok=True)
        for old in (proc / str(pid)).iterdir():
            if old.name not in {f"vram_{g}" for g in gpu_ids}:
                old.unlink()
        for gpu_id in sorted(gpu_ids):
            _write(proc / str(pid) / f"vram_{gpu_id}", "0\n")


def nodes_by_gpu(state: SimState) -> list[list[tuple[int, int]]]:
    """Per physical GPU, its partitions as (KFD gpu_id, render minor), partition by partition."""
    ids = _gpu_ids(state)
    return [[(gpu_id, render_minor(logical_number(k, p))) for p, gpu_id in enumerate(ids[k])] for k in range(len(ids))]


def _topology(nodes: Path, state: SimState) -> None:
    """CPU nodes, then each GPU's partitions, GPUs in KFD's list order; removed first, as the kernel does."""
    _clear(nodes)
    nodes.mkdir(parents=True, exist_ok=True)
    spec = state.spec
    for n in range(CPU_NODES):
        _node(nodes / str(n), 0, _properties(cpu_cores_count=96))
    partitions = nodes_by_gpu(state)
    n = CPU_NODES
    for k in [] if state.init_failed else state.kfd_order():
        gpu = state.gpus[k]
        domain, bus, device, function = (int(x, 16) for x in gpu["bdf"].replace(".", ":").split(":"))
        parts = len(partitions[k])
        hive = _hash64("hive", state.hive_of(k), *(g["bdf"] for g in state.gpus)) if state.hives else 0
        for p, (gpu_id, minor) in enumerate(partitions[k]):
            if state.bmc_ast and n - CPU_NODES >= DRM_CARD_MINORS - 1:
                break  # no DRM node left for this partition: ROCm does not list it
            properties = _properties(
                simd_count=spec.xcc_count // parts * spec.cus_per_xcc * 4,
                vendor_id=0x1002,
                device_id=spec.device_id,
                # As kernels that number partitions in location_id's function bits do.
                location_id=(bus << 8 | device << 3 | function) | (p if parts > 1 else 0),
                domain=domain,
                drm_render_minor=minor,
                hive_id=hive,
                num_xcc=spec.xcc_count // parts,
                unique_id=_hash64("unique", gpu["bdf"], str(p)),
            )
            _node(nodes / str(n), gpu_id, properties)
            n += 1


def _clear(nodes: Path) -> None:
    if nodes.is_dir():
        for old in sorted(nodes.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1):
            shutil.rmtree(old, ignore_errors=True)


def _node(node: Path, gpu_id: int, properties: str) -> None:
    """A node appears with its files, as a kobject with its attributes does (never empty)."""
    staged = node.with_name(f".new-{node.name}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    _write(staged / "gpu_id", f"{gpu_id}\n")
    _write(staged / "properties", properties)
    staged.rename(node)


def _write(path: Path, text: str) -> None:
    """Whole or not at all: a sysfs attribute is read in one piece."""
    staged = path.with_name(f".{path.name}.new")
    with open(staged, "w") as out:
        out.write(text)
    os.replace(staged, path)


def _properties(**values: int) -> str:
    """A KFD node's `properties` file: every key on every node, 0 where it does not apply."""
    values.setdefault("mem_banks_count", 1)
    return "".join(f"{key} {values.get(key, 0)}\n" for key in PROPERTY_KEYS)


def _gpu_ids(state: SimState) -> list[list[int]]:
    """Per GPU, the KFD gpu_id of each partition: non-zero, unique, stable for a layout."""
    used: set[int] = set()
    ids = []
    for gpu in state.gpus:
        row = []
        for p in range(partitions_per_gpu(gpu["compute"], state.spec.xcc_count)):
            gpu_id = zlib.crc32(f"{gpu['bdf']}/{gpu['compute']}/{gpu['memory']}/{p}".encode()) & 0xFFFF
            while gpu_id == 0 or gpu_id in used:
                gpu_id = (gpu_id + 1) & 0xFFFF
            used.add(gpu_id)
            row.append(gpu_id)
        ids.append(row)
    return ids


def _hash64(*parts: str) -> int:
    return int.from_bytes(hashlib.sha1("/".join(parts).encode()).digest()[:8], "big") or 1
