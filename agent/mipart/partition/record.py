"""The last `partition apply` and its result, in /run/mipart/partition.json for the status API."""

from __future__ import annotations

import json
import time
from dataclasses import asdict

from mipart.fsutil import write_atomic
from mipart.paths import run_dir

RECORD_NAME = "partition.json"


def record_apply(ok: bool, profile_digest: str, result=None, error: str = "") -> None:
    """Best effort: a read-only or missing /run must not turn a good apply into a failure."""
    record = {"time": time.time(), "ok": ok, "error": error, "profile_digest": profile_digest, "result": asdict(result) if result else None}
    try:
        write_atomic(run_dir() / RECORD_NAME, json.dumps(record, indent=1) + "\n")
    except OSError:
        pass


def last_apply() -> dict | None:
    try:
        return json.loads((run_dir() / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
