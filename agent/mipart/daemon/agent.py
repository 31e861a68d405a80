"""`mipart agent`: keeps instances matching the profile, nginx matching readiness.

It never owns the servers: systemd (or the local runner) does, so stopping or
restarting the agent leaves serving alone. On start it first probes what already
runs, so nginx keeps routing to ready instances across an agent restart.

The Agent orchestrates; each concern is a sibling module: profiles (reading the profile),
specfiles (/run/mipart/instances), rollout (which changed instances restart when: pure),
drain (before a planned stop), repartition (a changed gpus: applied while serving),
probing (health probes into the state machines), recovery (dead and stuck instances),
routing (nginx), notify (sd_notify) and snapshot (what the status API and STATUS= read,
never the Agent's fields).
"""

from __future__ import annotations

import asyncio
import signal
import time
import traceback
from pathlib import Path

from mipart.api.host import HostSnapshot, collect_host
from mipart.api.server import start_api
from mipart.daemon import drain, probing, recovery, repartition, rollout, routing, specfiles
from mipart.daemon.notify import Notifier, status_line
from mipart.daemon.profiles import override_in_force, read_profile, read_profile_off_loop
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus, gpu_label
from mipart.errors import UserError
from mipart.gpu import discover
from mipart.health.machine import InstanceHealth
from mipart.names import DIGEST_VAR, instance_name
from mipart.nginx.files import NginxFiles
from mipart.paths import nginx_prefix
from mipart.runners import procfs
from mipart.serving.instances import plan_instances
from mipart.serving.reconcile import plan_actions

TICK = 0.1  # the longest the loop sleeps; it wakes sooner for a confirming probe, a failed one or a signal
STEP_RETRY = 1.0


