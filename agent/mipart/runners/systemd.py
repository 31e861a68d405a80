"""Instances and nginx as systemd units, through systemd's D-Bus API.

pydbus is unmaintained and its calls block: it stays inside this module, and the agent
calls these methods from worker threads. Unit states come from one
ListUnitsByPatterns call for all instances, not a GLib main loop.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from mipart.errors import UserError
from mipart.names import INSTANCE_PATTERN, NGINX_UNIT, instance_number, instance_unit
from mipart.nginx.files import NginxFiles
from mipart.paths import run_dir as default_run_dir
from mipart.runners import exits, procfs
from mipart.runners.devices import UNIT_DIR
from mipart.runners.dropins import Dropins
from mipart.values import UnitState


class SystemdRunner:
    """runners.base.Runner on systemd: instances and nginx are the units that mipart.names names."""

    def __init__(
        self, run_dir: Path | None = None, unit_dir: Path = UNIT_DIR
    ):  # units find the run dir through /etc/default/mipart
        self._local = threading.local()
        self._dropins = Dropins(run_dir or default_run_dir(), unit_dir)

    def _manager(self):
        """One bus connection per worker thread; GLib connections are not shared across threads safely."""
        manager = getattr(self._local, "manager", None)
        if manager is None:
            try:
                from pydbus import SystemBus

                bus = SystemBus()
                manager = bus.get(".systemd1")
            except Exception as exc:  # GLib.Error and friends: no bus, no systemd
                raise UserError(
                    f"cannot reach systemd over D-Bus ({exc}); run the agent under systemd, or use --runner process"
                ) from None
            self._local.bus, self._local.manager = bus, manager
        return manager

    def _property(self, unit: str, name: str):
        manager = self._manager()
        path = manager.LoadUnit(unit)
        return getattr(self._local.bus.get(".systemd1", path), name)

    def list_instances(self) -> dict[int, UnitState]:
        states = {}
        for name, _desc, _load, active, sub, *_ in self._manager().ListUnitsByPatterns([], [INSTANCE_PATTERN]):
            number = instance_number(name)
            if number is not None:
                states[number] = UnitState(
                    number, active, sub, self.main_pid(name) if active in ("active", "reloading") else 0
                )
        return states

    def main_pid(self, unit: str) -> int:
        return int(self._property(unit, "MainPID") or 0)

    def _prepare(self, number: int) -> None:
        """The instance's devices and cache as a drop-in (runners/devices.py), loaded before it starts."""
        refused = self._dropins.sync(self._manager().Reload).get(number)
        if refused:
            raise UserError(refused)

    def start(self, number: int) -> None:
        unit = instance_unit(number)
        self._prepare(number)
        if self._failed(unit):
            self._manager().ResetFailedUnit(unit)
        self._manager().StartUnit(unit, "replace")

    def _failed(self, unit: str) -> bool:
        return self._property(unit, "ActiveState") == "failed"

    def stop(self, number: int) -> None:
        """Its drop-in goes with it; systemd reads that at the next reload (the next start's)."""
        self._manager().StopUnit(instance_unit(number), "replace")
        self._dropins.remove(number)

    def restart(self, number: int) -> None:
        """A frozen (SIGSTOPped) server is SIGKILLed first: systemd's stop would wake it with
        SIGCONT, and woken it starts answering what queued up, then cuts it (runners.process)."""
        unit = instance_unit(number)
        pid = self.main_pid(unit)
        if pid and procfs.stopped(pid):
            self._manager().KillUnit(unit, "all", signal.SIGKILL)
        self._prepare(number)
        self._manager().RestartUnit(unit, "replace")

    def ensure_nginx(self, files: NginxFiles) -> None:
        """mipart-nginx.service's ExecReload runs `nginx -t` and HUPs; start it when down."""
        manager = self._manager()
        if self._property(NGINX_UNIT, "ActiveState") == "active":
            manager.ReloadUnit(NGINX_UNIT, "replace")
        else:  # the unit's `mipart exec-nginx` takes over the sockets of any strays (nginx.launcher)
            if self._failed(NGINX_UNIT):
                manager.ResetFailedUnit(NGINX_UNIT)
            manager.StartUnit(NGINX_UNIT, "replace")

    def nginx_running(self, files: NginxFiles) -> bool:
        return self._property(NGINX_UNIT, "ActiveState") in ("active", "reloading", "activating")

    def last_exit(self, number: int) -> str:
        """How the unit's main process last ended, from systemd, and its last journal line."""
        unit = instance_unit(number)
        props = {name: str(self._property(unit, name)) for name in ("Result", "ExecMainCode", "ExecMainStatus")}
        return exits.describe(exits.exit_status(props), exits.journal_line(number))
