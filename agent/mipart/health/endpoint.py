"""The server's own liveness: GET /health answers 200 (vLLM's contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec

if TYPE_CHECKING:  # aiohttp is imported where it runs: `mipart` verbs that never probe pay nothing for it
    from aiohttp import ClientSession


class HealthEndpoint:
    name = "health"

    async def check(self, session: ClientSession, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        status, _ = await http_get(session, spec, "/health", health.timeout, read=False)
        return PASSED if status == 200 else ProbeResult(False, f"/health answered {status}")
