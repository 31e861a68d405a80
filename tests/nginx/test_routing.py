"""Routing policies against the real nginx, through the real agent, with fake engines that say
which instance answered (X-Fake-Engine).

One host of 4 instances serves every test in file order; each test sets its policy by
rewriting the profile and SIGHUP, and waits until nginx serves that config. The last test
takes an instance down.
"""

from __future__ import annotations

import http.client
import json
import os
import signal

import pytest
from serving import TEST_PORTS

from mipart.nginx.conf import generation_of
from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import SimulatedHost

pytestmark = pytest.mark.nginx

NUMBERS = (0, 1, 8, 9)  # GPUs 0 and 1 in DPX: N = 8 x GPU + partition
INSTANCES = len(NUMBERS)
# A (re)started engine is ready only after this: the instance taken down stays down that long
# after its restart, long enough to send every session again while it is out.
STARTUP = 15
HEADER = "X-Session-Id"
AFFINITY = {"affinity": {"header": HEADER}}


@pytest.fixture(scope="module")
def serving_host(tmp_path_factory):
    profile = FakeEngineProfile(Ports.free(low=TEST_PORTS), partitions='"0-1,8-9"', delay=STARTUP)
    serving = SimulatedHost(tmp_path_factory.mktemp("routing"), profile, expected=INSTANCES)
    serving.start_agent()
    serving.wait_ready(INSTANCES, timeout=90 + STARTUP)
    yield serving
    serving.close()


def use(host: SimulatedHost, routing: str | dict | None, says: str) -> None:
    """Serve with this routing (None: none given): nginx runs the config whose service comment says `says`."""
    host.write_profile(services={"chat": {"routing": routing}} if routing else {})
    host.hup()

    def served() -> bool:
        conf = host.nginx_conf()
        if f"; routing {says}\n" not in conf:
            return False
        nginx = host.api_get("/v1/status")["nginx"]
        return nginx["current"] and nginx["serving_generation"] == generation_of(conf)

    host.wait_for(served, timeout=20, what=f"nginx serving routing {says}")


def backend(host: SimulatedHost, headers: dict[str, str] | None = None) -> str:
    """The instance (host:port) that answered one completion sent with these headers."""
    conn = http.client.HTTPConnection("127.0.0.1", host.listen, timeout=30)
    try:
        body = json.dumps({"model": host.spec.model, "prompt": "hi", "max_tokens": 1})
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return response.getheader("X-Fake-Engine", "")
    finally:
        conn.close()


def every_instance(host: SimulatedHost) -> set[str]:
    return {host.backend(n) for n in NUMBERS}


def sessions(host: SimulatedHost, count: int = 24, repeats: int = 4) -> dict[str, str]:
    """session id -> the one instance that answered all its requests."""
    seen = {}
    for i in range(count):
        answered = {backend(host, {HEADER: f"conversation-{i}"}) for _ in range(repeats)}
        assert len(answered) == 1, f"session {i} went to {answered}"
        seen[f"conversation-{i}"] = answered.pop()
    return seen


@pytest.mark.parametrize("routing, says", [(None, "least_conn"), ("random", "random two least_conn")])
def test_least_conn_and_random_spread_over_every_instance(serving_host, routing, says):
    use(serving_host, routing, says)
    assert f"        {says};\n" in serving_host.nginx_conf()
    assert {backend(serving_host) for _ in range(60)} == every_instance(serving_host)


def test_affinity_keeps_each_session_on_one_instance_and_spreads_the_sessions(serving_host):
    use(serving_host, AFFINITY, f"affinity on {HEADER} (hash consistent)")
    placed = sessions(serving_host)
    assert len(set(placed.values())) > 1, placed  # 24 sessions on one of 4 instances: (1/4)^23 by chance
    # the header's name is matched in any case, as HTTP says; the session stays where it was
    assert backend(serving_host, {HEADER.lower(): "conversation-0"}) == placed["conversation-0"]


def test_under_affinity_requests_without_the_header_spread(serving_host):
    """nginx sends a request whose hash key is empty round robin (ngx_http_upstream_hash_module.c)."""
    use(serving_host, AFFINITY, f"affinity on {HEADER} (hash consistent)")
    assert len({backend(serving_host) for _ in range(40)}) > 1
    assert len({backend(serving_host, {HEADER: ""}) for _ in range(40)}) > 1  # an empty value is no session either
    # nginx drops a header whose name has '_' (underscores_in_headers off): X_Session_Id is not
    # read as $http_x_session_id, which is why the profile refuses such names
    assert len({backend(serving_host, {"X_Session_Id": "conversation-0"}) for _ in range(40)}) > 1


def test_an_instance_taken_down_moves_only_its_own_sessions(serving_host):
    use(serving_host, AFFINITY, f"affinity on {HEADER} (hash consistent)")
    before = sessions(serving_host, count=32, repeats=2)
    victim = before["conversation-0"]
    number = next(n for n in NUMBERS if serving_host.backend(n) == victim)
    os.kill(
        serving_host.instance_pids()[number], signal.SIGUSR1
    )  # engine dead, port open: /health 503, completions 500
    serving_host.wait_for(
        lambda: f"server {victim} down;" in serving_host.nginx_conf(), timeout=15, what=f"instance {number} marked down"
    )
    use(serving_host, AFFINITY, f"affinity on {HEADER} (hash consistent)")  # and nginx serving that config
    after = sessions(serving_host, count=32, repeats=2)
    assert f"server {victim} down;" in serving_host.nginx_conf(), (
        "the instance came back before the sessions were sent again"
    )
    moved = {s for s in before if after[s] != before[s]}
    assert moved == {s for s, where in before.items() if where == victim}, (before, after)
    assert victim not in after.values()
