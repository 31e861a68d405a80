"""Running the load tool against one listener, bounded in time, and reading its report.

The tool runs in its own process group so a timeout or Ctrl-C ends it and its workers, by
its PID. Its stdout (the live progress display) goes to our stderr, since our stdout is for the
results summary. Its stderr (logs, a traceback) is kept, and written beside the results file
only when it fails: the operator gets one line and a path, not the tool's traceback.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mipart.bench.normalise import steps_from_tool
from mipart.bench.results import Step
from mipart.bench.sweep import Sweep
from mipart.errors import UserError
from mipart.fsutil import write_atomic

STARTUP_SLACK = 180.0  # the tool's start (imports, synthetic data) and each step's ramp-down
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass(frozen=True)
class Target:
    url: str
    model: str
    tokenizer: str
    hf_home: str | None  # where a model id given as tokenizer is found, offline


def tool_argv(python: Path, target: Target, sweep: Sweep, report: Path, progress: bool) -> list[str]:
    return [
        str(python),
        "-m",
        "guidellm",
        "benchmark",
        "run",
        "--target",
        target.url,
        "--model",
        target.model,
        "--processor",
        target.tokenizer,
        *sweep.tool_args(),
        "--output-path",
        str(report),
        "--disable-console-outputs",
        *([] if progress else ["--disable-progress"]),
    ]


def check_reachable(target: Target, timeout: float = 10.0) -> None:
    """One GET /v1/models through the listener, so a service that is not serving is one line, not the tool's
    traceback."""
    address = urlsplit(target.url)
    try:
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=timeout)
        conn.request("GET", "/v1/models")
        status = conn.getresponse().status
        conn.close()
    except OSError as exc:
        raise UserError(
            f"{target.url}: nothing answers there ({exc.strerror or exc}); is the service serving? see `mipart status`"
        ) from None
    if status != 200:
        raise UserError(f"{target.url}: GET /v1/models answered {status}; is the service serving? see `mipart status`")


def run_tool(python: Path, target: Target, sweep: Sweep, progress: bool, log: Path) -> tuple[Step, ...]:
    """The sweep's steps against `target`; UserError in one line when the tool fails or overruns (its stderr then kept
    in `log`)."""
    levels = int(sweep.levels[0]) if sweep.kind == "sweep" else len(sweep.levels)  # a sweep: that many benchmarks
    limit = STARTUP_SLACK + levels * (sweep.warmup + sweep.duration + 30)
    env = {**os.environ, **OFFLINE, "GUIDELLM__MAX_CONCURRENCY": str(sweep.max_concurrency)}
    if target.hf_home:
        env["HF_HOME"] = target.hf_home
    with tempfile.TemporaryDirectory(prefix="mipart-bench-") as tmp:
        report, errors = Path(tmp) / "benchmarks.json", Path(tmp) / "stderr"
        argv = tool_argv(python, target, sweep, report, progress)
        with open(errors, "w+") as stderr:
            tool = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=stderr, start_new_session=True
            )
            try:
                code = tool.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                _end(tool)
                raise UserError(
                    f"{target.url}: the load tool ran over {limit:g}s for this sweep and was stopped"
                ) from None
            except KeyboardInterrupt:
                _end(tool)
                raise
            stderr.seek(0)
            said = stderr.read()
        if code != 0:
            write_atomic(log, said)
            raise UserError(f"{target.url}: the load tool exited {code}: {failure_line(said)} (its output: {log})")
        try:
            data = json.loads(report.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{target.url}: the load tool wrote no readable report ({exc})") from None
        return steps_from_tool(data, f"{target.url}: the load tool's report")


def failure_line(said: str) -> str:
    """The tool's last line, and what to change when we know its cause (the whole of it goes to the log)."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    last = lines[-1] if lines else "(it said nothing)"
    if "min() arg is an empty sequence" in last:  # guidellm 0.3.1 cannot report a step in which no request ran
        return f"{last}; a step had no request that started and ended within it: give a longer --duration"
    if "tokenizer" in said.lower() or "huggingface" in said.lower():
        return f"{last}; give the model's tokenizer with --tokenizer DIR (mipart bench runs offline)"
    return last


def _end(tool: subprocess.Popen) -> None:
    """SIGTERM to the tool's own group, SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(tool.pid, sig)
        except ProcessLookupError:
            return
        try:
            tool.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
