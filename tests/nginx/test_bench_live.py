"""`mipart bench run` and `compare` against the real agent, a real nginx and fake engines.

The load tool is the real pinned guidellm, installed once into the tests' cache
(XDG_CACHE_HOME=<test cache>: ~/.cache/mipart-tests/mipart/bench-venv-...); steps are a
few seconds each, so a run is bounded in time as well as in count.
"""

from __future__ import annotations

import importlib.util
import json
import socket

import pytest
from serving import ServingHost

import mipart
from mipart.bench.results import read_results
from mipart.profile import load_profile

from .benchcli import bench

pytestmark = pytest.mark.nginx


@pytest.fixture(scope="module")
def serving_host(tmp_path_factory):
    serving = ServingHost(tmp_path_factory.mktemp("bench"), compute="SPX", memory="NPS1", tps=200, instances=8)
    serving.start_agent()
    serving.wait_ready(8)
    yield serving
    serving.close()


@pytest.fixture(scope="module")
def two_runs(serving_host):
    """Two short sweeps, one by streams and one by request rate, with labels of their own."""
    paths = []
    for label, sweep in (("streams", ["--concurrency", "1,4"]), ("rates", ["--rates", "4,16"])):
        path = serving_host.work / f"{label}.json"
        done = bench(
            serving_host,
            "run",
            "--profile",
            str(serving_host.profile),
            *sweep,
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--prompt-tokens",
            "16",
            "--output-tokens",
            "8",
            "--label",
            label,
            "-o",
            str(path),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        paths.append((path, done))
    return paths


def test_run_writes_a_tagged_results_file_with_one_step_per_level(serving_host, two_runs):
    (path, done), _ = two_runs
    data = json.loads(path.read_text())
    assert data["kind"] == "mipart-bench-results" and data["version"] == 1
    tags = data["tags"]
    assert tags["profile_digest"] == load_profile(str(serving_host.profile)).digest != ""
    assert tags["layout"] == "8 x SPX/NPS1 (8 logical GPUs)"  # read through the GPU backend, not the profile
    assert tags["engine"] == "fake engine (mipart.sim.engine)" and tags["engine_fake"] is True
    assert tags["mipart_version"] == mipart.__version__
    assert tags["tool"] == "guidellm 0.3.1"
    assert tags["host"].startswith(socket.gethostname())
    assert tags["sweep"]["kind"] == "concurrent" and tags["sweep"]["levels"] == [1, 4]
    (service,) = data["services"]
    assert service["service"] == "chat" and service["model"] == "test/fake-llm"
    steps = service["steps"]
    assert [s["concurrency"] for s in steps] == [1, 4]
    for step in steps:
        assert step["requests"] > 0 and step["errors"] == 0
        assert step["throughput_tokens_per_s"] > 0
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            assert 0 < step[metric]["p50"] <= step[metric]["p99"]
        assert step["e2e_ms"]["p50"] > step["ttft_ms"]["p50"]
    # four streams at the same per-stream speed generate more tokens per second than one
    assert steps[1]["throughput_tokens_per_s"] > steps[0]["throughput_tokens_per_s"]
    assert "fake engines" in done.stdout and "| streams (fake engine) | concurrent@4 |" in done.stdout


def test_a_rate_sweep_records_its_rates(two_runs):
    _, (path, _) = two_runs
    (service,) = read_results(path).services
    assert [(s.rate, s.concurrency) for s in service.steps] == [(4.0, None), (16.0, None)]
    assert all(s.requests > 0 and s.errors == 0 for s in service.steps)


def test_compare_prints_the_table_and_draws_the_figure_when_matplotlib_is_there(serving_host, two_runs):
    png = serving_host.work / "compare.png"
    done = bench(serving_host, "compare", *(str(p) for p, _ in two_runs), "-o", str(png))
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| series | step | requests | errors | tokens/s | TTFT p50 ms |")
    assert sum(line.startswith("| streams (fake engine) |") for line in lines) == 2
    assert sum(line.startswith("| rates (fake engine) |") for line in lines) == 2
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode == 1 and "apt install python3-matplotlib" in done.stderr and not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and png.stat().st_size > 10_000


def test_a_wrong_service_or_level_is_one_line_and_writes_nothing(serving_host):
    out = serving_host.work / "never.json"
    for args, line in (
        (["--service", "nope"], "mipart: --service nope: the profile has no such service (it has: chat)"),
        (
            ["--concurrency", "1,x"],
            "mipart: --concurrency '1,x': give a comma-separated list of whole numbers, e.g. 1,4,16",
        ),
        (["--duration", "0"], "mipart: --duration 0: give seconds from above 0 to 3600"),
        (
            ["--tokenizer", str(serving_host.work / "none")],
            f"mipart: --tokenizer {serving_host.work / 'none'}: not a directory; give a local directory holding the model's tokenizer.json",
        ),
    ):
        done = bench(serving_host, "run", "--profile", str(serving_host.profile), *args, "-o", str(out))
        assert (done.returncode, done.stderr.strip()) == (1, line)
        assert not out.exists()
