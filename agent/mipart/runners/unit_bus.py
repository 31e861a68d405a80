"""systemd's Manager over D-Bus, in the caller's own process: the unit states runners.unit_state
asks first (so the agent's periodic read costs no `systemctl` process and systemd no property
dump), and the changes the systemd runner makes (start, stop, reload...).

systemd's Manager lists units in one call (org.freedesktop.systemd1(5)): ListUnitsByPatterns
for the loaded units a glob matches, ListUnitsByNames for named ones (each loaded, answered in
the order asked, under its own Id: an alias as the unit it names; a name systemd does not take
is left out). A row carries the Id, LoadState, ActiveState and SubState (LISTED); any other
property (MainPID, Result...) costs one Properties.GetAll per unit, asked only when wanted.

jeepney (Debian's python3-jeepney, pure Python) speaks the protocol: GLib's bindings, which
pydbus needed, cost the agent 5 MB of its 45 and kept MemoryDenyWriteExecute= off its unit.
One private connection per process, used under a lock (jeepney's blocking connection is not
thread-safe; the agent calls from worker threads), dropped on any transport failure and made
again at the next call. Without a system bus `connect` says None: the reader falls back to
`systemctl show`, the runner says so in one line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from jeepney import DBusAddress, HeaderFields, MessageType, new_method_call
from jeepney.io.blocking import DBusConnection, open_dbus_connection

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH, MANAGER = "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"
SERVICE = "org.freedesktop.systemd1.Service"  # mipart reads services only: MainPID, Result, ExecMain*, ControlGroup
LISTED = ("Id", "LoadState", "ActiveState", "SubState")  # a ListUnits row's first, third, fourth and fifth fields
UNIT_TYPES = frozenset(
    ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope")
)
SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"  # the D-Bus specification's default system bus
READ_TIMEOUT = 10.0
# systemctl's own (sd-bus's default): a daemon-reload on a host with many units takes seconds.
CHANGE_TIMEOUT = 25.0
JOB_MODE = "replace"  # what `systemctl start/stop/restart/reload` ask

Row = Sequence[Any]  # (ssssssouso): id, description, load, active, sub, following, object path, job id, type, path


class BusError(Exception):
    """A D-Bus call failed (systemd not on the bus, refused, a timeout, the connection lost)."""


class Connection:
    """One bus connection shared by the process's threads, one call at a time."""

    def __init__(self, connection: DBusConnection):
        self._connection = connection
        self._lock = threading.Lock()
        self.closed = False

    def call(
        self, path: str, interface: str, method: str, signature: str, args: tuple[Any, ...], timeout: float
    ) -> tuple[Any, ...]:
        """The reply's body; BusError for an error reply, or for a failure in transit or no reply in
        time, which also closes the connection: what it holds half-read is unknown, and a new one
        costs one handshake at the next call."""
        message = new_method_call(DBusAddress(path, SYSTEMD, interface), method, signature or None, args)
        with self._lock:
            if self.closed:
                raise BusError(f"{method}: the bus connection is closed")
            try:
                reply = self._connection.send_and_get_reply(message, timeout=timeout)
            except Exception as exc:  # OSError, TimeoutError, a malformed message: the connection is not to be trusted
                self.close()
                raise BusError(f"{method}: {exc or type(exc).__name__}") from None
        if reply.header.message_type is MessageType.error:
            name = reply.header.fields.get(HeaderFields.error_name, "error")
            detail = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            raise BusError(f"{method}: {name}: {detail}".rstrip(": "))
        return tuple(reply.body)

    def close(self) -> None:
        self.closed = True
        self._connection.close()


_lock = threading.Lock()
_connection: Connection | None = None
unreachable = ""  # why the last connect() found no bus, for the caller's one line


def address() -> str:
    """Where the system bus is looked for: DBUS_SYSTEM_BUS_ADDRESS as set, else SYSTEM_BUS."""
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS


