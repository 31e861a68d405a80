"""What `mipart status` shows when the agent does not answer: each planned instance as its
unit reports it (systemd), and why it last ended: its exit status and the last line it logged.

The last line comes from the journal (systemd runner) or from the process runner's log
file, `<run dir>/logs/mipart-vllm@N.log`; both are read here, never written.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from mipart.names import instance_name
from mipart.paths import run_dir

UNIT_PROPERTIES = "Id,ActiveState,SubState,ExecMainStartTimestampMonotonic,ExecMainStatus,ExecMainCode,Result"
# ExecMainCode is the CLD_* code of waitid(2): how the main process ended.
ENDINGS = {"1": "exited with status", "2": "killed by signal", "3": "dumped core on signal"}
TAIL_BYTES = 4096
MAX_JOURNAL_READS = 16  # one journalctl call per failed unit, for the first ones only


def unit_states(units: list[str]) -> dict[str, dict]:
    """The state, start time and last exit of each unit, in one systemctl call; {} when unknown."""
    if not units:
        return {}
    try:
        done = subprocess.run(["systemctl", "show", "-p", UNIT_PROPERTIES, "--", *units], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {}
    if done.returncode != 0:
        return {}
    found: dict[str, dict] = {}
    blocks = [b for b in done.stdout.strip().split("\n\n") if b.strip()]
    for unit, block in zip(units, blocks):
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


def exit_status(props: dict | None) -> str:
    """'exited with status 1 (exit-code)' for a main process that failed; "" when it did not."""
    if not props or props.get("Result", "success") == "success":
        return ""
    how = ENDINGS.get(props.get("ExecMainCode", ""), "ended with status")
    return f"{how} {props.get('ExecMainStatus', '?')} ({props['Result']})"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def log_file_line(number: int, base: Path | None = None) -> str:
    """The last line of the process runner's log for instance N ("" when there is none)."""
    path = (base or run_dir()) / "logs" / f"{instance_name(number)}.log"
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            return last_line(handle.read().decode(errors="replace"))
    except OSError:
        return ""


def journal_line(unit: str) -> str:
    try:
        done = subprocess.run(["journalctl", "-u", unit, "-n", "1", "-o", "cat", "--no-pager"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return last_line(done.stdout) if done.returncode == 0 else ""


def last_errors(specs, states: dict[str, dict]) -> dict[int, str]:
    """Why each instance that is not running ended: exit status and its last log line."""
    found, journal_reads = {}, 0
    for spec in specs:
        props = states.get(spec.unit)
        if props and props.get("ActiveState") in ("active", "activating", "reloading"):
            continue
        status, line = exit_status(props), log_file_line(spec.number)
        if not line and status and journal_reads < MAX_JOURNAL_READS:
            journal_reads += 1
            line = journal_line(spec.unit)
        text = "; ".join(part for part in (status, line) if part)
        if text:
            found[spec.number] = text
    return found
