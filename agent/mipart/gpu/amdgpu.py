"""The amdgpu backend: discovery and partition writes through sysfs, and the driver reload
(docs/partitioning.md, "The kernel's sysfs interface").

Every path hangs off a root (default /sys), so tests and the simulator point it at a
directory; reading a simulated host is the same file I/O as reading a real one.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from mipart.gpu import attrs, driver, modes, modprobe, openers, rocm_order, signals, topology
from mipart.gpu.kernel_table import read_table
from mipart.gpu.pair_tables import PairTable
from mipart.gpu.partitioning import MEMORY_ATTR
from mipart.gpu.parts import GC943, model_for_device
from mipart.values import GpuSignals, GpuUser, HostState, LoadMode, LogicalGpu, PhysicalGpu

AMD_VENDOR_ID = 0x1002
PCI_DEVICES = Path("bus/pci/devices")
AST_MODULE = Path("module/ast")  # a BMC's DRM driver, loaded (docs/partitioning.md, "Known traps")
DEFAULT_XCC_COUNT = 8  # every MI300-class part mipart knows; used for a GPU it has no model for


class AmdgpuBackend:
    """An AMD Instinct host as the amdgpu driver shows it under `root`: gpu.backend.GpuBackend,
    all three concerns in one class, as they all read the same sysfs tree."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @classmethod
    def claims(cls, root: Path) -> bool:
        return True  # the fallback: a root without GPUs reads as an empty host

    def discover(self) -> HostState:
        """Read as ROCm reads the topology: again while it changes (gpu/topology.py)."""
        return topology.consistent(self.root, lambda: read_host(self.root), state_settled)

    def pair_table(self, gpu: PhysicalGpu) -> PairTable:
        """The kernel's own table where it has one; else mainline's rules, masked by the GPU's memory modes."""
        return read_table(
            gpu.path,
            lambda name, value: self.write_attribute(gpu, name, value),
            xcc_count(gpu),
            gpu.memory_available or modes.MEMORY_MODES,
            gc_version(gpu),
        )

    def partitions(self, gpu: PhysicalGpu, compute: str) -> int:
        return modes.partitions_per_gpu(compute, xcc_count(gpu))

    def load_mode(self) -> LoadMode:
        """amdgpu.user_partt_mode as the next load reads it (gpu/modprobe.py), not the loaded module's."""
        return modprobe.load_mode(self.host_path)

    def host_path(self, path: str) -> Path:
        """A path of the host's (/etc, /proc, /dev): as it is here; a simulated root has its own."""
        return Path(path)

    def write_attribute(self, gpu: PhysicalGpu, name: str, value: str) -> None:
        # No O_CREAT: a missing attribute must fail with ENOENT, not become a new file.
        fd = os.open(gpu.path / name, os.O_WRONLY)
        try:
            os.write(fd, (value + "\n").encode())
        finally:
            os.close(fd)

    def describe_write_error(self, exc: OSError, gpu: PhysicalGpu, name: str, value: str) -> str:
        where = f"GPU {gpu.index} ({gpu.bdf}): {name}"
        if exc.errno == errno.EBUSY:
            return f"{where} busy: a ROCm process holds the GPU; stop GPU users first"
        if exc.errno == errno.EINVAL:
            return f"{where} rejected {value}: {self._invalid_reason(gpu, name, value.strip().upper())}"
        if exc.errno == errno.EPERM:
            return f"{where}: GPU reset in progress; retry after it finishes"
        if exc.errno == errno.EACCES:
            return f"{where}: permission denied; run as root"
        if exc.errno == errno.ENOENT:
            return f"{where} missing: amdgpu driver too old or not loaded"
        return f"{where}: writing {value} failed: {exc.strerror or exc}"

    def _invalid_reason(self, gpu: PhysicalGpu, name: str, value: str) -> str:
        if name == MEMORY_ATTR:
            return f"not a memory mode this GPU supports (available: {_join(gpu.memory_available)})"
        pairs = self.pair_table(gpu).pairs
        if value in pairs and gpu.memory:
            return f"not valid under the current memory mode {gpu.memory} ({value} needs {' or '.join(pairs[value])})"
        return f"not a compute mode this GPU supports (available: {_join(tuple(pairs))})"

    def drm_conflicts(self) -> tuple[str, ...]:
        return ("ast",) if (self.root / AST_MODULE).is_dir() else ()

    def reload_command(self) -> str:
        return driver.reload_command()

    def reload(self, wait_until_back: Callable[[], bool]) -> None:
        driver.run_reload(self.reload_command(), wait_until_back)

    def gpu_users(self, state: HostState) -> list[GpuUser]:
        return kfd_users(self.root, state)

    def device_openers(self, state: HostState) -> list[GpuUser]:
        files = [os.path.realpath(self.host_path(f"/dev/{name}")) for name in ("kfd", *drm_nodes(self.root, state))]
        every = tuple(g.index for g in state.physical)
        return [GpuUser(pid, every) for pid in sorted(openers.holding(files))]

    def device_env(self, devices: Iterable[str]) -> dict[str, str]:
        return {}  # the server opens /dev/kfd and its render nodes itself

    def rocm_devices(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        return rocm_order.render_nodes(self.root)  # this process's own cgroup and user decide

    def signals(self, gpu: PhysicalGpu) -> GpuSignals:
        return signals.read_signals(gpu)


def xcc_count(gpu: PhysicalGpu) -> int:
    """KFD's num_xcc where it tells; else the device-id table; else 8 (docs/partitioning.md)."""
    if gpu.xcc_count:
        return gpu.xcc_count
    model = model_for_device(gpu.device_id)
    return model.xcc_count if model else DEFAULT_XCC_COUNT


def gc_version(gpu: PhysicalGpu) -> tuple[int, int, int]:
    """The device-id table's; a part mipart does not know is taken for GC 9.4.3 (MI300's), the older rules."""
    model = model_for_device(gpu.device_id)
    return model.gc if model else GC943


def physical_gpus(root: Path) -> tuple[PhysicalGpu, ...]:
    devices = root / PCI_DEVICES
    if not devices.is_dir():
        return ()
    found = []
    for dev in devices.iterdir():
        if (dev / "current_compute_partition").exists() and attrs.hex_number(dev / "vendor") == AMD_VENDOR_ID:
            found.append(dev)
    found.sort(key=lambda d: attrs.pci_address(d.name, d))
    return tuple(_physical_gpu(i, dev) for i, dev in enumerate(found))


def _physical_gpu(index: int, dev: Path) -> PhysicalGpu:
    memory_file = dev / "current_memory_partition"
    memory = attrs.word(memory_file) if memory_file.exists() else ""
    # available_memory_partition exists only where more than one mode is supported.
    available_file = dev / "available_memory_partition"
    if available_file.exists():
        memory_available = attrs.mode_list(available_file)
    else:
        memory_available = (memory,) if memory else ()
    return PhysicalGpu(
        index=index,
        bdf=dev.name,
        device_id=attrs.hex_number(dev / "device"),
        compute=attrs.word(dev / "current_compute_partition"),
        compute_available=attrs.mode_list(dev / "available_compute_partition"),
        memory=memory,
        memory_available=memory_available,
        path=dev,
    )


def read_host(root: Path) -> HostState:
    """One pass over the PCI devices and the KFD topology (topology.consistent repeats it)."""
    physical = physical_gpus(root)
    nodes = topology.gpu_nodes(root)
    owners = node_owners(physical, nodes)
    logical = []
    for gpu in physical:
        mine = sorted(
            (n for n in nodes if owners.get(n.node_id) == gpu.index), key=lambda n: n.prop("drm_render_minor")
        )
        logical += [
            LogicalGpu(
                index=modes.logical_number(gpu.index, partition),
                node_id=node.node_id,
                gpu_id=node.gpu_id,
                render_minor=node.prop("drm_render_minor"),
                physical_index=gpu.index,
                partition=partition,
                bdf=gpu.bdf,
            )
            for partition, node in enumerate(mine)
        ]
    facts = {g.index: _kfd_facts(g, [n for n in nodes if owners.get(n.node_id) == g.index]) for g in physical}
    return HostState(
        tuple(replace(g, xcc_count=facts[g.index][0], hive_id=facts[g.index][1]) for g in physical),
        tuple(sorted(logical, key=lambda lg: lg.index)),
    )


def node_owners(physical: tuple[PhysicalGpu, ...], nodes: tuple[topology.KfdNode, ...]) -> dict[int, int]:
    """KFD node id -> the physical GPU it is a partition of.

    Matched on domain, bus and device, not the function: location_id is bus<<8 | devfn, but
    partitioned GPUs OR their node id into it, into bits 31:28 on some kernels and into the
    function bits on others (kfd_topology_add_device in kfd_topology.c). The GPU itself is
    always function 0 of its device."""
    by_device = {attrs.pci_address(g.bdf, g.path)[:3]: g.index for g in physical}
    owners = {}
    for node in nodes:
        location = node.prop("location_id")
        owner = by_device.get((node.prop("domain"), (location >> 8) & 0xFF, (location >> 3) & 0x1F))
        if owner is not None:  # else a GPU without partition attributes: not one of ours
            owners[node.node_id] = owner
    return owners


def _kfd_facts(gpu: PhysicalGpu, nodes: list[topology.KfdNode]) -> tuple[int, int]:
    """(XCC count, hive_id) from the GPU's KFD nodes; 0 where they do not tell.

    num_xcc is per partition: in a mode with a fixed partition count it times that count is
    the GPU's; in CPX every partition has one XCC, so only a whole set of nodes tells, which
    one hidden by another DRM driver would not: there the device-id table decides, and only for
    a part it does not know do the nodes shown count."""
    if not nodes:
        return 0, 0
    per_partition = nodes[0].prop("num_xcc")
    fixed = modes.FIXED_PARTITIONS.get(gpu.compute)
    if fixed:
        xcc = per_partition * fixed
    else:  # CPX: the table knows a part; for one it does not, the partitions shown are the best count
        xcc = 0 if model_for_device(gpu.device_id) else len(nodes)
    return xcc, nodes[0].prop("hive_id")


def state_settled(state: HostState) -> bool:
    """Every GPU shows the partitions its mode implies (a walk amid a rebuild does not)."""
    shown: dict[int, int] = {}
    for logical in state.logical:
        shown[logical.physical_index] = shown.get(logical.physical_index, 0) + 1
    return all(
        gpu.compute not in modes.COMPUTE_MODES
        or shown.get(gpu.index, 0) == modes.partitions_per_gpu(gpu.compute, xcc_count(gpu))
        for gpu in state.physical
    )


def drm_nodes(root: Path, state: HostState) -> list[str]:
    """amdgpu's DRM nodes as dri/<name>: each GPU's own (its PCI device's drm/) and its partitions'
    (the amdgpu_xcp platform devices'; mainline names them amdgpu_xcp_N, older kernels amdgpu_xcp.N).
    Another driver's (a BMC's ast) are not amdgpu's and do not keep it in use."""
    dirs = [g.path / "drm" for g in state.physical]
    dirs += [p / "drm" for p in (root / "devices/platform").glob("amdgpu_xcp[._]*")] if state.physical else []
    names: set[str] = set()
    for drm in dirs:
        try:
            names.update(n for n in os.listdir(drm) if n.startswith(("card", "renderD")))
        except OSError:
            continue
    return [f"dri/{name}" for name in sorted(names)]


def kfd_users(root: Path, state: HostState) -> list[GpuUser]:
    """Processes that have /dev/kfd open, and which physical GPUs each one uses.

    KFD gives each process a dir with a `vram_<gpu_id>` file per GPU it opened. A process
    whose files name no GPU we know is counted as using all of them: stopping too much is
    safer than an EBUSY halfway through a repartition.
    """
    proc = root / topology.KFD / "proc"
    if not proc.is_dir():
        return []
    owner = {g.gpu_id: g.physical_index for g in state.logical}
    everything = tuple(g.index for g in state.physical)
    users = []
    for entry in sorted((p for p in proc.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        try:
            names = os.listdir(entry)
        except FileNotFoundError:  # the process exited while we looked
            continue
        used = {owner[int(n[5:])] for n in names if n.startswith("vram_") and n[5:].isdigit() and int(n[5:]) in owner}
        users.append(GpuUser(int(entry.name), tuple(sorted(used)) if used else everything))
    return users


def _join(found: tuple[str, ...]) -> str:
    return ", ".join(found) or "none"
