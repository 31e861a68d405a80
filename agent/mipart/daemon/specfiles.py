"""The instance spec files under /run/mipart/instances/: what each launcher reads at start.

Blocking file I/O: the agent calls these from a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from mipart.fsutil import write_atomic
from mipart.paths import instance_spec_path
from mipart.serving.spec import InstanceSpec


def write_specs(run_dir: Path, specs: Mapping[int, InstanceSpec]) -> None:
    """Each spec atomically; one whose file already says the same is left untouched."""
    for number, spec in specs.items():
        path = instance_spec_path(number, run_dir)
        text = spec.file_text()
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        write_atomic(path, text)


def remove_stale_specs(run_dir: Path, keep: Iterable[int]) -> None:
    keep = set(keep)
    for path in (run_dir / "instances").glob("*.json"):
        if path.stem.isdigit() and int(path.stem) not in keep:
            path.unlink(missing_ok=True)


def restore_missing(run_dir: Path, specs: Mapping[int, InstanceSpec], log) -> None:
    """Someone removed spec files under /run/mipart: write them again."""
    missing = [n for n in specs if not instance_spec_path(n, run_dir).exists()]
    if missing:
        log.warning("files.missing", specs=",".join(map(str, missing)), action="rewrite")
        write_specs(run_dir, specs)
