"""The simulated host's GPU backend: the amdgpu backend reading a `mipart sim` root.

Reading is the amdgpu backend's own file I/O. Only what plain files cannot do differs:
a write goes to the simulated driver (sim/kernel.py), which refuses it with the errno
the kernel would use; holders that exited are forgotten before anyone asks; and a
reload, unless MIPART_RELOAD_CMD says otherwise, is the simulator's.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mipart.gpu import driver
from mipart.gpu.amdgpu import AmdgpuBackend
from mipart.sim import kernel
from mipart.sim.state import is_sim
from mipart.values import GpuUser, HostState, PhysicalGpu


class SimBackend(AmdgpuBackend):
    @classmethod
    def claims(cls, root: Path) -> bool:
        return is_sim(root)

    def reload_command(self) -> str:
        return driver.reload_command(shlex.join([sys.executable, "-m", "mipart", "sim", "reload", str(self.root)]))

    def write_attribute(self, gpu: PhysicalGpu, name: str, value: str) -> None:
        kernel.kernel_write(self.root, gpu.bdf, name, value)

    def gpu_users(self, state: HostState) -> list[GpuUser]:
        kernel.prune_exited(self.root)
        return super().gpu_users(state)
