"""Repartition while serving: a reload whose `gpus:` differ from the host (docs/repartition.md).

A change that needs no driver reload rolls a few GPUs at a time while the rest serve
(daemon.rolling executes partition.rolling's steps). A host-wide change is made here, at once.

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
uses: instances, status, runner, update_nginx, reconcile.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mipart.daemon import drain, progress, rolling
from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.daemon.stopping import POLL, cancel_planned_restarts, describe, keep_systemd_informed, stop_and_wait
from mipart.errors import UserError
from mipart.gpu import open_backend
from mipart.names import REPARTITION_COMMAND
from mipart.partition.apply import apply, busy_holders, plan_host, refuse_unmanaged
from mipart.partition.plan import PartitionPlan
from mipart.partition.record import record_apply
from mipart.partition.rolling import ROLLING, Rollout
from mipart.partition.writes import ApplyBackend
from mipart.paths import sockets_dir
from mipart.profile.schema import Profile
from mipart.serving.planned import instances_after, rollout_of
from mipart.serving.spec import InstanceSpec

START_TRIES = 10
NOTICE, DRAINING, STOPPING, APPLYING, STARTING = "notice", "draining", "stopping", "applying", "starting"
Tend = rolling.Tend
UNPLANNED = "the profile's services do not fit the new layout: every instance stops"  # a Change without a rollout


@dataclass(frozen=True)
class Change:
    backend: ApplyBackend
    plan: PartitionPlan
    rollout: Rollout | None  # None: the instances the new layout gives cannot be planned; made at once


def pending_change(profile: Profile, root: Path, running: Iterable[InstanceSpec], serving: Path) -> Change | None:
    """Blocking: what the host must do to match `gpus:`, None when it matches; `running`: the
    instances that run now, the rollout's start.

    Raises UserError when it cannot be done, before anything stopped: the host cannot reach
    the layout, or a process the agent cannot stop holds a GPU the plan changes (any GPU
    the change touches, whichever step switches it).
    """
    backend = open_backend(root)
    state, plan = plan_host(profile.gpus, backend)
    if plan.noop:
        return None
    refuse_unmanaged(busy_holders(backend, state, plan), profile.gpus.client_services)
    try:
        after = instances_after(profile, state, plan, sockets_dir(serving))
    except UserError:
        return Change(backend, plan, None)  # the start afterwards reports why nothing fits
    return Change(backend, plan, rollout_of(profile, plan, running, after))


async def if_needed(agent: Agent, tend: Tend) -> bool:
    """Repartition when the loaded profile's `gpus:` differ from the host; True when it ran
    (serving was replanned), False when the caller reconciles as usual. `tend`: the loop's
    care for the instances, which a rolling change runs while it waits."""
    st = agent.status
    try:
        change = await asyncio.to_thread(
            pending_change, agent.loaded, agent.sysfs_root, tuple(agent.specs.values()), agent.serving_dir
        )
    except Exception as exc:  # an unreadable host too: the reload still reconciles what it can
        st.repartition_error = describe(exc)
        agent.log.error("repartition.refused", reason=st.repartition_error)
        await asyncio.to_thread(record_apply, False, agent.loaded.digest, None, st.repartition_error)
        return False
    if change is None:
        st.repartition_error = ""
        await asyncio.to_thread(progress.clear, agent.run_dir)
        return False
    if change.rollout is not None and change.rollout.mode == ROLLING:
        await rolling.run(agent, change.backend, change.rollout, tend)
    else:
        await run(agent, change)
    return True


async def run(agent: Agent, change: Change) -> None:
    st, log = agent.status, agent.log
    started = time.monotonic()
    st.repartition_started, st.repartition_error = time.time(), ""
    log.info("repartition.start", writes=len(change.plan.writes), reload=change.plan.reload, instances=len(agent.specs))
    keeper = asyncio.create_task(keep_systemd_informed(agent))
    try:
        await _notice(agent, change)
        st.repartition_error = await _change(agent, change)
        _phase(agent, STARTING)
        await _serve_again(agent)
    finally:
        st.repartition_phase, st.repartition_finished = "", time.time()
        agent.readiness.change_ended()
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


async def _notice(agent: Agent, change: Change) -> None:
    """Balancers first: readiness 503 for gpus.drain_notice while every instance still serves (daemon.readiness).
    The reason is the rollout plan's (`mipart plan` says the same)."""
    _phase(agent, NOTICE)

    async def flip() -> None:
        await agent.update_nginx()
        await agent.router.wait_settled()  # nginx answers the 503 now: the notice counts from here

    reason = change.rollout.reason if change.rollout is not None else UNPLANNED
    await agent.readiness.give_notice(reason, agent.loaded.gpus.drain_notice, flip)


