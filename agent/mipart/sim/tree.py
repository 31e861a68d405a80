"""The simulated host's sysfs tree, rendered from its state for the amdgpu backend to read.

ROOT/bus and ROOT/devices are built once; the current_* files, the module parameter and
the KFD tree are rendered again after each change (see render for how a reader is kept
from seeing half of it).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from contextlib import suppress
from pathlib import Path

from mipart.gpu.amdgpu import AST_MODULE, PCI_DEVICES, USER_PARTT_PARAM
from mipart.gpu.kernel_table import PARTITION_CONFIG
from mipart.gpu.modes import partitions_per_gpu
from mipart.gpu.topology import KFD
from mipart.names import BACKEND_MARKER
from mipart.sim import devices
from mipart.sim.state import SIM_DIR, SimState

# What ROOT holds besides SIM_DIR and BACKEND_MARKER.
TOP_DIRS = ("bus", "class", "dev", "devices", "module")
# The root's own GPU backend, named in BACKEND_MARKER: the production registry
# (mipart.gpu.BACKENDS) never names the simulator's.
BACKEND = "mipart.sim.backend:SimBackend"
# (bdf, vendor, device, class): PCI devices that discovery must skip.
DECOYS = (
    ("0000:00:00.0", "0x1022", "0x14a4", "0x060000"),  # AMD (CPU vendor id) host bridge
    ("0000:04:00.0", "0x1002", "0x1478", "0x060400"),  # AMD/ATI switch port: no partitions
)
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


def clear(root: Path) -> None:
    for top in TOP_DIRS:
        shutil.rmtree(root / top, ignore_errors=True)


def build_static(root: Path, state: SimState) -> None:
    """The parts a partition switch leaves alone: PCI devices, amdgpu_xcp platform devices, /dev."""
    spec = state.spec
    pci = root / PCI_DEVICES
    pci.mkdir(parents=True)
    for bdf, vendor, device, cls in DECOYS:
        (pci / bdf).mkdir()
        for name, text in (("vendor", vendor), ("device", device), ("class", cls)):
            _put(pci / bdf / name, text + "\n")
    for k, gpu in enumerate(state.gpus):
        dev = pci / gpu["bdf"]
        dev.mkdir()
        for name, text in (
            ("vendor", "0x1002"),
            ("device", f"0x{spec.device_id:04x}"),
            ("class", "0x120000"),  # processing accelerator
        ):
            _put(dev / name, text + "\n")
        # This file exists only where more than one mode is supported (docs/partitioning.md).
        if len(state.memory_modes) > 1:
            _put(dev / "available_memory_partition", ", ".join(state.memory_modes) + "\n")
        if state.partition_config:
            (dev / PARTITION_CONFIG).mkdir()
            _put(dev / PARTITION_CONFIG / "supported_xcp_configs", ", ".join(state.pairs) + "\n")
        # The PCI device carries partition 0's DRM nodes; the driver pre-creates seven
        # amdgpu_xcp platform devices per GPU for partitions 1..7.
        (dev / f"drm/card{8 * k}").mkdir(parents=True)
        (dev / f"drm/renderD{128 + 8 * k}").mkdir()
        for p in range(1, 8):
            drm = root / f"devices/platform/amdgpu_xcp.{7 * k + p - 1}/drm"
            drm.mkdir(parents=True)
            (drm / f"card{8 * k + p}").mkdir()
            (drm / f"renderD{128 + 8 * k + p}").mkdir()
    (root / KFD).parent.mkdir(parents=True)
    (root / USER_PARTT_PARAM).parent.mkdir(parents=True)
    if state.bmc_ast:
        (root / AST_MODULE).mkdir(parents=True)
    devices.build(root, len(state.gpus))
    _put(root / BACKEND_MARKER, BACKEND + "\n")


def render(root: Path, state: SimState) -> None:
    """Show the state: the current_* files, and a fresh KFD tree swapped in by one rename.

    Like the real /sys/class/kfd/kfd, ROOT/class/kfd/kfd is a symlink; it points into
    .mipart-sim, so a reader sees either the old KFD tree or the new one, never half.
    """
    sim = root / SIM_DIR
    # The parameter is declared uint, so the kernel shows AUTO (-2) as 4294967294.
    _replace(root / USER_PARTT_PARAM, f"{state.user_partt_mode & 0xFFFFFFFF}\n")
    for index, gpu in enumerate(state.gpus):
        dev = root / PCI_DEVICES / gpu["bdf"]
        _replace(dev / "current_compute_partition", gpu["compute"] + "\n")
        _replace(dev / "current_memory_partition", gpu["memory"] + "\n")
        # Mainline lists only the modes valid under the current memory mode.
        offered = [c for c, memory in state.pairs.items() if gpu["memory"] in memory]
        _replace(dev / "available_compute_partition", (", ".join(offered) or "Not supported") + "\n")
        render_config(root, state, index)
    tree = Path(tempfile.mkdtemp(prefix="kfd-", dir=sim))
    os.chmod(tree, 0o755)
    _build_kfd(tree, state)
    link = root / KFD
    previous = Path(os.readlink(link)).name if link.is_symlink() else None
    staged = link.with_name("kfd.new")
    with suppress(FileNotFoundError):
        staged.unlink()
    os.symlink(f"../../{SIM_DIR}/{tree.name}", staged)
    os.replace(staged, link)
    # Keep the previous tree for a reader still walking it; drop older ones.
    for old in sim.glob("kfd-*"):
        if old.name not in (tree.name, previous):
            shutil.rmtree(old, ignore_errors=True)


def render_config(root: Path, state: SimState, index: int) -> None:
    """compute_partition_config/: the mode xcp_config previews, and the memory modes it runs under."""
    if not state.partition_config:
        return
    gpu = state.gpus[index]
    config = root / PCI_DEVICES / gpu["bdf"] / PARTITION_CONFIG
    preview = gpu.get("xcp_config", gpu["compute"])
    _replace(config / "xcp_config", preview + "\n")
    _replace(config / "supported_nps_configs", (", ".join(state.pairs.get(preview, ())) or "Not supported") + "\n")


def _build_kfd(tree: Path, state: SimState) -> None:
    """topology/nodes: CPU nodes, then one node per partition in PCI order; proc: KFD users.

    A holder (`mipart sim hold`) uses every partition of its GPUs; an opener the partitions
    whose render nodes it has open, or (none open) no GPU the tree names, which readers
    count as all of them, as the simulated driver does.
    """
    spec = state.spec
    nodes = tree / "topology/nodes"
    proc = tree / "proc"
    nodes.mkdir(parents=True)
    proc.mkdir()
    for n in range(CPU_NODES):
        _put_node(nodes / str(n), 0, _properties(cpu_cores_count=96))
    gpu_ids = _gpu_ids(state)
    hive = _hash64("hive", *(g["bdf"] for g in state.gpus))
    n = CPU_NODES
    for k, gpu in enumerate(state.gpus):
        domain, bus, device, function = (int(x, 16) for x in gpu["bdf"].replace(".", ":").split(":"))
        parts = len(gpu_ids[k])
        for p, gpu_id in enumerate(gpu_ids[k]):
            if state.bmc_ast and n - CPU_NODES >= DRM_CARD_MINORS - 1:
                break  # no DRM node left for this partition: ROCm does not list it
            _put_node(
                nodes / str(n),
                gpu_id,
                _properties(
                    simd_count=spec.xcc_count // parts * spec.cus_per_xcc * 4,
                    vendor_id=0x1002,
                    device_id=spec.device_id,
                    # As kernels that number partitions in location_id's function bits do.
                    location_id=(bus << 8 | device << 3 | function) | (p if parts > 1 else 0),
                    domain=domain,
                    drm_render_minor=128 + 8 * k + p,
                    hive_id=hive,
                    num_xcc=spec.xcc_count // parts,
                    unique_id=_hash64("unique", gpu["bdf"], str(p)),
                ),
            )
            n += 1
    used: dict[int, set[int]] = {}
    for pid, held in state.holders.items():
        used.setdefault(pid, set()).update(gpu_id for k in held for gpu_id in gpu_ids[k])
    for pid, minors in state.openers.items():
        opened = used.setdefault(pid, set())
        for k, p in (
            (devices.physical_of(m), devices.partition_of(m)) for m in minors if devices.physical_of(m) < len(gpu_ids)
        ):
            opened.update(gpu_ids[k][p : p + 1] or gpu_ids[k])  # a partition the mode lacks: its GPU
    for pid, gpu_id_set in used.items():
        (proc / str(pid)).mkdir()
        for gpu_id in sorted(gpu_id_set):
            _put(proc / str(pid) / f"vram_{gpu_id}", "0\n")


def _put_node(node: Path, gpu_id: int, properties: str) -> None:
    node.mkdir()
    _put(node / "gpu_id", f"{gpu_id}\n")
    _put(node / "properties", properties)


def _put(path: Path, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def _replace(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.new")
    _put(staged, text)
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
