"""Which changed instances restart now, so that a service keeps serving: pure.

Instances whose spec changed wait in a queue. One batch per service restarts at a time,
and the next batch starts only once the previous one is ready again (on its new server:
see daemon.probing). A batch is a quarter of the service, or all of it when none of it
serves anyway (nothing to protect).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

from mipart.health.states import DEGRADED, FAILED, IN_ROTATION, READY

# A restarting instance is done with when it is back in rotation, or given up on.
SETTLED = (READY, DEGRADED, FAILED)


@dataclass(frozen=True)
class Rollout:
    batch: tuple[int, ...]  # restart these now, in queue order
    waiting: tuple[int, ...]  # still queued, in order
    active: frozenset[int]  # restarting and not settled yet (the batch included)


def batch_size(service: str, services: Mapping[int, str], states: Mapping[int, str], active: Set[int]) -> int:
    """A quarter of the service at a time, or all of it when none of it serves anyway."""
    members = [n for n, s in services.items() if s == service]
    if not any(states[n] in IN_ROTATION for n in members if n in states and n not in active):
        return len(members)
    return max(1, len(members) // 4)


def next_batch(
    queued: Sequence[int], active: Set[int], services: Mapping[int, str], states: Mapping[int, str]
) -> Rollout:
    """queued: changed instances in the order they changed; active: restarted, maybe not ready yet;
    services: instance -> service, for the instances the profile has; states: instance -> health state."""
    still_active = {n for n in active if n in services and states.get(n) not in SETTLED}
    busy = {services[n] for n in still_active}
    queued = [n for n in queued if n in services]
    by_service: dict[str, list[int]] = {}
    for number in queued:
        if services[number] not in busy:
            by_service.setdefault(services[number], []).append(number)
    batch = tuple(
        n
        for service, numbers in by_service.items()
        for n in numbers[: batch_size(service, services, states, still_active)]
    )
    return Rollout(
        batch=batch, waiting=tuple(n for n in queued if n not in batch), active=frozenset(still_active.union(batch))
    )
