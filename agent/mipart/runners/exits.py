"""Why a server ended, in an operator's words: its exit status and the last line it logged.

Both runners answer through this (Runner.last_exit), and so does `mipart status` when the
agent does not answer. The statuses are systemd's: ExecMainCode is the CLD_* code of
waitid(2) (how the main process ended), ExecMainStatus the exit status or signal, and
Result systemd's verdict. The process runner maps a Popen return code onto the same words.
Log lines come from the journal (systemd) or `<run dir>/logs/mipart-vllm@N.log` (process
runner); both are read here, never written.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from mipart.names import instance_name, instance_unit

ENDINGS = {"1": "exited with status", "2": "killed by signal", "3": "dumped core on signal"}
TAIL_BYTES = 4096


def exit_status(props: Mapping[str, str] | None) -> str:
    """'exited with status 1 (exit-code)' for a main process that failed; "" when it did not."""
    if not props or props.get("Result", "success") == "success":
        return ""
    how = ENDINGS.get(props.get("ExecMainCode", ""), "ended with status")
    return f"{how} {props.get('ExecMainStatus', '?')} ({props['Result']})"


def returncode_props(code: int | None) -> dict[str, str]:
    """A Popen return code in systemd's properties (negative: killed by that signal)."""
    if code is None or code == 0:
        return {}
    if code < 0:
        return {"Result": "signal", "ExecMainCode": "2", "ExecMainStatus": str(-code)}
    return {"Result": "exit-code", "ExecMainCode": "1", "ExecMainStatus": str(code)}


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def log_file_line(number: int, log_dir: Path) -> str:
    """The last line of the process runner's log for instance N ("" when there is none)."""
    try:
        with open(log_dir / f"{instance_name(number)}.log", "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - TAIL_BYTES))
            return last_line(handle.read().decode(errors="replace"))
    except OSError:
        return ""


def journal_line(number: int) -> str:
    """The server's own last line: from the processes of its unit, by the field journald stamps
    from the sender's control group (_SYSTEMD_UNIT), which no process can set. Not by syslog
    identifier (-t), which any user may log under, nor by -u, which adds systemd's own lines about
    the unit ("Failed with result 'signal'", logged by PID 1), and those come last."""
    try:
        done = subprocess.run(
            ["journalctl", f"_SYSTEMD_UNIT={instance_unit(number)}", "-n", "1", "-o", "cat", "--no-pager"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return last_line(done.stdout) if done.returncode == 0 else ""


def describe(status: str, line: str) -> str:
    return "; ".join(part for part in (status, line) if part)
