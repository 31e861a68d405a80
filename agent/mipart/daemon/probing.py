"""Probing: probes run in the background, their results feed the state machines, changes are logged.

A probe never holds up the agent's loop (a hung instance used to stall it for a full timeout).
A probe of an instance in rotation that stays unanswered gets confirming probes of its own,
started `confirm_spacing` apart while it waits, each with the full timeout: a hang is then
confirmed unhealthy_after failures later within interval x unhealthy_after + 0.5 s of its
start, whatever the phase of the probe schedule. nginx's own reports of failed upstreams
count as one failed observation and bring a probe at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mipart.daemon.snapshot import gpu_label
from mipart.health.machine import InstanceHealth
from mipart.health.probe import ProbeResult
from mipart.health.probes import probe
from mipart.health.states import DRAINING, FAILED, READY, UNHEALTHY
from mipart.log import Log
from mipart.names import instance_name
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

OLD_SERVER = ProbeResult(False, "the previous server is still answering")
# What a confirmation must leave room for: the loop's tick before a probe starts, the tick
# before its result is read, nginx -t and the reload without the instance, and some slack.
CONFIRM_MARGIN = 0.4
MIN_SPACING = 0.05
MIN_PAUSE = 0.005


def confirm_spacing(spec: HealthSpec) -> float:
    """How far apart confirming probes start while the first is unanswered: as far as the bound allows, at most a
    timeout."""
    if spec.unhealthy_after < 2:
        return spec.timeout
    room = spec.interval * (spec.unhealthy_after - 1) + 0.5 - spec.timeout - CONFIRM_MARGIN
    return max(MIN_SPACING, min(spec.timeout, room / (spec.unhealthy_after - 1)))


@dataclass
class Flight:
    task: asyncio.Task[ProbeResult]
    started: float
    life: float  # the instance's started_at then: a restart since makes the answer another server's


class Prober:
    """The probes in flight, per instance, in the order they started.

    wake is called when a probe fails: the loop reads a failure at once instead of at its next
    tick, and pause lets it sleep exactly until a confirming probe is due, so the hang bound is
    not spent on ticks. Scheduled probes start on the loop's tick: waking for each instance's own
    phase would multiply the idle loop's wake-ups.
    """

    def __init__(self, wake: Callable[[], None] = lambda: None):
        self.flights: dict[int, list[Flight]] = {}
        self.wake = wake

    async def round(
        self,
        client: InstanceClient,
        health: Mapping[int, InstanceHealth],
        specs: Mapping[int, InstanceSpec],
        spec: HealthSpec,
        force: bool = False,
        suspects: Mapping[str, str] | None = None,
    ) -> tuple[list[InstanceHealth], list[ProbeResult]]:
        """Results that arrived (and nginx's reports), in order; starts the probes now due.

        force: probe every instance and wait for all answers (the agent's start).
        """
        due: list[InstanceHealth] = []
        results: list[ProbeResult] = []
        reported = suspects or {}
        for h in health.values() if reported else ():  # nginx's reports: seldom any
            what = reported.get(specs[h.number].address) if h.number in specs else None
            if what is not None and h.in_rotation:
                due.append(h)
                results.append(ProbeResult(False, f"nginx: {what}"))
                h.last_probe = 0.0  # probe it now
        # nginx's word first: when a failed probe wakes the loop, a report already written is what it saw first
        harvested = self._harvest(health)
        due, results = due + harvested[0], results + harvested[1]
        self._launch(client, health, specs, spec, force)
        if force:
            await asyncio.gather(
                *(f.task for flights in self.flights.values() for f in flights), return_exceptions=True
            )
            more = self._harvest(health)
            due, results = due + more[0], results + more[1]
        return due, results

    def next_confirm(
        self, health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], spec: HealthSpec
    ) -> float:
        """When the next confirming probe is due to start, monotonic; inf when none is."""
        spacing = confirm_spacing(spec)
        times = (
            _start_at(health[n], flights, spec, spacing)
            for n, flights in self.flights.items()
            if flights and n in health and n in specs
        )
        return min((at for at in times if at is not None), default=math.inf)

    def pause(
        self, health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], spec: HealthSpec, longest: float
    ) -> float:
        """How long the loop may sleep: at most `longest`, less when a confirming probe is due sooner."""
        return min(longest, max(MIN_PAUSE, self.next_confirm(health, specs, spec) - time.monotonic()))

    def _launch(
        self,
        client: InstanceClient,
        health: Mapping[int, InstanceHealth],
        specs: Mapping[int, InstanceSpec],
        spec: HealthSpec,
        force: bool,
    ) -> None:
        now = time.monotonic()
        spacing = confirm_spacing(spec)
        for number, h in health.items():
            if number not in specs:
                continue
            flights = self.flights.setdefault(number, [])
            at = _start_at(h, flights, spec, spacing)
            if not (force and not flights) and (at is None or now < at):
                continue
            h.last_probe = now
            task = asyncio.ensure_future(probe(client, specs[number], spec))
            task.add_done_callback(self._on_done)
            flights.append(Flight(task, now, h.started_at))

    def _on_done(self, task: asyncio.Task[ProbeResult]) -> None:
        if not task.cancelled() and (task.exception() is not None or not task.result().ok):
            self.wake()

    def _harvest(self, health: Mapping[int, InstanceHealth]) -> tuple[list[InstanceHealth], list[ProbeResult]]:
        due, results = [], []
        for number, flights in list(self.flights.items()):
            h = health.get(number)
            while flights and flights[0].task.done():
                flight = flights.pop(0)
                if h is None or h.started_at != flight.life or h.state in (UNHEALTHY, FAILED, DRAINING):
                    continue  # the instance moved on: not probed in that state, or a new server
                due.append(h)
                results.append(_result(flight.task))
            if h is None:
                for flight in flights:
                    flight.task.cancel()
                del self.flights[number]
        return due, results


def _start_at(h: InstanceHealth, flights: list[Flight], spec: HealthSpec, spacing: float) -> float | None:
    """An unanswered probe of an instance in rotation gets confirming probes `spacing` apart; else the schedule."""
    if flights:
        confirm = h.in_rotation and len(flights) + h.failures < spec.unhealthy_after
        return flights[-1].started + spacing if confirm else None
    return h.next_probe_at(spec)


def _result(task: asyncio.Task[ProbeResult]) -> ProbeResult:
    if task.cancelled():
        return ProbeResult(False, "probe cancelled")
    exc = task.exception()
    if exc is not None:
        return ProbeResult(False, f"probe failed: {exc.__class__.__name__}: {exc}")
    return task.result()


async def only_new_servers(
    due: list[InstanceHealth],
    results: list[ProbeResult],
    rolling: Set[int],
    specs: Mapping[int, InstanceSpec],
    running_digests: Callable[[], Awaitable[Mapping[int, str | None]]],
) -> list[ProbeResult]:
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


def record_results(
    due: list[InstanceHealth], results: list[ProbeResult], spec: HealthSpec, specs: Mapping[int, InstanceSpec], log: Log
) -> bool:
    """Feed each result to its state machine; True when nginx membership changed."""
    changed = False
    for h, result in zip(due, results, strict=True):
        before = h.state
        if not result.ok and result.decisive:
            changed |= h.condemn(result.error, result.restart)
        else:
            changed |= h.record(result.ok, result.error, spec)
        if h.state != before:
            emit = log.info if h.state == READY else log.warning
            emit(
                f"instance.{h.state}",
                unit=instance_name(h.number),
                gpu=gpu_label(specs[h.number]),
                reason=result.error or "/health 200",
                was=before,
            )
    return changed
