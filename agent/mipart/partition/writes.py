"""One partition write as the kernel answers it (docs/partitioning.md, "The kernel's sysfs interface").

- EBUSY from a GPU a process holds: refused at once, naming the process and its unit.
- EBUSY with no holder of that GPU: 6.17-stable answers so for a while after a holder exits,
  its teardown still running although proc/<pid> is gone: retried within BUSY_WAIT. Still
  busy then with KFD processes elsewhere: a kernel before the 2025 per-device check, which
  refuses every switch while any KFD process runs; that line names them.
- A compute write the kernel takes is read back: in an SR-IOV VF switch_partition_mode is
  NULL, so a write "succeeds" and changes nothing.
"""

from __future__ import annotations

import errno
import time
from typing import Protocol

from mipart.errors import UserError
from mipart.gpu.holders import GpuHolders
from mipart.gpu.partitioning import COMPUTE_ATTR, Partitioning
from mipart.log import Log
from mipart.partition.clients import GpuBusyError, describe_holders, named
from mipart.partition.plan import Write
from mipart.values import HostState, PhysicalGpu

BUSY_WAIT = 5.0  # seconds an EBUSY nobody explains is retried
POLL = 0.2


class ApplyBackend(Partitioning, GpuHolders, Protocol):
    """What an apply asks of a GPU backend: partition its GPUs, and who holds them."""


def write(backend: ApplyBackend, state: HostState, gpu: PhysicalGpu, change: Write, log: Log) -> None:
    """Raises UserError (GpuBusyError when busy) in one line naming the GPU and what to do."""
    where = f"GPU {gpu.index} ({gpu.bdf}): {change.attribute}"
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        try:
            backend.write_attribute(gpu, change.attribute, change.value)
            break
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise UserError(backend.describe_write_error(exc, gpu, change.attribute, change.value)) from None
        holders = describe_holders(backend.gpu_users(state))
        mine = [h for h in holders if gpu.index in h.gpus]
        if mine:
            raise GpuBusyError(f"{where} busy: {named(mine)} holds the GPU; stop it, then rerun")
        if time.monotonic() >= deadline:
            if holders:
                raise GpuBusyError(
                    f"{where} busy although no process holds this GPU: this kernel refuses a compute switch while any "
                    f"KFD process runs (kernels before the 2025 per-device check): {named(holders)}; stop them, "
                    "then rerun"
                )
            raise GpuBusyError(
                f"{where} stayed busy for {BUSY_WAIT:g}s with no process holding it (the kernel still tearing one "
                "down); rerun"
            )
        log.info("partition.busy_retry", gpu=gpu.index, reason="EBUSY with no holder: a process still tearing down")
        time.sleep(POLL)


def read_back(backend: Partitioning, gpu: PhysicalGpu, change: Write) -> None:
    """A compute write the kernel took must show; raises UserError when the GPU reads another mode."""
    if change.attribute != COMPUTE_ATTR:
        return
    value = change.value
    now = next((g.compute for g in backend.discover().physical if g.bdf == gpu.bdf), None)
    if now != value.strip().upper():
        raise UserError(
            f"GPU {gpu.index} ({gpu.bdf}): the kernel took {COMPUTE_ATTR}={value} but the GPU reads "
            f"{now or 'nothing'}: its driver does not switch partitions here (in an SR-IOV VF the host sets them: "
            "switch_partition_mode is NULL); set the partition on the host, or leave gpus.compute unset for this GPU"
        )
