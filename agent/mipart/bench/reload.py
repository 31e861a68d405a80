"""How `mipart bench sweep` asks the agent to re-read its profile: the operator's own command, in one place.

Under systemd that is `systemctl reload mipart-agent` (ExecReload sends SIGHUP; systemd then
knows a reload runs). An agent on the process runner (the simulated host, `make demo`) has
no unit: it gets the SIGHUP itself. The agent is found in /proc as SimulatedHost finds its
processes: by its argv (`mipart agent`) and its run dir (MIPART_RUN_DIR, else /run/mipart).
A systemd agent is told apart by its cgroup, which names its unit.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import AGENT_UNIT, DEFAULT_RUN_DIR, REPARTITION_COMMAND, RUN_DIR_VAR
from mipart.runners import procfs

SYSTEMCTL_TIMEOUT = 60.0


@dataclass(frozen=True)
class AgentProcess:
    pid: int
    systemd: bool  # runs as mipart-agent.service

    def describe(self) -> str:
        return f"`{REPARTITION_COMMAND}`" if self.systemd else f"SIGHUP to the agent (PID {self.pid}, process runner)"


def is_agent_argv(argv: list[str]) -> bool:
    """`mipart agent ...`, `python3 /usr/bin/mipart agent ...` or `python -m mipart agent ...`."""
    return any(os.path.basename(word) == "mipart" and argv[i + 1 : i + 2] == ["agent"] for i, word in enumerate(argv))


def _argv(pid: int) -> list[str]:
    try:
        raw = (procfs.PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [word.decode(errors="replace") for word in raw.split(b"\0") if word]


def _under_systemd(pid: int) -> bool:
    try:
        return f"/{AGENT_UNIT}" in (procfs.PROC / str(pid) / "cgroup").read_text()
    except OSError:
        return False


def find_agent(run_dir: Path) -> AgentProcess:
    """The one agent serving from `run_dir`; UserError when there is none, or more than one."""
    found = [
        pid
        for pid in procfs.pids()
        if pid != os.getpid()
        and is_agent_argv(_argv(pid))
        and procfs.alive(pid)
        and procfs.environ_of(pid).get(RUN_DIR_VAR, DEFAULT_RUN_DIR) == str(run_dir)
    ]
    if not found:
        raise UserError(
            f"no mipart agent runs with run dir {run_dir}; start it (systemctl start mipart-agent); nothing was changed"
        )
    if len(found) > 1:
        raise UserError(
            f"{len(found)} mipart agents run with run dir {run_dir} (PIDs {', '.join(map(str, found))}); "
            "stop all but one; nothing was changed"
        )
    return AgentProcess(found[0], _under_systemd(found[0]))


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
