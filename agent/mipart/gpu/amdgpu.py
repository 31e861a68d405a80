"""GPU discovery and partition writes through sysfs (hardware.md, "Kernel sysfs interface").

Every path hangs off a root (default /sys) so tests and the simulator can point it at a
temp dir. Reading is plain file I/O either way; a write goes to the simulator's in-process
driver when the root is a simulated host, so it fails with the errno the kernel would use.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mipart.errors import UserError
from mipart.values import GpuUser, HostState, LogicalGpu, PhysicalGpu
from mipart.sim import kernel as simulator
from mipart.gpu.models import model_for_device
from mipart.gpu.modes import memory_modes_for
from mipart.names import DEFAULT_SYSFS_ROOT, SYSFS_ROOT_VAR

AMD_VENDOR_ID = 0x1002
PCI_DEVICES = Path("bus/pci/devices")
KFD = Path("class/kfd/kfd")


def sysfs_root() -> Path:
    return Path(os.environ.get(SYSFS_ROOT_VAR, DEFAULT_SYSFS_ROOT))


def discover(root: Path) -> HostState:
    """Partition-capable AMD GPUs and the logical GPUs (KFD nodes) they currently show.

    A host without such GPUs gives an empty state; an unreadable or garbled attribute
    raises UserError naming the file.
    """
    physical = _physical_gpus(Path(root))
    return HostState(physical, _logical_gpus(Path(root), physical))


def _physical_gpus(root: Path) -> tuple[PhysicalGpu, ...]:
    devices = root / PCI_DEVICES
    if not devices.is_dir():
        return ()
    found = []
    for dev in devices.iterdir():
        if (dev / "current_compute_partition").exists() and _hex(dev / "vendor") == AMD_VENDOR_ID:
            found.append(dev)
    found.sort(key=lambda d: _pci_address(d.name, d))
    return tuple(_physical_gpu(i, dev) for i, dev in enumerate(found))


def _physical_gpu(index: int, dev: Path) -> PhysicalGpu:
    memory_file = dev / "current_memory_partition"
    memory = _word(memory_file) if memory_file.exists() else ""
    # available_memory_partition exists only where more than one mode is supported.
    available_file = dev / "available_memory_partition"
    if available_file.exists():
        memory_available = _mode_list(available_file)
    else:
        memory_available = (memory,) if memory else ()
    return PhysicalGpu(
        index=index,
        bdf=dev.name,
        device_id=_hex(dev / "device"),
        compute=_word(dev / "current_compute_partition"),
        compute_available=_mode_list(dev / "available_compute_partition"),
        memory=memory,
        memory_available=memory_available,
        path=dev,
    )


def _logical_gpus(root: Path, physical: tuple[PhysicalGpu, ...]) -> tuple[LogicalGpu, ...]:
    nodes_dir = root / KFD / "topology/nodes"
    if not nodes_dir.is_dir():
        return ()
    nodes = sorted((n for n in nodes_dir.iterdir() if n.name.isdigit()), key=lambda n: int(n.name))
    # Match nodes to PCI devices on domain, bus and device, not the function: location_id
    # is bus<<8 | devfn, but partitioned GPUs OR their node id into it, into bits 31:28 on
    # some kernels and into the function bits on others (kfd_topology_add_device in
    # kfd_topology.c). The GPU itself is always function 0 of its device.
    by_device = {_pci_address(g.bdf, g.path)[:3]: g for g in physical}
    logical: list[LogicalGpu] = []
    per_gpu: dict[int, int] = {}
    gpu_nodes = 0
    for node in nodes:
        gpu_id = _int(node / "gpu_id")
        if gpu_id == 0:  # a CPU node
            continue
        index = gpu_nodes
        gpu_nodes += 1
        props = _properties(node / "properties")
        location = props["location_id"]
        owner = by_device.get((props["domain"], (location >> 8) & 0xFF, (location >> 3) & 0x1F))
        if owner is None:  # a GPU without partition attributes; it still takes an index
            continue
        partition = per_gpu.get(owner.index, 0)
        per_gpu[owner.index] = partition + 1
        logical.append(LogicalGpu(
            index=index,
            node_id=int(node.name),
            gpu_id=gpu_id,
            render_minor=props["drm_render_minor"],
            physical_index=owner.index,
            partition=partition,
            bdf=owner.bdf,
        ))
    return tuple(logical)


def kfd_users(root: Path, state: HostState) -> list[GpuUser]:
    """Processes that have /dev/kfd open, and which physical GPUs each one uses.

    KFD gives each process a dir with a `vram_<gpu_id>` file per GPU it opened. A process
    whose files name no GPU we know is counted as using all of them: stopping too much is
    safer than an EBUSY halfway through a repartition.
    """
    if simulator.is_sim(Path(root)):
        simulator.prune_exited(Path(root))
    proc = Path(root) / KFD / "proc"
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
        used = {owner[int(n[5:])] for n in names if n.startswith("vram_") and n[5:].isdigit()
                and int(n[5:]) in owner}
        users.append(GpuUser(int(entry.name), tuple(sorted(used)) if used else everything))
    return users


def write_attribute(root: Path, gpu: PhysicalGpu, name: str, value: str) -> None:
    """Write one partition attribute; failures surface as OSError with the kernel's errno."""
    if simulator.is_sim(Path(root)):
        simulator.kernel_write(Path(root), gpu.bdf, name, value)
        return
    # No O_CREAT: a missing attribute must fail with ENOENT, not become a new file.
    fd = os.open(gpu.path / name, os.O_WRONLY)
    try:
        os.write(fd, (value + "\n").encode())
    finally:
        os.close(fd)


