"""What `mipart bench sweep` compares and how it picks: layouts, the latency target, the winner; pure."""

from __future__ import annotations

from dataclasses import dataclass

from mipart.bench.results import Results, Step
from mipart.errors import UserError
from mipart.gpu.modes import COMPUTE_MODES, MEMORY_MODES, compatible
from mipart.profile.durations import parse_ms

QUANTILES = ("p50", "p99")


@dataclass(frozen=True)
class Layout:
    """One partition layout for the whole host: every selected GPU in `compute`, the hive in `memory`."""

    compute: str
    memory: str

    @property
    def word(self) -> str:
        return f"{self.compute}/{self.memory}"

    @property
    def file_name(self) -> str:
        """SPX/NPS1 -> SPX-NPS1.json: a results file per layout, in the sweep's dir."""
        return f"{self.compute}-{self.memory}.json"


@dataclass(frozen=True)
class LatencyTarget:
    quantile: str  # p50 or p99 of end-to-end latency
    ms: int

    def describe(self) -> str:
        return f"E2E {self.quantile} under {self.ms / 1000:g} s"

    def met_by(self, step: Step) -> bool:
        return step.requests > 0 and getattr(step.e2e_ms, self.quantile) < self.ms


@dataclass(frozen=True)
class Choice:
    layout: str  # the results' label: the layout word
    service: str
    step: Step
    fake: bool


def parse_layouts(text: str) -> tuple[Layout, ...]:
    """`SPX/NPS1,DPX/NPS2`: at least two different layouts, each a compute and a memory mode some kernel pairs."""
    layouts: list[Layout] = []
    for word in (w.strip() for w in text.split(",")):
        layout = _layout(word)
        if layout in layouts:
            raise UserError(f"--layouts: {layout.word} is given twice; give each layout once")
        layouts.append(layout)
    if len(layouts) < 2:
        raise UserError(f"--layouts {text}: give at least two different layouts to compare, e.g. SPX/NPS1,DPX/NPS2")
    return tuple(layouts)


def _layout(word: str) -> Layout:
    compute, slash, memory = word.upper().partition("/")
    if not slash:
        what = "not COMPUTE/MEMORY"
    elif compute not in COMPUTE_MODES:
        what = f"{compute} is not a compute mode ({', '.join(COMPUTE_MODES)})"
    elif memory not in MEMORY_MODES:
        what = f"{memory} is not a memory mode ({', '.join(MEMORY_MODES)})"
    elif not compatible(compute, memory):
        what = f"no kernel runs {compute} under {memory} (SPX runs under NPS1 only)"
    else:
        return Layout(compute, memory)
    raise UserError(f"--layouts: {word!r}: {what}; give layouts as COMPUTE/MEMORY, e.g. SPX/NPS1,DPX/NPS2")


def parse_target(text: str) -> LatencyTarget:
    """`p50:5s` or `p99:2s`: the E2E latency quantile and the bound it must stay under."""
    quantile, colon, bound = text.strip().partition(":")
    ms, problem = parse_ms(bound.strip()) if colon else (0, "")
    if quantile not in QUANTILES or not colon or problem:
        why = f"the bound {problem}" if problem else f"the quantile is one of {', '.join(QUANTILES)}"
        raise UserError(f"--latency-target {text!r}: {why}; give QUANTILE:DURATION, e.g. p50:5s or p99:2s")
    return LatencyTarget(quantile, ms)


def best_under(target: LatencyTarget, runs: list[Results]) -> Choice | None:
    """The step with the most generated tokens/s whose E2E quantile is under the target, over every layout and
    service."""
    candidates = [
        Choice(r.tags.label, s.service, step, r.tags.engine_fake)
        for r in runs
        for s in r.services
        for step in s.steps
        if target.met_by(step)
    ]
    return max(candidates, key=lambda c: c.step.throughput_tokens_per_s, default=None)


def verdict(target: LatencyTarget, runs: list[Results]) -> str:
    """The one line the sweep ends with; says so when the engines were fake."""
    fake = (
        " (fake engines: this measures the serving path, not a model)" if any(r.tags.engine_fake for r in runs) else ""
    )
    choice = best_under(target, runs)
    if choice is None:
        return f"no layout kept {target.describe()} at any step{fake}"
    s = choice.step
    return (
        f"most throughput with {target.describe()}: {choice.layout} ({choice.service}, {s.name}: "
        f"{s.throughput_tokens_per_s:.1f} tokens/s, E2E {target.quantile} {getattr(s.e2e_ms, target.quantile):.0f} ms, "
        f"{s.errors} errors){fake}"
    )
