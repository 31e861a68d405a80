"""What a health probe is: one check of one instance, returning a ProbeResult.

A probe is a sibling module with one class implementing Probe, listed in
health.probes.PROBES. Probes run in that order on every due instance; see probes.probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec

if TYPE_CHECKING:  # aiohttp is imported where it runs: `mipart` verbs that never probe pay nothing for it
    from aiohttp import ClientSession


@dataclass(frozen=True)
class ProbeResult:
    """ok=False counts as a failed probe (toward unhealthy); ok with an error is a warning:
    degraded, still in rotation (e.g. too many requests waiting).

    decisive: the failure needs no confirming probes (the probe already waited out its own
    timeout, or the GPU itself reports the fault): out of rotation at once. restart=False:
    restarting the server cannot help (a GPU fault), so the instance is left failed.
    """

    ok: bool
    error: str = ""
    decisive: bool = False
    restart: bool = True


PASSED = ProbeResult(True)


class Probe(Protocol):
    name: str

    async def check(self, session: ClientSession, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        """Raise asyncio.TimeoutError or aiohttp.ClientError when the server does not answer."""
        ...


async def http_get(
    session: ClientSession, spec: InstanceSpec, path: str, timeout: float, read: bool = True
) -> tuple[int, str]:
    """GET on the instance's own port: (status, body, "" unless read).

    A kept-alive connection the server had just closed gets one retry, not a failure.
    """
    import aiohttp

    url = f"http://{spec.address}{path}"
    try:
        return await _get(session, url, timeout, read)
    except aiohttp.ServerDisconnectedError:
        return await _get(session, url, timeout, read)


async def _get(session: ClientSession, url: str, timeout: float, read: bool) -> tuple[int, str]:
    import aiohttp

    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        return response.status, await response.text() if read else ""
