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

if TYPE_CHECKING:  # aiohttp is imported where it runs: `mipart` verbs that never probe pay nothing for it
    from aiohttp import ClientSession

TOKENS = "vllm:generation_tokens_total"
PROMPT = "ping"


@dataclass
class Seen:
    """One server's last proof of generating, and its token counter then."""

    port: int
    read_at: float
    proof: float
    tokens: float | None


class GenerationCheck:
    name = "generation"

    def __init__(self) -> None:
        self.seen: dict[int, Seen] = {}

    async def check(self, session: ClientSession, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        probe = health.generation_probe(spec.service)
        if probe is None:
            self.seen.pop(spec.number, None)
            return PASSED
        now = time.monotonic()
        _, text = await http_get(session, spec, "/metrics", health.timeout)
        tokens = metric_sum(text, TOKENS)
        seen = self.seen.get(spec.number)
        if seen is not None and seen.port == spec.port:
            if tokens is not None and seen.tokens is not None and tokens > seen.tokens:
                seen.proof = seen.read_at
            seen.read_at, seen.tokens = now, tokens if tokens is not None else seen.tokens
            if now - seen.proof < probe.idle:
                return PASSED
        result, produced = await _generate(session, spec, probe)
        if result.ok:
            done = time.monotonic()
            self.seen[spec.number] = Seen(spec.port, done, done, None if tokens is None else tokens + produced)
        return result


async def _generate(session: ClientSession, spec: InstanceSpec, probe: GenerationProbe) -> tuple[ProbeResult, int]:
    """(result, tokens generated); a timeout or a server error is decisive, a refusal (4xx) only a warning."""
    import aiohttp

    body = {"model": spec.served_model_name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    url = f"http://{spec.address}/v1/completions"
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=probe.timeout)) as response:
            status = response.status
            data = await response.json(content_type=None) if status == 200 else None
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
