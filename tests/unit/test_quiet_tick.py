"""The agent's loop sleeps longer only while everything is settled (daemon/loop.py: quiet_tick)."""

from __future__ import annotations

from types import SimpleNamespace

from specs import spec

from mipart.daemon.instances import Instances
from mipart.daemon.loop import QUIET_TICK, TICK, quiet_tick
from mipart.profile.schema import HealthSpec


def agent_with(states: list[bool], interval: float = 2.0, tasks: set | None = None) -> SimpleNamespace:
    """An agent whose instances answered their probes (True) or have not yet (False: starting)."""
    instances = Instances()
    instances.reset({n: spec(n) for n in range(len(states))})
    health = HealthSpec(interval=interval, timeout=min(1.0, interval))
    for h, answered in zip(instances.health.values(), states, strict=True):
        if answered:
            h.record(True, "", health)
    return SimpleNamespace(instances=instances, tasks=tasks or set(), loaded=SimpleNamespace(health=health))


def test_all_ready_sleeps_up_to_the_quiet_tick_and_a_quarter_interval_at_most():
    assert quiet_tick(agent_with([True] * 64)) == QUIET_TICK
    assert quiet_tick(agent_with([True] * 4, interval=0.5)) == 0.125
    assert quiet_tick(agent_with([True] * 4, interval=0.2)) == TICK  # never shorter than the busy tick


def test_anything_in_motion_keeps_the_short_tick():
    assert quiet_tick(agent_with([True] * 63 + [False])) == TICK  # one instance still starting
    assert quiet_tick(agent_with([True] * 4, tasks={object()})) == TICK  # a drain waiting
    queued = agent_with([True] * 4)
    queued.instances.queued[2] = None  # a spec change waiting for its turn
    assert quiet_tick(queued) == TICK
    failed = agent_with([True] * 4)
    failed.instances.health[1].condemn("wedged", restart=True)
    assert quiet_tick(failed) == TICK
