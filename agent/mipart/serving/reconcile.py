"""What to start, stop and restart so running instances match their specs: pure.

The launcher records the digest of the spec each server was started with (runners.records:
root's, the server cannot change it), so after an agent restart only changed specs are
restarted. A running server without a record is restarted too: one mipart cannot vouch for
(started by an older mipart, on a port nginx no longer reaches; or its record deleted).
"""

from __future__ import annotations

from dataclasses import dataclass

from mipart.serving.spec import InstanceSpec
from mipart.values import UnitState


@dataclass(frozen=True)
class Actions:
    start: tuple[int, ...] = ()
    stop: tuple[int, ...] = ()
    restart: tuple[int, ...] = ()


def plan_actions(
    specs: dict[int, InstanceSpec], states: dict[int, UnitState], running_digests: dict[int, str | None]
) -> Actions:
    start, restart = [], []
    for number, spec in sorted(specs.items()):
        state = states.get(number)
        if state is None or not state.active:
            start.append(number)
        elif running_digests.get(number) != spec.digest():
            restart.append(number)  # None: no record of its launch
    stop = [n for n, state in sorted(states.items()) if n not in specs and state.active]
    return Actions(start=tuple(start), stop=tuple(stop), restart=tuple(restart))
