"""Before a planned stop or restart: nginx has dropped the instance; let its requests finish."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from mipart.profile.schema import Profile
from mipart.prometheus import metric_sum

if TYPE_CHECKING:
    from aiohttp import ClientSession

# A planned restart waits at most this long (or request_timeout) for in-flight requests.
DRAIN_MAX = 60.0
POLL = 0.2


def drain_limit(profile: Profile) -> float:
    return min(DRAIN_MAX, max((s.request_timeout for s in profile.services), default=DRAIN_MAX))


async def wait_drained(session: ClientSession | None, addresses: list[str], timeout: float, limit: float) -> None:
    """Until no request runs on these instances (host:port), or `limit` seconds; at once without a session."""
    deadline = time.monotonic() + limit
    while session is not None and time.monotonic() < deadline:
        running = await asyncio.gather(*(running_requests(session, a, timeout) for a in addresses))
        if not any(running):
            return
        await asyncio.sleep(POLL)


async def running_requests(session: ClientSession, address: str, timeout: float) -> float:
    """Requests an instance is still generating (0 when it cannot tell)."""
    import aiohttp

    try:
        async with session.get(f"http://{address}/metrics", timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return metric_sum(await response.text(), "vllm:num_requests_running") or 0.0
    except (asyncio.TimeoutError, aiohttp.ClientError):
        return 0.0
