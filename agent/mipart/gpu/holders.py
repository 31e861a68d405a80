"""The holders seam: which processes hold a host's GPUs, and how a server comes to hold the
devices it is given.

A partition change needs every holder of the GPUs it touches gone (the kernel refuses it
with EBUSY otherwise), so the engine asks before it writes; the launcher asks what a server's
environment needs so that it holds its devices as the backend counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from mipart.values import GpuUser, HostState


@runtime_checkable
class GpuHolders(Protocol):
    def gpu_users(self, state: HostState) -> list[GpuUser]:
        """Processes that hold GPUs of `state`; a partition change needs them gone."""
        ...

    def device_openers(self, state: HostState) -> list[GpuUser]:
        """Processes with any of the driver's device files open (/dev/kfd, card and render nodes),
        KFD users or not (amd-smi's library, a metrics exporter): each keeps the driver in use, so
        a reload needs them gone. Each is given as holding every GPU: a reload changes them all."""
        ...

    def device_env(self, devices: Iterable[str]) -> dict[str, str]:
        """Environment a server needs beside its spec's to hold `devices` (paths as on a real host,
        e.g. /dev/kfd); empty where opening them is the server's own business, as on amdgpu."""
        ...

    def rocm_devices(self, environ: Mapping[str, str]) -> tuple[str, ...]:
        """The render nodes (paths as on a real host) ROCm enumerates, in its device order, for a
        server started from this process (its user, its device cgroup) with `environ`
        (gpu/rocm_order.py); the launcher turns them into the server's visible-devices value."""
        ...
