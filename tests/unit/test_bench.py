"""`mipart bench`'s pure parts: the sweep and its options, the tool's report in our schema, results files, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import mipart

from mipart.bench.normalise import steps_from_tool
from mipart.bench.results import Quantiles, Results, ServiceRun, Step, Tags, from_json, read_results, write_results
from mipart.bench.sweep import PRESETS, build_sweep
from mipart.bench.table import markdown_table
from mipart.bench.tags import client_address, layout_of
from mipart.errors import UserError
from mipart.profile.schema import Listen
from mipart.values import HostState, LogicalGpu, PhysicalGpu

REPORT = Path(__file__).parent / "data" / "guidellm-0.3.1-benchmarks.json"  # a real report, trimmed to what we read


def sweep(**options):
    args = {
        "preset": "small",
        "concurrency": None,
        "rates": None,
        "warmup": None,
        "duration": None,
        "prompt_tokens": None,
        "output_tokens": None,
        **options,
    }
    return build_sweep(**args)


def test_options_lay_over_the_preset_and_become_the_tools_arguments():
    s = sweep(concurrency="2,8", warmup=1, duration=3, prompt_tokens=20)
    assert (s.kind, s.levels, s.warmup, s.duration, s.prompt.mean, s.output) == (
        "concurrent",
        (2, 8),
        1,
        3,
        20,
        PRESETS["small"].output,
    )
    args = s.tool_args()
    assert args[args.index("--rate-type") + 1] == "concurrent" and args[args.index("--rate") + 1] == "2,8"
    assert args[args.index("--max-seconds") + 1] == "4" and float(args[args.index("--warmup-percent") + 1]) == 0.25
    assert args[args.index("--data") + 1] == "prompt_tokens=20,output_tokens=64"
    assert "--warmup-percent" not in sweep(warmup=0).tool_args()


def test_the_full_preset_is_the_hand_run_benchmark():
    s = PRESETS["full"]
    assert (s.kind, s.levels, s.warmup, s.duration, s.max_concurrency) == ("sweep", (10,), 30, 120, 1024)
    assert (
        (s.prompt.mean, s.prompt.low, s.prompt.high) == (512, 16, 1024) == (s.output.mean, s.output.low, s.output.high)
    )


def test_streams_beyond_the_presets_cap_raise_the_tools_cap():
    assert sweep(concurrency="1,2048").max_concurrency == 2048
    assert sweep(rates="0.5,3").kind == "constant" and sweep(rates="0.5,3").levels == (0.5, 3.0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"concurrency": "1,4", "rates": "2"}, "--concurrency and --rates are two kinds of sweep: give one of them"),
        ({"concurrency": "1,2.5"}, "--concurrency '1,2.5': give a comma-separated list of whole numbers, e.g. 1,4,16"),
        ({"concurrency": "0,4"}, "--concurrency: 0 is out of range; each level must be above 0 and at most 4096"),
        ({"rates": "fast"}, "--rates 'fast': give a comma-separated list of numbers, e.g. 0.5,2,8"),
        ({"duration": 0}, "--duration 0: give seconds from above 0 to 3600"),
        ({"warmup": -1}, "--warmup -1: give seconds from 0 to 3600"),
        ({"output_tokens": 0}, "--output-tokens 0: give a token count from 1 to 1000000"),
    ],
)
def test_a_wrong_option_is_one_line_naming_it(options, message):
    with pytest.raises(UserError) as err:
        sweep(**options)
    assert str(err.value) == message


def test_the_tools_report_becomes_our_steps():
    data = json.loads(REPORT.read_text())
    steps = steps_from_tool(data, "report")
    assert [(s.name, s.concurrency, s.rate) for s in steps] == [("concurrent@1", 1, None), ("concurrent@4", 4, None)]
    first = data["benchmarks"][0]["metrics"]
    assert steps[0].throughput_tokens_per_s == first["output_tokens_per_second"]["successful"]["mean"]
    assert steps[0].e2e_ms.p99 == pytest.approx(
        first["request_latency"]["successful"]["percentiles"]["p99"] * 1000
    )  # s -> ms
    assert steps[0].ttft_ms.p50 == first["time_to_first_token_ms"]["successful"]["percentiles"]["p50"]  # already ms
    assert (steps[0].requests, steps[0].errors) == (33, 0)


def test_a_report_missing_a_field_is_one_line():
    data = json.loads(REPORT.read_text())
    del data["benchmarks"][1]["metrics"]["inter_token_latency_ms"]
    with pytest.raises(
        UserError, match="^report: the load tool's report lacks a field mipart reads \\('inter_token_latency_ms'\\)"
    ):
        steps_from_tool(data, "report")


def results(label="A", fake=True) -> Results:
    q = Quantiles(10.0, 20.0)
    step = Step("concurrent@4", 4, None, 100, 0, 512.5, 9.0, q, Quantiles(1.0, 2.0), Quantiles(300.0, 400.0))
    tags = Tags(
        label,
        "abc123",
        "8 x DPX/NPS2 (16 logical GPUs)",
        "fake engine (mipart.sim.engine)",
        fake,
        "0.1.0",
        "guidellm 0.3.1",
        "host",
        "2026-12-01T00:00:00Z",
        {"kind": "concurrent"},
    )
    return Results(tags, (ServiceRun("chat", "127.0.0.1:8000", "m", (step,)),))


def test_results_round_trip_and_another_version_is_refused(tmp_path):
    path = tmp_path / "r.json"
    write_results(path, results())
    assert read_results(path) == results()
    data = json.loads(path.read_text())
    with pytest.raises(
        UserError, match="^x: results version 2, this mipart reads version 1; run `mipart bench run` again"
    ):
        from_json({**data, "version": 2}, "x")
    with pytest.raises(UserError, match="^x: not a results file of `mipart bench run`"):
        from_json({"benchmarks": []}, "x")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json: not JSON"):
        read_results(tmp_path / "bad.json")


def test_the_table_has_a_row_per_step_and_says_fake_engines():
    table = markdown_table([results("A"), results("B", fake=False)]).splitlines()
    assert table[0].startswith("| series | step | requests | errors | tokens/s |")
    assert table[2] == "| A (fake engine) | concurrent@4 | 100 | 0 | 512.5 | 10.0 | 20.0 | 1.0 | 2.0 | 300.0 | 400.0 |"
    assert table[3].startswith("| B | concurrent@4 |")


def test_layout_is_counted_by_mode_and_wildcards_are_reached_on_loopback():
    def gpu(i, compute):
        return PhysicalGpu(i, f"0000:{i:02x}:00.0", 0x74A1, compute, ("SPX", "DPX"), "NPS1", ("NPS1",), Path("/x"))

    logical = tuple(LogicalGpu(i, i, i, 128 + i, 0, i, "b") for i in range(3))
    assert (
        layout_of(HostState((gpu(0, "DPX"), gpu(1, "SPX"), gpu(2, "DPX")), logical))
        == "2 x DPX/NPS1, 1 x SPX/NPS1 (3 logical GPUs)"
    )
    assert client_address(Listen("0.0.0.0", 8000)) == ("127.0.0.1", 8000)
    assert client_address(Listen("::", 8000)) == ("::1", 8000)
    assert client_address(Listen("10.0.0.2", 81)) == ("10.0.0.2", 81)


def test_the_tool_venv_is_reused_when_complete_and_rebuilt_when_half_made(tmp_path, monkeypatch):
    from mipart.bench import tool

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    builds = []

    def install(venv, python):
        builds.append(venv)
        assert not (venv / "left-over").exists()  # a half-made venv is removed first
        python.parent.mkdir(parents=True)

    monkeypatch.setattr(tool, "_install", install)
    venv = tool.venv_dir()
    assert venv == tmp_path / "mipart" / "bench-venv-guidellm-0.3.1"
    venv.mkdir(parents=True)
    (venv / "left-over").write_text("")  # a crash mid-install: no completion mark
    said = []
    assert tool.ensure_tool(said.append) == venv / "bin" / "python"
    assert tool.ensure_tool(said.append) == venv / "bin" / "python"
    assert builds == [venv] and len(said) == 1 and said[0].startswith("mipart: installing guidellm 0.3.1 into ")

    def failing(venv, python):
        venv.mkdir(parents=True, exist_ok=True)
        raise UserError("no network")

    monkeypatch.setattr(tool, "_install", failing)
    (venv / tool.COMPLETE).unlink()
    with pytest.raises(UserError):
        tool.ensure_tool(said.append)
    assert not venv.exists()  # nothing half-made is left to be taken for a venv


def test_a_tool_failure_is_its_last_line_with_what_to_change():
    from mipart.bench.drive import failure_line

    crash = "Traceback (most recent call last):\n  ...\nValueError: min() arg is an empty sequence\n"
    assert (
        failure_line(crash)
        == "ValueError: min() arg is an empty sequence; a step had no request that started and ended within it: give a longer --duration"
    )
    offline = "OSError: We couldn't connect to 'https://huggingface.co' to load the files\n"
    assert failure_line(offline).endswith(
        "; give the model's tokenizer with --tokenizer DIR (mipart bench runs offline)"
    )
    assert failure_line("\n") == "(it said nothing)"


def test_a_sweep_describes_itself_for_the_operator():
    assert sweep().describe() == "1, 4, 16 streams, 2 s warm-up + 10 s a step"
    assert sweep(rates="0.5,2", duration=5).describe() == "0.5, 2 requests/s, 2 s warm-up + 5 s a step"
    assert (
        PRESETS["full"].describe()
        == "a sweep of 10 benchmarks from one user to full throughput, 30 s warm-up + 120 s a step"
    )


def test_a_listener_that_does_not_answer_is_one_line_before_anything_runs():
    import socket

    from mipart.bench.drive import Target, check_reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(
        UserError,
        match=f"^http://127.0.0.1:{port}: nothing answers there .*; is the service serving\\? see `mipart status`$",
    ):
        check_reachable(Target(f"http://127.0.0.1:{port}", "m", "t", None), timeout=2)


def test_a_failing_tool_is_one_line_and_its_output_is_kept(tmp_path):
    from mipart.bench.drive import Target, run_tool

    log = tmp_path / "r.json.tool.log"
    with pytest.raises(UserError) as err:  # /bin/sh refuses `-m guidellm ...`: a real process that fails
        run_tool(Path("/bin/sh"), Target("http://127.0.0.1:1", "m", "t", None), sweep(duration=1), False, log)
    assert str(err.value).startswith("http://127.0.0.1:1: the load tool exited 2: ")
    assert str(err.value).endswith(f"(its output: {log})") and log.read_text().strip()


def test_the_old_preset_name_is_still_taken(tmp_path):
    """`--preset seed` was renamed `full` (named for what it is); the old word stays one release, not shown."""
    done = mipart("bench", "run", "--preset", "seed", "--profile", tmp_path / "missing.yaml")
    assert "--preset" not in done.stderr and "missing.yaml" in done.stderr
    assert "full" in mipart("bench", "run", "--help").stdout and "seed:" not in mipart("bench", "run", "--help").stdout
