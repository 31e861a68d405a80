"""The partitioning seam: what the partition engine asks of a GPU driver to read its rules,
write modes and reload.

The planner never calls it: `partition.apply` reads the host through it and hands the
planner plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from mipart.gpu.discovery import Discovery
from mipart.gpu.pair_tables import PairTable
from mipart.values import LoadMode, PhysicalGpu

# The two attributes a partition plan writes. Named as amdgpu's sysfs files, which the
# plan's output shows; another backend maps them onto its own interface.
COMPUTE_ATTR = "current_compute_partition"
MEMORY_ATTR = "current_memory_partition"


@runtime_checkable
class Partitioning(Discovery, Protocol):
    def pair_table(self, gpu: PhysicalGpu) -> PairTable:
        """The driver's rule for this GPU: compute mode -> the memory modes it runs under, and its source.

        Kernels differ, so it is read from the host where the driver shows it; a write it
        needs for that (a preview) changes no partition.
        """
        ...

    def drm_conflicts(self) -> tuple[str, ...]:
        """Other DRM drivers loaded that take device minors and can hide partitions' nodes."""
        ...

    def partitions(self, gpu: PhysicalGpu, compute: str) -> int:
        """How many logical GPUs this GPU shows in a compute mode."""
        ...

    def load_mode(self) -> LoadMode:
        """The compute mode the driver's next load sets on every GPU (AUTO: from the memory mode),
        and where that is configured; the planner refuses a reload that would leave GPUs out."""
        ...

    def write_attribute(self, gpu: PhysicalGpu, name: str, value: str) -> None:
        """Write COMPUTE_ATTR, MEMORY_ATTR (or a file pair_table previews with); a refusal is an
        OSError with the kernel's errno."""
        ...

    def describe_write_error(self, exc: OSError, gpu: PhysicalGpu, name: str, value: str) -> str:
        """One line: what the refusal means and what to do about it."""
        ...

    def reload_command(self) -> str:
        """What a reload runs, as the log shows it."""
        ...

    def reload(self, wait_until_back: Callable[[], bool]) -> None:
        """Reload the driver (applies a memory request), then wait until `wait_until_back()`.

        Raises UserError when the reload fails or the GPUs do not come back in time.
        """
        ...
