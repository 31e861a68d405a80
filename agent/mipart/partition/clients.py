"""Who holds the GPUs, and stopping/restarting the profile's client_services around a change.

Which unit, or which of mipart's instances, a holder belongs to is decided by what no user can
forge: the control group systemd made for a system unit, or the launcher's record of the server
whose session the holder is in (runners.records), never a name or an environment variable.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import instance_number
from mipart.paths import serving_dir
from mipart.profile.indices import format_indices
from mipart.runners import procfs, records, unit_state
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


def confirmed_units(cgroups: dict[int, str | None]) -> dict[int, str]:
    """pid -> its unit, where the process's control group is the one systemd made for that system unit.

    A name alone proves nothing: a user's own manager runs units of any name (under user@UID.service),
    so a unit counts only when systemd's ControlGroup for it is exactly the process's."""
    claimed = {pid: unit for pid, cgroup in cgroups.items() if (unit := procfs.unit_in(cgroup)) is not None}
    try:
        groups = unit_state.show(sorted(set(claimed.values())), ("ControlGroup",))
    except unit_state.SystemdUnreadable:
        return {}
    return {pid: unit for pid, unit in claimed.items() if groups.get(unit, {}).get("ControlGroup") == cgroups[pid]}


def launched_instance(pid: int, launches: dict[int, records.Launch]) -> int | None:
    """The instance whose server leads this process's session and runs as its uid (the process runner's servers
    start in sessions of their own), by the launcher's records."""
    session, uid = procfs.session_of(pid), procfs.uid_of(pid)
    return next((n for n, launch in launches.items() if launch.pid == session and launch.uid == uid), None)


def describe_holders(users: list[GpuUser]) -> list[Holder]:
    cgroups = {user.pid: procfs.cgroup_of(user.pid) for user in users}
    units = confirmed_units(cgroups) if users else {}
    launches = records.launches(serving_dir()) if users else {}
    holders = []
    for user in users:
        try:
            command = (PROC / str(user.pid) / "comm").read_text().strip()
        except OSError:
            command = "exited"
        unit = units.get(user.pid)
        number = instance_number(unit) if unit else launched_instance(user.pid, launches)
        holders.append(Holder(user.pid, user.physical_indices, command, unit, number))
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
