"""Dead and stuck instances: out of rotation at once, then restarted with backoff (or given up on)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from mipart.daemon.snapshot import gpu_label
from mipart.health.machine import InstanceHealth
from mipart.names import instance_name
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec
from mipart.values import UnitState


def mark_gone(health: Mapping[int, InstanceHealth], specs: Mapping[int, InstanceSpec], states: Mapping[int, UnitState], log) -> bool:
    """Instances whose unit is not running leave rotation; True when nginx membership changed."""
    changed, now = False, time.monotonic()
    for number, h in health.items():
        state = states.get(number)
        if number in specs and (state is None or not state.active):
            reason = f"unit {state.active_state}/{state.sub_state}" if state else "unit not running"
            if h.unit_gone(reason, now):
                changed = True
                log.warning("instance.unhealthy", unit=instance_name(number), gpu=gpu_label(specs[number]), reason=reason)
    return changed


async def restart_due(health: dict[int, InstanceHealth], specs: Mapping[int, InstanceSpec], spec: HealthSpec, runner, log) -> None:
    """Restart unhealthy or stuck instances, with backoff; runs after nginx dropped them."""
    now = time.monotonic()
    for number, h in list(health.items()):
        if number not in specs or not h.needs_restart(now, spec):
            continue
        delay = h.begin_restart(now, spec)
        unit, gpu = instance_name(number), gpu_label(specs[number])
        if delay is None:
            log.error("instance.failed", unit=unit, gpu=gpu, reason=h.last_error)
            continue
        log.warning("instance.restart", unit=unit, gpu=gpu, reason=h.last_error, attempt=h.restart_attempts, next_backoff=f"{delay:g}s")
        try:
            await asyncio.to_thread(runner.restart, number)
        except Exception as exc:  # a D-Bus or exec failure must not kill the agent
            log.error("instance.restart_failed", unit=unit, reason=str(exc))
