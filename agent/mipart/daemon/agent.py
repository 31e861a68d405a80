"""`mipart agent`: keeps instances matching the profile, nginx matching readiness.

It never owns the servers: systemd (or the local runner) does, so stopping or
restarting the agent leaves serving alone. On start it first probes what already
runs, so nginx keeps routing to ready instances across an agent restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from mipart.errors import UserError
from mipart.names import instance_name

TICK = 0.1
# After nginx is told to drop an instance, its new workers take over within this.
NGINX_SWITCH_GRACE = 0.5
# A planned restart waits at most this long (or request_timeout) for in-flight requests.
DRAIN_MAX = 60.0


@dataclass
class AgentStatus:
    """What the agent knows, for STATUS=, logs and the status API."""

    profile_digest: str = ""
    profile_error: str = ""
    nginx_error: str = ""
    last_reconcile: float = 0.0
    reconcile_error: str = ""


class Notifier:
    """sd_notify, silent when not run by systemd (NOTIFY_SOCKET unset)."""

    def __init__(self):
        import sdnotify

        self._notifier = sdnotify.SystemdNotifier()
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        self.watchdog_interval = usec / 2e6 if usec else 0.0
        self._last_watchdog = 0.0

    def send(self, message: str) -> None:
        self._notifier.notify(message)

    def watchdog(self) -> None:
        now = time.monotonic()
        if self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.send("WATCHDOG=1")


class Agent:
    def __init__(self, profile_path: str, runner, run_dir: Path, sysfs_root: Path, log):
        from mipart.serving.nginx import NginxFiles
        from mipart.paths import nginx_prefix

        self.profile_path = profile_path
        self.runner = runner
        self.run_dir = run_dir
        self.sysfs_root = sysfs_root
        self.log = log
        self.nginx = NginxFiles(nginx_prefix(run_dir))
        self.notifier = Notifier()
        self.status = AgentStatus()
        self.profile = None
        self.specs: dict = {}
        self.health: dict = {}
        self.rolling: dict[int, None] = {}  # instances waiting for their turn to restart, in order
        self.rolling_active: set[int] = set()
        self.session = None  # the probe session, shared with draining
        self.tasks: set[asyncio.Task] = set()
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self._last_status_line = ""

    # -- profile -----------------------------------------------------------------
    def load_profile(self) -> bool:
        """Adopt the profile if valid; else keep the last good one. Returns success."""
        from mipart.profile import load_profile
        from mipart.profile.load import ProfileError

        try:
            profile = load_profile(self.profile_path)
        except ProfileError as exc:
            self.status.profile_error = str(exc).splitlines()[0]
            for line in str(exc).splitlines():
                self.log.error("profile.invalid", problem=line, kept=self.status.profile_digest[:12] or "none")
            return False
        self.profile, self.status.profile_error = profile, ""
        self.status.profile_digest = profile.digest
        self._warn_ephemeral_ports(profile)
        return True

    def _warn_ephemeral_ports(self, profile) -> None:
        """Ports inside the kernel's ephemeral range can be taken by any outgoing connection."""
        from mipart.profile.schema import INSTANCE_PORT_SPAN

        try:
            low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
        except (OSError, ValueError):
            return
        base = profile.instances.base_port
        if base <= high and base + INSTANCE_PORT_SPAN - 1 >= low:
            self.log.warning("profile.ephemeral_ports", ports=f"{base}-{base + INSTANCE_PORT_SPAN - 1}", ephemeral=f"{low}-{high}",
                             advice="instances may fail to bind after a restart; choose instances.base_port below the ephemeral range (net.ipv4.ip_local_port_range)")

    # -- reconcile ---------------------------------------------------------------
    async def desired_specs(self) -> dict | None:
        """Instance specs for the profile on this host's logical GPUs; None (logged) when they do not fit."""
        from mipart.gpu.amdgpu import discover
        from mipart.serving.instances import plan_instances

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
        from mipart.health import InstanceHealth

        specs = specs if specs is not None else await self.desired_specs()
        if specs is None:
            return
        await asyncio.to_thread(self._write_specs, specs)
        states = await asyncio.to_thread(self.runner.list_instances)
        actions = self._plan(specs, states)
        self.specs = specs
        for number in specs:
            self.health.setdefault(number, InstanceHealth(number))
        await self._run_actions(actions)
        for number in list(self.health):
            if number not in specs:
                del self.health[number]
        await asyncio.to_thread(self._remove_stale_specs, specs)
        self.status.last_reconcile = time.time()
        await self.update_nginx()

    def _plan(self, specs, states):
        from mipart.serving.reconcile import plan_actions

        return plan_actions(specs, states, self._running_digests(states))

    @staticmethod
    def _running_digests(states) -> dict:
        """The spec digest each running server was started with (from its environment)."""
        from mipart.runners import procs
        from mipart.names import DIGEST_VAR

        return {n: procs.environ_of(s.main_pid).get(DIGEST_VAR) for n, s in states.items() if s.main_pid}

    async def _run_actions(self, actions) -> None:
        """All starts (and stops) at once: one slow model load never delays the others.

        Changed instances restart rolling (see roll), so a service keeps serving.
        """
        for number in actions.stop:
            self.log.info("instance.stop", unit=instance_name(number), reason="no longer in profile")
            self.rolling.pop(number, None)
        for number in actions.start:
            self.log.info("instance.start", unit=instance_name(number), gpu=self._gpus(number), reason="not running")
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

    def _batch_size(self, service: str) -> int:
        """A quarter of the service at a time, or all of it when none of it serves anyway."""
        members = [n for n, spec in self.specs.items() if spec.service == service]
        if not any(self.health[n].in_rotation for n in members if n in self.health and n not in self.rolling_active):
            return len(members)
        return max(1, len(members) // 4)

    async def roll(self) -> None:
        """Restart the next batch of changed instances once the previous batch is ready."""
        # Ready here means the new server (see _only_new_servers).
        for number in list(self.rolling_active):
            if number not in self.specs or self.health[number].state in ("ready", "degraded", "failed"):
                self.rolling_active.discard(number)
        busy = {self.specs[n].service for n in self.rolling_active}
        waiting: dict[str, list[int]] = {}
        for number in list(self.rolling):
            if number not in self.specs:
                del self.rolling[number]
            elif self.specs[number].service not in busy:
                waiting.setdefault(self.specs[number].service, []).append(number)
        batch = [n for service, numbers in waiting.items() for n in numbers[: self._batch_size(service)]]
        if not batch:
            return
        for number in batch:
            del self.rolling[number]
            self.rolling_active.add(number)
            self.health[number].drain()
            self.log.info("instance.restart", unit=instance_name(number), gpu=self._gpus(number), reason="spec changed", waiting=len(self.rolling))
        await self.update_nginx()  # out of rotation before they go down
        self._background(self._drain_then(batch, self.runner.restart))

    def _background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain_then(self, numbers: list[int], action) -> None:
        """Let nginx switch workers and in-flight requests finish, then act (bounded)."""
        from mipart.health import running_requests

        await asyncio.sleep(NGINX_SWITCH_GRACE)
        ports = [self.specs[n].port for n in numbers if n in self.specs]
        timeout = self.profile.health.timeout
        deadline = time.monotonic() + min(DRAIN_MAX, max((s.request_timeout for s in self.profile.services), default=DRAIN_MAX))
        while self.session is not None and time.monotonic() < deadline:
            running = await asyncio.gather(*(running_requests(self.session, p, timeout) for p in ports))
            if not any(running):
                break
            await asyncio.sleep(0.2)
        await self._gather([asyncio.to_thread(action, n) for n in numbers])
        for number in numbers:  # probed again only now: the old server can no longer answer
            if number in self.health:
                self.health[number].fresh_start(grace=self.profile.health.interval)

    def _gpus(self, number: int) -> str:
        spec = self.specs.get(number)
        return ",".join(map(str, spec.logical_gpus)) if spec else ""

    def _write_specs(self, specs) -> None:
        from mipart.fsutil import write_atomic
        from mipart.paths import instance_spec_path

        for number, spec in specs.items():
            path = instance_spec_path(number, self.run_dir)
            text = json.dumps(spec.to_json(), indent=1, sort_keys=True) + "\n"
            try:
                if path.read_text() == text:
                    continue
            except FileNotFoundError:
                pass
            write_atomic(path, text)

    def _remove_stale_specs(self, specs) -> None:
        directory = self.run_dir / "instances"
        for path in directory.glob("*.json"):
            if path.stem.isdigit() and int(path.stem) not in specs:
                path.unlink(missing_ok=True)

    # -- readiness and nginx -----------------------------------------------------------
    async def update_nginx(self) -> None:
        from mipart.serving.nginx import NginxRejected, install_config
        from mipart.serving.nginx_conf import render_nginx

        ready = frozenset(n for n, h in self.health.items() if h.in_rotation and n in self.specs)
        text = render_nginx(self.profile, tuple(self.specs.values()), ready, self.nginx.prefix)
        try:
            changed = await asyncio.to_thread(install_config, self.nginx, text)
        except NginxRejected as exc:
            if self.status.nginx_error != str(exc):
                self.log.error("nginx.config_rejected", reason=str(exc), kept=str(self.nginx.conf), rejected=str(self.nginx.rejected))
            self.status.nginx_error = str(exc)
            return
        self.status.nginx_error = ""
        if changed or not self.runner.nginx_running(self.nginx):
            await asyncio.to_thread(self.runner.ensure_nginx, self.nginx)
            self.log.info("nginx.updated", ready=len(ready), instances=len(self.specs))

    async def check_units(self) -> bool:
        """One state read for all units: a dead one leaves rotation at once."""
        try:
            states = await asyncio.to_thread(self.runner.list_instances)
        except UserError as exc:
            self.log.error("units.unreadable", reason=str(exc))
            return False
        changed, now = False, time.monotonic()
        for number, h in self.health.items():
            state = states.get(number)
            if number in self.specs and (state is None or not state.active):
                reason = f"unit {state.active_state}/{state.sub_state}" if state else "unit not running"
                if h.unit_gone(reason, now):
                    changed = True
                    self.log.warning("instance.unhealthy", unit=instance_name(number), gpu=self._gpus(number), reason=reason)
        return changed

    async def check_files(self) -> bool:
        """Someone removed /run/mipart files: write the specs again, and nginx.conf, start nginx if gone."""
        missing = await asyncio.to_thread(self._missing_specs)
        if missing:
            self.log.warning("files.missing", specs=",".join(map(str, missing)), action="rewrite")
            await asyncio.to_thread(self._write_specs, self.specs)
        if not self.nginx.conf.exists():
            self.log.warning("files.missing", file=str(self.nginx.conf), action="rewrite")
            return True
        if not await asyncio.to_thread(self.runner.nginx_running, self.nginx):
            self.log.warning("nginx.gone", action="start it with the current config")
            return True
        return False

    def _missing_specs(self) -> list[int]:
        from mipart.paths import instance_spec_path

        return [n for n in self.specs if not instance_spec_path(n, self.run_dir).exists()]

    async def restart_due(self) -> None:
        """Restart unhealthy or stuck instances, with backoff; runs after nginx dropped them."""
        now, spec = time.monotonic(), self.profile.health
        for number, h in list(self.health.items()):
            if number not in self.specs or not h.needs_restart(now, spec):
                continue
            delay = h.begin_restart(now, spec)
            unit = instance_name(number)
            if delay is None:
                self.log.error("instance.failed", unit=unit, gpu=self._gpus(number), reason=h.last_error)
                continue
            self.log.warning("instance.restart", unit=unit, gpu=self._gpus(number), reason=h.last_error, attempt=h.restart_attempts, next_backoff=f"{delay:g}s")
            try:
                await asyncio.to_thread(self.runner.restart, number)
            except Exception as exc:  # a D-Bus or exec failure must not kill the agent
                self.log.error("instance.restart_failed", unit=unit, reason=str(exc))

    async def probe_all(self, session, force: bool = False) -> bool:
        from mipart.health import probe

        now, spec = time.monotonic(), self.profile.health
        due = [h for n, h in self.health.items() if n in self.specs and (force or h.due(now, spec))]
        if not due:
            return False
        for h in due:
            h.last_probe = now
        results = await asyncio.gather(*(probe(session, self.specs[h.number].port, spec) for h in due))
        results = await self._only_new_servers(due, results)
        changed = False
        for h, (ok, error) in zip(due, results):
            before = h.state
            changed |= h.record(ok, error, spec)
            if h.state != before:
                log = self.log.info if h.state == "ready" else self.log.warning
                log(f"instance.{h.state}", unit=instance_name(h.number), gpu=self._gpus(h.number), reason=error or "/health 200", was=before)
        return changed

    async def _only_new_servers(self, due, results):
        """A rolling restart's instance is ready only once the server answering runs the new spec."""
        pending = [i for i, h in enumerate(due) if results[i][0] and h.number in self.rolling_active and not h.in_rotation]
        if not pending:
            return results
        digests = self._running_digests(await asyncio.to_thread(self.runner.list_instances))
        results = list(results)
        for i in pending:
            number = due[i].number
            if digests.get(number) != self.specs[number].digest():
                results[i] = (False, "the previous server is still answering")
        return results

    def status_line(self) -> str:
        ready = sum(1 for n, h in self.health.items() if h.in_rotation and n in self.specs)
        line = f"{ready}/{len(self.specs)} instances ready"
        if self.status.profile_error:
            line += f"; profile rejected, running the last good one: {self.status.profile_error}"
        elif self.status.reconcile_error:
            line += f"; {self.status.reconcile_error}"
        elif self.status.nginx_error:
            line += f"; nginx config rejected: {self.status.nginx_error}"
        return line

    def _notify_status(self) -> None:
        line = self.status_line()
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.send(f"STATUS={line}")

    # -- main loop --------------------------------------------------------------------
    async def run(self) -> None:
        if not self.load_profile():
            raise UserError(f"{self.status.profile_error}; the agent needs a valid profile to start (check it with `mipart validate`)")
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        from mipart.api import start_api

        api = await start_api(self, self.profile.api.listen)  # a port in use is one clear line
        try:
            await self._serve()
        finally:
            await api.cleanup()
        self.notifier.send("STOPPING=1")
        self.log.info("agent.stopping", instances="left running")

    async def _serve(self) -> None:
        import aiohttp

        # Keep-alive probes cost a third less CPU; below uvicorn's 5 s so the client closes first.
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=3.0)
        async with aiohttp.ClientSession(connector=connector) as session:
            self.session = session
            self.specs = {}
            await self._first_reconcile(session)
            self.notifier.send("READY=1")
            self._notify_status()
            self.log.info("agent.ready", status=self.status_line())
            next_check = 0.0
            while not self.stopping.is_set():
                if self.reload_requested.is_set():
                    await self._reload()
                changed = await self.probe_all(session)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.profile.health.interval
                    changed |= await self.check_units()
                    changed |= await self.check_files()
                if changed:
                    await self.update_nginx()
                await self.restart_due()
                await self.roll()
                self._notify_status()
                self.notifier.watchdog()
                try:
                    await asyncio.wait_for(self.stopping.wait(), TICK)
                except asyncio.TimeoutError:
                    pass
            for task in self.tasks:
                task.cancel()  # a pending drain: the restart it waited for is left to the next agent
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.session = None

    async def _first_reconcile(self, session) -> None:
        """Probe what already serves before touching nginx, so a restart drops nothing."""
        from mipart.health import InstanceHealth

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
        if self.load_profile():
            await self.reconcile()
        self.notifier.send("READY=1")
