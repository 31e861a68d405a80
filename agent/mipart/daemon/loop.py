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
from dataclasses import dataclass

from aiohttp import web

from mipart.api.server import start_api
from mipart.daemon import progress, recovery, repartition
from mipart.daemon.agent import Agent
from mipart.daemon.notify import status_line
from mipart.daemon.profiles import read_profile_off_loop
from mipart.daemon.retry import Backoff
from mipart.errors import UserError
from mipart.names import INSTANCE_KEEP_IDLE_S
from mipart.unixhttp import InstanceClient

TICK = 0.1  # the longest the loop sleeps; it wakes sooner for a confirming probe, a failed one or a signal
QUIET_TICK = 0.5  # the longest while all is settled (at most a quarter of health.interval): see quiet_tick
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
    client = agent.client = InstanceClient(keep_idle=INSTANCE_KEEP_IDLE_S)  # probes reuse one connection per instance
    try:
        agent.instances.reset({})
        agent.status.repartition_error = await asyncio.to_thread(progress.on_start, agent.run_dir)
        await _first_reconcile(agent, client)
        agent.notifier.send("READY=1")
        agent.notifier.status(status_line(agent.snapshot()))
        agent.log.info("agent.ready", status=status_line(agent.snapshot()))
        ticker = Ticker(agent, client)
        while not agent.stopping.is_set():
            agent.wake.clear()  # what comes during the tick wakes the next one at once
            try:
                await _tick(ticker)
                pause = agent.prober.pause(agent.instances.health, agent.specs, agent.loaded.health, quiet_tick(agent))
            except Exception as exc:  # no step's failure ends the agent: logged, tried again after a pause
                where = traceback.extract_tb(exc.__traceback__)[-1]
                agent.log.error(
                    "agent.step_failed",
                    reason=f"{exc.__class__.__name__}: {exc}",
                    at=f"{where.filename}:{where.lineno}",
                    action="retry in 1s",
                )
                pause = STEP_RETRY
            agent.notifier.status(agent.status_line())
            agent.notifier.watchdog()
            try:
                await asyncio.wait_for(agent.wake.wait(), pause)
            except asyncio.TimeoutError:
                pass
        for task in agent.tasks:
            task.cancel()  # a pending drain: the restart it waited for is left to the next agent
        await asyncio.gather(*agent.tasks, return_exceptions=True)
    finally:
        client.close()
        agent.client = None


def quiet_tick(agent: Agent) -> float:
    """The loop's longest sleep: TICK while anything moves; while every instance is ready and nothing is queued
    or pending, up to QUIET_TICK (a quarter of the probe interval at most). A failed probe and a signal wake it
    either way; what waits is a scheduled probe's start and the read of nginx's failure reports, each up to that
    late (docs/faults.md). The idle agent then wakes 2 times a second, not 10."""
    if agent.tasks or not agent.instances.settled():
        return TICK
    return max(TICK, min(QUIET_TICK, agent.loaded.health.interval / 4))


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


@dataclass
class Ticker:
    """The loop's round of care for the instances, apart from reloads: a rolling repartition runs
    it too while it waits for a step's instances, so the rest of the host is tended meanwhile."""

    agent: Agent
    client: InstanceClient
    next_check: float = 0.0  # monotonic: when unit states and files are read again

    async def tend(self) -> None:
        agent = self.agent
        changed = await agent.probe_all(self.client)
        if time.monotonic() >= self.next_check:
            self.next_check = time.monotonic() + agent.loaded.health.interval
            changed |= await agent.check_units()
            changed |= await agent.check_files()
        if changed:
            await agent.update_nginx()
        await recovery.restart_due(
            agent.instances.health, agent.specs, agent.loaded.health, agent.runner, agent.log, agent.router.settled
        )
        await agent.roll()


async def _tick(ticker: Ticker) -> None:
    if ticker.agent.reload_requested.is_set():
        await _reload(ticker.agent, ticker.tend)
    await ticker.tend()


async def _first_reconcile(agent: Agent, client: InstanceClient) -> None:
    """Probe what already serves before touching nginx, so a restart drops nothing; a drain stays (the file)."""
    await asyncio.to_thread(agent.readiness.read_drain)
    specs = await agent.desired_specs()
    agent.instances.reset(specs or {})
    await agent.probe_all(client, force=True)
    if specs is None:
        await agent.update_nginx()  # nothing fits: listeners answer 503 with the reason logged
    else:
        await agent.reconcile(specs)


async def _reload(agent: Agent, tend: repartition.Tend) -> None:
    agent.reload_requested.clear()
    agent.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
    agent.log.info("agent.reload", profile=agent.profile_path)
    drain_changed = await asyncio.to_thread(agent.readiness.read_drain)  # `mipart drain` and `undrain` reload
    read = await read_profile_off_loop(
        agent.profile_path, agent.log, agent.status.profile_digest, run_dir=agent.run_dir
    )  # any failure keeps the last good one
    if agent.load_profile(read) and not await repartition.if_needed(
        agent, tend
    ):  # a changed gpus: applied while serving
        await agent.reconcile()
    elif drain_changed:
        await agent.update_nginx()
    agent.notifier.send("READY=1")
