"""The results file of `mipart bench run`: our schema, normalised from the tool's output; pure apart from reading and
writing.

A results file outlives the run that wrote it and is read by `mipart bench compare`, so it
carries a version; a file of another version is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mipart.errors import UserError
from mipart.fsutil import write_atomic

RESULTS_VERSION = 1
KIND = "mipart-bench-results"


@dataclass(frozen=True)
class Quantiles:
    p50: float
    p99: float


@dataclass(frozen=True)
class Step:
    """One load level of a sweep: `concurrency` streams, or `rate` requests/s (the other is None)."""

    name: str  # the tool's words: concurrent@4, constant@3.25, synchronous, throughput
    concurrency: int | None
    rate: float | None
    requests: int
    errors: int
    throughput_tokens_per_s: float  # generated tokens per second over the step
    requests_per_s: float
    ttft_ms: Quantiles
    itl_ms: Quantiles
    e2e_ms: Quantiles


@dataclass(frozen=True)
class ServiceRun:
    service: str
    listen: str
    model: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class Tags:
    """What the figures belong to: without these, two files cannot be compared honestly."""

    label: str
    profile_digest: str
    layout: str  # e.g. "8 x DPX/NPS2 (16 logical GPUs)", read through mipart.gpu
    engine: str  # "vLLM 0.x.y", or "fake engine (mipart.sim.engine)"
    engine_fake: bool
    mipart_version: str
    tool: str
    host: str
    started: str  # UTC, ISO 8601
    sweep: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Results:
    tags: Tags
    services: tuple[ServiceRun, ...]

    def to_json(self) -> dict:
        return {"kind": KIND, "version": RESULTS_VERSION, **asdict(self)}


def from_json(data: dict, where: str) -> Results:
    """Results from a parsed file; UserError naming the file when it is not ours or of another version."""
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UserError(f'{where}: not a results file of `mipart bench run` (no "kind": "{KIND}")')
    if data.get("version") != RESULTS_VERSION:
        raise UserError(
            f"{where}: results version {data.get('version')!r}, this mipart reads version {RESULTS_VERSION}; "
            "run `mipart bench run` again with this mipart"
        )
    try:
        services = tuple(
            ServiceRun(s["service"], s["listen"], s["model"], tuple(_step(x) for x in s["steps"]))
            for s in data["services"]
        )
        return Results(Tags(**data["tags"]), services)
    except (KeyError, TypeError) as exc:
        raise UserError(
            f"{where}: a results file of version {RESULTS_VERSION} with a field missing or wrong: {exc}"
        ) from None


def _step(data: dict) -> Step:
    quantiles = {k: Quantiles(**data[k]) for k in ("ttft_ms", "itl_ms", "e2e_ms")}
    return Step(**{**data, **quantiles})


def read_results(path: Path) -> Results:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path}: not JSON ({exc})") from None
    return from_json(data, str(path))


def write_results(path: Path, results: Results) -> None:
    try:
        write_atomic(path, json.dumps(results.to_json(), indent=2) + "\n")
    except OSError as exc:
        raise UserError(f"{path}: cannot write the results: {exc.strerror}") from None
