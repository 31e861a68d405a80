"""systemd's unit states over D-Bus, in the reader's own process: what runners.unit_state asks
first, so the agent's periodic read costs no `systemctl` process and systemd no property dump.

systemd's Manager lists units in one call (org.freedesktop.systemd1(5)): ListUnitsByPatterns
for the loaded units a glob matches, ListUnitsByNames for named ones (each loaded, answered in
the order asked, under its own Id: an alias as the unit it names; a name systemd does not take
is left out). A row carries the Id, LoadState, ActiveState and SubState (LISTED); any other
property (MainPID, Result...) costs one Properties.GetAll per unit, asked only when wanted.

The connection is private (not GLib's shared singleton, which exits the process when the bus
goes away) and made again once closed. Without GLib's bindings or a system bus, `connect` says
None and the reader falls back to `systemctl show`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH, MANAGER = "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager"
SERVICE = "org.freedesktop.systemd1.Service"  # mipart reads services only: MainPID, Result, ExecMain*, ControlGroup
LISTED = ("Id", "LoadState", "ActiveState", "SubState")  # a ListUnits row's first, third, fourth and fifth fields
UNIT_TYPES = frozenset(
    ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope")
)
TIMEOUT_MS = 10_000

Row = Sequence[Any]  # (ssssssouso): id, description, load, active, sub, following, object path, job id, type, path

_lock = threading.Lock()
_connection: Any = None  # Gio.DBusConnection once made; untyped (GLib's bindings are built at run time)


class BusError(Exception):
    """A D-Bus call failed (systemd not on the bus, a timeout, the connection lost)."""


def connect() -> Any | None:
    """The system bus, or None when GLib's bindings or the bus are missing (the caller falls back)."""
    global _connection
    with _lock:
        if _connection is None or _connection.is_closed():
            try:
                from gi.repository import Gio

                address = Gio.dbus_address_get_for_bus_sync(Gio.BusType.SYSTEM, None)
                flags = Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION
                _connection = Gio.DBusConnection.new_for_address_sync(address, flags, None, None)
            except Exception:  # ImportError, GLib.Error: no bindings, no bus
                _connection = None
        return _connection


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


def show(connection: Any, names: list[str], globs: list[str], properties: Iterable[str]) -> dict[str, dict[str, str]]:
    """Each named unit under its name as given, then each glob's matches under their Id, with LISTED
    and the other PROPERTIES asked. Raises BusError, also when systemd left a name out (not a unit
    name: systemctl says why)."""
    found: dict[str, Row] = {}
    if names:
        rows = _manager(connection, "ListUnitsByNames", "(as)", ([mangled(n) for n in names],))
        if len(rows) != len(names):
            raise BusError(f"systemd listed {len(rows)} of {len(names)} units")
        found.update(zip(names, rows, strict=True))
    if globs:
        found.update((str(row[0]), row) for row in _manager(connection, "ListUnitsByPatterns", "(asas)", ([], globs)))
    extra = [p for p in dict.fromkeys(properties) if p not in LISTED]
    return {name: {**listed(row), **(_service(connection, row, extra) if extra else {})} for name, row in found.items()}


def _manager(connection: Any, method: str, signature: str, args: tuple[Any, ...]) -> list[Row]:
    reply = _call(connection, MANAGER_PATH, MANAGER, method, signature, args, "(a(ssssssouso))")
    return list(reply[0])


def _service(connection: Any, row: Row, wanted: list[str]) -> dict[str, str]:
    """The WANTED properties of the unit at the row's object path, from one GetAll."""
    reply = _call(connection, str(row[6]), "org.freedesktop.DBus.Properties", "GetAll", "(s)", (SERVICE,), "(a{sv})")
    values = reply[0]
    return {name: value for name in wanted if name in values and (value := text(values[name])) is not None}


def _call(
    connection: Any, path: str, interface: str, method: str, signature: str, args: tuple[Any, ...], reply: str
) -> Any:
    from gi.repository import Gio, GLib

    try:
        answer = connection.call_sync(
            SYSTEMD,
            path,
            interface,
            method,
            GLib.Variant(signature, args),
            GLib.VariantType(reply),
            Gio.DBusCallFlags.NONE,
            TIMEOUT_MS,
            None,
        )
    except GLib.Error as exc:
        raise BusError(f"{method}: {exc.message}") from None
    return answer.unpack()
