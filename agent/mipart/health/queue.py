"""Overload: more requests waiting than health.queue_depth_limit marks the instance degraded.

It stays in rotation (nginx's least_conn already steers away from it); only status shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mipart.health.probe import PASSED, ProbeResult, http_get
from mipart.profile.schema import HealthSpec
from mipart.prometheus import metric_sum
from mipart.serving.spec import InstanceSpec
from mipart.unixhttp import METRICS_LIMIT

if TYPE_CHECKING:
    from mipart.unixhttp import InstanceClient


def queue_depth(metrics: str) -> float | None:
    return metric_sum(metrics, "vllm:num_requests_waiting")


class QueueDepth:
    name = "queue_depth"

    async def check(self, client: InstanceClient, spec: InstanceSpec, health: HealthSpec) -> ProbeResult:
        if health.queue_depth_limit is None:
            return PASSED
        _, text = await http_get(client, spec, "/metrics", health.timeout, METRICS_LIMIT)
        waiting = queue_depth(text)
        if waiting is not None and waiting > health.queue_depth_limit:
            return ProbeResult(
                True, f"{waiting:g} requests waiting > health.queue_depth_limit {health.queue_depth_limit}"
            )
        return PASSED
