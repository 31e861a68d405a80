"""The rolling repartition: a `gpus:` change that needs no driver reload, made a few GPUs at a
time while the others serve (docs/repartition.md). It executes exactly partition.rolling's steps.

Per step: the step's GPUs are checked for holders the agent cannot stop (one that appeared since
the change began refuses the step while its instances still serve); only that step's instances
leave nginx, their requests finish (bounded), they stop (bounded); the GPUs are switched by the
partition engine (for these GPUs only: writes, read-back), and the instances the host's layout now gives there start;
the next step begins once they are ready (bounded by health.startup_timeout). Instances on other
GPUs are never stopped or restarted, and the loop's care for them (`tend`) runs while a step waits.

A step that cannot finish (a new holder, a switch that fails, an instance that never becomes
ready) stops the change at that GPU boundary: the host then serves on the layout it has, the
status says where it stopped, and `systemctl reload mipart-agent` resumes it (daemon.progress).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from mipart.daemon import drain, progress
from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.daemon.snapshot import gpu_label
from mipart.daemon.stopping import cancel_planned_restarts, describe, keep_systemd_informed, stop_and_wait
from mipart.health.states import FAILED
from mipart.names import instance_name
from mipart.partition.apply import apply, busy_holders, plan_host
from mipart.partition.record import record_apply
from mipart.partition.rolling import ROLLING, Rollout, Step
from mipart.partition.writes import ApplyBackend

Tend = Callable[[], Awaitable[None]]
TICK = 0.1  # how often a step's wait tends the instances and looks at the new ones


async def run(agent: Agent, backend: ApplyBackend, rollout: Rollout, tend: Tend) -> None:
    st, log = agent.status, agent.log
    started, total, digest = time.monotonic(), len(rollout.steps), agent.loaded.digest
    st.repartition_started, st.repartition_error, st.repartition_phase = time.time(), "", ROLLING
    log.info("repartition.start", mode=ROLLING, steps=total, reason=rollout.reason, instances=len(agent.specs))
    await cancel_planned_restarts(agent)
    keeper = asyncio.create_task(keep_systemd_informed(agent))
    switched: list[int] = []
    try:
        for number, step in enumerate(rollout.steps, 1):
            left = tuple(g for s in rollout.steps[number - 1 :] for g in s.gpus)
            record = progress.Progress(digest, progress.RUNNING, number, total, step.gpus, tuple(switched), left)
            error = await _one_step(agent, backend, step, record, tend)
            if error:
                await asyncio.to_thread(
                    progress.write, agent.run_dir, replace(record, state=progress.STOPPED, error=error)
                )
                st.repartition_error = f"rolling repartition stopped at {record.where()}: {error}; {record.resume()}"
                log.error("repartition.stopped", reason=st.repartition_error)
                break
            switched += step.gpus
    finally:
        st.repartition_phase, st.repartition_step, st.repartition_finished = "", "", time.time()
        keeper.cancel()
    if not st.repartition_error:
        await asyncio.to_thread(progress.clear, agent.run_dir)
    await asyncio.to_thread(record_apply, not st.repartition_error, digest, None, st.repartition_error)
    if not agent.stopping.is_set():
        await agent.reconcile()  # the whole profile on the layout the host has now: stopped steps serve again
    log.info(
        "repartition.done",
        ok=not st.repartition_error,
        steps=len(switched),
        of=total,
        instances=len(agent.specs),
        seconds=round(time.monotonic() - started, 2),
    )


async def _one_step(agent: Agent, backend: ApplyBackend, step: Step, record: progress.Progress, tend: Tend) -> str:
    """One step, logged at its start and end; returns why it stopped ("" when its instances are ready)."""
    agent.status.repartition_step = f"step {record.step} of {record.steps} (GPU {','.join(map(str, step.gpus))})"
    agent.notifier.status(status_line(agent.snapshot()))
    await asyncio.to_thread(progress.write, agent.run_dir, record)
    fields = {"step": record.step, "of": record.steps, "gpus": _list(step.gpus), "stop": _list(step.stop)}
    agent.log.info("repartition.step", phase="start", start=_list(step.start), **fields)
    started: tuple[int, ...] = ()
    try:
        error = await _foreign_holders(agent, backend, step)
        if not error:
            await _stop(agent, step)
            error = await _switch(agent, backend, step)
        if not error:
            started, error = await _start(agent, step, set(record.switched) | set(step.gpus))
            error = error or await _ready(agent, started, tend)
    except Exception as exc:  # systemd unreachable mid-way: the change stops here, serving comes back
        error = describe(exc)
    agent.log.info("repartition.step", phase="end", start=_list(started), ok=not error, **fields)
    return error


async def _stop(agent: Agent, step: Step) -> None:
    """The step's instances out of rotation, their requests finished, stopped (each bounded)."""
    numbers = [n for n in step.stop if n in agent.specs]
    sockets = [agent.specs[n].socket for n in numbers]
    agent.instances.drain(numbers)
    await agent.update_nginx()
    await agent.router.wait_settled()  # no nginx worker from before the reload picks them any more
    await drain.wait_drained(agent.client, sockets, agent.loaded.health.timeout, drain.drain_limit(agent.loaded))
    still = await stop_and_wait(agent, numbers, "rolling repartition")
    agent.instances.forget(numbers)
    if still:
        raise RuntimeError(f"{', '.join(instance_name(n) for n in still)} did not stop; the GPUs were not switched")


