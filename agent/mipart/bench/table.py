"""The comparison as a Markdown table, one row per step of each results file; pure."""

from __future__ import annotations

from mipart.bench.results import Results

HEADER = (
    "series",
    "step",
    "requests",
    "errors",
    "tokens/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "ITL p50 ms",
    "ITL p99 ms",
    "E2E p50 ms",
    "E2E p99 ms",
)


def series_label(results: Results, service: str) -> str:
    """The file's label, the service when a file holds several, and 'fake engine' when it is one."""
    label = results.tags.label if len(results.services) == 1 else f"{results.tags.label}: {service}"
    return f"{label} (fake engine)" if results.tags.engine_fake else label


def markdown_table(files: list[Results]) -> str:
    rows = [HEADER, ("---",) * len(HEADER)]
    for results in files:
        for run in results.services:
            label = series_label(results, run.service).replace("|", "/")
            for s in run.steps:
                rows.append(
                    (
                        label,
                        s.name,
                        str(s.requests),
                        str(s.errors),
                        f"{s.throughput_tokens_per_s:.1f}",
                        *(
                            f"{q:.1f}"
                            for q in (
                                s.ttft_ms.p50,
                                s.ttft_ms.p99,
                                s.itl_ms.p50,
                                s.itl_ms.p99,
                                s.e2e_ms.p50,
                                s.e2e_ms.p99,
                            )
                        ),
                    )
                )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def tags_lines(files: list[Results], names: list[str]) -> str:
    """What each series is, under the table: layout, engine, profile digest, host."""
    lines = []
    for name, r in zip(names, files, strict=True):
        t = r.tags
        lines.append(
            f"- {name}: {t.label}; layout {t.layout}; engine {t.engine}; profile {t.profile_digest[:12] or 'unknown'}; "
            f"mipart {t.mipart_version}; {t.tool}; host {t.host}; started {t.started}"
        )
    return "\n".join(lines)
