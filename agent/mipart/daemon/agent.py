"""`mipart agent`: keeps instances matching the profile, nginx matching readiness.

It never owns the servers: systemd (or the local runner) does, so stopping or
restarting the agent leaves serving alone. On start it first probes what already
runs, so nginx keeps routing to ready instances across an agent restart.

The Agent holds what the agent knows and does each step; its life (start, the loop,
SIGHUP, stop) is daemon.loop's. Each concern is a sibling module: profiles (reading the profile),
specfiles (/run/mipart/instances), rollout (which changed instances restart when: pure),
drain (before a planned stop), repartition (a changed gpus: applied while serving),
probing (health probes into the state machines), recovery (dead and stuck instances),
routing (nginx), notify (sd_notify) and snapshot (what the status API and STATUS= read,
never the Agent's fields).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mipart.api.host import HostSnapshot, collect_host
from mipart.daemon import drain, probing, recovery, routing, specfiles
from mipart.daemon.instances import Instances, Specs
from mipart.daemon.notify import Notifier, summary
from mipart.daemon.profiles import override_in_force, read_profile
from mipart.daemon.readiness import HostReadiness
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus, gpu_label
from mipart.errors import UserError
from mipart.gpu import discover
from mipart.log import Log
from mipart.names import instance_name
from mipart.nginx.files import BACK, FRONT, NginxFiles
from mipart.paths import drain_path, serving_dir, sockets_dir
from mipart.profile.schema import Profile
from mipart.runners import records
from mipart.runners.base import Runner
from mipart.safedirs import UnsafePath
from mipart.serving.instances import plan_instances
from mipart.serving.reconcile import Actions, plan_actions
from mipart.values import UnitState

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient


class Agent:
    def __init__(
        self,
        profile_path: str,
        runner: Runner,
        run_dir: Path,
        sysfs_root: Path,
        log: Log,
        stops_instances: bool = False,
    ):
        self.profile_path = profile_path
        self.runner = runner
        self.stops_instances = stops_instances  # --stop-on-exit: the caller stops them after loop.run()
        self.run_dir = run_dir
        self.serving_dir = serving_dir()  # sockets and launch records: apart from the run dir
        self.sysfs_root = sysfs_root
        self.log = log
        self.nginx = (NginxFiles.of(BACK, run_dir), NginxFiles.of(FRONT, run_dir))  # the two layers
        self.notifier = Notifier()
        self.status = AgentStatus()
        self.router = routing.Router(*self.nginx, runner, log, self.status)
        self.spec_files = specfiles.SpecFiles(run_dir, self.serving_dir, log, self.status)
        self.readiness = HostReadiness(drain_path(), log)  # what fleet balancers are told (drained, host-wide change)
        self.wake = asyncio.Event()
        self.prober = probing.Prober(self.wake.set)
        self.profile: Profile | None = None
        self.instances = Instances()  # each instance's spec, health and rollout position
        self.client: InstanceClient | None = None  # how probes and draining reach instances; set while serving
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()

    @property
    def loaded(self) -> Profile:
        """The profile in force; the loop runs only once there is one (daemon.loop.run refuses to start without)."""
        if self.profile is None:
            raise RuntimeError("the agent has no profile loaded yet")
        return self.profile

    @property
    def specs(self) -> Specs:
        return self.instances.specs

    # -- what it knows, for the API and STATUS= ---------------------------------------
    def snapshot(self) -> AgentSnapshot:
        services = self.profile.services if self.profile is not None else ()
        return AgentSnapshot.of(
            self.profile_path,
            self.profile is not None,
            self.status,
            self.instances.specs,
            self.instances.health,
            self.stopping.is_set(),
            services,
        )

    def status_line(self) -> str:
        """notify.status_line of snapshot(), counted in place: the loop's every tick."""
        ready = len(self.instances.in_rotation())
        return summary(ready, len(self.specs), self.status)

    def host_snapshot(self) -> HostSnapshot:
        """Blocking: the API calls it in its own thread."""
        profile = self.profile
        return collect_host(self.sysfs_root, self.runner, self.nginx, profile.gpus if profile is not None else None)

    def load_profile(self, read: tuple[Profile | None, str] | None = None) -> bool:
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
    async def desired_specs(self) -> Specs | None:
        """Instance specs for the profile on this host's logical GPUs; None (logged) when they do not fit."""
        try:
            state = await asyncio.to_thread(discover, self.sysfs_root)
            layout = {g.index: g.compute for g in state.physical}
            sockets = sockets_dir(self.serving_dir)
            specs = {s.number: s for s in plan_instances(self.loaded, state.logical, sockets, layout)}
        except UserError as exc:
            self.status.reconcile_error = str(exc)
            self.log.error("reconcile.failed", reason=str(exc))
            return None
        self.status.reconcile_error = ""
        return specs

    async def reconcile(self, specs: Specs | None = None) -> None:
        specs = specs if specs is not None else await self.desired_specs()
        if specs is None:
            return
        await asyncio.to_thread(self.spec_files.write, specs)  # a failure is reported and retried, never raised
        states = await asyncio.to_thread(self.runner.list_instances, pids=True)
        actions = plan_actions(specs, states, self._running_digests(states))
        self.instances.replace(specs)
        await self._run_actions(actions)
        await asyncio.to_thread(self.spec_files.remove_stale, specs)
        self.status.last_reconcile = time.time()
        await self.update_nginx()

    def _running_digests(self, states: Mapping[int, UnitState]) -> dict[int, str | None]:
        """The spec digest each running server was started with, from the launcher's record of
        that very process (runners.records): None when there is none, so it counts as changed."""
        launched = records.launches(self.serving_dir)
        found: dict[int, str | None] = {}
        for number, state in states.items():
            if state.main_pid:
                launch = launched.get(number)
                found[number] = launch.digest if launch is not None and launch.pid == state.main_pid else None
        return found

    async def _run_actions(self, actions: Actions) -> None:
        """All starts (and stops) at once: one slow model load never delays the others.

        Changed instances restart rolling (see roll), so a service keeps serving.
        """
        for number in actions.stop:
            self.log.info("instance.stop", unit=instance_name(number), reason="no longer in profile")
        for number in actions.start:
            self.log.info(
                "instance.start", unit=instance_name(number), gpu=gpu_label(self.specs[number]), reason="not running"
            )
            self.instances.health[number].fresh_start(grace=self.loaded.health.interval)
        self.instances.queue(actions.restart)
        if actions.stop:
            await self.update_nginx()  # out of rotation first
            self._background(self._drain_then(list(actions.stop), self.runner.stop))
        await self._gather([asyncio.to_thread(self.runner.start, n) for n in actions.start])
        await self.roll()

    async def _gather(self, jobs: list[Coroutine[Any, Any, None]]) -> None:
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, Exception):
                self.log.error("instance.action_failed", reason=str(result))

    async def roll(self) -> None:
        """Restart the next batch of changed instances once the previous batch is ready."""
        if not self.instances.queued and not self.instances.restarting:
            return  # the loop's every tick: nothing to plan
        plan = self.instances.next_restarts()
        if not plan.batch:
            return
        self.instances.drain(plan.batch)
        for i, number in enumerate(plan.batch):
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

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain_then(self, numbers: list[int], action: Callable[[int], None]) -> None:
        """Let nginx switch workers and in-flight requests finish, then act (bounded)."""
        await self.router.wait_settled()  # no nginx worker from before the reload picks them any more
        sockets = [self.specs[n].socket for n in numbers if n in self.specs]
        profile = self.loaded
        await drain.wait_drained(self.client, sockets, profile.health.timeout, drain.drain_limit(profile))
        await self._gather([asyncio.to_thread(action, n) for n in numbers])
        for number in numbers:  # probed again only now: the old server can no longer answer
            if number in self.instances.health:
                self.instances.health[number].fresh_start(grace=self.loaded.health.interval)

    # -- readiness and nginx -----------------------------------------------------------
    async def update_nginx(self) -> None:
        ready = self.instances.in_rotation()
        serving = {s.name for s in self.loaded.services} <= {self.specs[n].service for n in ready if n in self.specs}
        self.status.readiness = self.readiness.current(serving, self.loaded.health.startup_timeout)
        await self.router.update(self.loaded, self.specs, ready, self.status.readiness)

    async def check_units(self) -> bool:
        """One state read for all units: a dead one leaves rotation at once."""
        try:
            states = await asyncio.to_thread(self.runner.list_instances)
        except UserError as exc:
            self.log.error("units.unreadable", reason=str(exc))
            return False
        changed = recovery.mark_gone(self.instances.health, self.specs, states, self.log)
        await recovery.tell_exits(self.instances.health, self.specs, states, self.runner, self.log)
        return changed

    async def check_files(self) -> bool:
        """Someone removed /run/mipart files: write the specs again, and nginx.conf, start nginx if gone.
        The drain file changed (`mipart drain` without a reload reaching the agent): nginx.conf too."""
        await asyncio.to_thread(self.spec_files.restore, self.specs)
        if not (self.run_dir / records.AGENT).exists():
            await asyncio.to_thread(self.record_self)
        drain_changed = await asyncio.to_thread(self.readiness.read_drain)
        return await self.router.needs_update() or drain_changed

    def record_self(self) -> None:
        """The agent's own record in its run dir, by which `mipart bench sweep` finds it (runners.records)."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            records.write_record(self.run_dir, records.AGENT)
        except (OSError, UnsafePath) as exc:
            self.log.warning("agent.record_failed", reason=str(exc), action="`mipart bench sweep` cannot find it")

    async def probe_all(self, client: InstanceClient, force: bool = False) -> bool:
        health = self.loaded.health
        due, results = await self.prober.round(
            client, self.instances.health, self.specs, health, force, self.router.upstream_failures()
        )
        if not due:
            return False
        results = await probing.only_new_servers(due, results, self.instances.restarting, self.specs, self._digests_now)
        return probing.record_results(due, results, health, self.specs, self.log)

    async def _digests_now(self) -> dict[int, str | None]:
        return self._running_digests(await asyncio.to_thread(self.runner.list_instances, pids=True))
