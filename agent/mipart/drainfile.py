"""The drain state: `/var/lib/mipart/drain.json` (paths.drain_path), `{"reason": str, "since": RFC 3339 UTC}`.

`mipart drain` writes it (atomically, root's, 0644) and `mipart undrain` removes it; the agent
reads it at start, on reload and at each unit check. It lives under the state dir, so a drain
taken for maintenance outlasts an agent restart and a reboot. Absent: not drained.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mipart.api.contract import iso_utc
from mipart.errors import UserError
from mipart.fsutil import write_atomic

REASON_MAX = 200  # characters: a reason is a line in status, logs and balancers' health-check output
DEFAULT_REASON = "maintenance"
FILE_MAX = 4096


class DrainFileError(UserError):
    """The drain file is there but is not one `mipart drain` wrote; str() says where and what."""


@dataclass(frozen=True)
class Drain:
    reason: str
    since: float  # wall clock

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "since": iso_utc(self.since) or ""}


def checked_reason(text: str) -> str:
    """The operator's reason as it goes into the file; UserError, one line, for one that would not fit a line."""
    if not text.strip():
        raise UserError("--reason is empty; give a few words, e.g. --reason 'driver update'")
    if len(text) > REASON_MAX:
        raise UserError(f"--reason is {len(text)} characters long; use at most {REASON_MAX}")
    if not text.isprintable():
        raise UserError("--reason holds a control character (a newline, a tab); write it on one line")
    return text.strip()


def read_drain(path: Path) -> Drain | None:
    """None when the file is absent; DrainFileError when it is there but unreadable or of another shape."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(FILE_MAX + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DrainFileError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(raw[:FILE_MAX].decode())
        reason, since = data["reason"], datetime.fromisoformat(data["since"].replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DrainFileError(
            f'{path}: not a drain file (want {{"reason": "...", "since": "RFC 3339 UTC"}}); '
            "run `mipart undrain` or `mipart drain` again"
        ) from None
    if not isinstance(reason, str) or since.tzinfo is None:
        raise DrainFileError(f"{path}: reason must be a string and since a time in UTC (ending in Z)")
    return Drain(reason, since.timestamp())


def write_drain(path: Path, reason: str) -> Drain:
    drain = Drain(reason, float(int(time.time())))  # to the second, as the file says it
    write_atomic(path, json.dumps(drain.to_json()) + "\n", mode=0o644)
    return drain


def remove_drain(path: Path) -> bool:
    """True when there was a file to remove."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
