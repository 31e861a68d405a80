"""nginx matching readiness: the config lists only instances in rotation, and nginx runs it.

The Router also knows what nginx actually serves. A reload is taken only once no worker
from before it accepts connections any more (old workers close their listeners when told
to shut down; until then they still pick instances from the old config): then the config's
generation is the one served (status: nginx.serving_generation). Workers of ours left
without a master are strays (nginx.procs); nginx.conf damage and nginx refusing a
config are reported, never raised, and a failed write is tried again with backoff.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from mipart.daemon.retry import Backoff, describe
from mipart.daemon.snapshot import AgentStatus
from mipart.errors import UserError
from mipart.log import Log
from mipart.nginx import procs as nginx_procs
from mipart.nginx.conf import generation_of, render_nginx
from mipart.nginx.files import NginxFiles, NginxRejected, install_config
from mipart.profile.schema import Profile
from mipart.runners.base import Runner
from mipart.serving.spec import InstanceSpec

# A reload whose old workers still accept after this is reported; restarts waiting for it go ahead.
SWITCH_LIMIT = 3.0
UPSTREAM_LOG_MAX = 1 << 20  # the agent empties nginx's upstream error log past this
# nginx names a unix upstream `unix:PATH` and puts a `:` before the URI after it (ngx_http_log_error_handler).
UPSTREAM_LINE = re.compile(
    r"\[(?:warn|error|crit)\] \d+#\d+: (?:\*\d+ )?(?P<what>[^,]*?)(?: while [^,]*)?, .*?upstream: "
    r"\"\w+://(?P<address>unix:[^:\"]+|[^/\"]+)"
)


@dataclass(frozen=True)
class Switch:
    """A reload under way: the workers that accepted before it, and the generation it brings."""

    generation: str
    old: frozenset[int]
    since: float


class Router:
    def __init__(self, files: NginxFiles, runner: Runner, log: Log, status: AgentStatus):
        self.files, self.runner, self.log, self.status = files, runner, log, status
        self.switch: Switch | None = None
        self.retry = Backoff()
        self.dirty = False  # an update could not be done: it is due again
        self.reloaded = False  # the first update reloads nginx, so what serves is known
        self.log_offset = 0

    async def update(self, profile: Profile, specs: Mapping[int, InstanceSpec], ready: frozenset[int]) -> None:
        """Install the config for `ready` if nginx -t accepts it; reload nginx, or start it if it does not run."""
        if not self.retry.due(time.monotonic()):
            self.dirty = True
            return
        self.dirty = False
        text = render_nginx(profile, tuple(specs.values()), ready, self.files.prefix)
        try:
            changed = await asyncio.to_thread(install_config, self.files, text)
            if changed or not self.reloaded or not await asyncio.to_thread(self.runner.nginx_running, self.files):
                old = await asyncio.to_thread(nginx_procs.scan, self.files.prefix)
                if old.strays:
                    self._strays_found(old.strays)
                await asyncio.to_thread(self.runner.ensure_nginx, self.files)
                self.switch, self.reloaded = (
                    Switch(generation_of(text), frozenset(old.accepting), time.monotonic()),
                    True,
                )
                self.log.info("nginx.updated", ready=len(ready), instances=len(specs), generation=generation_of(text))
        except NginxRejected as exc:
            if self.status.nginx_error != str(exc):
                self.log.error(
                    "nginx.config_rejected",
                    reason=str(exc),
                    kept=str(self.files.conf),
                    rejected=str(self.files.rejected),
                )
            self.status.nginx_error = str(exc)
            return
        except UserError as exc:  # nginx missing, systemd unreachable
            self._failed(str(exc))
            return
        except OSError as exc:  # the nginx dir replaced by a file, a full disk
            self._failed(describe(exc))
            return
        self.status.nginx_error = ""
        self.status.nginx_generation = generation_of(text)
        if self.retry.error:
            self.log.info("nginx.files_ok", file=str(self.files.conf))
        self.retry.succeeded()
        self.status.nginx_files_error = ""

    def _failed(self, error: str) -> None:
        self.dirty = True
        new = error != self.retry.error
        delay = self.retry.failed(error, time.monotonic())
        self.status.nginx_files_error = error
        if new:
            self.log.error(
                "nginx.update_failed",
                reason=error,
                action=f"keeps serving what runs; retries with backoff (next in {delay:g}s)",
            )

    async def needs_update(self) -> bool:
        """Periodic: a failed update due again, nginx.conf gone, nginx gone, or strays holding the port."""
        if self.dirty:
            return self.retry.due(time.monotonic())
        if not await asyncio.to_thread(self.files.conf.exists):
            self.log.warning("files.missing", file=str(self.files.conf), action="rewrite")
            return True
        found = await asyncio.to_thread(nginx_procs.scan, self.files.prefix)
        if len(found.strays) != self.status.nginx_strays:
            self.status.nginx_strays = len(found.strays)
            if found.strays:
                self._strays_found(found.strays)
        self._confirm(found)
        if not await asyncio.to_thread(self.runner.nginx_running, self.files):
            self.log.warning("nginx.gone", action="start it with the current config")
            return True
        return bool(found.strays)

    def _strays_found(self, strays: list[int]) -> None:
        self.log.warning(
            "nginx.strays",
            workers=",".join(map(str, strays)),
            reason="nginx workers of ours serve without their master",
            action="a new master takes over their sockets; they finish their requests and exit",
        )

    async def settled(self) -> bool:
        """The last reload has taken (or is overdue): no worker from before it picks an instance any more."""
        if self.switch is None:
            return True
        if self._confirm(await asyncio.to_thread(nginx_procs.scan, self.files.prefix)):
            return True
        return time.monotonic() - self.switch.since > SWITCH_LIMIT

    async def wait_settled(self, limit: float = SWITCH_LIMIT, poll: float = 0.02) -> None:
        deadline = time.monotonic() + limit
        while not await self.settled() and time.monotonic() < deadline:
            await asyncio.sleep(poll)

    def _confirm(self, found: nginx_procs.NginxProcs) -> bool:
        switch = self.switch
        if switch is None:
            return True
        if not set(found.accepting) & switch.old and set(found.workers) - switch.old:
            self.status.nginx_serving, self.status.nginx_overdue = switch.generation, False
            self.switch = None
            return True
        if not self.status.nginx_overdue and time.monotonic() - switch.since > SWITCH_LIMIT:
            self.status.nginx_overdue = True
            self.log.warning(
                "nginx.reload_not_taken",
                generation=switch.generation,
                serving=self.status.nginx_serving or "unknown",
                reason=f"workers from before the reload still accept after {SWITCH_LIMIT:g}s (see nginx's log)",
            )
        return False

    def upstream_failures(self) -> dict[str, str]:
        """Instances (by address, `unix:PATH`) nginx failed to get an answer from since the last call, with its words.

        Cheap when nothing is new (one stat); the agent calls it every tick.
        """
        try:
            size = os.stat(self.files.upstream_log).st_size
        except OSError:
            return {}
        if size == self.log_offset:
            return {}
        if size < self.log_offset:  # emptied or replaced
            self.log_offset = 0
        try:
            with open(self.files.upstream_log, "rb") as handle:
                handle.seek(self.log_offset)
                chunk = handle.read(UPSTREAM_LOG_MAX)
            self.log_offset += len(chunk)
            if self.log_offset >= UPSTREAM_LOG_MAX:
                os.truncate(self.files.upstream_log, 0)  # nginx appends (O_APPEND): it writes on at the start
                self.log_offset = 0
        except OSError:
            return {}
        found = {}
        for line in chunk.decode(errors="replace").splitlines():
            match = UPSTREAM_LINE.search(line)
            if match:
                found[match.group("address")] = match.group("what").strip()
        return found