async def _change(agent: Agent, change: Change) -> str:
    """Drain, stop, apply; returns what failed ("" when the host now matches the profile)."""
    try:
        _phase(agent, DRAINING)
        await _drain_all(agent)
        _phase(agent, STOPPING)
        await _stop_all(agent)
    except Exception as exc:  # systemd unreachable mid-way: serving must come back all the same
        error = f"{agent.status.repartition_phase} failed: {describe(exc)}"
        agent.log.error("repartition.failed", reason=error, action="serving again on the layout the host has now")
        return error
    _phase(agent, APPLYING)
    return await _apply(agent, change)


async def _serve_again(agent: Agent) -> None:
    """Plan on the layout the host has now and start every instance at once (none runs now).

    A failure (systemd unreachable) is tried again, bounded; then the next reload starts them.
    """
    for attempt in range(1, START_TRIES + 1):
        agent.instances.reset({})
        try:
            await agent.reconcile()
            if not agent.specs:
                await agent.update_nginx()  # nothing fits: every service answers 503, the reason logged
            return
        except Exception as exc:
            reason = describe(exc)
            agent.log.error("repartition.start_failed", reason=reason, attempt=attempt, of=START_TRIES)
            await asyncio.sleep(POLL * 5)
    agent.status.repartition_error = (
        f"instances not started again ({reason}); run `{REPARTITION_COMMAND}` once systemd answers"
    )


async def _drain_all(agent: Agent) -> None:
    """Every instance out of rotation, with its requests finished (bounded); pending restarts dropped."""
    await cancel_planned_restarts(agent)
    agent.instances.drain()
    await agent.update_nginx()
    await agent.router.wait_settled()  # no nginx worker from before the reload picks an instance any more
    sockets = [spec.socket for spec in agent.specs.values()]
    await drain.wait_drained(agent.client, sockets, agent.loaded.health.timeout, drain.drain_limit(agent.loaded))


async def _stop_all(agent: Agent) -> None:
    """Stop every instance the runner runs, and wait (bounded) until none is left running."""
    states = await asyncio.to_thread(agent.runner.list_instances)
    await stop_and_wait(agent, set(agent.specs) | {n for n, s in states.items() if s.active}, "repartition")


async def _apply(agent: Agent, change: Change) -> str:
    """The partition engine off the event loop; returns what failed ("" when it worked)."""
    digest = agent.loaded.digest
    try:
        result = await asyncio.to_thread(apply, agent.loaded.gpus, change.backend, agent.log, True)
    except Exception as exc:  # whatever went wrong, serving must come back
        error = describe(exc)
        agent.log.error("repartition.failed", reason=error, action="serving again on the layout the host has now")
        await asyncio.to_thread(record_apply, False, digest, None, error)
        return error
    error = f"client services did not start again: {', '.join(result.not_restarted)}" if result.not_restarted else ""
    await asyncio.to_thread(record_apply, not error, digest, result, error)
    agent.log.info(
        "repartition.applied", writes=result.writes, reloads=result.reloads, logical_gpus=result.logical_gpus
    )
    return error
