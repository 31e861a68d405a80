"""The simulated host's GPU device files, and who has them open, as the kernel knows it.

A ROCm process opens /dev/kfd and the render node of each logical GPU it uses; from then
on the kernel counts it as a KFD user of those GPUs (EBUSY on a compute switch, "in use"
on a driver unload) until it closes them or exits. Under a simulated root those devices
are plain files, ROOT/dev/kfd and ROOT/dev/dri/renderD<minor>, and their users are found
the way `fuser` finds them: by the links in /proc/PID/fd. So a fake engine that opens its
spec's devices holds its GPUs exactly as long as a real vLLM would.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from mipart.gpu.modes import FIRST_RENDER_MINOR, PARTITION_SLOTS
from mipart.gpu.rocm_order import open_render
from mipart.names import DEVICE_CGROUP_VAR, DEVICES_VAR, SYSFS_ROOT_VAR

PROC = Path("/proc")
KFD_FILE = Path("dev/kfd")
RENDER_DIR = Path("dev/dri")
RENDER_PREFIX = "renderD"
MINORS_PER_GPU = PARTITION_SLOTS


def build(root: Path, gpus: int) -> None:
    """ROOT/dev/kfd, and a render node for every partition a GPU can have (like amdgpu_xcp's)."""
    (root / RENDER_DIR).mkdir(parents=True)
    for path in (KFD_FILE, *(RENDER_DIR / f"{RENDER_PREFIX}{minor}" for minor in all_minors(gpus))):
        (root / path).write_bytes(b"")
        os.chmod(root / path, 0o666)  # as udev makes /dev/kfd: any user may open it


def all_minors(gpus: int) -> range:
    return range(FIRST_RENDER_MINOR, FIRST_RENDER_MINOR + MINORS_PER_GPU * gpus)


def physical_of(minor: int) -> int:
    return (minor - FIRST_RENDER_MINOR) // MINORS_PER_GPU


def partition_of(minor: int) -> int:
    return (minor - FIRST_RENDER_MINOR) % MINORS_PER_GPU


def openers(root: Path) -> dict[int, list[int]]:
    """pid -> the render minors it has open, for every process that has ROOT/dev/kfd open."""
    dev = os.path.realpath(Path(root) / "dev")
    kfd, render = f"{dev}/kfd", f"{dev}/dri/{RENDER_PREFIX}"
    found = {}
    for pid in (int(name) for name in os.listdir(PROC) if name.isdigit()):
        fd_dir = PROC / str(pid) / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # exited, or not ours to look at
            continue
        has_kfd, minors = False, set()
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target == kfd:
                has_kfd = True
            elif target.startswith(render) and target[len(render) :].isdigit():
                minors.add(int(target[len(render) :]))
        if has_kfd:
            found[pid] = sorted(minors)
    return found


def gpus_in_use(openers_by_pid: Mapping[int, Sequence[int]], gpus: int) -> set[int]:
    """Physical GPUs these openers use; one with no render node open counts as using all."""
    used: set[int] = set()
    for minors in openers_by_pid.values():
        used |= {physical_of(m) for m in minors} if minors else set(range(gpus))
    return used


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
        open_render(path)

    return try_open


def open_devices(environ: Mapping[str, str] = os.environ) -> list[int]:
    """For the fake engine: open what DEVICES_VAR names and keep it open for the process's
    life, as vLLM holds its GPUs. Raises OSError for a device that is not there."""
    paths = [p for p in environ.get(DEVICES_VAR, "").split(":") if p]
    return [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in paths]
