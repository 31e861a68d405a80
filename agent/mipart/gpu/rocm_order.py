"""Which GPUs ROCm enumerates from a process, in ROCm's device order (docs/partitioning.md, "Visibility").

ROCm's libhsakmt walks the KFD nodes in node order and skips every GPU node whose render node
it cannot open with ENOENT or EPERM (`topology_sysfs_check_node_supported`); any other
failure stops it. A GPU's ROCm index, which HIP_/ROCR_/CUDA_VISIBLE_DEVICES index into, is
its position among the nodes left. So inside a confined unit (DevicePolicy=closed +
DeviceAllow=) or a container a server's own GPUs are 0..k-1, unconfined they are their
positions among all, and after a runtime switch those move (the switched GPU's nodes go to
the end). The walk is made from the process that will exec the server, as its user and in
its cgroup, and read as libhsakmt reads the topology (gpu/topology.py).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from mipart.errors import UserError
from mipart.gpu import topology

SKIPPED = (errno.ENOENT, errno.EPERM)  # libhsakmt: "not supported", not an error


def render_node(minor: int) -> str:
    """A render node as on a real host: /dev/dri/renderD<minor>."""
    return f"/dev/dri/renderD{minor}"


def open_render(device: str) -> None:
    """Open and close a render node as libhsakmt does (read-write); OSError with the kernel's errno."""
    os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))


def render_nodes(root: Path, try_open: Callable[[str], None] = open_render) -> tuple[str, ...]:
    """The render nodes ROCm enumerates from here, in ROCm's order; `try_open(device)` opens one
    (a simulated host maps the device into its root)."""

    def walk() -> tuple[str, ...]:
        found = []
        for node in topology.gpu_nodes(root):
            device = render_node(node.prop("drm_render_minor"))
            try:
                try_open(device)
            except OSError as exc:
                if exc.errno in SKIPPED:
                    continue
                raise UserError(
                    f"{device}: cannot open: {exc.strerror}; ROCm would fail to start here too: check its mode and "
                    "group (render) and that the server's user is in that group"
                ) from None
            found.append(device)
        return tuple(found)

    return topology.consistent(root, walk)
