"""The server's own liveness: GET /health answers 200 (vLLM's contract)."""

from __future__ import annotations

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec


class HealthEndpoint:
    name = "health"

    async def check(self, session, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        status, _ = await http_get(session, spec, "/health", health.timeout, read=False)
        return PASSED if status == 200 else ProbeResult(False, f"/health answered {status}")
