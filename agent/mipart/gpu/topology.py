"""The KFD topology, read as ROCm's libhsakmt reads it (docs/partitioning.md, "KFD topology").

On every partition change the kernel rebuilds the node directories under
class/kfd/kfd/topology/nodes and changes topology/generation_id; libhsakmt reads the
generation before and after a walk and walks again when it moved. A node that vanishes
mid-walk (ENOENT, or ENODEV from an attribute of a removed node) is a change too, and so is a
walk that caught the rebuild half done. `consistent` retries each, a bounded number of
times, then says in one line that the topology kept changing: never a crash, never a
diagnosis made from half a rebuild.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mipart.errors import UserError
from mipart.gpu import attrs

KFD = Path("class/kfd/kfd")
TOPOLOGY = KFD / "topology"
NODES = TOPOLOGY / "nodes"
GENERATION = TOPOLOGY / "generation_id"
NODE_KEYS = ("location_id", "domain", "drm_render_minor")  # what every GPU node must carry
TRIES = 25  # walks while the generation moves; about a second and a half in all
PAUSE = 0.05  # seconds between walks, jittered so two readers do not keep meeting one writer
SETTLE_TRIES = 3  # more walks that must find the same unsettled state (or file gone) before it is the truth

T = TypeVar("T")


@dataclass(frozen=True)
class KfdNode:
    """One GPU node (a logical GPU): its node number, KFD gpu_id and `properties`."""

    node_id: int
    gpu_id: int
    properties: dict[str, int]

    def prop(self, key: str) -> int:
        return self.properties.get(key, 0)


class TopologyChanging(UserError):
    """The topology kept changing for every walk mipart made."""


def gpu_nodes(root: Path) -> tuple[KfdNode, ...]:
    """One walk: the GPU nodes in node order (ROCm's device order); CPU nodes have gpu_id 0.

    Raises attrs.Vanished for a node that went away under the walk."""
    nodes_dir = root / NODES
    try:
        names = [name for name in os.listdir(nodes_dir) if name.isdigit()]
    except FileNotFoundError:
        return ()  # no KFD (amdkfd not loaded, or a tree without one)
    except OSError as exc:  # e.g. a server's user who may not read it
        raise attrs.read_error(nodes_dir, exc) from exc
    found = []
    for name in sorted(names, key=int):
        node = nodes_dir / name
        gpu_id = attrs.integer(node / "gpu_id")
        if gpu_id:
            found.append(KfdNode(int(name), gpu_id, attrs.properties(node / "properties", NODE_KEYS)))
    return tuple(found)


def generation(root: Path) -> int | None:
    """topology/generation_id; None where there is none (an older kernel, a hand-made tree)."""
    path = root / GENERATION
    try:
        path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise attrs.read_error(path, exc) from exc
    return attrs.integer(path)


def consistent(root: Path, read: Callable[[], T], settled: Callable[[T], bool] = lambda _: True) -> T:
    """`read()` once the generation stayed put around it and it read whole and `settled`.

    The generation may move only after a rebuild, so a walk within one generation can still
    have met one: a walk that found a file gone, or a state not `settled`, is walked again, and
    taken as the truth only when SETTLE_TRIES more walks in a row, all in one generation, found
    the same (a missing file is then reported as it is; an unsettled state is the host's, e.g.
    partitions a BMC's DRM driver hides). A writer that switches back and forth shows the same
    half-built state in each rebuild, but in a new generation each time: never the truth."""
    last: object = None
    same = 0
    for _ in range(TRIES):
        before = generation(root)
        try:
            value: T | attrs.Vanished = read()
        except attrs.Vanished as exc:
            value = exc
        if generation(root) != before:
            last, same = None, 0  # a rebuild between walks: repeats across it are two rebuilds' windows
        else:
            if not isinstance(value, attrs.Vanished) and settled(value):
                return value
            seen = (before, str(value) if isinstance(value, attrs.Vanished) else value)
            same = same + 1 if seen == last else 0
            last = seen
            if same >= SETTLE_TRIES:
                if isinstance(value, attrs.Vanished):
                    raise value
                return value
        time.sleep(PAUSE * random.uniform(0.5, 1.5))
    raise TopologyChanging(
        f"{root / TOPOLOGY} kept changing while mipart read it ({TRIES} tries): another process is switching GPU "
        "partitions or reloading the driver; rerun when it is done"
    )
