"""What a bench run asks of the load tool: the load levels, warm-up, duration and request shape; pure.

Small defaults so a run takes a minute on a demo host; `full` is the hand-run procedure's benchmark
(AMD's partitioning blog, run with inference-benchmarker (a sweep of 10 rates between one user and full throughput, up
to 1024
users, 30 s warm-up, 120 s per step, 512 +- 158 prompt and output tokens in 16..1024)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mipart.errors import UserError

MAX_LEVEL = 4096  # streams or requests/s: beyond that the client, not the server, is measured
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class Tokens:
    mean: int
    stdev: int = 0
    low: int | None = None
    high: int | None = None

    def data_args(self, prefix: str) -> list[str]:
        out = [f"{prefix}_tokens={self.mean}"]
        out += [f"{prefix}_tokens_stdev={self.stdev}"] if self.stdev else []
        out += [f"{prefix}_tokens_min={self.low}"] if self.low is not None else []
        out += [f"{prefix}_tokens_max={self.high}"] if self.high is not None else []
        return out


@dataclass(frozen=True)
class Sweep:
    """`kind` is concurrent (levels = streams), constant (levels = requests/s) or sweep (levels = one count of
    rates)."""

    kind: str
    levels: tuple[float, ...]
    warmup: float
    duration: float
    prompt: Tokens
    output: Tokens
    max_concurrency: int = 512

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """'1, 4, 16 streams, 2 s warm-up + 10 s a step', for the operator."""
        levels = ", ".join(_number(level) for level in self.levels)
        what = {"concurrent": f"{levels} streams", "constant": f"{levels} requests/s"}.get(
            self.kind, f"a sweep of {levels} benchmarks from one user to full throughput"
        )
        return f"{what}, {self.warmup:g} s warm-up + {self.duration:g} s a step"

    def tool_args(self) -> list[str]:
        """guidellm's `benchmark run` options for this sweep (target, model, tokenizer and output come from the
        caller)."""
        total = self.warmup + self.duration
        data = ",".join(self.prompt.data_args("prompt") + self.output.data_args("output"))
        rate = ",".join(_number(level) for level in self.levels)
        return [
            "--data",
            data,
            "--rate-type",
            self.kind,
            "--rate",
            rate,
            "--max-seconds",
            _number(total),
            *(["--warmup-percent", f"{self.warmup / total:.6f}"] if self.warmup else []),
        ]


PRESETS = {
    "small": Sweep("concurrent", (1, 4, 16), warmup=2, duration=10, prompt=Tokens(128), output=Tokens(64)),
    "full": Sweep(
        "sweep",
        (10,),
        warmup=30,
        duration=120,
        prompt=Tokens(512, 158, 16, 1024),
        output=Tokens(512, 158, 16, 1024),
        max_concurrency=1024,
    ),
}


def build_sweep(
    preset: str,
    concurrency: str | None,
    rates: str | None,
    warmup: float | None,
    duration: float | None,
    prompt_tokens: int | None,
    output_tokens: int | None,
) -> Sweep:
    """The preset with the options given on the command line laid over it; UserError naming the option when one is
    wrong."""
    if concurrency and rates:
        raise UserError("--concurrency and --rates are two kinds of sweep: give one of them")
    base = PRESETS[preset]
    kind, levels = base.kind, base.levels
    if concurrency:
        kind, levels = "concurrent", tuple(float(x) for x in _levels("--concurrency", concurrency, whole=True))
    elif rates:
        kind, levels = "constant", _levels("--rates", rates, whole=False)
    warmup = base.warmup if warmup is None else _seconds("--warmup", warmup, zero_ok=True)
    duration = base.duration if duration is None else _seconds("--duration", duration, zero_ok=False)
    prompt = base.prompt if prompt_tokens is None else Tokens(_tokens("--prompt-tokens", prompt_tokens))
    output = base.output if output_tokens is None else Tokens(_tokens("--output-tokens", output_tokens))
    top = max(levels) if kind == "concurrent" else 0
    return Sweep(kind, levels, warmup, duration, prompt, output, max(base.max_concurrency, int(top)))


def _levels(option: str, text: str, whole: bool) -> tuple[float, ...]:
    words = [w.strip() for w in text.split(",")]
    try:
        values = tuple(int(w) if whole else float(w) for w in words)
    except ValueError:
        example = "1,4,16" if whole else "0.5,2,8"
        raise UserError(
            f"{option} {text!r}: give a comma-separated list of {'whole numbers' if whole else 'numbers'}, e.g. "
            f"{example}"
        ) from None
    bad = [w for w, v in zip(words, values, strict=True) if not 0 < v <= MAX_LEVEL]
    if bad:
        raise UserError(
            f"{option}: {', '.join(bad)} is out of range; each level must be above 0 and at most {MAX_LEVEL}"
        )
    return values


def _seconds(option: str, value: float, zero_ok: bool) -> float:
    if not (0 <= value <= MAX_SECONDS) or (value == 0 and not zero_ok):
        low = "0" if zero_ok else "above 0"
        raise UserError(f"{option} {value:g}: give seconds from {low} to {MAX_SECONDS:g}")
    return value


def _tokens(option: str, value: int) -> int:
    if not 1 <= value <= 1_000_000:
        raise UserError(f"{option} {value}: give a token count from 1 to 1000000")
    return value


def _number(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))
