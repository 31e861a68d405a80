"""What both repartition paths (daemon.repartition, the whole host; daemon.rolling, a few GPUs at a
time) do alike: stop instances and wait until they are gone (bounded), keep systemd informed while
the change runs, and name a failure in one line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.errors import UserError
from mipart.names import instance_name

# mipart-vllm@.service stops a server within TimeoutStopSec (60 s); then the apply names who is left.
STOP_WAIT = 90.0
POLL = 0.2
KEEPALIVE = 1.0  # watchdog and STATUS= while the loop waits for the repartition


async def stop_and_wait(agent: Agent, numbers: Iterable[int], reason: str) -> list[int]:
    """Stop these instances; returns those still running after STOP_WAIT (logged)."""
    runner, log = agent.runner, agent.log
    numbers = sorted(numbers)
    for number in numbers:
        log.info("instance.stop", unit=instance_name(number), reason=reason)
    for result in await asyncio.gather(*(asyncio.to_thread(runner.stop, n) for n in numbers), return_exceptions=True):
        if isinstance(result, Exception):
            log.error("instance.action_failed", reason=str(result))
    deadline = time.monotonic() + STOP_WAIT
    while True:
        states = await asyncio.to_thread(runner.list_instances)
        running = [n for n in numbers if n in states and not states[n].stopped]
        if not running or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL)
    if running:
        log.warning(
            "repartition.not_stopped", units=",".join(instance_name(n) for n in running), after=f"{STOP_WAIT:g}s"
        )
    return running


async def keep_systemd_informed(agent: Agent) -> None:
    while True:
        agent.notifier.watchdog()
        agent.notifier.status(status_line(agent.snapshot()))
        await asyncio.sleep(KEEPALIVE)


async def cancel_planned_restarts(agent: Agent) -> None:
    """Pending spec-change restarts and planned drains go: they would start an instance on the old layout."""
    for task in agent.tasks:
        task.cancel()
    await asyncio.gather(*agent.tasks, return_exceptions=True)
    agent.instances.clear_queue()


def describe(exc: Exception) -> str:
    """A UserError is already one line for people; anything else is named by its type."""
    return str(exc) if isinstance(exc, UserError) else f"{exc.__class__.__name__}: {exc}"