def connect() -> Connection | None:
    """The system bus, or None when it cannot be reached (the caller falls back or says so)."""
    global _connection, unreachable
    with _lock:
        if _connection is None or _connection.closed:
            try:
                _connection = Connection(open_dbus_connection(bus=address(), auth_timeout=READ_TIMEOUT))
            except Exception as exc:  # OSError, an address jeepney cannot use, an authentication refused: no bus
                _connection, unreachable = None, str(exc) or type(exc).__name__
        return _connection


class Manager:
    """The Manager's changes the systemd runner makes; each raises BusError. Jobs are queued,
    not waited for, as `systemctl --no-block` does: the agent reads the outcome as unit state."""

    def __init__(self, connection: Connection):
        self._connection = connection

    def _call(self, method: str, signature: str, *args: Any) -> None:
        self._connection.call(MANAGER_PATH, MANAGER, method, signature, args, CHANGE_TIMEOUT)

    def reload(self) -> None:
        """daemon-reload: systemd reads unit files and drop-ins again (returns once done)."""
        self._call("Reload", "")

    def start(self, unit: str) -> None:
        self._call("StartUnit", "ss", unit, JOB_MODE)

    def stop(self, unit: str) -> None:
        self._call("StopUnit", "ss", unit, JOB_MODE)

    def restart(self, unit: str) -> None:
        self._call("RestartUnit", "ss", unit, JOB_MODE)

    def reload_unit(self, unit: str) -> None:
        self._call("ReloadUnit", "ss", unit, JOB_MODE)

    def reset_failed(self, unit: str) -> None:
        self._call("ResetFailedUnit", "s", unit)

    def kill(self, unit: str, whom: str, signal: int) -> None:
        """WHOM: main, control or all (systemd.kill(5))."""
        self._call("KillUnit", "ssi", unit, whom, signal)


def mangled(name: str) -> str:
    """The unit systemctl means by NAME: one without a unit type suffix is a service (unit_name_mangle)."""
    return name if name.rpartition(".")[2] in UNIT_TYPES else f"{name}.service"


def listed(row: Row) -> dict[str, str]:
    """A ListUnits row in `systemctl show`'s words."""
    return dict(zip(LISTED, (str(row[0]), str(row[2]), str(row[3]), str(row[4])), strict=True))


def text(value: object) -> str | None:
    """A property's value as `systemctl show` prints a scalar (yes/no, digits, the string); None for others."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | str):
        return str(value)
    return None


def show(
    connection: Connection, names: list[str], globs: list[str], properties: Iterable[str]
) -> dict[str, dict[str, str]]:
    """Each named unit under its name as given, then each glob's matches under their Id, with LISTED
    and the other PROPERTIES asked. Raises BusError, also when systemd left a name out (not a unit
    name: systemctl says why)."""
    found: dict[str, Row] = {}
    if names:
        rows = _units(connection, "ListUnitsByNames", "as", [mangled(n) for n in names])
        if len(rows) != len(names):
            raise BusError(f"systemd listed {len(rows)} of {len(names)} units")
        found.update(zip(names, rows, strict=True))
    if globs:
        found.update((str(row[0]), row) for row in _units(connection, "ListUnitsByPatterns", "asas", [], globs))
    extra = [p for p in dict.fromkeys(properties) if p not in LISTED]
    return {name: {**listed(row), **(_service(connection, row, extra) if extra else {})} for name, row in found.items()}


def _units(connection: Connection, method: str, signature: str, *args: Any) -> list[Row]:
    return list(connection.call(MANAGER_PATH, MANAGER, method, signature, args, READ_TIMEOUT)[0])


def _service(connection: Connection, row: Row, wanted: list[str]) -> dict[str, str]:
    """The WANTED properties of the unit at the row's object path, from one GetAll (each value a
    variant: its signature and its value)."""
    [values] = connection.call(str(row[6]), "org.freedesktop.DBus.Properties", "GetAll", "s", (SERVICE,), READ_TIMEOUT)
    return {name: value for name in wanted if name in values and (value := text(values[name][1])) is not None}
