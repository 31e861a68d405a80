"""What every GPU backend does first: find the host's GPUs under its root.

The concern protocols (`partitioning`, `health_signals`) build on it; a backend is built
with the root (`Backend(root)`, by mipart.gpu.open_backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from mipart.values import HostState


@runtime_checkable
class Discovery(Protocol):
    root: Path

    def discover(self) -> HostState:
        """Physical GPUs with their current modes, and the logical GPUs they show now.

        A host without partition-capable GPUs gives an empty state; unreadable facts raise UserError.
        """
        ...
