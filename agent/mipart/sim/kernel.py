"""A simulated amdgpu driver, so partitioning can be tested without an Instinct GPU.

It renders a sysfs tree (sim/tree.py) that the amdgpu backend reads exactly like a real
host's, and it refuses partition writes and driver reloads the way the kernel does
(docs/partitioning.md). The simulated host's own backend (sim/backend.py) sends writes here.

State lives in ROOT/.mipart-sim/state.json (sim/state.py); every change happens under
its lock, so the CLI, the tests and the agent can drive one host from several processes.
Who holds a GPU, as the kernel counts it, is sim/users.py's; the KFD tree is sim/kfd.py's.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mipart.errors import UserError
from mipart.fsutil import write_atomic
from mipart.gpu import modprobe
from mipart.gpu.amdgpu import PCI_DEVICES
from mipart.gpu.kernel_table import XCP_CONFIG
from mipart.gpu.modes import (
    AUTO_COMPUTE_FOR_MEMORY,
    COMPUTE_MODES,
    MAX_PARTITIONABLE_GPUS,
    MAX_XCP_PLATFORM_DEVICE,
    PARTITION_SLOTS,
    USER_PARTT_MODE,
)
from mipart.gpu.pair_tables import MAINLINE, RULE_SETS
from mipart.gpu.parts import MODELS
from mipart.sim import gpu_signals, kfd, tree, users
from mipart.sim.state import AUTO, SIM_DIR, SimState, is_sim, locked, read_state, save
from mipart.sim.users import KFD_LOCKS

# PCI addresses of the 8 GPUs on a typical 8 x MI300X board; more GPUs go to further domains.
BOARD_BUSES = ("05", "26", "46", "65", "85", "a6", "c6", "e5")
MODPROBE_CONF = "etc/modprobe.d/amdgpu-partition.conf"  # where `set_user_partt_mode` configures the next load
# How the simulated kernel behaves: SimState fields `create` takes (`mipart sim create` options).
KERNEL_OPTIONS = ("rules", "partition_config", "bmc_ast", "sriov_vf", "hives", "kfd_lock", "busy_after_exit")
READ_ONLY = {
    "vendor",
    "device",
    "class",
    "available_compute_partition",
    "available_memory_partition",
    "compute_partition_config/supported_xcp_configs",
    "compute_partition_config/supported_nps_configs",
}
MODULE_IN_USE = "modprobe: FATAL: Module amdgpu is in use.\n"


def create(
    root: Path, model: str = "mi300x", gpus: int = 8, compute: str = "SPX", memory: str = "NPS1", **kernel: Any
) -> None:
    """Make ROOT a simulated host (or start an existing one afresh). `kernel`: how its kernel
    behaves, as SimState fields (KERNEL_OPTIONS)."""
    root = Path(root)
    spec = MODELS.get(model.lower())
    if spec is None:
        raise UserError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    unknown = sorted(set(kernel) - set(KERNEL_OPTIONS))
    if unknown:
        raise TypeError(f"no kernel option {', '.join(unknown)}")
    rules = kernel.get("rules", MAINLINE)
    if rules not in RULE_SETS:
        raise UserError(f"unknown rule set {rules!r}; known: {', '.join(RULE_SETS)}")
    if kernel.get("kfd_lock", KFD_LOCKS[0]) not in KFD_LOCKS:
        raise UserError(f"unknown KFD lock {kernel['kfd_lock']!r}; known: {', '.join(KFD_LOCKS)}")
    compute, memory = compute.upper(), memory.upper()
    state = SimState(spec.name, [], **kernel)
    for kind, mode, known in (("compute", compute, tuple(state.pairs)), ("memory", memory, state.memory_modes)):
        if mode not in known:
            raise UserError(
                f"{spec.name} has no {kind} mode {mode} under the {rules} rules; use one of {', '.join(known)}"
            )
    if memory not in state.pairs[compute]:
        raise UserError(
            f"compute mode {compute} is not valid under memory mode {memory} with the {rules} rules "
            f"(the driver refuses it; {compute} takes {' or '.join(state.pairs[compute])})"
        )
    if not 1 <= gpus <= MAX_PARTITIONABLE_GPUS:
        raise UserError(
            f"--gpus must be 1..{MAX_PARTITIONABLE_GPUS}, not {gpus}: amdgpu creates at most "
            f"{MAX_XCP_PLATFORM_DEVICE} partition platform devices, {PARTITION_SLOTS - 1} per GPU"
        )
    if not 0 <= state.hives <= gpus:
        raise UserError(f"--hives must be 0..{gpus} (0: no XGMI hive), not {state.hives}")
    if root.exists() and not (root.is_dir() and (is_sim(root) or not any(root.iterdir()))):
        raise UserError(f"{root}: exists and is not an empty directory or a simulated host")
    (root / SIM_DIR).mkdir(parents=True, exist_ok=True)
    bdfs = [f"{i // 8:04x}:{BOARD_BUSES[i % 8]}:00.0" for i in range(gpus)]
    state.gpus = [{"bdf": b, "compute": compute, "memory": memory} for b in bdfs]
    with locked(root):
        tree.clear(root)
        tree.build_static(root, state)
        _commit(root, state)


def kernel_write(root: Path, bdf: str, attr: str, value: str) -> None:
    """What the driver does when ROOT/bus/pci/devices/BDF/ATTR is written.

    Raises OSError with the kernel's errno. Every call to a partition attribute counts as
    a write, failed or not, so tests can prove that nothing was written; a preview (the
    xcp_config file) is no write: it changes no partition.
    """
    root = Path(root)
    with locked(root):
        state = read_state(root)
        if attr == XCP_CONFIG:
            index = _select_preview(state, root / PCI_DEVICES / bdf / attr, bdf, value)
            save(root, state)
            tree.render_config(root, state, index)
            return
        state.counters["writes"] += 1
        users_changed = users.refresh(root, state)
        try:
            changed = _apply_write(state, root / PCI_DEVICES / bdf / attr, bdf, attr, value)
        except OSError:
            _commit(root, state, render=users_changed)
            raise
        _commit(root, state, render=changed or users_changed)


def _select_preview(state: SimState, path: Path, bdf: str, value: str) -> int:
    """compute_partition_config/xcp_config: choose which mode the other files describe."""
    index = _gpu_of(state, path, bdf)
    mode = value.strip().upper()
    if not state.partition_config or mode not in state.pairs:
        raise _error(errno.EINVAL if state.partition_config else errno.ENOENT, path)
    gpu = state.gpus[index]
    if mode == gpu["compute"]:
        gpu.pop("xcp_config", None)  # shows the mode it runs, as before any preview
    else:
        gpu["xcp_config"] = mode
    return index


def _gpu_of(state: SimState, path: Path, bdf: str) -> int:
    index = next((i for i, g in enumerate(state.gpus) if g["bdf"] == bdf), None)
    if index is None:
        raise _error(errno.ENOENT, path)
    return index


def _apply_write(state: SimState, path: Path, bdf: str, attr: str, value: str) -> bool:
    """Apply one write to the state; True when the tree must be rebuilt."""
    index = _gpu_of(state, path, bdf)
    gpu, mode = state.gpus[index], value.strip().upper()
    if attr == "current_compute_partition":
        # Order as in amdgpu_gfx_set_compute_partition and aqua_vanjaram_switch_partition_mode.
        if mode not in COMPUTE_MODES:
            raise _error(errno.EINVAL, path)
        if state.sriov_vf:
            return False  # switch_partition_mode is NULL in a VF: the write "succeeds" and changes nothing
        if index in state.resetting:
            raise _error(errno.EPERM, path)
        if mode == gpu["compute"]:
            return False
        if gpu["memory"] not in state.pairs.get(mode, ()):
            raise _error(errno.EINVAL, path)
        if users.switch_busy(state, index):
            raise _error(errno.EBUSY, path)
        gpu["compute"] = mode
        # KFD re-adds the GPU's nodes at the end of its device list (kfd_topology_update_device_list).
        state.node_order = [k for k in state.kfd_order() if k != index] + [index]
        state.generation += 1
        return True
    if attr == "current_memory_partition":
        if mode not in state.memory_modes or not (state.switches_nps or mode == gpu["memory"]):
            raise _error(errno.EINVAL, path)
        if mode != gpu["memory"]:
            state.pending_memory[state.hive_of(index)] = mode  # that GPU's hive switches at the next load
        return False
    raise _error(errno.EACCES if attr in READ_ONLY else errno.ENOENT, path)


def _error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def reload(root: Path) -> None:
    """`modprobe -r amdgpu && modprobe amdgpu`: apply each hive's pending NPS request, reset compute modes.

    With a device file still open it fails as modprobe does (CalledProcessError, exit status 1,
    the modprobe line as stderr) and changes nothing.
    """
    root = Path(root)
    with locked(root):
        state = read_state(root)
        users_changed = users.refresh(root, state)
        if users.unload_blockers(state):
            if users_changed:
                _commit(root, state)
            raise subprocess.CalledProcessError(1, ["modprobe", "-r", "amdgpu"], "", MODULE_IN_USE)
        load = modprobe.load_mode(lambda path: root / path.lstrip("/"))
        state.user_partt_mode = USER_PARTT_MODE.get(load.mode, AUTO)  # the loaded value shows what it read
        state.init_failed = False
        for index, gpu in enumerate(state.gpus):
            gpu["memory"] = state.pending_memory.get(state.hive_of(index), gpu["memory"])
            compute = _compute_at_load(state, load.mode, gpu["memory"])
            state.init_failed |= not compute
            gpu["compute"] = compute or AUTO_COMPUTE_FOR_MEMORY[gpu["memory"]]  # unseen while init failed
            gpu.pop("xcp_config", None)  # a fresh driver previews the mode it runs
        state.pending_memory = {}
        state.node_order, state.teardown = [], {}  # a fresh load lists the GPUs in probe (PCI) order
        state.generation += 1
        state.counters["reloads"] += 1
        _commit(root, state)


def _compute_at_load(state: SimState, mode: str, memory: str) -> str:
    """The mode the driver sets from amdgpu.user_partt_mode at load, AUTO by NPS; "" when GPU init
    fails on it (a mode that does not run under `memory`: gfx_v9_4_3_cp_resume returns -EINVAL)."""
    if mode == "AUTO":
        return AUTO_COMPUTE_FOR_MEMORY[memory]
    return mode if memory in state.pairs.get(mode, ()) else ""


def refresh_users(root: Path) -> None:
    """Bring ROOT/class/kfd/kfd/proc up to date with who has the GPUs open now."""
    root = Path(root)
    with locked(root):
        state = read_state(root)
        if users.refresh(root, state):
            _commit(root, state)


def hold(root: Path, gpu_index: int, pid: int) -> None:
    """Make PID a KFD user of a physical GPU (as a ROCm process that opened it)."""
    with _editing(root, gpu_index) as state:
        held = state.holders.setdefault(pid, [])
        if gpu_index not in held:
            held.append(gpu_index)
            held.sort()


def release(root: Path, gpu_index: int | None = None, pid: int | None = None) -> None:
    """Drop holds: of one PID, on one GPU, both, or (neither given) all of them."""
    with _editing(root, gpu_index) as state:
        for holder in list(state.holders):
            if pid is not None and holder != pid:
                continue
            left = [] if gpu_index is None else [i for i in state.holders[holder] if i != gpu_index]
            if left:
                state.holders[holder] = left
            else:
                del state.holders[holder]


def set_resetting(root: Path, gpu_index: int, on: bool) -> None:
    """Start or finish a GPU's reset: meanwhile its partition attributes refuse reads and writes with
    EPERM (the simulated backend's reads; sim/backend.py) and its RAS counters read INACCESSIBLE."""
    with _editing(root, gpu_index, render=False) as state:
        dev = Path(root) / PCI_DEVICES / state.gpus[gpu_index]["bdf"]
        if on and gpu_index not in state.resetting:
            state.ras_saved[str(gpu_index)] = gpu_signals.hide_ras(dev)
        elif not on and gpu_index in state.resetting:
            gpu_signals.show_ras(dev, state.ras_saved.pop(str(gpu_index), {}))
        state.resetting = sorted((set(state.resetting) | {gpu_index}) if on else (set(state.resetting) - {gpu_index}))


def set_user_partt_mode(root: Path, mode: int) -> None:
    """Configure amdgpu.user_partt_mode for the next load, as `options amdgpu user_partt_mode=N` in
    ROOT/etc/modprobe.d does; the loaded module keeps its value until then."""
    if mode not in USER_PARTT_MODE.values():
        raise UserError(f"user_partt_mode must be one of {sorted(USER_PARTT_MODE.values())}, not {mode}")
    write_atomic(Path(root) / MODPROBE_CONF, f"options amdgpu user_partt_mode={mode}\n")


@contextmanager
def _editing(root: Path, gpu_index: int | None = None, render: bool = True) -> Iterator[SimState]:
    """One change of the simulated host: under its lock, on a checked GPU, saved (and rendered) after."""
    root = Path(root)
    with locked(root):
        state = read_state(root)
        if gpu_index is not None:
            _check_index(state, gpu_index)
        users_changed = users.refresh(root, state)
        yield state
        _commit(root, state, render or users_changed)


def _check_index(state: SimState, gpu_index: int) -> None:
    if not 0 <= gpu_index < len(state.gpus):
        raise UserError(f"no GPU {gpu_index}: the simulated host has GPUs 0-{len(state.gpus) - 1}")


def _commit(root: Path, state: SimState, render: bool = True) -> None:
    save(root, state)
    if render:
        kfd.remove_stale(root, state)
        tree.render(root, state)
        kfd.render(root, state, users.kfd_holds(state))
