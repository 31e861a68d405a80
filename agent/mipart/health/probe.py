"""What a health probe is: one check of one instance, returning a ProbeResult.

A probe is a sibling module with one class implementing Probe, listed in
health.probes.PROBES. Probes run in that order on every due instance; see probes.probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec
from mipart.unixhttp import BODY_LIMIT

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient


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

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        """Raise asyncio.TimeoutError, OSError or unixhttp.HttpError when the server does not answer."""
        ...


async def http_get(
    client: InstanceClient, spec: InstanceSpec, path: str, timeout: float, limit: int = BODY_LIMIT
) -> tuple[int, str]:
    """GET on the instance's own socket: (status, body), the body read up to `limit` bytes."""
    reply = await client.get(spec.socket, path, timeout, limit)
    return reply.status, reply.text()
