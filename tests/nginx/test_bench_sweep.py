"""`mipart bench sweep --layouts` on a simulated 2-GPU host: the real agent, a real nginx, fake engines.

Each layout goes through the operator path (a profile override under the run dir, then
SIGHUP: the process runner's `systemctl reload`); the operator's profile is never edited and
its layout is back at the end. The load tool is the real pinned guidellm (cached as in
test_bench_live.py); steps are a few seconds, so the whole file stays around a minute or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from serving import TEST_PORTS
from testcache import cache_dir

from mipart.bench.results import read_results
from mipart.paths import profile_override_path
from mipart.profile import load_profile
from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

from .benchcli import bench

pytestmark = pytest.mark.nginx

LAYOUTS = "DPX/NPS2,DPX/NPS1"  # what the sweeps here compare


@pytest.fixture(scope="module")
def serving_host(tmp_path_factory):
    profile = FakeEngineProfile(Ports.free(low=TEST_PORTS), compute="SPX", memory="NPS1", delay=0.3, tps=200)
    serving = SimulatedHost(tmp_path_factory.mktemp("sweep"), profile, gpus=2, expected=2)
    serving.start_agent()
    serving.wait_ready(2)
    yield serving
    serving.close()


def layout(host) -> list[tuple[str, str]]:
    return [
        (g["compute"], g["memory"]) for g in json.loads(host.mipart("sim", "show", str(host.root), "--json"))["gpus"]
    ]


def sweep_args(host, concurrency: str, warmup: str, duration: str, out: Path) -> list[str]:
    """`bench sweep` of the operator's profile over LAYOUTS, in short steps of small requests, results in `out`."""
    return [
        *("sweep", "--profile", str(host.profile), "--layouts", LAYOUTS),
        *("--concurrency", concurrency, "--warmup", warmup, "--duration", duration),
        *("--prompt-tokens", "16", "--output-tokens", "8", "--dir", str(out)),
    ]


def assert_operator_layout_serving(host, profile_text: str) -> None:
    assert host.profile.read_text() == profile_text  # never edited
    assert not profile_override_path(host.run_dir).exists()
    assert layout(host) == [("SPX", "NPS1")] * 2
    st = host.api_get("/v1/status")
    assert st["profile"]["override"] == "" and st["profile"]["digest"] == load_profile(str(host.profile)).digest
    assert st["instances"]["ready"] == st["instances"]["total"] == 2
    assert host.status_of_one_request() == 200


