"""The simulated host's GPU device files, and who has them open, as the kernel knows it.

A process that opens /dev/kfd gets a KFD device for every GPU partition its device cgroup
allows (docs/partitioning.md), and from then on holds those GPUs (EBUSY on a compute switch)
until it closes it or exits; an unconfined one holds them all. Any open card or render node,
KFD's or not, keeps the driver in use ("in use" on an unload). Under a simulated root those
devices are plain files, ROOT/dev/kfd and ROOT/dev/dri/{renderD,card}<minor>, and their users
are found the way `fuser` finds them: by the links in /proc/PID/fd. The simulator cannot see
cgroups, so a process's device cgroup is what its environment declares (DEVICE_CGROUP_VAR: the
launcher gives an instance exactly what its unit's DeviceAllow= allows).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from mipart.gpu.modes import FIRST_RENDER_MINOR, PARTITION_SLOTS
from mipart.gpu.openers import holding
from mipart.names import DEVICE_CGROUP_VAR, DEVICES_VAR, SYSFS_ROOT_VAR
from mipart.runners.procfs import environ_of

KFD_FILE = Path("dev/kfd")
RENDER_DIR = Path("dev/dri")
RENDER_PREFIX = "renderD"
CARD_PREFIX = "card"
MINORS_PER_GPU = PARTITION_SLOTS


def build(root: Path, gpus: int) -> None:
    """ROOT/dev/kfd, and a render and a card node for every partition a GPU can have (like amdgpu_xcp's)."""
    (root / RENDER_DIR).mkdir(parents=True)
    names = [f"{prefix}{minor}" for minor in all_minors(gpus) for prefix in (RENDER_PREFIX,)]
    names += [f"{CARD_PREFIX}{minor - FIRST_RENDER_MINOR}" for minor in all_minors(gpus)]
    for path in (KFD_FILE, *(RENDER_DIR / name for name in names)):
        (root / path).write_bytes(b"")
        os.chmod(root / path, 0o666)  # as udev makes /dev/kfd: any user may open it


def all_minors(gpus: int) -> range:
    return range(FIRST_RENDER_MINOR, FIRST_RENDER_MINOR + MINORS_PER_GPU * gpus)


def openers(root: Path) -> dict[int, dict[str, Any]]:
    """Every process with one of the root's GPU device files open, as the kernel knows it:
    pid -> {"kfd": has /dev/kfd open, "drm": the card/render nodes it has open (names),
    "cgroup": the render minors its device cgroup allows, None for all}."""
    dev = Path(os.path.realpath(Path(root) / "dev"))
    kfd, dri = str(dev / "kfd"), dev / "dri"
    files = [kfd, *(str(dri / name) for name in os.listdir(dri))]
    found = {}
    for pid, opened in holding(files).items():
        allowed = cgroup(environ_of(pid)) if kfd in opened else None
        found[pid] = {
            "kfd": kfd in opened,
            "drm": sorted(Path(p).name for p in opened if p != kfd),
            "cgroup": None if allowed is None else sorted(_minor(p) for p in allowed if _minor(p) is not None),
        }
    return found


def _minor(path: str) -> int | None:
    name = Path(path).name
    number = name[len(RENDER_PREFIX) :]
    return int(number) if name.startswith(RENDER_PREFIX) and number.isdigit() else None


def device_env(root: Path, devices: Iterable[str]) -> dict[str, str]:
    """For the launcher (through the simulated root's backend): the spec's devices as that
    root's files, in DEVICES_VAR for the fake engine to open, the root it enumerates GPUs
    from, and its device cgroup (DEVICE_CGROUP_VAR): the simulator cannot see cgroups, and the
    spec's devices are exactly what the instance's unit allows it (DeviceAllow=)."""
    files = ":".join(str(Path(root).resolve() / device.lstrip("/")) for device in devices)
    return {DEVICES_VAR: files, DEVICE_CGROUP_VAR: files, SYSFS_ROOT_VAR: str(Path(root).resolve())}


def cgroup(environ: Mapping[str, str]) -> set[str] | None:
    """The device files a process's (simulated) device cgroup allows; None: unconfined."""
    if DEVICE_CGROUP_VAR not in environ:
        return None
    return {p for p in environ[DEVICE_CGROUP_VAR].split(":") if p}


def opener(root: Path, environ: Mapping[str, str]) -> Callable[[str], None]:
    """How ROCm's open of a render node goes for a process with `environ` on this root: EPERM
    outside its device cgroup (as the kernel's device controller answers), else a real open of
    the root's file (which a real cgroup may refuse too, where the file is a device node)."""
    base, allowed = Path(root).resolve(), cgroup(environ)

    def try_open(device: str) -> None:
        path = str(base / device.lstrip("/"))
        if allowed is not None and path not in allowed:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), path)
        # Read-only: a unit sees the root read-only (ProtectSystem=strict), and where the file is a
        # plain one, only a device node's cgroup check means anything.
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))

    return try_open


def open_devices(environ: Mapping[str, str] = os.environ) -> list[int]:
    """For the fake engine: open what DEVICES_VAR names and keep it open for the process's
    life, as vLLM holds its GPUs. Raises OSError for a device that is not there."""
    paths = [p for p in environ.get(DEVICES_VAR, "").split(":") if p]
    return [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]
