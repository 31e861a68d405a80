"""The readiness path fleet balancers check, through the service port (the front layer, then the back):
`mipart drain`/`undrain`, a drain kept across an agent restart, and a driver-reload change announced
`gpus.drain_notice` before any listener answers 503.

The real agent (process runner), both real nginx layers, fake engines on a simulated 8 x MI300X host.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from serving import ServingHost

from mipart.names import READY_PATH
from mipart.sim.host import completion

pytestmark = pytest.mark.nginx

NOTICE = 2.0  # gpus.drain_notice in these tests, seconds
CHECK_INTERVAL = 0.5  # the polite client's health checks: four of them fit in the notice
WATCH_LIMIT = 240.0  # every loop below ends by then


@pytest.fixture
def serving_host(tmp_path):
    host = ServingHost(tmp_path, drain_notice=f"{NOTICE:g}s")
    yield host
    host.close()


def ready(host) -> tuple[int | None, dict]:
    """(status, body) of GET /mipart/ready on the service port; (None, {}) when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", host.listen, timeout=5)
    try:
        conn.request("GET", READY_PATH)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return None, {}
    finally:
        conn.close()
    return response.status, json.loads(body)


def ready_http10(host) -> bytes:
    """The status line HAProxy's default `option httpchk GET /mipart/ready` gets: HTTP/1.0, no Host header."""
    with socket.create_connection(("127.0.0.1", host.listen), timeout=5) as conn:
        conn.sendall(f"GET {READY_PATH} HTTP/1.0\r\n\r\n".encode())
        return conn.makefile("rb").readline().strip()


def completes(host) -> bool:
    try:
        response = completion(host.listen, host.spec.model, timeout=10)
        response.read()
    except OSError:
        return False
    return response.status == 200


def test_drain_flips_readiness_through_the_service_port_keeps_serving_and_outlives_an_agent_restart(serving_host):
    host = serving_host
    host.start_agent()
    host.wait_ready()
    assert ready(host) == (200, {"ready": True, "service": "chat"})
    assert ready_http10(host) == b"HTTP/1.1 200 OK"  # a balancer's bare check too (no Host to pass on)
    assert host.api_get("/v1/status")["readiness"] == {"ready": True, "reason": None, "since": None, "drained": False}

    said = json.loads(
        host.mipart("drain", "--reason", "kernel update", "--wait", "--json", "--profile", str(host.profile))
    )
    assert said["drained"] is True and said["changed"] is True and said["reason"] == "kernel update"
    status, body = ready(host)  # --wait returned: balancers see 503 now
    assert status == 503
    assert body == {"ready": False, "service": "chat", "reason": "drained: kernel update", "since": said["since"]}
    assert completes(host)  # draining changes readiness only: instances serve whoever still sends
    assert host.api_get("/v1/status")["readiness"] == {
        "ready": False,
        "reason": "drained: kernel update",
        "since": said["since"],
        "drained": True,
    }
    assert "readiness: 503 on /mipart/ready" in host.mipart("status", "--api", f"127.0.0.1:{host.api_port}")

    host.stop_agent()
    host.start_agent()
    host.wait_for(lambda: host.api_counts() is not None, what="the new agent's API")
    assert host.api_get("/v1/status")["readiness"]["drained"] is True  # the new agent read the file
    assert ready(host)[0] == 503 and completes(host)

    again = json.loads(host.mipart("drain", "--json"))
    assert again["changed"] is False and again["since"] == said["since"]
    back = json.loads(host.mipart("undrain", "--json", "--profile", str(host.profile)))
    assert back == {"drained": False, "changed": True}
    assert ready(host) == (200, {"ready": True, "service": "chat"})  # undrain waited for it
    assert json.loads(host.mipart("undrain", "--json", "--profile", str(host.profile)))["changed"] is False


class Watch:
    """Three loops on the service port while a change runs, each bounded by WATCH_LIMIT:
    - the readiness path, read back to back: when it first answered 503, and when 200 again after the
      service's first 503 (while nginx switches workers, an old one may still answer 200 for a moment:
      the notice counts from when none does);
    - a client that never looks at readiness: when a completion first failed (503 or no answer);
    - a polite client, as a balancer: it checks readiness every CHECK_INTERVAL, sends completions only
      while the last check said 200, and counts every completion that failed."""

    def __init__(self, host):
        self.host = host
        self.stop = threading.Event()
        self.ready_503: float | None = None
        self.ready_again: float | None = None
        self.service_503: float | None = None
        self.reasons: set[str] = set()
        self.polite_sent, self.polite_failed, self.polite_resumed = 0, 0, 0
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._ready, self._stubborn, self._polite)]

    def _running(self, deadline: float) -> bool:
        return not self.stop.is_set() and time.monotonic() < deadline

    def _ready(self) -> None:
        deadline = time.monotonic() + WATCH_LIMIT
        while self._running(deadline):
            status, body = ready(self.host)
            if status == 503:
                self.ready_503 = self.ready_503 or time.monotonic()
                self.reasons.add(body.get("reason", ""))
            elif status == 200 and self.service_503 and not self.ready_again:
                self.ready_again = time.monotonic()
            time.sleep(0.005)

    def _stubborn(self) -> None:
        deadline = time.monotonic() + WATCH_LIMIT
        while self._running(deadline) and self.service_503 is None:
            if not completes(self.host):
                self.service_503 = time.monotonic()
            time.sleep(0.005)

    def _polite(self) -> None:
        deadline = time.monotonic() + WATCH_LIMIT
        while self._running(deadline):
            told = ready(self.host)[0] == 200
            until = time.monotonic() + CHECK_INTERVAL
            while told and time.monotonic() < until and self._running(deadline):
                self.polite_sent += 1
                self.polite_resumed += self.ready_again is not None
                self.polite_failed += not completes(self.host)
            time.sleep(max(0.0, until - time.monotonic()))

    def __enter__(self) -> Watch:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def test_a_driver_reload_is_announced_on_the_readiness_path_before_any_503_and_a_polite_client_sees_none(
    serving_host,
):
    host = serving_host
    host.start_agent()
    host.wait_ready()
    host.write_profile(memory="NPS1")  # DPX stays; the memory mode needs the driver reloaded: a host-wide change
    with Watch(host) as watch:
        host.wait_for(lambda: watch.polite_sent > 0, what="the polite client sending")
        host.hup()
        host.wait_for(lambda: "event='repartition.done'" in host.log_text(), timeout=180, what="the repartition")
        host.wait_ready(timeout=120)
        host.wait_for(lambda: watch.ready_again is not None, timeout=60, what="readiness 200 again")
        time.sleep(2 * CHECK_INTERVAL)  # the polite client is back
    assert watch.ready_503 is not None and watch.service_503 is not None
    print(f"readiness 503 {watch.service_503 - watch.ready_503:.2f}s before the first 503 on the service port")
    assert watch.service_503 - watch.ready_503 >= NOTICE
    assert watch.reasons == {
        "host-wide change: memory mode NPS1 needs a driver reload, which takes every GPU of the hive at once"
    }
    print(f"polite client: {watch.polite_sent} completions, {watch.polite_failed} failed")
    assert watch.polite_failed == 0 and watch.polite_resumed > 0
    assert completes(host) and ready(host)[0] == 200
    log = host.log_text()
    notice, drained = log.index("event='readiness.notice'"), log.index("event='instance.stop'")
    assert notice < drained
    assert host.api_get("/v1/status")["readiness"]["ready"] is True
