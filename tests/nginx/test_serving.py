"""Serving through the real agent and a real nginx, with fake engines as instances."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from serving import ServingHost

pytestmark = pytest.mark.nginx


@pytest.fixture
def serving_host(tmp_path):
    serving = ServingHost(tmp_path)
    yield serving
    serving.close()


def test_sixteen_instances_serve_and_nginx_reaches_all(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready(16)
    assert len(serving_host.instance_pids()) == 16
    backends = set()
    for _ in range(96):
        status, backend = serving_host.backend_of_one_request()
        assert status == 200
        backends.add(backend)
    numbers = [8 * gpu + part for gpu in range(8) for part in range(2)]  # DPX: N = 8 x GPU + partition
    assert backends == {serving_host.backend(n) for n in numbers}  # each on its own socket
    assert sorted(serving_host.instance_pids()) == numbers
    conf = serving_host.nginx_conf()
    assert "least_conn;" in conf and "zone mipart_chat" in conf and "proxy_buffering off;" in conf
    # sized from what the instances accept (16 x 256 seqs x 2 connections + headroom), not a constant
    assert "worker_connections 8704;" in conf
    # mipart.lean: the agent that serves (its config generations hashed) never mapped OpenSSL
    maps = Path(f"/proc/{serving_host.agent.pid}/maps").read_text()
    assert "libcrypto" not in maps and "libssl" not in maps, [line for line in maps.splitlines() if "lib" in line]


def test_streaming_arrives_token_by_token(serving_host):
    serving_host.write_profile(tps=20)
    serving_host.start_agent()
    serving_host.wait_ready(16)
    response = serving_host.request(max_tokens=10, stream=True)
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    arrivals = []
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            arrivals.append(time.monotonic())
    assert len(arrivals) == 10
    # 10 tokens at 20/s: nginx must pass each as it comes, not hold them until the end
    assert arrivals[-1] - arrivals[0] >= 0.3


def test_a_service_with_no_ready_instance_answers_503_json(tmp_path):
    host = ServingHost(tmp_path, delay=30)
    try:
        host.start_agent()
        host.wait_for(lambda: "upstream mipart_chat" in host.nginx_conf(), what="nginx config")
        host.wait_for(lambda: host.status_of_one_request() is not None, what="the front layer to answer")
        response = host.request()
        body = json.loads(response.read())
        assert response.status == 503
        assert body["error"]["type"] == "ServiceUnavailable"
        assert host.nginx_conf().count(" down;") == 16  # the whole service listed, none routed to
    finally:
        host.close()


def test_an_unready_instance_is_never_routed_to_and_rejoins_after_restart(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready(16)
    pids = serving_host.instance_pids()
    os.kill(pids[17], signal.SIGUSR1)  # engine dead, socket open: /health 503, completions 500
    marked_down = f"server {serving_host.backend(17)} down;"
    serving_host.wait_for(
        lambda: marked_down in serving_host.nginx_conf(), timeout=10, what="instance 17 out of rotation"
    )
    checked = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        down_before = marked_down in serving_host.nginx_conf()
        status, backend = serving_host.backend_of_one_request()
        if down_before and marked_down in serving_host.nginx_conf():
            checked += 1
            assert backend != serving_host.backend(17), "routed to an instance marked down"
            assert status == 200
    assert checked > 10
    # The agent restarts it; it rejoins only once its /health answers 200 again.
    serving_host.wait_for(
        lambda: serving_host.instance_pids().get(17) not in (None, pids[17]), timeout=15, what="a new instance 17"
    )
    serving_host.wait_ready(16, timeout=15)
    assert "event='instance.restart' unit='mipart-vllm@17'" in serving_host.log_text()


def test_nginx_refused_front_config_keeps_the_old_one_serving(serving_host):
    """The listeners are the front layer's: nginx -t refusing its config keeps the front that serves,
    and the back, whose config does not hold them, is not touched at all."""
    serving_host.start_agent()
    serving_host.wait_ready(16)
    back, front = serving_host.nginx_conf(), (serving_host.run_dir / "nginx-front/nginx.conf").read_text()
    pids = serving_host.instance_pids()
    # Valid for mipart (an IPv4 address; validation cannot know this host's addresses, an image
    # is baked elsewhere), refused by nginx -t: the address is not this host's (TEST-NET-1; no
    # packet is sent, the bind fails).
    serving_host.write_profile(listen_host="192.0.2.1")
    serving_host.hup()
    serving_host.wait_for(lambda: "nginx.config_rejected" in serving_host.log_text(), what="the rejection in the log")
    assert (serving_host.run_dir / "nginx-front/nginx.conf").read_text() == front
    assert serving_host.nginx_conf() == back
    assert "listen 192.0.2.1:" in (serving_host.run_dir / "nginx-front/nginx.conf.rejected").read_text()
    rejection = next(line for line in serving_host.log_text().splitlines() if "nginx.config_rejected" in line)
    assert "bind() to 192.0.2.1" in rejection and "Cannot assign requested address" in rejection, rejection
    assert rejection.endswith("layer='front'"), rejection
    assert serving_host.backend_of_one_request()[0] == 200
    assert serving_host.instance_pids() == pids
    nginx = serving_host.api_get("/v1/status")["nginx"]
    assert nginx["front"]["config_valid"] is False and "bind() to 192.0.2.1" in nginx["front"]["error"]
    assert nginx["config_valid"] is True and nginx["front"]["running"] is True


@pytest.mark.parametrize(
    "breakage",
    [
        (
            lambda listen: {"chat": {"model": "test/fake\nExecStart=/bin/sh"}},
            "services.chat.model contains a control character",
        ),
        (lambda listen: {"chat": {"args": ["--x\u0007"]}}, "services.chat.args[0] contains a control character"),
        (lambda listen: {"chat": {"env": {"A": "x\ny"}}}, "services.chat.env.A contains a control character"),
        (
            lambda listen: {"other": {"model": "a/b", "listen": f"127.0.0.1:{listen}", "partitions": [0]}},
            "already used by services.chat.listen",
        ),
        (None, "is a directory"),
    ],
    ids=["model-newline", "args-control", "env-newline", "duplicate-port", "unreadable"],
)
def test_bad_profile_on_reload_changes_nothing_that_runs(serving_host, breakage):
    services, message = breakage  # services: of the listen port; None: the profile made unreadable
    serving_host.start_agent()
    serving_host.wait_ready(16)
    pids = serving_host.instance_pids()
    conf = serving_host.nginx_conf()
    if services is None:
        serving_host.profile.unlink()
        serving_host.profile.mkdir()
    else:
        serving_host.write_profile(services=services(serving_host.listen))
    serving_host.hup()
    serving_host.wait_for(lambda: "profile.invalid" in serving_host.log_text(), what="the rejection in the log")
    rejected = [line for line in serving_host.log_text().splitlines() if "profile.invalid" in line]
    assert any(message in line for line in rejected), rejected
    time.sleep(1.0)
    assert serving_host.agent.poll() is None
    assert serving_host.instance_pids() == pids
    assert serving_host.nginx_conf() == conf
    assert serving_host.backend_of_one_request()[0] == 200
    assert "Traceback" not in serving_host.log_text()


def test_changed_spec_restarts_rolling_and_the_service_keeps_serving(serving_host):
    serving_host.start_agent()
    serving_host.wait_ready(16)
    before = serving_host.instance_pids()
    serving_host.write_profile(args='["--max-tokens-default", "8"]')
    serving_host.hup()
    lowest, failures, deadline = 16, 0, time.monotonic() + 60
    while time.monotonic() < deadline:
        lowest = min(lowest, serving_host.ready_count())
        status = serving_host.backend_of_one_request_or_none()
        failures += status != 200
        pids = serving_host.instance_pids()
        if len(pids) == 16 and all(pids[n] != before[n] for n in before) and serving_host.ready_count() == 16:
            break
    else:
        raise AssertionError(f"rolling restart did not finish\n{serving_host.log_text()[-3000:]}")
    assert lowest >= 12, f"{lowest}/16 ready at the worst moment: more than a quarter restarted at once"
    assert failures == 0
    restarts = [line for line in serving_host.log_text().splitlines() if "reason='spec changed'" in line]
    assert len(restarts) == 16