class Agent:
    def __init__(self, profile_path: str, runner, run_dir: Path, sysfs_root: Path, log, stops_instances: bool = False):
        self.profile_path = profile_path
        self.runner = runner
        self.stops_instances = stops_instances  # --stop-on-exit: the caller stops them after run()
        self.run_dir = run_dir
        self.sysfs_root = sysfs_root
        self.log = log
        self.nginx = NginxFiles(nginx_prefix(run_dir))
        self.notifier = Notifier()
        self.status = AgentStatus()
        self.router = routing.Router(self.nginx, runner, log, self.status)
        self.spec_files = specfiles.SpecFiles(run_dir, log, self.status)
        self.wake = asyncio.Event()
        self.prober = probing.Prober(self.wake.set)
        self.profile = None
        self.specs: dict = {}
        self.health: dict[int, InstanceHealth] = {}
        self.rolling: dict[int, None] = {}  # instances waiting for their turn to restart, in order
        self.rolling_active: set[int] = set()
        self.session = None  # the probe session, shared with draining
        self.tasks: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()

    # -- what it knows, for the API and STATUS= ---------------------------------------
    def snapshot(self) -> AgentSnapshot:
        services = self.profile.services if self.profile is not None else ()
        return AgentSnapshot.of(
            self.profile_path,
            self.profile is not None,
            self.status,
            self.specs,
            self.health,
            self.stopping.is_set(),
            services,
        )

    def host_snapshot(self) -> HostSnapshot:
        """Blocking: the API calls it in its own thread."""
        profile = self.profile
        return collect_host(self.sysfs_root, self.runner, self.nginx, profile.gpus if profile is not None else None)

    def load_profile(self, read: tuple | None = None) -> bool:
        """Adopt the profile read (default: read it now) if valid; else keep the last good one. Returns success."""
        profile, self.status.profile_error = read or read_profile(
            self.profile_path, self.log, self.status.profile_digest, self.run_dir
        )
        if profile is None:
            return False
        self.profile, self.status.profile_digest = profile, profile.digest
        self.status.profile_override = override_in_force(profile, self.run_dir)
        return True

    # -- reconcile ---------------------------------------------------------------
    async def desired_specs(self) -> dict | None:
        """Instance specs for the profile on this host's logical GPUs; None (logged) when they do not fit."""
        try:
            logical = (await asyncio.to_thread(discover, self.sysfs_root)).logical
            specs = {s.number: s for s in plan_instances(self.profile, logical)}
        except UserError as exc:
            self.status.reconcile_error = str(exc)
            self.log.error("reconcile.failed", reason=str(exc))
            return None
        self.status.reconcile_error = ""
        return specs

    async def reconcile(self, specs: dict | None = None) -> None:
        specs = specs if specs is not None else await self.desired_specs()
        if specs is None:
            return
        await asyncio.to_thread(self.spec_files.write, specs)  # a failure is reported and retried, never raised
        states = await asyncio.to_thread(self.runner.list_instances)
        actions = plan_actions(specs, states, self._running_digests(states))
        self.specs = specs
        for number in specs:
            self.health.setdefault(number, InstanceHealth(number))
        await self._run_actions(actions)
        for number in list(self.health):
            if number not in specs:
                del self.health[number]
        await asyncio.to_thread(self.spec_files.remove_stale, specs)
        self.status.last_reconcile = time.time()
        await self.update_nginx()

    @staticmethod
    def _running_digests(states) -> dict:
        """The spec digest each running server was started with (from its environment)."""
        return {n: procfs.environ_of(s.main_pid).get(DIGEST_VAR) for n, s in states.items() if s.main_pid}

    async def _run_actions(self, actions) -> None:
        """All starts (and stops) at once: one slow model load never delays the others.

        Changed instances restart rolling (see roll), so a service keeps serving.
        """
        for number in actions.stop:
            self.log.info("instance.stop", unit=instance_name(number), reason="no longer in profile")
            self.rolling.pop(number, None)
        for number in actions.start:
            self.log.info(
                "instance.start", unit=instance_name(number), gpu=gpu_label(self.specs[number]), reason="not running"
            )
            self.health[number].fresh_start(grace=self.profile.health.interval)
        for number in actions.restart:
            self.rolling[number] = None
        if actions.stop:
            await self.update_nginx()  # out of rotation first
            self._background(self._drain_then(list(actions.stop), self.runner.stop))
        await self._gather([asyncio.to_thread(self.runner.start, n) for n in actions.start])
        await self.roll()

    async def _gather(self, jobs) -> None:
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):
                self.log.error("instance.action_failed", reason=str(result))

    async def roll(self) -> None:
        """Restart the next batch of changed instances once the previous batch is ready."""
        plan = rollout.next_batch(
            list(self.rolling),
            self.rolling_active,
            {n: s.service for n, s in self.specs.items()},
            {n: h.state for n, h in self.health.items()},
        )
        self.rolling, self.rolling_active = dict.fromkeys(plan.waiting), set(plan.active)
        if not plan.batch:
            return
        for i, number in enumerate(plan.batch):
            self.health[number].drain()
            waiting = len(plan.waiting) + len(plan.batch) - i - 1  # as the queue shrinks through the batch
            self.log.info(
                "instance.restart",
                unit=instance_name(number),
                gpu=gpu_label(self.specs[number]),
                reason="spec changed",
                waiting=waiting,
            )
        await self.update_nginx()  # out of rotation before they go down
        self._background(self._drain_then(list(plan.batch), self.runner.restart))

    def _background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain_then(self, numbers: list[int], action) -> None:
        """Let nginx switch workers and in-flight requests finish, then act (bounded)."""
        await self.router.wait_settled()  # no nginx worker from before the reload picks them any more
        addresses = [self.specs[n].address for n in numbers if n in self.specs]
        await drain.wait_drained(self.session, addresses, self.profile.health.timeout, drain.drain_limit(self.profile))
        await self._gather([asyncio.to_thread(action, n) for n in numbers])
        for number in numbers:  # probed again only now: the old server can no longer answer
            if number in self.health:
                self.health[number].fresh_start(grace=self.profile.health.interval)

    # -- readiness and nginx -----------------------------------------------------------
    async def update_nginx(self) -> None:
        ready = frozenset(n for n, h in self.health.items() if h.in_rotation and n in self.specs)
        await self.router.update(self.profile, self.specs, ready)

    async def check_units(self) -> bool:
        """One state read for all units: a dead one leaves rotation at once."""
        try:
            states = await asyncio.to_thread(self.runner.list_instances)
        except UserError as exc:
            self.log.error("units.unreadable", reason=str(exc))
            return False
        changed = recovery.mark_gone(self.health, self.specs, states, self.log)
        await recovery.tell_exits(self.health, self.specs, states, self.runner, self.log)
        return changed

    async def check_files(self) -> bool:
        """Someone removed /run/mipart files: write the specs again, and nginx.conf, start nginx if gone."""
        await asyncio.to_thread(self.spec_files.restore, self.specs)
        return await self.router.needs_update()

    async def probe_all(self, session, force: bool = False) -> bool:
        due, results = await self.prober.round(
            session, self.health, self.specs, self.profile.health, force, self.router.upstream_failures()
        )
        if not due:
            return False
        results = await probing.only_new_servers(due, results, self.rolling_active, self.specs, self._digests_now)
        return probing.record_results(due, results, self.profile.health, self.specs, self.log)

    async def _digests_now(self) -> dict:
        return self._running_digests(await asyncio.to_thread(self.runner.list_instances))

    # -- main loop --------------------------------------------------------------------
    async def run(self) -> None:
        if not self.load_profile():
            raise UserError(
                f"{self.status.profile_error}; the agent needs a valid profile to start (check it with `mipart "
                "validate`)"
            )
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._signalled, self.reload_requested)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, self.stopping)
        api = await start_api(self, self.profile.api.listen)  # a port in use is one clear line
        try:
            await self._serve()
        finally:
            await api.cleanup()
        self.notifier.send("STOPPING=1")
        self.log.info(
            "agent.stopping", instances="stopping them (--stop-on-exit)" if self.stops_instances else "left running"
        )

    async def _serve(self) -> None:
        import aiohttp

        # Keep-alive probes cost a third less CPU; below uvicorn's 5 s so the client closes first.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=3.0)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.session = session
            self.specs = {}
            await self._first_reconcile(session)
            self.notifier.send("READY=1")
            self.notifier.status(status_line(self.snapshot()))
            self.log.info("agent.ready", status=status_line(self.snapshot()))
            next_check = 0.0
            while not self.stopping.is_set():
                self.wake.clear()  # what comes during the tick wakes the next one at once
                try:
                    next_check = await self._tick(session, next_check)
                    pause = self.prober.pause(self.health, self.specs, self.profile.health, TICK)
                except Exception as exc:  # no step's failure ends the agent: logged, tried again after a pause
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    self.log.error(
                        "agent.step_failed",
                        reason=f"{exc.__class__.__name__}: {exc}",
                        at=f"{where.filename}:{where.lineno}",
                        action="retry in 1s",
                    )
                    pause = STEP_RETRY
                self.notifier.status(status_line(self.snapshot()))
                self.notifier.watchdog()
                try:
                    await asyncio.wait_for(self.wake.wait(), pause)
                except asyncio.TimeoutError:
                    pass
            for task in self.tasks:
                task.cancel()  # a pending drain: the restart it waited for is left to the next agent
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.session = None

    def _signalled(self, event: asyncio.Event) -> None:
        event.set()
        self.wake.set()

    async def _tick(self, session, next_check: float) -> float:
        if self.reload_requested.is_set():
            await self._reload()
        changed = await self.probe_all(session)
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + self.profile.health.interval
            changed |= await self.check_units()
            changed |= await self.check_files()
        if changed:
            await self.update_nginx()
        await recovery.restart_due(
            self.health, self.specs, self.profile.health, self.runner, self.log, self.router.settled
        )
        await self.roll()
        return next_check

    async def _first_reconcile(self, session) -> None:
        """Probe what already serves before touching nginx, so a restart drops nothing."""
        specs = await self.desired_specs()
        self.specs = specs or {}
        self.health = {n: InstanceHealth(n) for n in self.specs}
        await self.probe_all(session, force=True)
        if specs is None:
            await self.update_nginx()  # nothing fits: listeners answer 503 with the reason logged
        else:
            await self.reconcile(specs)

    async def _reload(self) -> None:
        self.reload_requested.clear()
        self.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        self.log.info("agent.reload", profile=self.profile_path)
        read = await read_profile_off_loop(
            self.profile_path, self.log, self.status.profile_digest, run_dir=self.run_dir
        )  # any failure keeps the last good one
        if self.load_profile(read) and not await repartition.if_needed(
            self
        ):  # a changed gpus: is applied while serving
            await self.reconcile()
        self.notifier.send("READY=1")