async def _foreign_holders(agent: Agent, backend: ApplyBackend, step: Step) -> str:
    """A holder the agent cannot stop on the step's GPUs refuses the step before its instances stop,
    so a GPU not switched keeps serving; "" when there is none."""
    gpus = replace(agent.loaded.gpus, select=step.gpus)
    state, plan = await asyncio.to_thread(plan_host, gpus, backend)
    holders = await asyncio.to_thread(busy_holders, backend, state, plan)
    foreign = [h for h in holders if h.instance is None and h.unit not in gpus.client_services]
    if not foreign:
        return ""
    return (
        f"GPUs in use by processes mipart does not manage: {'; '.join(h.describe() for h in foreign)}; "
        "the GPUs of this step were not switched and their instances serve on"
    )


async def _switch(agent: Agent, backend: ApplyBackend, step: Step) -> str:
    """The partition engine for the step's GPUs only (a holder that appeared while they drained refuses it)."""
    gpus = replace(agent.loaded.gpus, select=step.gpus)
    try:
        result = await asyncio.to_thread(apply, gpus, backend, agent.log, True)
    except Exception as exc:
        return describe(exc)
    agent.log.info("repartition.applied", gpus=_list(step.gpus), writes=result.writes, logical_gpus=result.logical_gpus)
    if result.not_restarted:
        return f"client services did not start again: {', '.join(result.not_restarted)}"
    return ""


async def _start(agent: Agent, step: Step, switched: set[int]) -> tuple[tuple[int, ...], str]:
    """The instances the host's layout now gives on the step's GPUs, planned, written and started."""
    specs = await agent.desired_specs()
    if specs is None:
        return (), f"the instances of the new layout cannot be planned: {agent.status.reconcile_error}"
    mine = {
        n: s for n, s in specs.items() if set(s.physical_gpus) & set(step.gpus) and set(s.physical_gpus) <= switched
    }
    taken = sorted(n for n in mine if n in agent.specs)  # numbering that moves instances between GPUs
    if taken:
        return (), f"the new layout numbers instances {', '.join(map(str, taken))}, which serve on other GPUs"
    agent.instances.put(mine, grace=agent.loaded.health.interval)
    await asyncio.to_thread(agent.spec_files.write, agent.specs)
    for number, spec in sorted(mine.items()):
        agent.log.info("instance.start", unit=instance_name(number), gpu=gpu_label(spec), reason="rolling repartition")
    for result in await asyncio.gather(
        *(asyncio.to_thread(agent.runner.start, n) for n in sorted(mine)), return_exceptions=True
    ):
        if isinstance(result, Exception):
            return tuple(sorted(mine)), describe(result)
    return tuple(sorted(mine)), ""


async def _ready(agent: Agent, numbers: tuple[int, ...], tend: Tend) -> str:
    """Until every instance started is in rotation; "" then, else which are not and their last error."""
    deadline = time.monotonic() + agent.loaded.health.startup_timeout
    while True:
        await tend()
        health = agent.instances.health
        waiting = [n for n in numbers if n in health and not health[n].in_rotation]
        failed = [n for n in waiting if health[n].state == FAILED]
        if not waiting:
            return ""
        if failed or time.monotonic() > deadline or agent.stopping.is_set():
            why = "the agent is stopping" if agent.stopping.is_set() else "never became ready"
            named = "; ".join(
                f"{instance_name(n)} ({health[n].state}: {health[n].last_error or 'no error'})" for n in waiting
            )
            return f"{why}: {named}"
        await asyncio.sleep(TICK)


def _list(numbers: tuple[int, ...]) -> str:
    return ",".join(map(str, numbers))
