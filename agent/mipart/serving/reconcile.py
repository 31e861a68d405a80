"""What to start, stop and restart so running instances match their specs: pure.

A running server carries the digest of the spec it was started with (MIPART_SPEC_DIGEST
in its environment), so after an agent restart only changed specs are restarted.
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
        elif running_digests.get(number) not in (None, spec.digest()):
            restart.append(number)  # None: digest unknown (e.g. container client); leave it serving
    stop = [n for n, state in sorted(states.items()) if n not in specs and state.active]
    return Actions(start=tuple(start), stop=tuple(stop), restart=tuple(restart))
