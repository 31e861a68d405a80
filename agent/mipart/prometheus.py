"""Prometheus text exposition format 0.0.4: the one writer and the one reader in mipart.

The agent's /metrics and the fake engine's vLLM metrics are written here; the health
probes and draining read vLLM's gauges back with metric_sum. Stdlib only: the fake
engine imports it, and 64 of those must start fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[Mapping[str, str], float]


def escape_label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _value(value: float) -> str:
    """Booleans as 0/1, integers as written, floats as Python's shortest repr (1.0, 0.25)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class Exposition:
    """Metric families in order; HELP and TYPE name the samples' own name (counters end in _total).
    Built with `only`, it keeps those families alone (prometheus_client's /metrics?name[]=...)."""

    def __init__(self, only: Iterable[str] = ()) -> None:
        self.lines: list[str] = []
        self.only = frozenset(only)

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        if self.only and name not in self.only:
            return
        self.lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_value(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def metric_sums(text: str, names: Iterable[str]) -> dict[str, float | None]:
    """Each of `names` summed over its label sets, in one pass; None for one that is absent."""
    wanted = set(names)
    totals: dict[str, float | None] = dict.fromkeys(wanted)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            try:
                totals[name] = (totals[name] or 0.0) + float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return totals


def metric_sum(text: str, name: str) -> float | None:
    """A metric summed over its label sets; None when absent (an engine that does not export it)."""
    return metric_sums(text, (name,))[name]