def test_bad_input_is_one_line_and_changes_nothing(serving_host):
    text = serving_host.profile.read_text()
    free = Ports.free(low=TEST_PORTS)
    silent = serving_host.work / "silent.yaml"
    silent.write_text(replace(serving_host.spec, ports=replace(serving_host.ports, api=free.api)).text())
    cases = (
        (["--layouts", "SPX/NPS1,XPX/NPS2"], "mipart: --layouts: 'XPX/NPS2': XPX is not a compute mode"),
        (["--layouts", "DPX/NPS2,dpx/nps2"], "mipart: --layouts: DPX/NPS2 is given twice; give each layout once"),
        (["--layouts", "DPX/NPS2"], "mipart: --layouts DPX/NPS2: give at least two different layouts to compare"),
        (["--layouts", "DPX/NPS2,CPX/NPS2"], "mipart: --layouts CPX/NPS2: this host refuses it:"),
        (
            ["--layouts", LAYOUTS, "--profile", str(silent)],
            f"mipart: no mipart agent answers on 127.0.0.1:{free.api}",
        ),
    )
    for args, start in cases:
        done = bench(
            serving_host,
            "sweep",
            "--profile",
            str(serving_host.profile),
            *args,
            "--dir",
            str(serving_host.work / "never"),
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith(start), (args, done.stderr)
        assert "nothing was changed" in lines[0] or "--layouts" in lines[0]
        assert not (serving_host.work / "never").exists()
    assert_operator_layout_serving(serving_host, text)


def test_sweep_measures_each_layout_and_restores_the_operators(serving_host):
    text = serving_host.profile.read_text()
    out = serving_host.work / "sweep"
    done = bench(serving_host, *sweep_args(serving_host, concurrency="1,2", warmup="1", duration="3", out=out))
    assert done.returncode == 0, done.stderr[-3000:]
    for word, name, modes in (
        ("DPX/NPS2", "DPX-NPS2.json", "2 x DPX/NPS2 (4 logical GPUs)"),
        ("DPX/NPS1", "DPX-NPS1.json", "2 x DPX/NPS1 (4 logical GPUs)"),
    ):
        results = read_results(out / name)
        assert results.tags.label == word and results.tags.layout == modes  # the layout as the GPU backend read it
        assert results.tags.engine_fake is True
        (service,) = results.services
        assert [s.concurrency for s in service.steps] == [1, 2]
        assert all(s.requests > 0 and s.errors == 0 for s in service.steps)
        # measured under the override
        assert results.tags.profile_digest != load_profile(str(serving_host.profile)).digest
    assert "reloading the agent: SIGHUP to the agent (PID" in done.stderr
    assert (
        "| DPX/NPS2 (fake engine) | concurrent@2 |" in done.stdout
        and "| DPX/NPS1 (fake engine) | concurrent@1 |" in done.stdout
    )
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("most throughput with E2E p50 under 5 s: DPX/NPS") and "fake engines" in last
    assert_operator_layout_serving(serving_host, text)


def test_a_stale_override_shows_in_status_and_restore_removes_it(serving_host):
    text = serving_host.profile.read_text()
    stale = profile_override_path(serving_host.run_dir)
    stale.write_text(replace(serving_host.spec, compute="DPX").text())  # as a SIGKILLed sweep leaves it
    serving_host.hup()
    serving_host.wait_for(
        lambda: serving_host.api_get("/v1/status")["profile"]["override"] == str(stale),
        timeout=30,
        what="the override in force",
    )
    shown = subprocess.run(
        [sys.executable, "-m", "mipart", "status", "--profile", str(serving_host.profile)],
        env={**os.environ, **serving_host.env},
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert f"profile override by mipart bench sweep: {stale}" in shown
    # a new sweep refuses to start over it
    done = bench(
        serving_host,
        "sweep",
        "--profile",
        str(serving_host.profile),
        "--layouts",
        LAYOUTS,
        "--dir",
        str(serving_host.work / "never"),
    )
    assert done.returncode == 1 and "a profile override is in place" in done.stderr and stale.exists()
    done = bench(serving_host, "sweep", "--profile", str(serving_host.profile), "--restore")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the operator's profile is in force again" in done.stdout
    assert_operator_layout_serving(serving_host, text)


def test_ctrl_c_in_a_layouts_run_restores_the_operators_profile(serving_host):
    text = serving_host.profile.read_text()
    env = {**os.environ, **serving_host.env, "XDG_CACHE_HOME": str(cache_dir())}
    out = serving_host.work / "interrupted"
    argv = [
        sys.executable,
        "-m",
        "mipart",
        "bench",
        *sweep_args(serving_host, concurrency="1", warmup="0", duration="60", out=out),
    ]
    errors = serving_host.work / "interrupted.err"
    with open(errors, "w") as err:
        # A shell without job control starts background jobs with SIGINT ignored, and Python then
        # keeps it ignored: give the sweep the disposition a terminal's Ctrl-C meets.
        sweep = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=serving_host.work,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        serving_host.wait_for(
            lambda: "mipart: chat: 1 streams" in errors.read_text(), timeout=120, what="the first layout's run"
        )
        assert serving_host.api_get("/v1/status")["profile"]["override"] == str(
            profile_override_path(serving_host.run_dir)
        )
        time.sleep(1)
        sweep.send_signal(signal.SIGINT)
        assert sweep.wait(timeout=120) != 0
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
    said = errors.read_text()
    assert "restoring the operator's profile" in said and "is in force again, at full serving" in said, said
    assert not (serving_host.work / "interrupted" / "DPX-NPS1.json").exists()
    assert_operator_layout_serving(serving_host, text)
