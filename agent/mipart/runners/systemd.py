"""Instances and nginx as systemd units: changed through systemd's D-Bus API, read with the one
reader of unit state (runners.unit_state).

pydbus is unmaintained and its calls block: it stays inside this module, and the agent
calls these methods from worker threads. Unit states come from one `systemctl show` call
for all instances, not a GLib main loop.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from mipart.errors import UserError
from mipart.names import INSTANCE_PATTERN, instance_number, instance_unit
from mipart.nginx.files import NginxFiles
from mipart.paths import run_dir as default_run_dir
from mipart.runners import exits, procfs, unit_state
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
        self._local = threading.local()
        self._dropins = Dropins(run_dir or default_run_dir(), unit_dir)

    def _manager(self) -> Any:  # pydbus's proxy of org.freedesktop.systemd1.Manager: untyped, built at run time
        """One bus connection per worker thread; GLib connections are not shared across threads safely."""
        manager = getattr(self._local, "manager", None)
        if manager is None:
            try:
                from pydbus import SystemBus

                manager = SystemBus().get(".systemd1")
            except Exception as exc:  # GLib.Error and friends: no bus, no systemd
                raise UserError(
                    f"cannot reach systemd over D-Bus ({exc}); run the agent under systemd, or use --runner process"
                ) from None
            self._local.manager = manager
        return manager

    def _state(self, unit: str) -> UnitState:
        return unit_state.state_of(unit_state.show([unit], unit_state.STATE).get(unit, {}))

    def list_instances(self) -> dict[int, UnitState]:
        states = {}
        for name, props in unit_state.show([INSTANCE_PATTERN], unit_state.STATE).items():
            number = instance_number(name)
            if number is not None:
                states[number] = unit_state.state_of(props)
        return states

    def _prepare(self, number: int) -> None:
        """The instance's devices and cache as a drop-in (runners/devices.py), loaded before it starts."""
        refused = self._dropins.sync(self._manager().Reload).get(number)
        if refused:
            raise UserError(refused)

    def start(self, number: int) -> None:
        unit = instance_unit(number)
        self._prepare(number)
        if self._state(unit).failed:
            self._manager().ResetFailedUnit(unit)
        self._manager().StartUnit(unit, "replace")

    def stop(self, number: int) -> None:
        """Its drop-in goes with it; systemd reads that at the next reload (the next start's)."""
        self._manager().StopUnit(instance_unit(number), "replace")
        self._dropins.remove(number)

    def restart(self, number: int) -> None:
        """A frozen (SIGSTOPped) server is SIGKILLed first: systemd's stop would wake it with
        SIGCONT, and woken it starts answering what queued up, then cuts it (runners.process)."""
        unit = instance_unit(number)
        pid = self._state(unit).main_pid
        if pid and procfs.stopped(pid):
            self._manager().KillUnit(unit, "all", signal.SIGKILL)
        self._prepare(number)
        self._manager().RestartUnit(unit, "replace")

    def ensure_nginx(self, files: NginxFiles) -> None:
        """The layer's unit (mipart-nginx, mipart-nginx-front): its ExecReload runs `nginx -t` and
        HUPs; start it when down."""
        manager, state = self._manager(), self._state(files.unit)
        if state.up:
            manager.ReloadUnit(files.unit, "replace")
        else:  # the unit's `mipart exec-nginx` takes over the sockets of any strays (nginx.launcher)
            if state.failed:
                manager.ResetFailedUnit(files.unit)
            manager.StartUnit(files.unit, "replace")

    def replace_nginx(self, files: NginxFiles) -> None:
        """The unit's main process killed: Restart= runs `mipart exec-nginx`, which binds the lost socket anew."""
        self._manager().KillUnit(files.unit, "main", signal.SIGKILL)

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
