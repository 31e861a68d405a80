"""Each instance's spec, health and rollout position, with one owner.

The agent's steps (reconcile, the spec-change rollout, recovery, probing, repartition and the
rolling repartition) change them only through this small interface, so a spec never lives
without its health record, and no queue names an instance the profile no longer has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mipart.daemon import rollout
from mipart.health.machine import InstanceHealth
from mipart.health.states import READY
from mipart.serving.spec import InstanceSpec

Specs = dict[int, InstanceSpec]


class Instances:
    def __init__(self) -> None:
        self.specs: Specs = {}
        self.health: dict[int, InstanceHealth] = {}
        self.queued: dict[int, None] = {}  # changed instances waiting for their turn to restart, in order
        self.restarting: set[int] = set()  # restarted by the rollout, not settled yet

    def settled(self) -> bool:
        """Every instance ready and no restart queued or running: nothing the loop must look at soon."""
        return not self.queued and not self.restarting and all(h.state == READY for h in self.health.values())

    def reset(self, specs: Mapping[int, InstanceSpec]) -> None:
        """A fresh start (the agent's, or after a repartition): new health records, nothing queued."""
        self.specs = dict(specs)
        self.health = {n: InstanceHealth(n) for n in self.specs}
        self.clear_queue()

    def replace(self, specs: Mapping[int, InstanceSpec]) -> None:
        """The specs the profile gives now: health kept for instances that stay, added for new ones."""
        self.specs = dict(specs)
        for number in self.specs:
            self.health.setdefault(number, InstanceHealth(number))
        for number in [n for n in self.health if n not in self.specs]:
            del self.health[number]
        self.queued = {n: None for n in self.queued if n in self.specs}

    def put(self, specs: Mapping[int, InstanceSpec], grace: float) -> None:
        """Instances about to start (a rolling repartition's step): new health records."""
        for number, spec in specs.items():
            self.specs[number] = spec
            self.health[number] = InstanceHealth(number)
            self.health[number].fresh_start(grace)

    def forget(self, numbers: Iterable[int]) -> None:
        """Instances stopped for good (a rolling repartition's step): no spec, no health, no queue."""
        for number in numbers:
            self.specs.pop(number, None)
            self.health.pop(number, None)
            self.queued.pop(number, None)
            self.restarting.discard(number)

    def drain(self, numbers: Iterable[int] | None = None) -> None:
        """Out of rotation (all when None) and out of the restart queue: they are about to stop."""
        for number in self.specs if numbers is None else list(numbers):
            self.queued.pop(number, None)
            if number in self.health:
                self.health[number].drain()

    def clear_queue(self) -> None:
        self.queued, self.restarting = {}, set()

    def queue(self, numbers: Iterable[int]) -> None:
        for number in numbers:
            self.queued[number] = None

    def in_rotation(self) -> frozenset[int]:
        return frozenset(n for n, h in self.health.items() if h.in_rotation and n in self.specs)

    def next_restarts(self) -> rollout.Rollout:
        """The next batch of the spec-change rollout; the queue moves on by it."""
        plan = rollout.next_batch(
            list(self.queued),
            self.restarting,
            {n: s.service for n, s in self.specs.items()},
            {n: h.state for n, h in self.health.items()},
        )
        self.queued, self.restarting = dict.fromkeys(plan.waiting), set(plan.active)
        return plan
