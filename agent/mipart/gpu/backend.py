"""A GPU backend: one host's GPUs under a root directory (/sys on a real host), in all three
concerns, each a protocol of its own that callers type against: partitioning
(`gpu.partitioning`), who holds a GPU (`gpu.holders`) and health signals (`gpu.health_signals`).

Backends are sibling modules, registered in `mipart.gpu.BACKENDS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from mipart.gpu.health_signals import HealthSignals
from mipart.gpu.holders import GpuHolders
from mipart.gpu.partitioning import Partitioning


@runtime_checkable
class GpuBackend(Partitioning, GpuHolders, HealthSignals, Protocol):
    def __init__(self, root: Path) -> None:
        """A backend reads the host under `root` (by mipart.gpu.open_backend)."""
        ...

    @classmethod
    def claims(cls, root: Path) -> bool:
        """Whether this backend reads the host under `root` (asked by mipart.gpu.open_backend)."""
        ...
