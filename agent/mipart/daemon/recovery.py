"""Dead and stuck instances: out of rotation at once, then restarted with backoff (or given up on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from mipart.daemon.snapshot import gpu_label
from mipart.health.machine import InstanceHealth
from mipart.health.states import FAILED, UNHEALTHY
from mipart.log import Log
from mipart.names import instance_name
from mipart.profile.schema import HealthSpec
from mipart.runners.base import Runner
from mipart.serving.spec import InstanceSpec
from mipart.values import UnitState


def mark_gone(
    health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], states: Mapping[int, UnitState], log: Log
) -> bool:
    """Instances whose unit is not running leave rotation; True when nginx membership changed."""
    changed, now = False, time.monotonic()
    for number, h in health.items():
        state = states.get(number)
        if number in specs and (state is None or not state.active):
            reason = f"unit {state.active_state}/{state.sub_state}" if state else "unit not running"
            if h.unit_gone(reason, now):
                changed = True
                log.warning(
                    "instance.unhealthy", unit=instance_name(number), gpu=gpu_label(specs[number]), reason=reason
                )
    return changed


def exits_unread(
    health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], states: Mapping[int, UnitState]
) -> list[int]:
    """Instances whose server has ended and whose exit is not yet told. A unit systemd no
    longer lists counts only once mark_gone took it out (not while its first start is pending)."""

    def ended(n: int, h: InstanceHealth) -> bool:
        state = states.get(n)
        return not state.active if state else h.state in (UNHEALTHY, FAILED)

    return [n for n, h in health.items() if n in specs and not h.exit_read and not h.in_rotation and ended(n, h)]


def read_exits(runner: Runner, numbers: list[int]) -> dict[int, str]:
    """Blocking (journal, systemd): run in a worker thread. A runner that cannot tell says nothing."""
    reasons = {}
    for number in numbers:
        try:
            reasons[number] = runner.last_exit(number)
        except Exception:  # systemd not answering must not cost the agent; the probe's reason stays
            reasons[number] = ""
    return reasons


async def tell_exits(
    health: dict[int, InstanceHealth],
    specs: Mapping[int, InstanceSpec],
    states: Mapping[int, UnitState],
    runner: Runner,
    log: Log,
) -> None:
    """LAST ERROR says how the server ended and what it last logged, not how a probe failed."""
    unread = exits_unread(health, specs, states)
    if not unread:
        return
    for number, reason in (await asyncio.to_thread(read_exits, runner, unread)).items():
        health[number].exited(reason)
        if reason:
            log.warning("instance.exited", unit=instance_name(number), gpu=gpu_label(specs[number]), reason=reason)


async def restart_due(
    health: dict[int, InstanceHealth],
    specs: Mapping[int, InstanceSpec],
    spec: HealthSpec,
    runner: Runner,
    log: Log,
    routed: Callable[[], Awaitable[bool]] | None = None,
) -> None:
    """Restart unhealthy or stuck instances, with backoff; runs after nginx dropped them.

    routed(): whether nginx's reload without them has taken (no worker from before it picks
    them any more); until then they are left alone, so no request is sent to a server
    being stopped. The agent's loop asks again on its next tick.
    """
    now = time.monotonic()
    waiting = [n for n, h in health.items() if n in specs and h.needs_restart(now, spec)]
    if not waiting or (routed is not None and not await routed()):
        return
    for number in waiting:
        h = health[number]
        delay = h.begin_restart(now, spec)
        unit, gpu = instance_name(number), gpu_label(specs[number])
        if delay is None:
            log.error("instance.failed", unit=unit, gpu=gpu, reason=h.last_error)
            continue
        log.warning(
            "instance.restart",
            unit=unit,
            gpu=gpu,
            reason=h.last_error,
            attempt=h.restart_attempts,
            next_backoff=f"{delay:g}s",
        )
        try:
            await asyncio.to_thread(runner.restart, number)
        except Exception as exc:  # a D-Bus or exec failure must not kill the agent
            log.error("instance.restart_failed", unit=unit, reason=str(exc))
