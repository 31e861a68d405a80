"""The simulated host's sysfs tree, rendered from its state for the amdgpu backend to read.

ROOT/bus and ROOT/devices are built once; the current_* files and the module parameter
are rendered again after each change, the KFD tree by sim/kfd.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mipart.gpu.amdgpu import AST_MODULE, PCI_DEVICES
from mipart.gpu.kernel_table import NPS_CONFIGS, PARTITION_CONFIG
from mipart.gpu.modes import PARTITION_SLOTS, logical_number, render_minor
from mipart.gpu.topology import KFD
from mipart.names import BACKEND_MARKER
from mipart.sim import devices
from mipart.sim.state import SimState

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
XCP_DEVICES = "devices/platform/amdgpu_xcp_"  # + N: a partition's platform device
# The loaded module's value (what the last load used; the next load reads modprobe.d: gpu/modprobe.py).
USER_PARTT_PARAM = Path("module/amdgpu/parameters/user_partt_mode")


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
        if len(state.memory_modes) > 1 and state.switches_nps:
            _put(dev / "available_memory_partition", ", ".join(state.memory_modes) + "\n")
        if state.partition_config:
            (dev / PARTITION_CONFIG).mkdir()
            _put(dev / PARTITION_CONFIG / "supported_xcp_configs", ", ".join(state.pairs) + "\n")
        # The PCI device carries partition 0's DRM nodes; the driver pre-creates seven
        # amdgpu_xcp_N platform devices per GPU (mainline's name) for partitions 1..7.
        for p in range(PARTITION_SLOTS):
            number = logical_number(k, p)
            drm = dev / "drm" if p == 0 else root / f"{XCP_DEVICES}{(PARTITION_SLOTS - 1) * k + p - 1}/drm"
            drm.mkdir(parents=True)
            (drm / f"card{number}").mkdir()
            (drm / f"renderD{render_minor(number)}").mkdir()
    (root / KFD).parent.mkdir(parents=True)
    (root / USER_PARTT_PARAM).parent.mkdir(parents=True)
    if state.bmc_ast:
        (root / AST_MODULE).mkdir(parents=True)
    devices.build(root, len(state.gpus))
    _put(root / BACKEND_MARKER, BACKEND + "\n")


def render(root: Path, state: SimState) -> None:
    """Show the state in the PCI devices' files and the module parameter (sim/kfd.py renders KFD's)."""
    # The parameter is declared uint, so the kernel shows AUTO (-2) as 4294967294.
    _replace(root / USER_PARTT_PARAM, f"{state.user_partt_mode & 0xFFFFFFFF}\n")
    for index, gpu in enumerate(state.gpus):
        dev = root / PCI_DEVICES / gpu["bdf"]
        if state.init_failed:  # amdgpu did not bind: no partition attributes, no KFD node
            (dev / "current_compute_partition").unlink(missing_ok=True)
            continue
        _replace(dev / "current_compute_partition", gpu["compute"] + "\n")
        _replace(dev / "current_memory_partition", gpu["memory"] + "\n")
        # Mainline lists only the modes valid under the current memory mode.
        offered = [c for c, memory in state.pairs.items() if gpu["memory"] in memory]
        _replace(dev / "available_compute_partition", (", ".join(offered) or "Not supported") + "\n")
        render_config(root, state, index)


def render_config(root: Path, state: SimState, index: int) -> None:
    """compute_partition_config/: the mode xcp_config previews, and the memory modes it runs under."""
    if not state.partition_config:
        return
    gpu = state.gpus[index]
    config = root / PCI_DEVICES / gpu["bdf"] / PARTITION_CONFIG
    preview = gpu.get("xcp_config", gpu["compute"])
    _replace(config / "xcp_config", preview + "\n")
    if state.switches_nps:  # else absent, as amdgpu_xcp_cfg_sysfs_init leaves it
        _replace(config / NPS_CONFIGS, (", ".join(state.pairs.get(preview, ())) or "Not supported") + "\n")


def _put(path: Path, text: str) -> None:
    with open(path, "w") as out:
        out.write(text)


def _replace(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.new")
    _put(staged, text)
    os.replace(staged, path)
