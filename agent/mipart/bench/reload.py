"""How `mipart bench sweep` asks the agent to re-read its profile: the operator's own command, in one place.

Under systemd that is `systemctl reload mipart-agent` (ExecReload sends SIGHUP; systemd then
knows a reload runs). An agent on the process runner (the simulated host, `make demo`) has
no unit: it gets the SIGHUP itself. The agent is found by the record it keeps in its run dir
(runners.records: root's file naming it by pid and start time), never by an argv or an
environment any process may copy. A systemd agent is told apart by its cgroup, which names its unit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import AGENT_UNIT, REPARTITION_COMMAND
from mipart.runners import procfs, records

SYSTEMCTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class AgentProcess:
    pid: int
    systemd: bool  # runs as mipart-agent.service

    def describe(self) -> str:
        return f"`{REPARTITION_COMMAND}`" if self.systemd else f"SIGHUP to the agent (PID {self.pid}, process runner)"


def _under_systemd(pid: int) -> bool:
    try:
        return f"/{AGENT_UNIT}" in (procfs.PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return False


def find_agent(run_dir: Path) -> AgentProcess:
    """The agent serving from `run_dir`, by the record it keeps there (runners.records); UserError when none runs."""
    record = records.read_record(run_dir / records.AGENT)
    if record is None:
        raise UserError(
            f"no mipart agent runs with run dir {run_dir}; start it (systemctl start mipart-agent); nothing was changed"
        )
    return AgentProcess(record.pid, _under_systemd(record.pid))


def reload_agent(agent: AgentProcess) -> None:
    """The reload the operator would run; UserError when it could not be sent."""
    if not agent.systemd:
        try:
            os.kill(agent.pid, signal.SIGHUP)
        except OSError as exc:
            raise UserError(f"could not send SIGHUP to the agent (PID {agent.pid}): {exc.strerror}") from None
        return
    try:
        # --no-block: the repartition can outlast any timeout; the sweep watches the status API instead
        done = subprocess.run(
            ["systemctl", "reload", "--no-block", AGENT_UNIT], capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"`{REPARTITION_COMMAND}` could not run: {exc}") from None
    if done.returncode != 0:
        raise UserError(
            f"`{REPARTITION_COMMAND}` exited {done.returncode}: "
            f"{(done.stderr.strip().splitlines() or ['(no output)'])[-1]}"
        )
