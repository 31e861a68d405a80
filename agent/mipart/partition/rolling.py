"""A changed `gpus:` as a rollout the agent can run while serving: pure, no I/O.

A compute switch needs only its own GPU free (the kernel's per-device KFD check), so a change
that needs no driver reload is made a few GPUs at a time: for each step, the instances on its
GPUs leave rotation, stop, the GPUs switch, and the instances the new layout gives there start
and become ready before the next step begins. Instances on other GPUs never stop. The order
keeps every service serving where some order can; a service that lives only on the GPUs of one
step goes dark for that step, and the plan says so. A memory change needs a driver reload,
which takes every GPU of the hive at once: the rollout is then one host-wide step.

The agent executes exactly the steps planned here, and `mipart plan --json` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from mipart.partition.plan import PartitionPlan

NONE, ROLLING, HOST_WIDE = "none", "rolling", "host-wide"
# Beyond this many candidate batches per step the order is chosen greedily, one GPU at a time.
MAX_CANDIDATES = 512


@dataclass(frozen=True)
class Placement:
    """One instance as the rollout sees it: its number, its service and the physical GPUs it runs on."""

    number: int
    service: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    gpus: tuple[int, ...]  # physical GPUs switched in this step
    stop: tuple[int, ...]  # instances drained and stopped before the switch
    start: tuple[int, ...]  # instances started on the new layout after it (ready before the next step)
    capacity: Mapping[str, int]  # per service: instances in rotation while the step runs

    def to_json(self) -> dict[str, Any]:
        return {
            "gpus": list(self.gpus),
            "stop": list(self.stop),
            "start": list(self.start),
            "capacity": dict(self.capacity),
        }


@dataclass(frozen=True)
class Rollout:
    mode: str  # NONE, ROLLING or HOST_WIDE
    reason: str  # why this mode, in one phrase
    steps: tuple[Step, ...]
    dark: Mapping[str, tuple[int, ...]]  # service -> the steps (1-based) during which it has no instance in rotation

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "steps": [step.to_json() for step in self.steps],
            "dark": {service: list(steps) for service, steps in self.dark.items()},
        }


def plan_rollout(
    plan: PartitionPlan,
    before: Iterable[Placement],
    after: Iterable[Placement],
    services: Sequence[str],
    max_unavailable: int = 1,
) -> Rollout:
    """The steps from the instances running now (`before`) to those the new layout gives (`after`)."""
    old, new = {p.number: p for p in before}, {p.number: p for p in after}
    if plan.reload:
        memory = next((g.memory_want for g in plan.gpus if g.memory_want), "")
        reason = f"memory mode {memory} needs a driver reload, which takes every GPU of the hive at once"
        step = _step(tuple(g.index for g in plan.gpus), old, new, set(), services)
        return Rollout(HOST_WIDE, reason, (step,), _dark((step,)))
    changing = sorted({w.gpu for w in plan.writes})
    if not changing:
        return Rollout(NONE, "every GPU already has the mode the profile asks", (), {})
    steps: list[Step] = []
    done: set[int] = set()
    while len(done) < len(changing):
        left = [g for g in changing if g not in done]
        batch = _best_batch(left, max(1, max_unavailable), old, new, done, services)
        steps.append(_step(batch, old, new, done, services))
        done |= set(batch)
    reason = f"compute changes on GPUs {', '.join(map(str, changing))} need no driver reload: {len(steps)} steps"
    return Rollout(ROLLING, reason, tuple(steps), _dark(steps))


def _best_batch(
    left: list[int],
    size: int,
    old: Mapping[int, Placement],
    new: Mapping[int, Placement],
    done: set[int],
    services: Sequence[str],
) -> tuple[int, ...]:
    """The batch (of up to `size` GPUs) that leaves the fewest services dark, then the most capacity."""
    size = min(size, len(left))
    candidates = list(combinations(left, size))
    if len(candidates) > MAX_CANDIDATES:
        candidates = [tuple(left[:size])]

    def score(batch: tuple[int, ...]) -> tuple[int, int, tuple[int, ...]]:
        capacity = _step(batch, old, new, done, services).capacity
        return (sum(1 for s in services if capacity.get(s, 0) == 0), -min(capacity.values(), default=0), batch)

    return min(candidates, key=score)


def _step(
    batch: tuple[int, ...],
    old: Mapping[int, Placement],
    new: Mapping[int, Placement],
    done: set[int],
    services: Sequence[str],
) -> Step:
    """What stops and starts for `batch`, given the GPUs switched already (`done`), and who serves meanwhile.

    Every instance on a GPU that switches stops, whatever its spec: the switch needs the GPU free
    and leaves a running server's device handles stale. An instance spanning GPUs of several steps
    stops at the first and starts after the last.
    """
    switching, switched = set(batch), done | set(batch)
    stop = sorted(n for n, p in old.items() if switching & set(p.gpus) and not set(p.gpus) & done)
    start = sorted(n for n, p in new.items() if switching & set(p.gpus) and set(p.gpus) <= switched)
    up = [p for p in old.values() if not set(p.gpus) & switched]
    up += [p for p in new.values() if set(p.gpus) & done and set(p.gpus) <= done]
    capacity = {service: sum(1 for p in up if p.service == service) for service in services}
    return Step(tuple(sorted(batch)), tuple(stop), tuple(start), capacity)


def _dark(steps: Sequence[Step]) -> dict[str, tuple[int, ...]]:
    dark: dict[str, list[int]] = {}
    for i, step in enumerate(steps, 1):
        for service, count in step.capacity.items():
            if count == 0:
                dark.setdefault(service, []).append(i)
    return {service: tuple(found) for service, found in dark.items()}


def describe(rollout: Rollout) -> list[str]:
    """The rollout for people: one line for the mode, one per step."""
    lines = [f"rollout: {rollout.mode} ({rollout.reason})"]
    for i, step in enumerate(rollout.steps, 1):
        capacity = ", ".join(f"{service} {count}" for service, count in step.capacity.items()) or "no services"
        lines.append(
            f"  step {i}: GPUs {','.join(map(str, step.gpus))}: stop {_numbers(step.stop)}, "
            f"start {_numbers(step.start)}; in rotation meanwhile: {capacity}"
        )
    for service, steps in rollout.dark.items():
        lines.append(
            f"  warning: service {service} has no instance in rotation during step {', '.join(map(str, steps))}"
        )
    return lines


def _numbers(numbers: tuple[int, ...]) -> str:
    return ",".join(f"@{n}" for n in numbers) or "none"
