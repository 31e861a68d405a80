"""guidellm's benchmarks.json -> our steps (mipart.bench.results); pure.

Field meanings (guidellm 0.3.1, `GenerativeBenchmark`): `metrics.X.successful` holds the
distribution over successful requests, latency in seconds (`request_latency`) or ms
(`*_ms`); `output_tokens_per_second.successful.mean` is generated tokens per second over the
step; `request_totals` counts successful, errored and incomplete (cut off at the step's end)
requests. Incomplete requests are not errors.
"""

from __future__ import annotations

from mipart.bench.results import Quantiles, Step
from mipart.errors import UserError


def steps_from_tool(data: dict, where: str) -> tuple[Step, ...]:
    try:
        return tuple(_step(b) for b in data["benchmarks"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{where}: the load tool's report lacks a field mipart reads ({exc}); is the tool the pinned version?"
        ) from None


def _step(bench: dict) -> Step:
    strategy = bench["args"]["strategy"]
    kind = strategy["type_"]
    streams = strategy.get("streams")
    rate = strategy.get("rate")
    metrics = bench["metrics"]
    totals = bench["request_totals"]
    name = f"{kind}@{streams}" if streams is not None else f"{kind}@{rate:.2f}/s" if rate is not None else kind
    return Step(
        name=name,
        concurrency=int(streams) if streams is not None else None,
        rate=float(rate) if rate is not None else None,
        requests=int(totals["successful"]),
        errors=int(totals["errored"]),
        throughput_tokens_per_s=_stat(metrics, "output_tokens_per_second", "mean"),
        requests_per_s=_stat(metrics, "requests_per_second", "mean"),
        ttft_ms=_quantiles(metrics, "time_to_first_token_ms", 1.0),
        itl_ms=_quantiles(metrics, "inter_token_latency_ms", 1.0),
        e2e_ms=_quantiles(metrics, "request_latency", 1000.0),
    )


def _stat(metrics: dict, name: str, key: str) -> float:
    return float(metrics[name]["successful"][key])


def _quantiles(metrics: dict, name: str, scale: float) -> Quantiles:
    percentiles = metrics[name]["successful"]["percentiles"]
    return Quantiles(p50=float(percentiles["p50"]) * scale, p99=float(percentiles["p99"]) * scale)
