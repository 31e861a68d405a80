"""nginx matching readiness: the back layer lists only instances in rotation, and both layers run.

The back (nginx.conf) is reloaded on every membership change; the front (nginx.front), which
holds the clients' connections, is rewritten with it but its text changes, and it reloads,
only when the profile's listeners or services do (docs/routing.md). The back is updated first,
so a new service's socket exists before the front passes requests to it. Each layer is a
NginxLayer (installing, reloading, what nginx really serves, strays); nginx's own log of failed
upstreams, the back's, is read here.

The handover from a single-layer mipart (its nginx listened on the service ports itself): while
the front does not run and a back master of ours still listens on TCP, the back is written to
listen there as well (`direct`), the front starts with copies of those listening sockets
(nginx.launcher), and only then is the back written without them. No port is closed for a
moment, and if the front cannot start the back goes on serving the clients itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Mapping

from mipart.daemon.nginx_layer import SWITCH_LIMIT, NginxLayer
from mipart.daemon.snapshot import AgentStatus
from mipart.log import Log
from mipart.nginx import procs as nginx_procs
from mipart.nginx.conf import render_nginx
from mipart.nginx.files import NginxFiles
from mipart.nginx.front import render_front
from mipart.profile.schema import Profile
from mipart.runners.base import Runner
from mipart.serving.spec import InstanceSpec

UPSTREAM_LOG_MAX = 1 << 20  # the agent empties nginx's upstream error log past this
# nginx names a unix upstream `unix:PATH` and puts a `:` before the URI after it (ngx_http_log_error_handler).
UPSTREAM_LINE = re.compile(
    r"\[(?:warn|error|crit)\] \d+#\d+: (?:\*\d+ )?(?P<what>[^,]*?)(?: while [^,]*)?, .*?upstream: "
    r"\"\w+://(?P<address>unix:[^:\"]+|[^/\"]+)"
)
HANDOVER_LIMIT = 10.0  # how long the back keeps the listeners while the front starts, per update


class Router:
    def __init__(self, back: NginxFiles, front: NginxFiles, runner: Runner, log: Log, status: AgentStatus):
        self.files = back
        self.back = NginxLayer(back, runner, log, status.nginx)
        self.front = NginxLayer(front, runner, log, status.front)
        self.log_offset = 0

    async def update(self, profile: Profile, specs: Mapping[int, InstanceSpec], ready: frozenset[int]) -> None:
        """The back for `ready`, then the front; each installed if nginx -t accepts it, reloaded or started."""
        planned = tuple(specs.values())
        direct = await self._handing_over()
        await self.back.apply(
            render_nginx(profile, planned, ready, self.back.files.prefix, direct),
            ready=len(ready),
            instances=len(specs),
        )
        await self.front.apply(render_front(profile, planned, self.back.files.prefix, self.front.files.prefix))
        if direct and await self._front_up():
            await self.back.apply(render_nginx(profile, planned, ready, self.back.files.prefix), handover="done")

    async def _handing_over(self) -> bool:
        """The front has never run for this agent, does not run, and a back master still listens on TCP."""
        if self.front.reloaded or await self.front.running() is not False:
            return False
        found = await asyncio.to_thread(nginx_procs.scan, self.back.files.prefix)
        return any(nginx_procs.listening_sockets(master, unix=False) for master in found.masters)

    async def _front_up(self, poll: float = 0.05) -> bool:
        """Bounded: until the front runs (its unit is active once `mipart exec-nginx --front` took the sockets)."""
        deadline = time.monotonic() + HANDOVER_LIMIT
        while not await self.front.running():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(poll)
        return True

    async def needs_update(self) -> bool:
        """Periodic: either layer's update due again, its config gone, nginx gone, or strays holding a socket."""
        back = await self.back.needs_update()
        return await self.front.needs_update() or back

    async def settled(self) -> bool:
        """The back's last reload has taken (or is overdue): no worker from before it picks an instance any more."""
        return await self.back.settled()

    async def wait_settled(self, limit: float = SWITCH_LIMIT) -> None:
        await self.back.wait_settled(limit)

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
