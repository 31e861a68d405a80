"""Rolling repartition (issue 21): a gpus: change without a driver reload goes GPU by GPU while
the rest serve. The real agent (process runner), both nginx layers and fake engines that hold
their simulated GPUs as vLLM does, under the fault harness's streaming clients (perf/faults.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace

import pytest
from conftest import REPO

from mipart.serving.spec import read_spec_files
from mipart.sim.clients import ClientLoop
from mipart.sim.fake_profile import Ports
from mipart.sim.host import SimulatedHost
from mipart.sim.ports import EPHEMERAL_START

sys.path.insert(0, str(REPO / "perf"))
import faults as harness  # noqa: E402  (the fault harness: perf/faults.py)

pytestmark = pytest.mark.nginx
GPU_1_TO_QPX = "[{select: [1], compute: QPX}]"
BOTH_TO_QPX = "[{select: [0, 1], compute: QPX}]"


def rolling_host(tmp_path, **fields) -> SimulatedHost:
    """The issue's host: 2 x MI300X in DPX/NPS1, 4 instances."""
    profile = replace(harness.fault_profile(Ports.free(20000, EPHEMERAL_START)), memory="NPS1", **fields)
    return SimulatedHost(tmp_path, profile, gpus=2, expected=4)


@pytest.fixture
def host(tmp_path):
    serving = rolling_host(tmp_path)
    yield serving
    serving.close()


def on_gpu(host, gpu: int) -> list[int]:
    """Instance numbers whose spec (in the agent's run dir) runs on physical GPU `gpu`."""
    return sorted(n for n, s in read_spec_files(host.run_dir / "instances").items() if s.physical_gpus == (gpu,))


def steps_logged(host) -> list[dict[str, str]]:
    found = re.findall(r"event='repartition\.step' (.*)", host.log_text())
    return [dict(re.findall(r"(\w+)='?([^' ]*)'?", line)) for line in found]


def status(host) -> dict:
    return host.api_get("/v1/status")


def layout(host) -> list[str]:
    return [g["compute"] for g in json.loads(host.mipart("sim", "show", str(host.root), "--json"))["gpus"]]


def test_moving_gpu_1_to_qpx_keeps_gpu_0_serving_with_no_failed_request(host, tmp_path):
    host.start_agent()
    host.wait_ready(4)
    gpu0 = {n: pid for n, pid in host.instance_pids().items() if n in on_gpu(host, 0)}
    assert len(gpu0) == 2
    host.write_profile(overrides=GPU_1_TO_QPX)

    planned = json.loads(host.mipart("plan", "--profile", str(host.profile), "--json"))["rollout"]
    assert planned["mode"] == "rolling" and planned["dark"] == {}
    [step] = planned["steps"]
    assert step["gpus"] == [1] and step["stop"] == on_gpu(host, 1) and len(step["start"]) == 4
    assert step["capacity"] == {"chat": 2}  # GPU 0's two serve throughout
    human = host.mipart("plan", "--profile", str(host.profile))
    assert "rollout: rolling" in human and "step 1: GPUs 1:" in human

    out = tmp_path / "load.json"
    # Kept-alive connections: the front's text does not follow the layout (nginx/front.py), so it
    # does not reload, and no idle connection is closed under a client.
    load = harness.start_load(host.listen, out, clients=100, seconds=12, think=0.2)
    try:
        time.sleep(2)
        host.hup()
        host.wait_ready(6, timeout=60)
    finally:
        records = harness.finish_load(load, out, 12)
    # the new instances can be ready before the change has recorded its end, and the API shares its host
    # snapshot for a moment (api/server.py: HOST_CACHE_SECONDS)
    host.wait_for(lambda: (status(host)["last_apply"] or {}).get("ok"), timeout=30, what="the change's end recorded")
    outcomes = Counter(r.outcome for r in records)
    print(f"rolling GPU 1 DPX -> QPX under 100 streaming clients: {dict(outcomes)}")
    assert outcomes.keys() == {harness.OK} and outcomes[harness.OK] > 300, outcomes  # no failure, no 503
    assert {n: pid for n, pid in host.instance_pids().items() if n in gpu0} == gpu0  # GPU 0's never restarted
    assert len(on_gpu(host, 1)) == 4

    logged = steps_logged(host)  # exactly the planned step, its start and its end
    assert [(s["phase"], s["gpus"]) for s in logged] == [("start", "1"), ("end", "1")]
    assert logged[0]["stop"] == ",".join(map(str, step["stop"])) and logged[1]["ok"] == "True"
    assert logged[1]["start"] == ",".join(map(str, step["start"]))
    st = status(host)
    assert st["repartition"]["error"] == "" and st["repartition"]["step"] == "" and st["last_apply"]["ok"] is True
    assert not (host.run_dir / "rolling.json").exists()


