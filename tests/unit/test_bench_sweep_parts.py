"""`mipart bench sweep`'s pure parts: layouts, the latency target, the winner, full serving, the profile override seam."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import statuses
from eventlog import Log

from mipart.api.contract import Repartition
from mipart.bench import override
from mipart.bench.layout_sweep import check_restorable
from mipart.bench.layouts import (
    LatencyTarget,
    Layout,
    best_under,
    parse_layouts,
    parse_target,
    verdict,
)
from mipart.bench.reload import find_agent
from mipart.bench.results import Quantiles, Results, ServiceRun, Step, Tags
from mipart.bench.serving import Before, failed, waiting_for
from mipart.daemon import profiles
from mipart.errors import UserError
from mipart.names import RUN_DIR_VAR
from mipart.paths import profile_override_path
from mipart.profile import load_profile
from mipart.runners import records

PROFILE = """# the operator's own words
version: 1
gpus:
  compute: SPX   # one per GPU
  memory: NPS1
  select: all
  overrides: [{select: [1], compute: CPX}]
services:
  chat: {model: org/m, listen: 8040, args: ["--max-num-seqs", "512"], env: {A: "yes"}}
health: {interval: 2s, timeout: 500ms}
"""


def step(name: str, tokens: float, p50: float, p99: float, requests: int = 10) -> Step:
    q = Quantiles(1.0, 2.0)
    return Step(name, 1, None, requests, 0, tokens, 1.0, q, q, Quantiles(p50, p99))


def results(label: str, *steps: Step, fake: bool = True) -> Results:
    tags = Tags(label, "d", "layout", "engine", fake, "0", "tool", "host", "now")
    return Results(tags, (ServiceRun("chat", "127.0.0.1:8040", "m", steps),))


# -- layouts and the target ------------------------------------------------------------------


def test_layouts_are_compute_slash_memory_words_in_order():
    assert parse_layouts("SPX/NPS1, dpx/nps2,CPX/NPS4") == (
        Layout("SPX", "NPS1"),
        Layout("DPX", "NPS2"),
        Layout("CPX", "NPS4"),
    )
    assert Layout("DPX", "NPS2").word == "DPX/NPS2" and Layout("DPX", "NPS2").file_name == "DPX-NPS2.json"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "SPX/NPS1,XPX/NPS2",
            "--layouts: 'XPX/NPS2': XPX is not a compute mode (SPX, DPX, TPX, QPX, CPX); give layouts as COMPUTE/MEMORY",
        ),
        ("SPX/NPS1,DPX/NPS3", "--layouts: 'DPX/NPS3': NPS3 is not a memory mode (NPS1, NPS2, NPS4)"),
        ("SPX/NPS1,DPX", "--layouts: 'DPX': not COMPUTE/MEMORY"),
        ("SPX/NPS2,DPX/NPS2", "--layouts: 'SPX/NPS2': no kernel runs SPX under NPS2 (SPX runs under NPS1 only)"),
        ("DPX/NPS2,dpx/nps2", "--layouts: DPX/NPS2 is given twice; give each layout once"),
        ("DPX/NPS2", "--layouts DPX/NPS2: give at least two different layouts to compare"),
    ],
)
def test_a_wrong_layout_list_is_one_line_naming_the_word(text, message):
    with pytest.raises(UserError) as err:
        parse_layouts(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_latency_target_is_a_quantile_and_a_duration():
    assert parse_target("p99:2s") == LatencyTarget("p99", 2000) and parse_target("p50:750ms") == LatencyTarget(
        "p50", 750
    )
    for wrong in ("p90:2s", "2s", "p50:", "p50:fast"):
        with pytest.raises(UserError) as err:
            parse_target(wrong)
        assert str(err.value).startswith(f"--latency-target {wrong!r}: ") and "e.g. p50:5s or p99:2s" in str(err.value)


def test_the_winner_has_the_most_throughput_under_the_target_and_fake_engines_are_said():
    spx = results("SPX/NPS1", step("concurrent@1", 100, 900, 1500), step("concurrent@8", 700, 4000, 6000))
    dpx = results("DPX/NPS2", step("concurrent@1", 90, 950, 1200), step("concurrent@8", 650, 1900, 2500))
    p50, p99 = LatencyTarget("p50", 5000), LatencyTarget("p99", 3000)
    assert (best_under(p50, [spx, dpx]).layout, best_under(p50, [spx, dpx]).step.name) == ("SPX/NPS1", "concurrent@8")
    assert (best_under(p99, [spx, dpx]).layout, best_under(p99, [spx, dpx]).step.name) == ("DPX/NPS2", "concurrent@8")
    line = verdict(p99, [spx, dpx])
    assert line.startswith(
        "most throughput with E2E p99 under 3 s: DPX/NPS2 (chat, concurrent@8: 650.0 tokens/s, E2E p99 2500 ms"
    )
    assert line.endswith("(fake engines: this measures the serving path, not a model)")
    assert verdict(LatencyTarget("p50", 500), [spx, dpx]) == (
        "no layout kept E2E p50 under 0.5 s at any step (fake engines: this measures the serving path, not a model)"
    )
    assert "fake" not in verdict(p50, [replace(spx, tags=replace(spx.tags, engine_fake=False))])


def test_a_step_without_requests_never_wins():
    empty = results("SPX/NPS1", step("concurrent@1", 0, 0, 0, requests=0))
    assert best_under(LatencyTarget("p50", 5000), [empty]) is None


# -- full serving, read from /v1/status ------------------------------------------------------


def status(
    digest="d1",
    phase="",
    matches=True,
    drift=False,
    want=("DPX", "NPS2"),
    ready=4,
    total=4,
    error="",
    finished=None,
    profile_error="",
    reconcile="",
):
    on = want if matches else ("SPX", "NPS1")  # the host's modes; the agent wants `want`
    return statuses.status(
        digest,
        gpus=tuple(statuses.gpu(i, *on, want=want) for i in range(2)),
        drift=drift,
        repartition=Repartition(phase=phase, started=None, finished=finished, error=error),
        instances=statuses.counts(total=total, ready=ready),
        profile_error=profile_error,
        reconcile_error=reconcile,
    )


def dpx_profile(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\ngpus: {compute: DPX, memory: NPS2}\nservices:\n  chat: {model: org/m, listen: 8040}\n")
    return load_profile(str(path))


def test_full_serving_needs_the_profile_no_repartition_matching_wanted_modes_and_every_instance(tmp_path):
    p = dpx_profile(tmp_path)
    d = p.digest
    assert waiting_for(status(d), p) == ""
    assert waiting_for(status("old"), p) == f"the agent to run profile {d[:12]}"
    assert waiting_for(status(d, phase="applying"), p) == "repartitioning: applying"
    assert waiting_for(status(d, matches=False, drift=True), p) == "the partitions to match the profile's gpus:"
    # the status's partition facts are cached: "matches" against the previous profile's modes is not enough
    assert waiting_for(status(d, want=("SPX", "NPS1")), p) == "the partitions to match the profile's gpus:"
    assert waiting_for(status(d, ready=2), p) == "instances: 2/4 ready"
    assert waiting_for(status(d, ready=0, total=0), p) == "instances: 0/0 ready"


def test_only_a_new_failure_ends_the_wait():
    before = Before.of(status(finished="t0", error="old failure", profile_error="old problem"))
    assert failed(status("old", finished="t0", error="old failure", profile_error="old problem"), "d1", before) == ""
    assert (
        failed(status("old", finished="t1", error="GPU 1 reset"), "d1", before) == "the repartition failed: GPU 1 reset"
    )
    assert (
        failed(status("old", profile_error="p.yaml:3: bad"), "d1", before)
        == "the agent refused the profile: p.yaml:3: bad"
    )
    assert (
        failed(status("d1", reconcile="no GPU left"), "d1", before)
        == "the agent cannot place the instances: no GPU left"
    )


def test_the_agent_is_known_by_its_record_not_by_an_argv_or_environment_anyone_can_copy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    copy = [sys.executable, "-c", "import time; time.sleep(60)", "/usr/bin/mipart", "agent"]  # argv and env of one
    impostor = subprocess.Popen(copy, env={**os.environ, RUN_DIR_VAR: str(run)})
    try:
        with pytest.raises(UserError, match=f"no mipart agent runs with run dir {run}"):
            find_agent(run)
        records.write_record(run, records.AGENT)  # what the agent writes at its start (daemon.loop)
        assert find_agent(run).pid == os.getpid()
        os.chown(run / records.AGENT, 65534, 65534)  # a record root did not write counts for nothing
        with pytest.raises(UserError, match="no mipart agent runs"):
            find_agent(run)
    finally:
        impostor.kill()
        impostor.wait()


# -- the override seam -------------------------------------------------------------------------


def test_the_override_is_the_operators_profile_with_the_layout_checked_by_the_same_loader(tmp_path):
    operator_path = tmp_path / "profile.yaml"
    operator_path.write_text(PROFILE)
    operator = load_profile(str(operator_path))
    path = profile_override_path(tmp_path / "run")
    text, profile = override.checked_override(operator, Layout("DPX", "NPS2"), path)
    assert (
        text.startswith("# profile override written by `mipart bench sweep`") and "mipart bench sweep --restore" in text
    )
    assert (profile.gpus.compute, profile.gpus.memory, profile.gpus.overrides, profile.gpus.select) == (
        "DPX",
        "NPS2",
        (),
        None,
    )
    assert profile.services == operator.services and profile.health == operator.health and profile.api == operator.api
    assert (
        load_profile(str(override.put(text, tmp_path / "run"))).digest
        == profile.digest
        == load_profile(str(path)).digest
    )
    assert operator_path.read_text() == PROFILE  # never edited
    assert override.remove(tmp_path / "run") and not path.exists() and not override.remove(tmp_path / "run")


def test_the_agent_reads_the_override_when_present_and_says_so(tmp_path):
    run = tmp_path / "run"
    operator_path = tmp_path / "profile.yaml"
    operator_path.write_text(PROFILE)
    log = Log()
    profile, error = profiles.read_profile(str(operator_path), log, "", run)
    assert error == "" and profiles.override_in_force(profile, run) == ""
    text, _ = override.checked_override(profile, Layout("CPX", "NPS4"), profile_override_path(run))
    override.put(text, run)
    profile, error = profiles.read_profile(str(operator_path), log, "", run)
    assert error == "" and profile.gpus.compute == "CPX"
    assert (
        "warning",
        "profile.override",
        {"override": str(profile_override_path(run)), "instead_of": str(operator_path), "by": "mipart bench sweep"},
    ) in log.events
    assert profiles.override_in_force(profile, run) == os.path.abspath(profile_override_path(run))
    # a bad override is refused like a bad profile: one line naming the override, the last good profile kept
    profile_override_path(run).write_text(text.replace("compute: CPX", "compute: XPX"))
    profile, error = profiles.read_profile(str(operator_path), log, "0123456789abcdef", run)
    assert profile is None and error.startswith(str(profile_override_path(run)))
    # without a run dir (a caller that knows none) the operator's path is read
    assert profiles.read_profile(str(operator_path), log, "")[0].gpus.compute == "SPX"


def test_an_override_that_would_change_more_than_the_layout_is_not_written(tmp_path, monkeypatch):
    operator_path = tmp_path / "profile.yaml"
    operator_path.write_text(PROFILE)
    operator = load_profile(str(operator_path))
    rewritten = override.override_text(operator, Layout("DPX", "NPS2"))
    monkeypatch.setattr(override, "override_text", lambda *_: rewritten.replace("org/m", "org/other"))
    with pytest.raises(UserError) as err:
        override.checked_override(operator, Layout("DPX", "NPS2"), profile_override_path(tmp_path / "run"))
    assert "it would mean something else besides the layout; nothing was changed" in str(err.value)
    assert not profile_override_path(tmp_path / "run").exists()


def test_a_profile_that_leaves_the_modes_as_is_cannot_be_restored_so_the_sweep_refuses(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("version: 1\ngpus: {memory: NPS1}\nservices:\n  chat: {model: org/m, listen: 8040}\n")
    with pytest.raises(UserError) as err:
        check_restorable(load_profile(str(path)))
    assert str(err.value) == (
        f"{path}: gpus.compute not set (left as is), so the sweep could not restore this host's layout after it; "
        "set them in the profile (`mipart partition export` prints the host's) and reload; nothing was changed"
    )
    path.write_text(PROFILE)
    check_restorable(load_profile(str(path)))


def test_one_sweep_owns_the_override_and_a_dead_owner_never_blocks(tmp_path):
    """A second sweep (or --restore) is refused with the owner's PID while the first holds the
    lock; once that process is gone, however it went, the next one goes ahead."""
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from pathlib import Path; from mipart.bench.override import owned\n"
            "with owned(Path(sys.argv[2])):\n print('held', flush=True); time.sleep(60)",
            str(Path(override.__file__).parents[2]),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(UserError) as err, override.owned(tmp_path):
            pass
        assert str(err.value).startswith(f"another `mipart bench sweep` runs on this agent (PID {holder.pid}); ")
        assert "nothing was changed" in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with override.owned(tmp_path):
        assert (tmp_path / "bench-sweep.lock").read_text() == f"{os.getpid()}\n"
    with (
        pytest.raises(
            UserError, match=r"cannot open the sweep lock: No such file or directory; run as the agent's user"
        ),
        override.owned(tmp_path / "absent"),
    ):
        pass
