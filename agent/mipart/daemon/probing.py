"""One probe round: probe the due instances, feed the results to their state machines, log changes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Set

from mipart.daemon.snapshot import gpu_label
from mipart.health.machine import InstanceHealth
from mipart.health.probe import ProbeResult
from mipart.health.probes import probe
from mipart.health.states import READY
from mipart.names import instance_name
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec

OLD_SERVER = ProbeResult(False, "the previous server is still answering")


async def probe_due(session, health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], spec: HealthSpec,
                    force: bool = False) -> tuple[list[InstanceHealth], list[ProbeResult]]:
    """Every due instance at once (all of them when forced); the results in the same order."""
    now = time.monotonic()
    due = [h for n, h in health.items() if n in specs and (force or h.due(now, spec))]
    for h in due:
        h.last_probe = now
    return due, list(await asyncio.gather(*(probe(session, specs[h.number], spec) for h in due)))


async def only_new_servers(due: list[InstanceHealth], results: list[ProbeResult], rolling: Set[int], specs: Mapping[int, InstanceSpec],
                           running_digests: Callable[[], Awaitable[Mapping[int, str | None]]]) -> list[ProbeResult]:
    """A rolling restart's instance is ready only once the server answering runs the new spec.

    running_digests (a unit state read) is called only when such an instance answered.
    """
    pending = [i for i, h in enumerate(due) if results[i].ok and h.number in rolling and not h.in_rotation]
    if not pending:
        return results
    digests = await running_digests()
    results = list(results)
    for i in pending:
        number = due[i].number
        if digests.get(number) != specs[number].digest():
            results[i] = OLD_SERVER
    return results


def record_results(due: list[InstanceHealth], results: list[ProbeResult], spec: HealthSpec, specs: Mapping[int, InstanceSpec], log) -> bool:
    """Feed each result to its state machine; True when nginx membership changed."""
    changed = False
    for h, result in zip(due, results):
        before = h.state
        changed |= h.record(result.ok, result.error, spec)
        if h.state != before:
            emit = log.info if h.state == READY else log.warning
            emit(f"instance.{h.state}", unit=instance_name(h.number), gpu=gpu_label(specs[h.number]), reason=result.error or "/health 200", was=before)
    return changed
