"""The server's own liveness: GET /health answers 200 (vLLM's contract)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import HealthSpec
from mipart.serving.spec import InstanceSpec

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient


class HealthEndpoint:
    name = "health"

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        status, _ = await http_get(client, spec, "/health", health.timeout)
        return PASSED if status == 200 else ProbeResult(False, f"/health answered {status}")
