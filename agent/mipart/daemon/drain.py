"""Before a planned stop or restart: nginx has dropped the instance; let its requests finish."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from mipart.profile.schema import Profile
from mipart.prometheus import metric_sum
from mipart.unixhttp import METRICS_LIMIT, HttpError

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

# A planned restart waits at most this long (or request_timeout) for in-flight requests.
DRAIN_MAX = 60.0
POLL = 0.2


def drain_limit(profile: Profile) -> float:
    return min(DRAIN_MAX, max((s.request_timeout for s in profile.services), default=DRAIN_MAX))


async def wait_drained(client: InstanceClient | None, sockets: list[str], timeout: float, limit: float) -> None:
    """Until no request runs on these instances (by socket), or `limit` seconds; at once without a client."""
    deadline = time.monotonic() + limit
    while client is not None and time.monotonic() < deadline:
        running = await asyncio.gather(*(running_requests(client, s, timeout) for s in sockets))
        if not any(running):
            return
        await asyncio.sleep(POLL)


async def running_requests(client: InstanceClient, socket: str, timeout: float) -> float:
    """Requests an instance is still generating (0 when it cannot tell: no answer, or one over METRICS_LIMIT)."""
    try:
        reply = await client.get(socket, "/metrics", timeout, METRICS_LIMIT)
    except (asyncio.TimeoutError, OSError, HttpError):
        return 0.0
    return metric_sum(reply.text(), "vllm:num_requests_running") or 0.0
