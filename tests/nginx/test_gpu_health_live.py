"""Health from the GPU side with the real agent, real nginx and fake engines: a wedged engine
(/health 200, generations hang) found by the generation probe under load, and a GPU whose
uncorrectable RAS errors rise taking exactly its own instances out, with the reason shown."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import mipart
from serving import ServingHost

pytestmark = pytest.mark.nginx

IDLE, TIMEOUT, INTERVAL = 1.0, 1.0, 0.5
NUMBERS = (0, 1, 8, 9, 16, 17)  # DPX: physical GPUs 0, 0, 1, 1, 2, 2 (N = 8 x GPU + partition)
INSTANCES = len(NUMBERS)


@pytest.fixture
def serving_host(tmp_path):
    probe = {"generation_probe": {"idle": f"{int(IDLE * 1000)}ms", "timeout": f"{int(TIMEOUT * 1000)}ms"}}
    serving = ServingHost(
        tmp_path,
        instances=INSTANCES,
        partitions='"0-1,8-9,16-17"',
        interval=f"{int(INTERVAL * 1000)}ms",
        unhealthy_after=2,
        services={"chat": {"health": probe}},
    )
    yield serving
    serving.close()


def down(host, number: int) -> bool:
    return f"server {host.backend(number)} down;" in host.nginx_conf()


class Load:
    """Clients in threads, each bounded in count and time: (started, status or None) per request."""

    def __init__(self, host, clients: int = 4, seconds: float = 30, per_client: int = 2000):
        self.host, self.results, self.stop = host, [], threading.Event()
        self.deadline, self.per_client = time.monotonic() + seconds, per_client
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        for _ in range(self.per_client):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            started = time.monotonic()
            try:
                response = self.host.request(max_tokens=2, timeout=8)
                response.read()
                status = response.status
            except OSError:
                status = None
            self.results.append((started, status))

    def finish(self) -> list[tuple[float, int | None]]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)
        return list(self.results)


def test_a_wedged_engine_leaves_rotation_within_the_bound_under_load(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready()
    load = Load(serving_host)
    try:
        time.sleep(1.5)  # traffic proves health: no probe completions while it flows
        victim = serving_host.instance_pids()[8]
        wedged_at = time.monotonic()
        os.kill(victim, signal.SIGWINCH)
        serving_host.wait_for(lambda: down(serving_host, 8), timeout=10, what="the wedged instance out of rotation")
        out_at = time.monotonic()
        time.sleep(2.0)
    finally:
        results = load.finish()
    bound = IDLE + INTERVAL + TIMEOUT + 1.0  # idle + probe interval + the probe's timeout, + nginx -t and reload
    assert out_at - wedged_at <= bound, f"out of rotation after {out_at - wedged_at:.2f}s"
    assert [d for d in (0, 1, 9, 16, 17) if down(serving_host, d)] == []
    after = [status for started, status in results if started > out_at + 0.5]  # the reload has taken by then
    assert len(after) > 20 and all(status == 200 for status in after), sorted(set(after), key=str)
    assert "a one-token completion did not finish within 1s" in serving_host.log_text()
    serving_host.wait_for(
        lambda: serving_host.instance_pids().get(8) not in (None, victim), timeout=20, what="a fresh instance 8"
    )
    serving_host.wait_ready(timeout=30)


def test_an_idle_healthy_instance_stays_in_rotation_with_probe_completions(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready()
    time.sleep(IDLE * 3)  # idle: each instance gets probe completions, which succeed
    assert [n for n in NUMBERS if down(serving_host, n)] == []
    assert "instance.unhealthy" not in serving_host.log_text()


def test_an_uncorrectable_error_rise_takes_exactly_that_gpus_instances_out(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready()
    serving_host.mipart(
        "sim", "gpu-signals", str(serving_host.root), "0", "--correctable", "7", "--temperature", "68", "--power", "410"
    )
    time.sleep(INTERVAL * 3)
    assert [n for n in NUMBERS if down(serving_host, n)] == []  # correctable errors are only counted
    serving_host.mipart("sim", "gpu-signals", str(serving_host.root), "1", "--uncorrectable", "1")
    serving_host.wait_for(
        lambda: down(serving_host, 8) and down(serving_host, 9), timeout=10, what="GPU 1's instances out"
    )
    time.sleep(INTERVAL * 3)
    assert [n for n in NUMBERS if down(serving_host, n)] == [8, 9]
    by_unit = {i["unit"]: i for i in serving_host.api_get("/v1/instances")["instances"]}
    for number in (8, 9):
        one = by_unit[f"mipart-vllm@{number}.service"]
        assert one["state"] == "failed" and "uncorrectable RAS errors rose (umc 0 -> 1)" in one["last_error"], one
    assert all(by_unit[f"mipart-vllm@{n}.service"]["state"] == "ready" for n in (0, 1, 16, 17))
    done = mipart("status", "--profile", serving_host.profile, env=dict(serving_host.env), timeout=60)
    assert done.returncode == 3  # some instances are not ready
    status = done.stdout
    for number in (8, 9):
        [line] = [row for row in status.splitlines() if row.startswith(f"mipart-vllm@{number}.service")]
        assert "failed" in line and "GPU 1 (" in line and "uncorrectable RAS errors rose" in line, status
    metrics = serving_host.api_text("/metrics")
    assert 'mipart_gpu_ras_uncorrectable_errors_total{gpu="1",' in metrics and 'block="umc"} 1' in metrics
    assert any(
        line.startswith('mipart_gpu_ras_correctable_errors_total{gpu="0",') and line.endswith(" 7")
        for line in metrics.splitlines()
    )
    assert any(
        line.startswith('mipart_gpu_temperature_celsius{gpu="0",') and line.endswith(" 68.0")
        for line in metrics.splitlines()
    )
    assert serving_host.status_of_one_request() == 200  # the other GPUs still serve
