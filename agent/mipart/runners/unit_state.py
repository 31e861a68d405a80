"""Reading systemd's unit state: the one reader, for the systemd runner, for `mipart status`
when the agent is down (cli/units) and for the partition's client services.

One read answers for many units, by name or by glob (the loaded units it matches, as
ListUnitsByPatterns lists them). It asks systemd over D-Bus in the reader's own process
(runners.unit_bus: the states in one call, other properties per unit only when asked), and
`systemctl show` when that cannot be had: no system bus, or a call refused or lost
(systemctl then reads it, or says why in one line). Changes to units are each caller's own.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping

from mipart.errors import UserError
from mipart.runners import unit_bus
from mipart.values import UnitState

STATE = ("Id", "ActiveState", "SubState")  # what one list call gives of every unit
MAIN_PID = "MainPID"  # asked per unit: only where a process is looked at (reconcile, restart)
# How the main process last ended (runners.exits reads them).
EXIT = ("Result", "ExecMainCode", "ExecMainStatus")
TIMEOUT = 10.0
GLOB_CHARS = "*?["  # as systemctl tells a glob from a unit name

Properties = Mapping[str, str]  # systemd's property names -> values, as `systemctl show` prints them


class SystemdUnreadable(UserError):
    """systemctl is missing, or cannot reach systemd."""


def show(units: Iterable[str], properties: Iterable[str]) -> dict[str, Properties]:
    """Each unit's properties in one read: a name's under that name as given (an alias, or a name
    without its .service, is shown as its unit), a glob's matches under their own.

    Raises SystemdUnreadable when neither D-Bus nor systemctl can read them."""
    names, wanted = list(units), tuple(properties)
    if not names:
        return {}
    plain = [n for n in names if not any(c in n for c in GLOB_CHARS)]
    globs = [n for n in names if n not in plain]
    connection = unit_bus.connect()
    if connection is not None:
        try:
            return dict(unit_bus.show(connection, plain, globs, wanted))
        except unit_bus.BusError:
            pass  # systemctl reads it, or says why in its own words
    return _systemctl_show(plain, globs, wanted)


def _systemctl_show(plain: list[str], globs: list[str], properties: tuple[str, ...]) -> dict[str, Properties]:
    """systemctl shows the named units in the order given, then what the globs match (docs/architecture.md)."""
    wanted = ",".join(dict.fromkeys(("Id", *properties)))
    try:
        done = subprocess.run(
            ["systemctl", "show", "-p", wanted, "--", *plain, *globs], capture_output=True, text=True, timeout=TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemdUnreadable(f"cannot run systemctl: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SystemdUnreadable(f"systemctl show failed: {last}")
    blocks = [props for props in map(_properties, done.stdout.split("\n\n")) if props]
    found: dict[str, Properties] = dict(zip(plain, blocks[: len(plain)], strict=False))
    found.update((props["Id"], props) for props in blocks[len(plain) :] if props.get("Id"))
    return found


def _properties(block: str) -> dict[str, str]:
    """One unit's `Name=value` lines."""
    pairs = (line.partition("=") for line in block.splitlines())
    return {name: value for name, equals, value in pairs if equals}


def state_of(props: Properties) -> UnitState:
    """The unit's state; its main PID only while it is up (a starting unit's is its launcher's)
    and only when it was asked for (MAIN_PID)."""
    state = UnitState(props.get("ActiveState", ""), props.get("SubState", ""))
    pid = props.get(MAIN_PID, "")
    if state.up and pid.isascii() and pid.isdigit():
        return UnitState(state.active_state, state.sub_state, int(pid))
    return state
