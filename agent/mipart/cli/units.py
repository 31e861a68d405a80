"""What `mipart status` shows when the agent does not answer: each planned instance as its
unit reports it (systemd), and why it last ended (runners.exits: exit status, last log line).
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone

from mipart.paths import run_dir
from mipart.runners.exits import describe, exit_status, journal_line, log_file_line

UNIT_PROPERTIES = "Id,ActiveState,SubState,ExecMainStartTimestampMonotonic,ExecMainStatus,ExecMainCode,Result"
MAX_JOURNAL_READS = 16  # one journalctl call per failed unit, for the first ones only


def unit_states(units: list[str]) -> dict[str, dict]:
    """The state, start time and last exit of each unit, in one systemctl call; {} when unknown."""
    if not units:
        return {}
    try:
        done = subprocess.run(
            ["systemctl", "show", "-p", UNIT_PROPERTIES, "--", *units], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0:
        return {}
    found: dict[str, dict] = {}
    blocks = [b for b in done.stdout.strip().split("\n\n") if b.strip()]
    for unit, block in zip(units, blocks, strict=False):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[props.get("Id", unit)] = props
    return found


def started(props: dict) -> float | None:
    """The main process's start as wall-clock time, from systemd's CLOCK_MONOTONIC microseconds.

    The monotonic property reads the same on every systemd version (--timestamp=unix
    needs 251, newer than Ubuntu 22.04's), and needs no time zone parsing.
    """
    raw = props.get("ExecMainStartTimestampMonotonic", "").strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) == 0:
        return None
    return time.time() - (time.monotonic() - int(raw) / 1e6)


def iso(when: float | None) -> str | None:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def last_errors(specs, states: dict[str, dict]) -> dict[int, str]:
    """Why each instance that is not running ended: exit status and its last log line."""
    found, journal_reads = {}, 0
    for spec in specs:
        props = states.get(spec.unit)
        if props and props.get("ActiveState") in ("active", "activating", "reloading"):
            continue
        status, line = exit_status(props), log_file_line(spec.number, run_dir() / "logs")
        if not line and status and journal_reads < MAX_JOURNAL_READS:
            journal_reads += 1
            line = journal_line(spec.number)
        text = describe(status, line)
        if text:
            found[spec.number] = text
    return found
