"""Who holds the GPUs, and stopping/restarting the profile's client_services around a change."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import INSTANCE_VAR, instance_number
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
        gpus = ",".join(map(str, self.gpus))
        return f"PID {self.pid} ({self.command}, {where}) on GPU {gpus}"


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

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:
        if shutil.which("systemctl") is None:
            raise UserError(
                "gpus.client_services is set but systemctl is missing; run mipart on a systemd host or empty "
                "client_services"
            )
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)

    def stop_active(self) -> list[str]:
        if not self.units:
            return []
        active = [u for u in self.units if self._systemctl("is-active", "--quiet", u).returncode == 0]
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
        return [u for u in units if self._systemctl("is-active", "--quiet", u).returncode != 0]
