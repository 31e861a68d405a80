"""A wedged engine under load: requests running, and no token made for `health.stall_after`.

/health can stay 200 while nothing generates (vllm#36960). An instance with traffic shows its
progress in its own counters, so each probe round reads three series from its /metrics, asked
for by name (prometheus_client, which vLLM's /metrics is, answers `name[]` with those alone):
requests running, generated tokens and prompt tokens. While requests run and neither counter
moves for `stall_after`, the failure is decisive: out of rotation at once, then restarted like
any failed instance. A counter that moves, or no request running, or another server (a restart
sets the counters back), starts the clock again at that read.

An idle instance (no request running at its last read, and its counters as at the read before:
no traffic in between) is read again only `stall_after / 4` later (IDLE_READS), not every
round: the idle agent's probes of 64 instances are then one GET each, not two. An instance with
traffic, even one caught between requests, is read every round. The clock starts at the first
read that sees requests running, so a wedge that catches the first requests after an idle
spell is seen at most `stall_after / 4` later (docs/gpu-health.md gives the bound).

vLLM 0.32 counts a prompt's tokens only when its prefill is done, together with its first
generated token (the engine core emits no output for a partial prefill, and prompt tokens are
counted from its outputs), so a long prefill alone looks like a wedge for as long as it takes:
`stall_after` must exceed the longest prefill (docs/gpu-health.md). An idle instance is the
generation probe's (health/generation.py). An engine that exports none of the series gets no
verdict, nor does a read that times out: /health answered just before in the same round (a
hung server fails that), so the server is slow, as a loaded one on a starved CPU can be, and
restarting it would drop what it serves.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import HealthSpec
from mipart.prometheus import metric_sums
from mipart.serving.spec import InstanceSpec
from mipart.unixhttp import METRICS_LIMIT

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient

RUNNING = "vllm:num_requests_running"
COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total")
SERIES = "/metrics?" + "&".join(f"name[]={name}" for name in (RUNNING, *COUNTERS))
IDLE_READS = 4  # reads of an idle instance per stall_after


def idle_read_every(health: HealthSpec) -> float:
    """How far apart an idle instance's counters are read: the extra delay a wedge after idle can add."""
    return health.stall_after / IDLE_READS


@dataclass
class Seen:
    """One server's counters as last read, and since when they have not moved under load."""

    server: str
    counters: tuple[float | None, ...]
    since: float  # when the clock started: the read that first saw these counters with requests running
    running: bool
    read_at: float
    idle: bool  # nothing running, counters as at the read before: read again only stall_after / 4 later


class TokenProgress:
    name = "progress"

    def __init__(self) -> None:
        self.seen: dict[int, Seen] = {}

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        seen = self.seen.get(spec.number)
        if (
            seen is not None
            and seen.server == spec.address
            and seen.idle
            and time.monotonic() - seen.read_at < idle_read_every(health)
        ):
            return PASSED
        try:
            _, text = await http_get(client, spec, SERIES, health.timeout, METRICS_LIMIT)  # an engine may send all
        except asyncio.TimeoutError:
            return PASSED  # /health answered this round: the server is slow (loaded), not hung; no verdict
        now, values = time.monotonic(), metric_sums(text, (RUNNING, *COUNTERS))
        running, counters = values[RUNNING], tuple(values[name] for name in COUNTERS)
        if seen is None or seen.server != spec.address or seen.counters != counters or not running or not seen.running:
            same = seen is not None and seen.server == spec.address and seen.counters == counters
            self.seen[spec.number] = Seen(spec.address, counters, now, bool(running), now, same and not running)
            return PASSED
        seen.read_at = now
        stalled = now - seen.since
        if stalled < health.stall_after:
            return PASSED
        return ProbeResult(
            False,
            f"{running:g} requests running and no token generated or prefilled for {stalled:.1f}s "
            f"(health.stall_after {health.stall_after:g}s; /health is not enough: the engine is wedged)",
            decisive=True,
        )
