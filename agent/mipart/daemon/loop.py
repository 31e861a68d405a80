"""The agent's life: start (a valid profile, the API, a first reconcile that probes what
already serves), the loop (probes, unit and file checks, restarts, rollouts), SIGHUP (a
profile reload, repartitioning when `gpus:` changed) and stop.

No step's failure ends the loop: it is logged and tried again after a pause. What a step
does is the Agent's (daemon.agent); this module only decides when.
"""

from __future__ import annotations

import asyncio
import signal
import time
import traceback

from aiohttp import web

from mipart.api.server import start_api
from mipart.daemon import recovery, repartition
from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.daemon.profiles import read_profile_off_loop
from mipart.daemon.retry import Backoff
from mipart.errors import UserError
from mipart.health.machine import InstanceHealth
from mipart.unixhttp import InstanceClient

TICK = 0.1  # the longest the loop sleeps; it wakes sooner for a confirming probe, a failed one or a signal
STEP_RETRY = 1.0


async def run(agent: Agent) -> None:
    """Serve until SIGTERM or SIGINT; raises UserError when there is no valid profile to start with."""
    if not agent.load_profile():
        raise UserError(
            f"{agent.status.profile_error}; the agent needs a valid profile to start (check it with `mipart validate`)"
        )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _signalled, agent, agent.reload_requested)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _signalled, agent, agent.stopping)
    agent.record_self()
    api = asyncio.create_task(keep_api(agent))  # a squatted address delays the API, never serving
    try:
        await _serve(agent)
    finally:
        api.cancel()
        runner = (await asyncio.gather(api, return_exceptions=True))[0]
        if isinstance(runner, web.AppRunner):
            await runner.cleanup()
    agent.notifier.send("STOPPING=1")
    agent.log.info(
        "agent.stopping", instances="stopping them (--stop-on-exit)" if agent.stops_instances else "left running"
    )


async def _serve(agent: Agent) -> None:
    client = agent.client = InstanceClient()
    try:
        agent.specs = {}
        await _first_reconcile(agent, client)
        agent.notifier.send("READY=1")
        agent.notifier.status(status_line(agent.snapshot()))
        agent.log.info("agent.ready", status=status_line(agent.snapshot()))
        next_check = 0.0
        while not agent.stopping.is_set():
            agent.wake.clear()  # what comes during the tick wakes the next one at once
            try:
                next_check = await _tick(agent, client, next_check)
                pause = agent.prober.pause(agent.health, agent.specs, agent.loaded.health, TICK)
            except Exception as exc:  # no step's failure ends the agent: logged, tried again after a pause
                where = traceback.extract_tb(exc.__traceback__)[-1]
                agent.log.error(
                    "agent.step_failed",
                    reason=f"{exc.__class__.__name__}: {exc}",
                    at=f"{where.filename}:{where.lineno}",
                    action="retry in 1s",
                )
                pause = STEP_RETRY
            agent.notifier.status(status_line(agent.snapshot()))
            agent.notifier.watchdog()
            try:
                await asyncio.wait_for(agent.wake.wait(), pause)
            except asyncio.TimeoutError:
                pass
        for task in agent.tasks:
            task.cancel()  # a pending drain: the restart it waited for is left to the next agent
        await asyncio.gather(*agent.tasks, return_exceptions=True)
    finally:
        agent.client = None


async def keep_api(agent: Agent) -> web.AppRunner:
    """The status API, listening as soon as it can: a bind that fails (someone holds the port, the
    address is not there yet) is logged once, shown in STATUS=, and tried again with backoff while the
    agent serves on; it never stops reconciliation or failover."""
    listen, retry = agent.loaded.api.listen, Backoff()
    while True:
        try:
            runner = await start_api(agent, listen)
        except UserError as exc:
            if str(exc) != retry.error:
                agent.log.error("api.bind_failed", reason=str(exc), action="serving goes on; retrying with backoff")
            agent.status.api_error = str(exc)
            await asyncio.sleep(retry.failed(str(exc), time.monotonic()))
            continue
        if retry.error:
            agent.log.info("api.listening", listen=listen, after=f"{retry.failures} failed tries")
        agent.status.api_error = ""
        return runner


def _signalled(agent: Agent, event: asyncio.Event) -> None:
    event.set()
    agent.wake.set()


async def _tick(agent: Agent, client: InstanceClient, next_check: float) -> float:
    if agent.reload_requested.is_set():
        await _reload(agent)
    changed = await agent.probe_all(client)
    if time.monotonic() >= next_check:
        next_check = time.monotonic() + agent.loaded.health.interval
        changed |= await agent.check_units()
        changed |= await agent.check_files()
    if changed:
        await agent.update_nginx()
    await recovery.restart_due(
        agent.health, agent.specs, agent.loaded.health, agent.runner, agent.log, agent.router.settled
    )
    await agent.roll()
    return next_check


async def _first_reconcile(agent: Agent, client: InstanceClient) -> None:
    """Probe what already serves before touching nginx, so a restart drops nothing."""
    specs = await agent.desired_specs()
    agent.specs = specs or {}
    agent.health = {n: InstanceHealth(n) for n in agent.specs}
    await agent.probe_all(client, force=True)
    if specs is None:
        await agent.update_nginx()  # nothing fits: listeners answer 503 with the reason logged
    else:
        await agent.reconcile(specs)


async def _reload(agent: Agent) -> None:
    agent.reload_requested.clear()
    agent.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    agent.log.info("agent.reload", profile=agent.profile_path)
    read = await read_profile_off_loop(
        agent.profile_path, agent.log, agent.status.profile_digest, run_dir=agent.run_dir
    )  # any failure keeps the last good one
    if agent.load_profile(read) and not await repartition.if_needed(agent):  # a changed gpus: applied while serving
        await agent.reconcile()
    agent.notifier.send("READY=1")
