"""Instances and nginx as systemd units: changed through systemd's D-Bus API, read with the one
reader of unit state (runners.unit_state).

The calls block (runners.unit_bus): the agent makes them from worker threads. Unit states come
from runners.unit_state: one list call for all instances, a unit's main PID asked only where a
process is looked at.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mipart.errors import UserError
from mipart.names import INSTANCE_PATTERN, instance_number, instance_unit
from mipart.nginx.files import NginxFiles
from mipart.paths import run_dir as default_run_dir
from mipart.runners import exits, procfs, unit_bus, unit_state
from mipart.runners.devices import UNIT_DIR
from mipart.runners.dropins import Dropins
from mipart.values import UnitState

# Why this runner stops nothing when the agent exits (Runner.shutdown; `mipart agent --stop-on-exit`).
UNITS_OUTLIVE_THE_AGENT = (
    "under systemd, instances are units of their own (stop them with `systemctl stop mipart-vllm.target`)"
)


class SystemdRunner:
    """runners.base.Runner on systemd: instances and nginx are the units that mipart.names names."""

    def __init__(
        self, run_dir: Path | None = None, unit_dir: Path = UNIT_DIR
    ):  # units find the run dir through /etc/default/mipart
        self._dropins = Dropins(run_dir or default_run_dir(), unit_dir)

    def _manager(self) -> unit_bus.Manager:
        connection = unit_bus.connect()
        if connection is None:
            raise UserError(
                f"cannot reach systemd over D-Bus at {unit_bus.address()} ({unit_bus.unreachable}); "
                "run the agent under systemd, or use --runner process"
            )
        return unit_bus.Manager(connection)

    def _state(self, unit: str, pid: bool = False) -> UnitState:
        wanted = (*unit_state.STATE, unit_state.MAIN_PID) if pid else unit_state.STATE
        return unit_state.state_of(unit_state.show([unit], wanted).get(unit, {}))

    def list_instances(self, pids: bool = False) -> dict[int, UnitState]:
        wanted = (*unit_state.STATE, unit_state.MAIN_PID) if pids else unit_state.STATE
        states = {}
        for name, props in unit_state.show([INSTANCE_PATTERN], wanted).items():
            number = instance_number(name)
            if number is not None:
                states[number] = unit_state.state_of(props)
        return states

    def _prepare(self, number: int) -> None:
        """The instance's devices and cache as a drop-in (runners/devices.py), loaded before it starts."""
        refused = self._dropins.sync(self._manager().reload).get(number)
        if refused:
            raise UserError(refused)

    def start(self, number: int) -> None:
        unit = instance_unit(number)
        self._prepare(number)
        if self._state(unit).failed:
            self._manager().reset_failed(unit)
        self._manager().start(unit)

    def stop(self, number: int) -> None:
        """Its drop-in goes with it; systemd reads that at the next reload (the next start's)."""
        self._manager().stop(instance_unit(number))
        self._dropins.remove(number)

    def restart(self, number: int) -> None:
        """A frozen (SIGSTOPped) server is SIGKILLed first: systemd's stop would wake it with
        SIGCONT, and woken it starts answering what queued up, then cuts it (runners.process)."""
        unit = instance_unit(number)
        pid = self._state(unit, pid=True).main_pid
        if pid and procfs.stopped(pid):
            self._manager().kill(unit, "all", signal.SIGKILL)
        self._prepare(number)
        self._manager().restart(unit)

    def ensure_nginx(self, files: NginxFiles) -> None:
        """The layer's unit (mipart-nginx, mipart-nginx-front): its ExecReload runs `nginx -t` and
        HUPs; start it when down."""
        manager, state = self._manager(), self._state(files.unit)
        if state.up:
            manager.reload_unit(files.unit)
        else:  # the unit's `mipart exec-nginx` takes over the sockets of any strays (nginx.launcher)
            if state.failed:
                manager.reset_failed(files.unit)
            manager.start(files.unit)

    def replace_nginx(self, files: NginxFiles) -> None:
        """The unit's main process killed: Restart= runs `mipart exec-nginx`, which binds the lost socket anew."""
        self._manager().kill(files.unit, "main", signal.SIGKILL)

    def nginx_running(self, files: NginxFiles) -> bool:
        return self._state(files.unit).active

    def last_exit(self, number: int) -> str:
        """How the unit's main process last ended, from systemd, and its last journal line."""
        unit = instance_unit(number)
        props = unit_state.show([unit], unit_state.EXIT).get(unit)
        return exits.describe(exits.exit_status(props), exits.journal_line(number))

    def shutdown(self, nginx: tuple[NginxFiles, ...]) -> None:
        """Refused: the units outlive the agent by design, and systemd stops them, not mipart."""
        raise UserError(UNITS_OUTLIVE_THE_AGENT)
