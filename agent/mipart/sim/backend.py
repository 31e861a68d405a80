"""The simulated host's GPU backend: the amdgpu backend reading a `mipart sim` root, which
names it in its marker file (mipart.gpu.open_backend).

Reading is the amdgpu backend's own file I/O. Only what plain files cannot do differs:
a write goes to the simulated driver (sim/kernel.py), which refuses it with the errno
the kernel would use; the KFD users are brought up to date (who has the root's device
files open) before anyone asks; and a reload, unless MIPART_RELOAD_CMD says otherwise,
is the simulator's. A reload command that would run the real driver's module tools is
refused: on a GPU host it would unload amdgpu under the real GPUs' users.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from mipart.gpu import attrs, driver, rocm_order
from mipart.gpu.amdgpu import PCI_DEVICES, AmdgpuBackend
from mipart.gpu.partitioning import COMPUTE_ATTR
from mipart.names import RELOAD_CMD_VAR
from mipart.sim import devices, kernel
from mipart.sim.state import is_sim, read_state
from mipart.values import GpuUser, HostState, PhysicalGpu


class SimBackend(AmdgpuBackend):
    @classmethod
    def claims(cls, root: Path) -> bool:
        return is_sim(root)

    def reload_command(self) -> str:
        """Raises ReloadError for a command that would reload the real driver."""
        own = shlex.join([sys.executable, "-m", "mipart", "sim", "reload", str(self.root)])
        command = driver.reload_command(own)
        if driver.reloads_real_driver(command):
            raise driver.ReloadError(
                f"{RELOAD_CMD_VAR}={command!r} would reload the real amdgpu driver, but {self.root} is a simulated "
                "host; "
                f"unset {RELOAD_CMD_VAR} (the simulator reloads itself) or set it to `mipart sim reload {self.root}`"
            )
        return command

    def discover(self) -> HostState:
        """During a GPU's reset the kernel refuses its partition attributes with EPERM."""
        state = read_state(self.root)
        for index in state.resetting:
            path = self.root / PCI_DEVICES / state.gpus[index]["bdf"] / COMPUTE_ATTR
            raise attrs.read_error(path, OSError(errno.EPERM, os.strerror(errno.EPERM), str(path)))
        return super().discover()

    def host_path(self, path: str) -> Path:
        """The host's files (/etc/modprobe.d, /proc/cmdline, /dev) are the root's own."""
        return self.root / path.lstrip("/")

    def write_attribute(self, gpu: PhysicalGpu, name: str, value: str) -> None:
        kernel.kernel_write(self.root, gpu.bdf, name, value)

    def gpu_users(self, state: HostState) -> list[GpuUser]:
        kernel.refresh_users(self.root)
        return super().gpu_users(state)

    def device_env(self, devices_wanted: Iterable[str]) -> dict[str, str]:
        """The fake engine opens the root's device files (DEVICES_VAR), and so holds its GPUs."""
        return devices.device_env(self.root, devices_wanted)

    def rocm_devices(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        """As ROCm would enumerate the root's GPUs for a server with `environ` (its device cgroup)."""
        return rocm_order.render_nodes(self.root, devices.opener(self.root, environ))
