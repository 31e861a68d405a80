"""A wedged engine: /health can stay 200 while nothing generates (vllm#36960), so a service may
ask for a one-token completion once an instance has shown no generated token for `idle`.

Traffic is the proof when it flows: each probe reads the instance's own
vllm:generation_tokens_total, and a rise since the last read counts as a generation that
worked (dated at that earlier read, the latest moment it is known not to have happened yet),
so a busy instance never gets a probe completion. Only an instance idle (or wedged) for
`idle` seconds gets one; its failure is decisive: the instance leaves rotation at once,
within idle + health.interval + the probe's timeout of the last token (docs/gpu-health.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import GenerationProbe, HealthSpec
from mipart.prometheus import metric_sum
from mipart.serving.spec import InstanceSpec
from mipart.unixhttp import METRICS_LIMIT

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

TOKENS = "vllm:generation_tokens_total"
PROMPT = "ping"


@dataclass
class Seen:
    """One server's last proof of generating, and its token counter then."""

    socket: str
    read_at: float
    proof: float
    tokens: float | None


class GenerationCheck:
    name = "generation"

    def __init__(self) -> None:
        self.seen: dict[int, Seen] = {}

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        probe = health.generation_probe(spec.service)
        if probe is None:
            self.seen.pop(spec.number, None)
            return PASSED
        now = time.monotonic()
        _, text = await http_get(client, spec, "/metrics", health.timeout, METRICS_LIMIT)
        tokens = metric_sum(text, TOKENS)
        seen = self.seen.get(spec.number)
        if seen is not None and seen.socket == spec.socket:
            if tokens is not None and seen.tokens is not None and tokens > seen.tokens:
                seen.proof = seen.read_at
            seen.read_at, seen.tokens = now, tokens if tokens is not None else seen.tokens
            if now - seen.proof < probe.idle:
                return PASSED
        result, produced = await _generate(client, spec, probe)
        if result.ok:
            done = time.monotonic()
            self.seen[spec.number] = Seen(spec.socket, done, done, None if tokens is None else tokens + produced)
        return result


async def _generate(client: InstanceClient, spec: InstanceSpec, probe: GenerationProbe) -> tuple[ProbeResult, int]:
    """(result, tokens generated); a timeout or a server error is decisive, a refusal (4xx) only a warning."""
    body = {"model": spec.served_model_name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    try:
        reply = await client.post_json(spec.socket, "/v1/completions", body, probe.timeout)
        status = reply.status
        data = reply.json() if status == 200 else None
    except asyncio.TimeoutError:
        return ProbeResult(
            False,
            f"a one-token completion did not finish within {probe.timeout:g}s (/health is not enough: the engine is "
            "wedged)",
            decisive=True,
        ), 0
    if status >= 500:
        return ProbeResult(False, f"a one-token completion answered {status}", decisive=True), 0
    if status != 200:
        return ProbeResult(
            True, f"the generation probe's completion was refused ({status}); check the service's model name"
        ), 0
    usage = data.get("usage") if isinstance(data, dict) else None
    produced = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return PASSED, produced if isinstance(produced, int) else 1
