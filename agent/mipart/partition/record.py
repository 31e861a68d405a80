"""The last `partition apply` and its result, in /run/mipart/partition.json for the status API.

The file carries its format's version. A record without one predates versions and has
version 1's fields; a record of a version this mipart does not know is not guessed at.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from mipart.fsutil import write_atomic
from mipart.paths import run_dir

if TYPE_CHECKING:
    from mipart.partition.apply import ApplyResult

RECORD_NAME = "partition.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class PartitionRecord:
    time: float | None
    ok: bool
    error: str
    profile_digest: str
    result: dict[str, Any] | None  # partition.apply.ApplyResult's fields
    version: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionRecord:
        """Raises ValueError for a record of another version; tolerates missing fields."""
        version = data.get("version", 1)
        if version != RECORD_VERSION:
            raise ValueError(f"partition record version {version!r}, not {RECORD_VERSION}")
        when = data.get("time")
        result = data.get("result")
        return cls(
            time=float(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else None,
            ok=bool(data.get("ok")),
            error=str(data.get("error") or ""),
            profile_digest=str(data.get("profile_digest") or ""),
            result=result if isinstance(result, dict) else None,
        )


def record_apply(ok: bool, profile_digest: str, result: ApplyResult | None = None, error: str = "") -> None:
    """Best effort: a read-only or missing /run must not turn a good apply into a failure."""
    record = PartitionRecord(time.time(), ok, error, profile_digest, asdict(result) if result else None)
    try:
        write_atomic(run_dir() / RECORD_NAME, json.dumps(record.to_json(), indent=1) + "\n")
    except OSError:
        pass


def last_apply() -> dict[str, Any] | None:
    """The last record as PartitionRecord's JSON; None when there is none or it cannot be read."""
    try:
        data = json.loads((run_dir() / RECORD_NAME).read_text())
        return PartitionRecord.from_json(data).to_json() if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
