"""What `mipart status` shows when the agent does not answer: each planned instance as its
unit reports it (systemd, through runners.unit_state, the runner's reader), and why it last
ended (runners.exits: exit status, last log line).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mipart.paths import run_dir
from mipart.runners import unit_state
from mipart.runners.exits import describe, exit_status, journal_line, log_file_line

if TYPE_CHECKING:
    from mipart.serving.spec import InstanceSpec

START = "ExecMainStartTimestampMonotonic"
MAX_JOURNAL_READS = 16  # one journalctl call per failed unit, for the first ones only


def unit_states(units: list[str]) -> dict[str, unit_state.Properties]:
    """The state, start time and last exit of each unit, in one systemctl call; {} when unknown."""
    try:
        return unit_state.show(units, (*unit_state.STATE, START, *unit_state.EXIT))
    except unit_state.SystemdUnreadable:
        return {}


def started(props: unit_state.Properties) -> float | None:
    """The main process's start as wall-clock time, from systemd's CLOCK_MONOTONIC microseconds.

    The monotonic property reads the same on every systemd version (--timestamp=unix
    needs 251, newer than Ubuntu 22.04's), and needs no time zone parsing.
    """
    raw = props.get(START, "").strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) == 0:
        return None
    return time.time() - (time.monotonic() - int(raw) / 1e6)


def iso(when: float | None) -> str | None:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def last_errors(specs: Iterable[InstanceSpec], states: Mapping[str, unit_state.Properties]) -> dict[int, str]:
    """Why each instance that is not running ended: exit status and its last log line."""
    found, journal_reads = {}, 0
    for spec in specs:
        props = states.get(spec.unit)
        if props and unit_state.state_of(props).active:
            continue
        status, line = exit_status(props), log_file_line(spec.number, run_dir() / "logs")
        if not line and status and journal_reads < MAX_JOURNAL_READS:
            journal_reads += 1
            line = journal_line(spec.number)
        text = describe(status, line)
        if text:
            found[spec.number] = text
    return found
