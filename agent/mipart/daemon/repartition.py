"""Repartition while serving: a reload whose `gpus:` differ from the host (docs/repartition.md).

The agent owns the drain, so it makes the whole change itself, as one operator action
(`systemctl reload mipart-agent`): its instances leave nginx, which answers the gap with
its 503 JSON; in-flight requests finish; the instances stop (their servers hold the GPUs,
as any ROCm process does); the partition engine applies the plan (memory, one reload,
compute, verify) in a worker thread; the instances the host's layout now gives start all
at once. Nothing restarts an instance in between: the agent's loop waits for this.

A holder the agent cannot stop is refused before anything stops. Any later failure is
logged, recorded in /run/mipart/partition.json and shown in the status, and serving comes
back on whatever layout the host then has.

It drives the Agent (daemon.agent) through the attributes and steps its loop (daemon.loop)
uses: specs, health, status, runner, update_nginx, reconcile.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from mipart.daemon import drain
from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import REPARTITION_COMMAND, instance_name
from mipart.partition.apply import apply, busy_holders, plan_host, refuse_unmanaged
from mipart.partition.plan import PartitionPlan
from mipart.partition.record import record_apply
from mipart.partition.writes import ApplyBackend
from mipart.profile.schema import Profile

# mipart-vllm@.service stops a server within TimeoutStopSec (60 s); then the apply names who is left.
STOP_WAIT = 90.0
POLL = 0.2
START_TRIES = 10
KEEPALIVE = 1.0  # watchdog and STATUS= while the loop waits for the repartition
DRAINING, STOPPING, APPLYING, STARTING = "draining", "stopping", "applying", "starting"


@dataclass(frozen=True)
class Change:
    backend: ApplyBackend
    plan: PartitionPlan


def pending_change(profile: Profile, root: Path) -> Change | None:
    """Blocking: what the host must do to match `gpus:`, None when it matches.

    Raises UserError when it cannot be done, before anything stopped: the host cannot reach
    the layout, or a process the agent cannot stop holds a GPU the plan changes.
    """
    backend = open_backend(root)
    state, plan = plan_host(profile.gpus, backend)
    if plan.noop:
        return None
    refuse_unmanaged(busy_holders(backend, state, plan), profile.gpus.client_services)
    return Change(backend, plan)


async def if_needed(agent: Agent) -> bool:
    """Repartition when the loaded profile's `gpus:` differ from the host; True when it ran
    (serving was replanned), False when the caller reconciles as usual."""
    st = agent.status
    try:
        change = await asyncio.to_thread(pending_change, agent.loaded, agent.sysfs_root)
    except Exception as exc:  # an unreadable host too: the reload still reconciles what it can
        st.repartition_error = _describe(exc)
        agent.log.error("repartition.refused", reason=st.repartition_error)
        await asyncio.to_thread(record_apply, False, agent.loaded.digest, None, st.repartition_error)
        return False
    if change is None:
        st.repartition_error = ""
        return False
    await run(agent, change)
    return True


async def run(agent: Agent, change: Change) -> None:
    st, log = agent.status, agent.log
    started = time.monotonic()
    st.repartition_started, st.repartition_error = time.time(), ""
    log.info("repartition.start", writes=len(change.plan.writes), reload=change.plan.reload, instances=len(agent.specs))
    keeper = asyncio.create_task(_keep_systemd_informed(agent))
    try:
        st.repartition_error = await _change(agent, change)
        _phase(agent, STARTING)
        await _serve_again(agent)
    finally:
        st.repartition_phase, st.repartition_finished = "", time.time()
        keeper.cancel()
    log.info(
        "repartition.done",
        ok=not st.repartition_error,
        instances=len(agent.specs),
        seconds=round(time.monotonic() - started, 2),
    )


def _phase(agent: Agent, phase: str) -> None:
    agent.status.repartition_phase = phase
    agent.notifier.status(status_line(agent.snapshot()))


async def _keep_systemd_informed(agent: Agent) -> None:
    while True:
        agent.notifier.watchdog()
        agent.notifier.status(status_line(agent.snapshot()))
        await asyncio.sleep(KEEPALIVE)


async def _change(agent: Agent, change: Change) -> str:
    """Drain, stop, apply; returns what failed ("" when the host now matches the profile)."""
    try:
        _phase(agent, DRAINING)
        await _drain_all(agent)
        _phase(agent, STOPPING)
        await _stop_all(agent)
    except Exception as exc:  # systemd unreachable mid-way: serving must come back all the same
        error = f"{agent.status.repartition_phase} failed: {_describe(exc)}"
        agent.log.error("repartition.failed", reason=error, action="serving again on the layout the host has now")
        return error
    _phase(agent, APPLYING)
    return await _apply(agent, change)


async def _serve_again(agent: Agent) -> None:
    """Plan on the layout the host has now and start every instance at once (none runs now).

    A failure (systemd unreachable) is tried again, bounded; then the next reload starts them.
    """
    agent.health = {}
    for attempt in range(1, START_TRIES + 1):
        agent.specs = {}
        try:
            await agent.reconcile()
            if not agent.specs:
                await agent.update_nginx()  # nothing fits: every service answers 503, the reason logged
            return
        except Exception as exc:
            reason = _describe(exc)
            agent.log.error("repartition.start_failed", reason=reason, attempt=attempt, of=START_TRIES)
            await asyncio.sleep(POLL * 5)
    agent.status.repartition_error = (
        f"instances not started again ({reason}); run `{REPARTITION_COMMAND}` once systemd answers"
    )


async def _drain_all(agent: Agent) -> None:
    """Every instance out of rotation, with its requests finished (bounded); pending restarts dropped."""
    for task in agent.tasks:
        task.cancel()  # a planned restart would start an instance on the old layout
    await asyncio.gather(*agent.tasks, return_exceptions=True)
    agent.rolling, agent.rolling_active = {}, set()
    for health in agent.health.values():
        health.drain()
    await agent.update_nginx()
    await agent.router.wait_settled()  # no nginx worker from before the reload picks an instance any more
    sockets = [spec.socket for spec in agent.specs.values()]
    await drain.wait_drained(agent.client, sockets, agent.loaded.health.timeout, drain.drain_limit(agent.loaded))


async def _stop_all(agent: Agent) -> None:
    """Stop every instance the runner runs, and wait (bounded) until none is left running."""
    runner, log = agent.runner, agent.log
    states = await asyncio.to_thread(runner.list_instances)
    numbers = sorted(set(agent.specs) | {n for n, s in states.items() if s.active})
    for number in numbers:
        log.info("instance.stop", unit=instance_name(number), reason="repartition")
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


async def _apply(agent: Agent, change: Change) -> str:
    """The partition engine off the event loop; returns what failed ("" when it worked)."""
    digest = agent.loaded.digest
    try:
        result = await asyncio.to_thread(apply, agent.loaded.gpus, change.backend, agent.log, True)
    except Exception as exc:  # whatever went wrong, serving must come back
        error = _describe(exc)
        agent.log.error("repartition.failed", reason=error, action="serving again on the layout the host has now")
        await asyncio.to_thread(record_apply, False, digest, None, error)
        return error
    error = f"client services did not start again: {', '.join(result.not_restarted)}" if result.not_restarted else ""
    await asyncio.to_thread(record_apply, not error, digest, result, error)
    agent.log.info(
        "repartition.applied", writes=result.writes, reloads=result.reloads, logical_gpus=result.logical_gpus
    )
    return error


def _describe(exc: Exception) -> str:
    """A UserError is already one line for people; anything else is named by its type."""
    return str(exc) if isinstance(exc, UserError) else f"{exc.__class__.__name__}: {exc}"
