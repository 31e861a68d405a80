"""The GPU side: partition rules, and the backends that read and change a host's GPUs.

A backend is a sibling module with a class that satisfies `gpu.backend.GpuBackend` and
a `claims(root)` class method; adding one means adding its line to BACKENDS.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mipart.names import DEFAULT_SYSFS_ROOT, SYSFS_ROOT_VAR

if TYPE_CHECKING:  # the profile validator imports gpu.modes, so this package stays light
    from mipart.gpu.backend import GpuBackend
    from mipart.values import HostState

# "module:class", asked in order whether it claims a root; amdgpu, last, claims any root.
# Imported only when asked, so `mipart validate` (which reads gpu.modes) pays for none.
BACKENDS = (
    "mipart.sim.backend:SimBackend",
    "mipart.gpu.amdgpu:AmdgpuBackend",
)


def sysfs_root() -> Path:
    return Path(os.environ.get(SYSFS_ROOT_VAR, DEFAULT_SYSFS_ROOT))


def open_backend(root: Path | None = None) -> GpuBackend:
    """The backend for the host under `root` (default: MIPART_SYSFS_ROOT, else /sys)."""
    root = sysfs_root() if root is None else Path(root)
    for entry in BACKENDS:
        module, name = entry.split(":")
        backend = getattr(importlib.import_module(module), name)
        if backend.claims(root):
            return backend(root)
    raise LookupError(f"no GPU backend in mipart.gpu.BACKENDS claims {root}")


def discover(root: Path | None = None) -> HostState:
    """Physical and logical GPUs of the host under `root`."""
    return open_backend(root).discover()
