"""Repartition while serving: the operator edits `gpus:` and reloads the agent.

The real agent (process runner), a real nginx, and fake engines that hold their simulated
GPUs open as vLLM does, so the partition engine meets busy GPUs exactly as on a real host.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from serving import ServingHost

from mipart.names import RELOAD_CMD_VAR
from mipart.runners import records
from mipart.serving.spec import InstanceSpec
from mipart.sim.clients import ClientLoop
from mipart.sim.host import HostError

pytestmark = pytest.mark.nginx

RECORD = "partition.json"


@pytest.fixture
def serving_host(tmp_path):
    serving = ServingHost(
        tmp_path, rules="rocm-mi300x"
    )  # 8 x MI300X in DPX/NPS2: 16 instances; CPX/NPS2 needs seed 000's rules
    yield serving
    serving.close()


def running_digests(host) -> dict[int, str]:
    """The spec digest each live server was started with (the launcher's record of it)."""
    return {n: launch.digest for n, launch in records.launches(host.serving_dir).items()}


def spec_digests(host) -> dict[int, str]:
    return {
        int(p.stem): InstanceSpec.from_file_text(p.read_text()).digest()
        for p in (host.run_dir / "instances").glob("*.json")
    }


def layout(host) -> list[str]:
    return [g["compute"] for g in json.loads(host.mipart("sim", "show", str(host.root), "--json"))["gpus"]]


def status(host) -> dict:
    return host.api_get("/v1/status")


def test_reload_with_a_new_layout_rolls_gpu_by_gpu_and_serves_on_it(serving_host):
    """DPX -> CPX needs no driver reload, and slot numbers keep every number on its GPU: the change
    rolls one GPU a step (partition.rolling) while the other GPUs serve."""
    serving_host.start_agent()
    serving_host.wait_ready(16)
    old, old_pids = running_digests(serving_host), serving_host.instance_pids()
    serving_host.write_profile(compute="CPX")

    # The agent's instances hold the GPUs, so the partition command refuses, saying what to run.
    with pytest.raises(HostError) as busy:
        serving_host.mipart("partition", "apply", "--profile", str(serving_host.profile))
    assert "mipart's own instances hold these GPUs" in str(busy.value) and "`systemctl reload mipart-agent`" in str(
        busy.value
    )
    assert running_digests(serving_host) == old and layout(serving_host) == ["DPX"] * 8

    with ClientLoop(serving_host.listen, serving_host.spec.model, limit=240) as clients:
        serving_host.hup()
        serving_host.wait_ready(64, timeout=240)
    assert set(clients.seen) == {"200"}, clients.seen  # 14 instances or more serve at every step

    serving_host.wait_for(
        lambda: "event='repartition.done'" in serving_host.log_text(), timeout=30, what="the change's end logged"
    )
    new = running_digests(serving_host)
    assert sorted(new) == list(range(64)) and new == spec_digests(serving_host)  # every server runs its new spec
    assert not set(old_pids.values()) & set(serving_host.instance_pids().values())  # each GPU switched in turn
    # N = 8 x GPU + partition: each DPX instance keeps its number, socket and partition in CPX, so its spec too
    assert sorted(n for n in old if old[n] == new[n]) == sorted(old)
    assert layout(serving_host) == ["CPX"] * 8
    # The API's host snapshot is up to HOST_CACHE_SECONDS old, and served stale while it refreshes: one
    # taken between the last GPU's switch and the change's record says no drift and the refused apply before.
    serving_host.wait_for(
        lambda: (snap := status(serving_host))["partition"]["drift"] is False and (snap["last_apply"] or {}).get("ok"),
        timeout=30,
        what="the serving_host snapshot after the change",
    )
    st = status(serving_host)
    assert st["partition"]["action"] == ""
    assert st["repartition"]["phase"] == "" and st["repartition"]["error"] == "" and st["repartition"]["finished"]
    assert st["last_apply"]["ok"] is True
    metrics = serving_host.api_text("/metrics")
    assert "mipart_partition_drift 0" in metrics and "mipart_repartition_last_ok 1" in metrics

    log = serving_host.log_text()
    steps = re.findall(r"event='repartition\.step' phase='(start|end)'.*? gpus='(\d+)' stop='([\d,]*)'", log)
    assert steps == [(phase, str(gpu), f"{8 * gpu},{8 * gpu + 1}") for gpu in range(8) for phase in ("start", "end")]
    for gpu, part in enumerate(
        log.split("event='repartition.step' phase='start'")[1:]
    ):  # each step starts only its own GPU's slots
        step = part.split("phase='end'")[0]
        started = set(map(int, re.findall(r"event='instance\.start' unit='mipart-vllm@(\d+)'", step)))
        assert started == set(range(8 * gpu, 8 * gpu + 8)), (gpu, started)
    assert len(re.findall(r"event='instance\.stop' unit='mipart-vllm@\d+' reason='rolling repartition'", log)) == 16


def test_refused_and_failed_repartitions_leave_serving_up_and_say_why(serving_host):
    # A GPU user that appears while the driver reloads (the reload command makes it hold GPU 3)
    # fails the apply midway, after serving went down.
    late = subprocess.Popen(["sleep", "300"])
    appears = f"{sys.executable} -m mipart sim hold {serving_host.root} 3 --pid {late.pid}"
    serving_host.start_agent({RELOAD_CMD_VAR: f"{serving_host.env[RELOAD_CMD_VAR]} && {appears}"})
    serving_host.wait_ready(16)
    pids = serving_host.instance_pids()
    serving_host.write_profile(compute="CPX", memory="NPS1")

    # A process the agent cannot stop holds GPU 0: refused before anything stops.
    holder = subprocess.Popen(["sleep", "300"])
    try:
        serving_host.mipart("sim", "hold", str(serving_host.root), "0", "--pid", str(holder.pid))
        serving_host.hup()
        serving_host.wait_for(lambda: status(serving_host)["repartition"]["error"], timeout=30, what="the refusal")
        error = status(serving_host)["repartition"]["error"]
        assert error.startswith(f"GPUs in use by processes mipart does not manage: PID {holder.pid} (sleep, "), error
        assert error.endswith("then run `systemctl reload mipart-agent` again"), error
        assert (
            serving_host.instance_pids() == pids
            and serving_host.ready_count() == 16
            and layout(serving_host) == ["DPX"] * 8
        )
        # The agent runs the new profile on the old layout: drift, with the command to run.
        serving_host.wait_for(lambda: status(serving_host)["partition"]["drift"], timeout=10, what="drift reported")
        assert "systemctl reload mipart-agent" in status(serving_host)["partition"]["action"]
        assert "mipart_partition_drift 1" in serving_host.api_text("/metrics")
        record = json.loads((serving_host.run_dir / RECORD).read_text())
        assert record["ok"] is False and record["error"] == error
        assert "event='repartition.refused'" in serving_host.log_text()
    finally:
        holder.kill()
        holder.wait()

    try:
        serving_host.hup()
        serving_host.wait_for(
            lambda: "event='repartition.done'" in serving_host.log_text(), timeout=120, what="the repartition"
        )
        # Serving comes back on the layout the host has then: GPUs 0-2 switched to CPX, 3-7 as the
        # reload into NPS1 left them (SPX): 3 x 8 + 5 x 1 = 29 instances.
        serving_host.wait_ready(29, timeout=120)
    finally:
        late.kill()
        late.wait()
    assert layout(serving_host) == ["CPX"] * 3 + ["SPX"] * 5
    st = status(serving_host)
    error = st["repartition"]["error"].splitlines()  # the refusal, then the layout the host is in now
    assert error[0] == (
        f"GPU 3 (0000:65:00.0): current_compute_partition busy: PID {late.pid} (sleep, no unit) on GPU 3 holds the "
        "GPU; stop it, then rerun"
    )
    assert error[1] == "the host now:" and error[5] == "  GPU 3 (0000:65:00.0): SPX/NPS1, the profile wants CPX/NPS1"
    assert st["last_apply"]["ok"] is False and st["last_apply"]["error"] == st["repartition"]["error"]
    assert st["partition"]["drift"] is True and "systemctl reload mipart-agent" in st["partition"]["action"]
    new = running_digests(serving_host)
    assert sorted(new) == [*range(24), 24, 32, 40, 48, 56]  # N = 8 x GPU + partition
    assert new == spec_digests(serving_host)
    assert "mipart_repartition_last_ok 0" in serving_host.api_text("/metrics")
    assert "event='repartition.failed'" in serving_host.log_text()
