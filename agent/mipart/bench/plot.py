"""The hand-run benchmark's figure: throughput (tokens/s) against end-to-end latency, one series per
results file, with TTFT and ITL panels.

matplotlib is optional (Debian's python3-matplotlib); without it `mipart bench compare`
prints the table and says how to get the figure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mipart.bench.results import Results
from mipart.bench.table import series_label
from mipart.errors import UserError

NO_MATPLOTLIB = "the figure needs matplotlib: apt install python3-matplotlib (the table above is complete without it)"


def have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def draw(files: list[Results], out: Path) -> None:
    """Three panels side by side, sharing the x axis of the hand-run benchmark's plot: end-to-end latency p50."""
    if not have_matplotlib():
        raise UserError(NO_MATPLOTLIB)
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    from matplotlib import pyplot

    figure, (tput, ttft, itl) = pyplot.subplots(1, 3, figsize=(16, 5), constrained_layout=True)
    panels = (
        (tput, "throughput (generated tokens/s)", lambda s: s.throughput_tokens_per_s),
        (ttft, "time to first token p50 (ms)", lambda s: s.ttft_ms.p50),
        (itl, "inter-token latency p50 (ms)", lambda s: s.itl_ms.p50),
    )
    for results in files:
        for run in results.services:
            steps = sorted(run.steps, key=lambda s: s.e2e_ms.p50)
            x = [s.e2e_ms.p50 / 1000 for s in steps]
            for axes, _, value in panels:
                axes.plot(x, [value(s) for s in steps], marker="o", label=series_label(results, run.service))
    for axes, ylabel, _ in panels:
        axes.set_xlabel("end-to-end latency p50 (s)")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
    tput.set_title("throughput against latency")
    ttft.set_title("time to first token")
    itl.set_title("inter-token latency")
    tput.legend(loc="best", fontsize="small")
    try:
        _save(figure, out)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the figure: {exc.strerror}") from None
    finally:
        pyplot.close(figure)


def _save(figure, out: Path) -> None:
    """Into a temp file beside `out`, then renamed: a reader never sees half a PNG."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
