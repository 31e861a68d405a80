"""Who holds the GPUs, and stopping/restarting the profile's client_services around a change."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import INSTANCE_VAR, instance_number
from mipart.profile.indices import format_indices
from mipart.runners import unit_state
from mipart.runners.procfs import environ_of
from mipart.values import GpuUser

PROC = Path("/proc")


@dataclass(frozen=True)
class Holder:
    pid: int
    gpus: tuple[int, ...]
    command: str
    unit: str | None
    instance: int | None = None  # the mipart instance this process serves, if it is one

    def describe(self) -> str:
        where = self.unit or "no unit"
        return f"PID {self.pid} ({self.command}, {where}) on GPU {format_indices(self.gpus)}"


class GpuBusyError(UserError):
    """A process holds a GPU a change needs."""


def named(holders: list[Holder]) -> str:
    """'PID 12 (python3, x.service) on GPU 3; PID ...': who, in one line."""
    return "; ".join(h.describe() for h in holders)


def instance_of(pid: int, unit: str | None) -> int | None:
    """mipart's own instance N: its unit is mipart-vllm@N (systemd), or the process runner's
    tag is in its environment (the launcher puts it there either way)."""
    number = instance_number(unit) if unit else None
    if number is not None:
        return number
    tag = environ_of(pid).get(INSTANCE_VAR, "")
    return int(tag) if tag.isdigit() and tag.isascii() else None


def unit_of_pid(pid: int) -> str | None:
    """The systemd unit a process runs in, from its cgroup path (None outside a unit)."""
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        path = line.split(":", 2)[-1]
        for part in reversed(path.split("/")):
            if part.endswith((".service", ".scope")):
                return part
    return None


def describe_holders(users: list[GpuUser]) -> list[Holder]:
    holders = []
    for user in users:
        try:
            command = (PROC / str(user.pid) / "comm").read_text().strip()
        except OSError:
            command = "exited"
        unit = unit_of_pid(user.pid)
        holders.append(Holder(user.pid, user.physical_indices, command, unit, instance_of(user.pid, unit)))
    return holders


class SystemdClients:
    """Stops the declared GPU client units and later starts the ones that were running."""

    def __init__(self, units: tuple[str, ...]):
        self.units = units

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        self._need_systemctl()
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)

    def _up(self, units: list[str]) -> set[str]:
        """The units that run (runners.unit_state's reader), in one call."""
        self._need_systemctl()
        shown = unit_state.show(units, unit_state.STATE)
        return {u for u in units if unit_state.state_of(shown.get(u, {})).up}

    @staticmethod
    def _need_systemctl() -> None:
        if shutil.which("systemctl") is None:
            raise UserError(
                "gpus.client_services is set but systemctl is missing; run mipart on a systemd host or empty "
                "client_services"
            )

    def stop_active(self) -> list[str]:
        if not self.units:
            return []
        up = self._up(list(self.units))
        active = [u for u in self.units if u in up]
        if active:
            done = self._systemctl("stop", *active)
            if done.returncode != 0:
                self.start(active)
                raise UserError(
                    f"could not stop client services {', '.join(active)}: {done.stderr.strip()}; stop them by hand "
                    "and rerun"
                )
        return active

    def start(self, units: list[str]) -> list[str]:
        """Start what was stopped; returns the units that failed to start."""
        if not units:
            return []
        done = self._systemctl("start", *units)
        if done.returncode == 0:
            return []
        up = self._up(units)
        return [u for u in units if u not in up]
