"""Reading systemd's unit state: the one reader, `systemctl show`, for the systemd runner, for
`mipart status` when the agent is down (cli/units) and for the partition's client services.

One call reads many units, by name or by glob (systemctl expands a glob over the units
systemd has loaded, as ListUnitsByPatterns does). It needs no D-Bus library, so a CLI verb
that reads units stays fast; changes to units (start, stop) are each caller's own business.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping

from mipart.errors import UserError
from mipart.values import UnitState

STATE = ("Id", "ActiveState", "SubState", "MainPID")
# How the main process last ended (runners.exits reads them).
EXIT = ("Result", "ExecMainCode", "ExecMainStatus")
TIMEOUT = 10.0
GLOB_CHARS = "*?["  # as systemctl tells a glob from a unit name

Properties = Mapping[str, str]  # systemd's property names -> values, as `systemctl show` prints them


class SystemdUnreadable(UserError):
    """systemctl is missing, or cannot reach systemd."""


def show(units: Iterable[str], properties: Iterable[str]) -> dict[str, Properties]:
    """Each unit's properties in one systemctl call: a name's under that name as given (an alias,
    or a name without its .service, is shown as its unit), a glob's matches under their own.

    Raises SystemdUnreadable when systemctl is missing or fails."""
    names = list(units)
    if not names:
        return {}
    # systemctl shows the named units in the order given, then what the globs match (docs/architecture.md).
    plain = [n for n in names if not any(c in n for c in GLOB_CHARS)]
    globs = [n for n in names if n not in plain]
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
    """The unit's state; its main PID only while it is up (a starting unit's is its launcher's)."""
    state = UnitState(props.get("ActiveState", ""), props.get("SubState", ""))
    pid = props.get("MainPID", "")
    if state.up and pid.isascii() and pid.isdigit():
        return UnitState(state.active_state, state.sub_state, int(pid))
    return state