def test_an_instance_that_never_becomes_ready_stops_the_rollout_and_gpu_0_serves_on(tmp_path):
    host = rolling_host(tmp_path, max_restarts=1, startup_timeout="5s")
    try:
        host.start_agent()
        host.wait_ready(4)
        gpu0 = {n: pid for n, pid in host.instance_pids().items() if n in on_gpu(host, 0)}
        os.unlink(host.root / "dev/dri/renderD138")  # GPU 1's partition 2, only in QPX: its engine cannot start
        host.write_profile(overrides=GPU_1_TO_QPX)
        host.hup()
        host.wait_for(
            lambda: status(host)["repartition"]["finished"] and not status(host)["repartition"]["step"],
            timeout=60,
            what="the rolling change to stop",
        )
        error = status(host)["repartition"]["error"]
        assert error.startswith("rolling repartition stopped at step 1 of 1 (GPU 1)"), error
        assert "never became ready" in error and "`systemctl reload mipart-agent` to resume" in error
        record = json.loads((host.run_dir / "rolling.json").read_text())
        assert record["state"] == "stopped" and record["gpus"] == [1]
        host.wait_ready(5, timeout=30)  # the other new instances serve, beside GPU 0's
        assert {n: pid for n, pid in host.instance_pids().items() if n in gpu0} == gpu0
        assert host.status_of_one_request() == 200
    finally:
        host.close()


def test_an_agent_killed_mid_step_says_where_it_stopped_and_a_reload_finishes(tmp_path):
    host = rolling_host(tmp_path, delay=3.0)  # new engines load for 3 s: the step is still waiting
    try:
        host.start_agent()
        host.wait_ready(4, timeout=60)
        gpu0 = {n: pid for n, pid in host.instance_pids().items() if n in on_gpu(host, 0)}
        host.write_profile(overrides=GPU_1_TO_QPX)
        host.hup()
        host.wait_for(lambda: "event='repartition.applied'" in host.log_text(), timeout=60, what="GPU 1 switched")
        os.kill(host.agent.pid, signal.SIGKILL)
        host.agent.wait(10)
        host.start_agent()
        host.wait_ready(6, timeout=60)  # planned on the layout the host has: GPU 1 in QPX
        error = status(host)["repartition"]["error"]
        assert error.startswith("rolling repartition stopped at step 1 of 1 (GPU 1)"), error
        assert "the agent stopped during the step" in error and "systemctl reload mipart-agent" in error
        assert {n: pid for n, pid in host.instance_pids().items() if n in gpu0} == gpu0
        host.hup()  # resumes: nothing left to switch, the record goes
        host.wait_for(lambda: not status(host)["repartition"]["error"], timeout=30, what="the error cleared")
        assert not (host.run_dir / "rolling.json").exists()
    finally:
        host.close()


def test_a_holder_on_the_next_gpu_stops_the_change_at_its_boundary_and_a_reload_resumes(tmp_path):
    """Both GPUs to QPX, GPU 0 first: once GPU 0 has switched, a process mipart does not manage opens
    GPU 1. The change stops before GPU 1's instances stop; GPU 0 serves on QPX, GPU 1 on DPX."""
    host = rolling_host(tmp_path, delay=3.0)  # GPU 0's new engines load for 3 s: the holder comes first
    holder = subprocess.Popen(["sleep", "300"])
    try:
        host.start_agent()
        host.wait_ready(4, timeout=60)
        gpu1 = {n: pid for n, pid in host.instance_pids().items() if n in on_gpu(host, 1)}
        host.write_profile(overrides=BOTH_TO_QPX)
        with ClientLoop(host.listen, host.spec.model, limit=120) as clients:
            host.hup()
            host.wait_for(lambda: "event='repartition.applied'" in host.log_text(), timeout=60, what="GPU 0 switched")
            host.mipart("sim", "hold", str(host.root), "1", "--pid", str(holder.pid))
            host.wait_for(lambda: "event='repartition.done'" in host.log_text(), timeout=60, what="the change to stop")
            host.wait_ready(6, timeout=60)  # GPU 0's four on QPX beside GPU 1's two on DPX
        assert set(clients.seen) == {"200"}, clients.seen  # GPU 1 served while GPU 0 switched, and after
        error = status(host)["repartition"]["error"]
        assert error.startswith(
            "rolling repartition stopped at step 2 of 2 (GPU 1): GPUs switched before it: 0: "
            f"GPUs in use by processes mipart does not manage: PID {holder.pid} (sleep, "
        ), error
        assert error.endswith(
            "`systemctl reload mipart-agent` to resume: it plans again from the host's layout, "
            "so only the GPUs left (1) switch"
        ), error
        assert layout(host) == ["QPX", "DPX"] and on_gpu(host, 0) == [0, 1, 2, 3]
        assert {n: pid for n, pid in host.instance_pids().items() if n in gpu1} == gpu1  # GPU 1 never stopped
        record = json.loads((host.run_dir / "rolling.json").read_text())
        assert record["state"] == "stopped" and record["gpus"] == [1] and record["switched"] == [0]
        assert [(s["phase"], s["gpus"], s.get("ok", "")) for s in steps_logged(host)] == [
            ("start", "0", ""),
            ("end", "0", "True"),
            ("start", "1", ""),
            ("end", "1", "False"),
        ]

        holder.kill()
        holder.wait()
        gpu0 = {n: pid for n, pid in host.instance_pids().items() if n in on_gpu(host, 0)}
        host.hup()  # resumes: only GPU 1 is left
        host.wait_ready(8, timeout=60)
        host.wait_for(lambda: not status(host)["repartition"]["error"], timeout=30, what="the error cleared")
        assert layout(host) == ["QPX", "QPX"] and on_gpu(host, 1) == [8, 9, 10, 11]
        assert {n: pid for n, pid in host.instance_pids().items() if n in gpu0} == gpu0  # GPU 0 kept serving
        assert not (host.run_dir / "rolling.json").exists()
    finally:
        holder.kill()
        holder.wait()
        host.close()
