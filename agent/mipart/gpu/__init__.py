"""The GPU side: partition rules, and the backends that read and change a host's GPUs.

A backend is a sibling module with a class that satisfies `gpu.backend.GpuBackend` and
a `claims(root)` class method; adding one means adding its line to BACKENDS.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from mipart.errors import UserError
from mipart.names import BACKEND_MARKER, DEFAULT_SYSFS_ROOT, SYSFS_ROOT_VAR

if TYPE_CHECKING:  # the profile validator imports gpu.modes, so this package stays light
    from mipart.gpu.backend import GpuBackend
    from mipart.values import HostState

# Production backends only, as "module:class", asked in order whether they claim a root;
# amdgpu, last, claims any root. Imported only when asked, so `mipart validate` (which reads
# gpu.modes) pays for none.
#
# A root that is no real host (a simulated one, a test's) is not in this list: it names its
# own backend in ROOT/BACKEND_MARKER ("module:class" inside mipart; `mipart sim create`
# writes the simulator's), which open_backend takes before asking BACKENDS. So production
# code imports no simulator unless the root it is pointed at asks for one.
BACKENDS = ("mipart.gpu.amdgpu:AmdgpuBackend",)
MARKED_BACKEND = re.compile(r"mipart(\.[a-z_][a-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*")
MARKER_ADVICE = "name one as module:class inside mipart, e.g. mipart.sim.backend:SimBackend (on a real host, remove it)"


def sysfs_root() -> Path:
    return Path(os.environ.get(SYSFS_ROOT_VAR, DEFAULT_SYSFS_ROOT))


def open_backend(root: Path | None = None) -> GpuBackend:
    """The backend for the host under `root` (default: MIPART_SYSFS_ROOT, else /sys)."""
    root = sysfs_root() if root is None else Path(root)
    marked = _marked_backend(root)
    if marked is not None:
        return _build(marked, root, f"{root / BACKEND_MARKER}: names", MARKER_ADVICE)
    for entry in BACKENDS:
        if _backend_class(entry, "mipart.gpu.BACKENDS has", "reinstall mipart").claims(root):
            return _build(entry, root, "mipart.gpu.BACKENDS has", "reinstall mipart")
    raise LookupError(f"no GPU backend in mipart.gpu.BACKENDS claims {root}")


def discover(root: Path | None = None) -> HostState:
    """Physical and logical GPUs of the host under `root`."""
    return open_backend(root).discover()


def _marked_backend(root: Path) -> str | None:
    """The backend a root names for itself; None for a root without a marker (a real host)."""
    marker = root / BACKEND_MARKER
    try:
        entry = marker.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UserError(f"{marker}: cannot be read ({exc.strerror}); make it readable, or remove it") from None
    if not MARKED_BACKEND.fullmatch(entry):
        raise UserError(f"{marker}: names {entry!r}, not a GPU backend; {MARKER_ADVICE}")
    return entry


def _backend_class(entry: str, where: str, advice: str) -> type[GpuBackend]:
    module, name = entry.split(":")
    try:
        found: type[GpuBackend] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(f"{where} {entry!r}, which is no class mipart has; {advice}") from None
    return found


def _build(entry: str, root: Path, where: str, advice: str) -> GpuBackend:
    from mipart.gpu.backend import GpuBackend

    try:
        backend = _backend_class(entry, where, advice)(root)
    except TypeError:  # a class of mipart's that is not built from a root
        backend = None
    if not isinstance(backend, GpuBackend):
        raise UserError(f"{where} {entry!r}, which is not a GPU backend (mipart.gpu.backend.GpuBackend); {advice}")
    return backend
