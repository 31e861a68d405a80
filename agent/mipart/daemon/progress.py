"""A rolling repartition's progress, recorded at each step in the run dir (rolling.json, root's,
0644), so an agent restart in the middle says where the change stopped and how to resume it.

The agent never continues a change on its own after a restart (an agent restart never
repartitions): it plans its instances on the layout the host has, reports the record, and
`systemctl reload mipart-agent` resumes, switching only the GPUs left.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mipart.fsutil import write_atomic
from mipart.names import REPARTITION_COMMAND

RECORD_NAME = "rolling.json"
RUNNING, STOPPED = "running", "stopped"


@dataclass(frozen=True)
class Progress:
    profile_digest: str
    state: str  # RUNNING while a step runs; STOPPED once it stopped at a GPU boundary
    step: int  # 1-based: the step running, or the one it stopped at
    steps: int
    gpus: tuple[int, ...]  # that step's GPUs
    switched: tuple[int, ...]  # GPUs switched by the steps before it
    left: tuple[int, ...]  # GPUs that step and the later ones would switch
    error: str = ""  # why it stopped

    def where(self) -> str:
        gpus = ",".join(map(str, self.gpus))
        switched = ",".join(map(str, self.switched)) or "none"
        return f"step {self.step} of {self.steps} (GPU {gpus}): GPUs switched before it: {switched}"

    def resume(self) -> str:
        return (
            f"run `{REPARTITION_COMMAND}` to resume: it plans again from the host's layout, "
            f"so only the GPUs left ({','.join(map(str, self.left))}) switch"
        )


def write(run_dir: Path, progress: Progress) -> None:
    """Best effort: a read-only run dir must not stop the change (the log has every step)."""
    try:
        write_atomic(run_dir / RECORD_NAME, json.dumps(asdict(progress)) + "\n", 0o644)
    except OSError:
        pass


def read(run_dir: Path) -> Progress | None:
    try:
        data: dict[str, Any] = json.loads((run_dir / RECORD_NAME).read_text())
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return Progress(**fields)
    except (OSError, ValueError, TypeError):
        return None


def clear(run_dir: Path) -> None:
    try:
        (run_dir / RECORD_NAME).unlink(missing_ok=True)
    except OSError:
        pass


def on_start(run_dir: Path) -> str:
    """At the agent's start: where an unfinished rolling change stopped, and how to resume ("" when none).

    A record still RUNNING means the agent was stopped or killed mid-step: it is kept as STOPPED."""
    found = read(run_dir)
    if found is None:
        return ""
    if found.state == RUNNING:
        found = replace(found, state=STOPPED, error="the agent stopped during the step")
        write(run_dir, found)
    return f"rolling repartition stopped at {found.where()}: {found.error}; {found.resume()}"
