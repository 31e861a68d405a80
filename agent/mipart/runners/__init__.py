"""Who runs instances and nginx: systemd units, or local processes (demo, tests).

Each runner is a sibling module implementing runners.base.Runner; register a new one in RUNNERS.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base imports nginx.files: a CLI verb that only reads unit states must not pay for it
    from mipart.runners.base import Runner

# kind -> "module:class"; imported only when chosen (the systemd runner needs a system bus).
RUNNERS = {
    "systemd": "mipart.runners.systemd:SystemdRunner",
    "process": "mipart.runners.process:ProcessRunner",
}


def make_runner(kind: str, run_dir: Path) -> Runner:
    from mipart.runners.base import Runner

    module, name = RUNNERS[kind].split(":")
    runner = getattr(importlib.import_module(module), name)(run_dir)
    if not isinstance(runner, Runner):  # a registry line that names something else
        raise TypeError(f"mipart.runners.RUNNERS[{kind!r}] is {RUNNERS[kind]}, which is not a runners.base.Runner")
    return runner