def describe_write_error(exc: OSError, gpu: PhysicalGpu, name: str, value: str) -> str:
    """One line saying what the kernel's refusal means and what to do about it."""
    where = f"GPU {gpu.index} ({gpu.bdf}): {name}"
    if exc.errno == errno.EBUSY:
        return f"{where} busy: a ROCm process holds the GPU; stop GPU users first"
    if exc.errno == errno.EINVAL:
        return f"{where} rejected {value}: {_invalid_reason(gpu, name, value.strip().upper())}"
    if exc.errno == errno.EPERM:
        return f"{where}: GPU reset in progress; retry after it finishes"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied; run as root"
    if exc.errno == errno.ENOENT:
        return f"{where} missing: amdgpu driver too old or not loaded"
    return f"{where}: writing {value} failed: {exc.strerror or exc}"


def _invalid_reason(gpu: PhysicalGpu, name: str, value: str) -> str:
    if name == "current_memory_partition":
        return f"not a memory mode this GPU supports (available: {_join(gpu.memory_available)})"
    if value in gpu.compute_available and gpu.memory:
        model = model_for_device(gpu.device_id)
        needs = memory_modes_for(value, model.xcc_count if model else 8)
        return (f"not valid under the current memory mode {gpu.memory}"
                f" ({value} needs {' or '.join(needs) or 'another GPU'})")
    return f"not a compute mode this GPU supports (available: {_join(gpu.compute_available)})"


def _join(modes: tuple[str, ...]) -> str:
    return ", ".join(modes) or "none"


# --- reading attribute files -------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"{path}: cannot read: {reason}") from exc


def _corrupt(path: Path, text: str) -> UserError:
    return UserError(f"{path}: unexpected content {text.strip()[:60]!r}")


def _word(path: Path) -> str:
    text = _read(path)
    word = text.strip().upper()
    if not word.isalnum():
        raise _corrupt(path, text)
    return word


def _int(path: Path, base: int = 10) -> int:
    text = _read(path)
    try:
        return int(text.strip(), base)
    except ValueError:
        raise _corrupt(path, text) from None


def _hex(path: Path) -> int:
    return _int(path, 16)


def _mode_list(path: Path) -> tuple[str, ...]:
    """`SPX, DPX, QPX, CPX` -> ("SPX", ...); `Not supported` -> ()."""
    text = _read(path)
    if text.strip().lower() == "not supported":
        return ()
    modes = tuple(m.strip().upper() for m in text.replace(",", " ").split())
    if not all(m.isalnum() for m in modes):
        raise _corrupt(path, text)
    return modes


def _properties(path: Path) -> dict[str, int]:
    text = _read(path)
    props = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            key, value = parts
            props[key] = int(value)
        except ValueError:
            raise _corrupt(path, line) from None
    for key in ("location_id", "domain", "drm_render_minor"):
        if key not in props:
            raise UserError(f"{path}: no {key} line")
    return props


def _pci_address(bdf: str, path: Path) -> tuple[int, int, int, int]:
    """`0000:05:00.0` -> (domain, bus, device, function)."""
    try:
        domain, bus, rest = bdf.split(":")
        device, function = rest.split(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function, 16)
    except ValueError:
        raise UserError(f"{path}: not a PCI address: {bdf!r}") from None
