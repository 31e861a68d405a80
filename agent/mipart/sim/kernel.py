"""A simulated amdgpu driver, so partitioning can be tested without an Instinct GPU.

It renders a sysfs tree that `sysfs.discover` reads exactly like a real host's, and it
refuses partition writes and driver reloads the way the kernel does (hardware.md).

State lives in ROOT/.mipart-sim/state.json and every change happens under flock, so the
CLI, the tests and the agent can drive one simulated host from several processes. The
tree under ROOT/bus, ROOT/class and ROOT/devices is rendered from the state after each
change (see _render for how readers are kept from seeing half of it).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu.models import MODELS, GpuModel
from mipart.gpu.modes import (
    AUTO_COMPUTE_FOR_MEMORY,
    KERNEL_COMPUTE_MODES,
    USER_PARTT_MODE,
    compatible,
    partitions_per_gpu,
)

SIM_DIR = ".mipart-sim"
TOP_DIRS = ("bus", "class", "devices", "module")  # what ROOT holds besides SIM_DIR
USER_PARTT_PARAM = "module/amdgpu/parameters/user_partt_mode"
# PCI addresses of the 8 GPUs on a typical 8 x MI300X board; more GPUs go to further domains.
BOARD_BUSES = ("05", "26", "46", "65", "85", "a6", "c6", "e5")
MAX_GPUS = 16  # render minors run 128..255, 8 per GPU
# (bdf, vendor, device, class): PCI devices that discovery must skip.
DECOYS = (
    ("0000:00:00.0", "0x1022", "0x14a4", "0x060000"),  # AMD (CPU vendor id) host bridge
    ("0000:04:00.0", "0x1002", "0x1478", "0x060400"),  # AMD/ATI switch port: no partitions
)
READ_ONLY = {"vendor", "device", "class", "available_compute_partition", "available_memory_partition"}
MODULE_IN_USE = "modprobe: FATAL: Module amdgpu is in use.\n"
AUTO = USER_PARTT_MODE["AUTO"]
CPU_NODES = 2


@dataclass
class SimState:
    model: str
    gpus: list[dict[str, str]]  # per GPU in PCI order: bdf, compute, memory
    user_partt_mode: int = AUTO
    pending_memory: str | None = None  # requested NPS mode, applied hive-wide at reload
    holders: dict[int, list[int]] = field(default_factory=dict)  # pid -> physical indices
    resetting: list[int] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=lambda: {"writes": 0, "reloads": 0})

    @property
    def spec(self) -> GpuModel:
        return MODELS[self.model]


def is_sim(root: Path) -> bool:
    return (Path(root) / SIM_DIR).is_dir()


def create(root: Path, model: str = "mi300x", gpus: int = 8, compute: str = "SPX",
           memory: str = "NPS1") -> None:
    """Make ROOT a simulated host (or start an existing one afresh)."""
    root = Path(root)
    spec = MODELS.get(model.lower())
    if spec is None:
        raise UserError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    compute, memory = compute.upper(), memory.upper()
    for kind, mode, known in (("compute", compute, spec.compute_modes), ("memory", memory, spec.memory_modes)):
        if mode not in known:
            raise UserError(f"{spec.name} has no {kind} mode {mode}; use one of {', '.join(known)}")
    if not compatible(compute, memory, spec.xcc_count):
        raise UserError(f"compute mode {compute} is not valid under memory mode {memory} (the driver refuses it)")
    if not 1 <= gpus <= MAX_GPUS:
        raise UserError(f"--gpus must be 1..{MAX_GPUS}, not {gpus}")
    if root.exists() and not (root.is_dir() and (is_sim(root) or not any(root.iterdir()))):
        raise UserError(f"{root}: exists and is not an empty directory or a simulated host")
    (root / SIM_DIR).mkdir(parents=True, exist_ok=True)
    bdfs = [f"{i // 8:04x}:{BOARD_BUSES[i % 8]}:00.0" for i in range(gpus)]
    state = SimState(spec.name, [{"bdf": b, "compute": compute, "memory": memory} for b in bdfs])
    with _lock(root):
        for top in TOP_DIRS:
            shutil.rmtree(root / top, ignore_errors=True)
        _build_static(root, state)
        _commit(root, state)


def read_state(root: Path) -> SimState:
    path = Path(root) / SIM_DIR / "state.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: not a simulated host (make one with 'mipart sim create')") from None
    data["holders"] = {int(pid): held for pid, held in data["holders"].items()}
    return SimState(**data)


def kernel_write(root: Path, bdf: str, attr: str, value: str) -> None:
    """What the driver does when ROOT/bus/pci/devices/BDF/ATTR is written.

    Raises OSError with the kernel's errno. Every call counts as a write, failed or not,
    so tests can prove that nothing was written.
    """
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        state.counters["writes"] += 1
        _drop_exited(state)
        try:
            changed = _apply_write(state, root / "bus/pci/devices" / bdf / attr, bdf, attr, value)
        except OSError:
            _save(root, state)
            raise
        _commit(root, state, render=changed)


def _apply_write(state: SimState, path: Path, bdf: str, attr: str, value: str) -> bool:
    """Apply one write to the state; True when the tree must be rebuilt."""
    index = next((i for i, g in enumerate(state.gpus) if g["bdf"] == bdf), None)
    if index is None:
        raise _error(errno.ENOENT, path)
    gpu, spec, mode = state.gpus[index], state.spec, value.strip().upper()
    if attr == "current_compute_partition":
        # Order as in amdgpu_gfx_set_compute_partition and aqua_vanjaram_switch_partition_mode.
        if mode not in KERNEL_COMPUTE_MODES:
            raise _error(errno.EINVAL, path)
        if index in state.resetting:
            raise _error(errno.EPERM, path)
        if mode == gpu["compute"]:
            return False
        if mode not in spec.compute_modes or not compatible(mode, gpu["memory"], spec.xcc_count):
            raise _error(errno.EINVAL, path)
        if any(index in held for held in state.holders.values()):
            raise _error(errno.EBUSY, path)
        gpu["compute"] = mode
        return True
    if attr == "current_memory_partition":
        if mode not in spec.memory_modes:
            raise _error(errno.EINVAL, path)
        if mode != gpu["memory"]:
            state.pending_memory = mode  # the whole hive switches at the next driver load
        return False
    raise _error(errno.EACCES if attr in READ_ONLY else errno.ENOENT, path)


def _error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def reload(root: Path) -> None:
    """`modprobe -r amdgpu && modprobe amdgpu`: apply a pending NPS request, reset compute modes.

    With a GPU user left it fails as modprobe does (CalledProcessError, exit status 1,
    the modprobe line as stderr) and changes nothing.
    """
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        _drop_exited(state)
        if state.holders:
            raise subprocess.CalledProcessError(1, ["modprobe", "-r", "amdgpu"], "", MODULE_IN_USE)
        for gpu in state.gpus:
            gpu["memory"] = state.pending_memory or gpu["memory"]
            gpu["compute"] = _compute_at_load(state, gpu["memory"])
        state.pending_memory = None
        state.counters["reloads"] += 1
        _commit(root, state)


def _compute_at_load(state: SimState, memory: str) -> str:
    """amdgpu.user_partt_mode decides; AUTO, or a mode the driver refuses, derives it from NPS."""
    names = {number: name for name, number in USER_PARTT_MODE.items()}
    wanted = names[state.user_partt_mode]
    if wanted in state.spec.compute_modes and compatible(wanted, memory, state.spec.xcc_count):
        return wanted
    return AUTO_COMPUTE_FOR_MEMORY[memory]


def _drop_exited(state: SimState) -> bool:
    """The kernel forgets a KFD user when its process exits; so does the simulator."""
    gone = [pid for pid in state.holders if not os.path.exists(f"/proc/{pid}")]
    for pid in gone:
        del state.holders[pid]
    return bool(gone)


def prune_exited(root: Path) -> None:
    """Bring ROOT/class/kfd/kfd/proc up to date with which holders still run."""
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        if _drop_exited(state):
            _commit(root, state)


def hold(root: Path, gpu_index: int, pid: int) -> None:
    """Make PID a KFD user of a physical GPU (as a ROCm process that opened it)."""
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        _check_index(state, gpu_index)
        held = state.holders.setdefault(pid, [])
        if gpu_index not in held:
            held.append(gpu_index)
            held.sort()
        _commit(root, state)


def release(root: Path, gpu_index: int | None = None, pid: int | None = None) -> None:
    """Drop holds: of one PID, on one GPU, both, or (neither given) all of them."""
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        if gpu_index is not None:
            _check_index(state, gpu_index)
        for holder in list(state.holders):
            if pid is not None and holder != pid:
                continue
            left = [] if gpu_index is None else [i for i in state.holders[holder] if i != gpu_index]
            if left:
                state.holders[holder] = left
            else:
                del state.holders[holder]
        _commit(root, state)


def set_resetting(root: Path, gpu_index: int, on: bool) -> None:
    """Mark a GPU as in the middle of a reset (compute writes then fail with EPERM)."""
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        _check_index(state, gpu_index)
        state.resetting = sorted((set(state.resetting) | {gpu_index}) if on else
                                 (set(state.resetting) - {gpu_index}))
        _commit(root, state, render=False)


def set_user_partt_mode(root: Path, mode: int) -> None:
    """Configure amdgpu.user_partt_mode (-2 AUTO .. 4 CPX), as /etc/modprobe.d would.

    Every reload uses it; ROOT/module/amdgpu/parameters shows it at once (the simulator
    does not tell the configured value from the one the module was loaded with).
    """
    if mode not in USER_PARTT_MODE.values():
        raise UserError(f"user_partt_mode must be one of {sorted(USER_PARTT_MODE.values())}, not {mode}")
    root = Path(root)
    with _lock(root):
        state = read_state(root)
        state.user_partt_mode = mode
        _commit(root, state)


def _check_index(state: SimState, gpu_index: int) -> None:
    if not 0 <= gpu_index < len(state.gpus):
        raise UserError(f"no GPU {gpu_index}: the simulated host has GPUs 0-{len(state.gpus) - 1}")


# --- persistence --------------------------------------------------------------------------


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    sim = root / SIM_DIR
    if not sim.is_dir():
        raise UserError(f"{root}: not a simulated host (make one with 'mipart sim create')")
    with open(sim / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _commit(root: Path, state: SimState, render: bool = True) -> None:
    _save(root, state)
    if render:
        _render(root, state)


def _save(root: Path, state: SimState) -> None:
    sim = root / SIM_DIR
    fd, tmp = tempfile.mkstemp(dir=sim, prefix=".state-")
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out, indent=1)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, sim / "state.json")


# --- the sysfs tree -----------------------------------------------------------------------


def _build_static(root: Path, state: SimState) -> None:
    """The parts a partition switch leaves alone: PCI devices and amdgpu_xcp platform devices."""
    spec = state.spec
    pci = root / "bus/pci/devices"
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
            ("available_compute_partition", ", ".join(spec.compute_modes)),
            ("available_memory_partition", ", ".join(spec.memory_modes)),
        ):
            _put(dev / name, text + "\n")
        # The PCI device carries partition 0's DRM nodes; the driver pre-creates seven
        # amdgpu_xcp platform devices per GPU for partitions 1..7.
        (dev / f"drm/card{8 * k}").mkdir(parents=True)
        (dev / f"drm/renderD{128 + 8 * k}").mkdir()
        for p in range(1, 8):
            drm = root / f"devices/platform/amdgpu_xcp.{7 * k + p - 1}/drm"
            drm.mkdir(parents=True)
            (drm / f"card{8 * k + p}").mkdir()
            (drm / f"renderD{128 + 8 * k + p}").mkdir()
    (root / "class/kfd").mkdir(parents=True)
    (root / USER_PARTT_PARAM).parent.mkdir(parents=True)


def _render(root: Path, state: SimState) -> None:
    """Show the state: the current_* files, and a fresh KFD tree swapped in by one rename.

    Like the real /sys/class/kfd/kfd, ROOT/class/kfd/kfd is a symlink; it points into
    .mipart-sim, so a reader sees either the old KFD tree or the new one, never half.
    """
    sim = root / SIM_DIR
    # The parameter is declared uint, so the kernel shows AUTO (-2) as 4294967294.
    _replace(root / USER_PARTT_PARAM, f"{state.user_partt_mode & 0xFFFFFFFF}\n")
    for gpu in state.gpus:
        dev = root / "bus/pci/devices" / gpu["bdf"]
        _replace(dev / "current_compute_partition", gpu["compute"] + "\n")
        _replace(dev / "current_memory_partition", gpu["memory"] + "\n")
    tree = Path(tempfile.mkdtemp(prefix="kfd-", dir=sim))
    os.chmod(tree, 0o755)
    _build_kfd(tree, state)
    link = root / "class/kfd/kfd"
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


def _build_kfd(tree: Path, state: SimState) -> None:
    """topology/nodes: CPU nodes, then one node per partition in PCI order; proc: holders."""
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
            _put_node(nodes / str(n), gpu_id, _properties(
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
            ))
            n += 1
    for pid, held in state.holders.items():
        (proc / str(pid)).mkdir()
        for k in held:
            for gpu_id in gpu_ids[k]:
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


PROPERTY_KEYS = ("cpu_cores_count", "simd_count", "mem_banks_count", "vendor_id", "device_id",
                 "location_id", "domain", "drm_render_minor", "hive_id", "num_xcc", "unique_id")


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
