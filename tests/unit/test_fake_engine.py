"""The fake engine (mipart.sim.engine) run as a real subprocess, checked like vLLM from outside."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AGENT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connectable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_until(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def request(port: int, method: str, path: str, body=None, timeout: float = 5):
    """One HTTP exchange; returns (status, headers, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def metric_value(port: int, name: str) -> float:
    status, _, body = request(port, "GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


class Engine:
    """One engine subprocess; the fixture kills it by PID if a test leaves it running."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path):
        self.port, self.proc, self.log = port, proc, log

    def wait_ready(self, timeout: float = 15) -> None:
        wait_until(lambda: self.proc.poll() is not None or connectable(self.port), timeout)
        assert self.proc.poll() is None, self.log.read_text()

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


@pytest.fixture
def start_engine(tmp_path):
    started: list[Engine] = []

    def start(*args: str, ready: bool = True) -> Engine:
        port = free_port()
        log = tmp_path / f"engine-{port}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(AGENT), os.environ.get("PYTHONPATH")]))}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mipart.sim.engine", "--port", str(port), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        engine = Engine(port, proc, log)
        started.append(engine)
        if ready:
            engine.wait_ready()
        return engine

    yield start
    for engine in started:
        if engine.proc.poll() is None:
            engine.proc.kill()
        engine.proc.wait(timeout=10)


def read_events(resp: http.client.HTTPResponse, timeout: float = 10):
    """Yield (arrival time, data payload) for each SSE event as it arrives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = resp.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            yield time.monotonic(), line[len(b"data: ") :].strip().decode()


def open_stream(port: int, path: str, body: dict, timeout: float = 10) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", path, body=json.dumps({**body, "stream": True}), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    return conn, resp


def test_refuses_connections_until_startup_delay(start_engine):
    t0 = time.monotonic()
    engine = start_engine("--startup-delay", "1.5", ready=False)
    time.sleep(0.5)
    assert not connectable(engine.port)
    assert engine.proc.poll() is None
    engine.wait_ready()
    assert time.monotonic() - t0 >= 1.4
    status, headers, body = request(engine.port, "GET", "/health")
    assert (status, body) == (200, b"")
    assert headers["X-Fake-Engine"] == f"127.0.0.1:{engine.port}"


def test_models(start_engine):
    engine = start_engine("--model", "tiny-llama")
    status, _, body = request(engine.port, "GET", "/v1/models")
    assert status == 200
    listing = json.loads(body)
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["tiny-llama"]


def test_completion(start_engine):
    engine = start_engine("--tokens-per-second", "1000", "--max-tokens-default", "4")
    status, headers, body = request(
        engine.port, "POST", "/v1/completions", {"model": "fake-model", "prompt": "one two three", "max_tokens": 5}
    )
    assert status == 200
    assert headers["X-Fake-Engine"] == f"127.0.0.1:{engine.port}"
    out = json.loads(body)
    assert out["object"] == "text_completion" and out["model"] == "fake-model"
    assert str(engine.port) in out["id"]
    assert out["choices"][0]["text"] == "tok0 tok1 tok2 tok3 tok4"
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    # without max_tokens: --max-tokens-default
    _, _, body = request(engine.port, "POST", "/v1/completions", {"prompt": "x"})
    assert json.loads(body)["usage"]["completion_tokens"] == 4


def test_chat_completion(start_engine):
    engine = start_engine("--tokens-per-second", "1000")
    status, _, body = request(
        engine.port,
        "POST",
        "/v1/chat/completions",
        {"model": "fake-model", "max_tokens": 3, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert status == 200
    out = json.loads(body)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "tok0 tok1 tok2"}
    assert out["usage"]["completion_tokens"] == 3
    assert str(engine.port) in out["id"]


def test_errors_like_vllm(start_engine):
    engine = start_engine()
    status, headers, body = request(engine.port, "POST", "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404
    err = json.loads(body)["error"]
    assert err["type"] == "NotFoundError" and err["code"] == 404 and "other" in err["message"]
    assert headers["X-Fake-Engine"] == f"127.0.0.1:{engine.port}"
    status, _, body = request(engine.port, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400
    assert json.loads(body)["error"]["code"] == 400


def test_stream_arrives_token_by_token(start_engine):
    engine = start_engine("--tokens-per-second", "20")
    conn, resp = open_stream(engine.port, "/v1/completions", {"prompt": "hi", "max_tokens": 10})
    try:
        events = list(read_events(resp))
    finally:
        conn.close()
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 10
    assert all(c["object"] == "text_completion" and c["choices"][0]["logprobs"] is None for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == " ".join(f"tok{i}" for i in range(10))
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 9 + ["length"]
    first, last = events[0][0], events[-2][0]
    assert last - first >= 0.25  # 10 tokens at 20/s: ~0.45 s between first and last


def test_chat_stream_shape(start_engine):
    engine = start_engine("--tokens-per-second", "200")
    conn, resp = open_stream(
        engine.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    try:
        events = [data for _, data in read_events(resp)]
    finally:
        conn.close()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "tok0 tok1 tok2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_metrics_track_running_stream(start_engine):
    engine = start_engine("--tokens-per-second", "10")
    assert metric_value(engine.port, "vllm:num_requests_running") == 0
    conn, resp = open_stream(engine.port, "/v1/completions", {"prompt": "a b", "max_tokens": 10})
    try:
        events = read_events(resp)
        next(events)
        assert metric_value(engine.port, "vllm:num_requests_running") == 1
        assert metric_value(engine.port, "vllm:num_requests_waiting") == 0
        assert metric_value(engine.port, "vllm:kv_cache_usage_perc") > 0
        assert metric_value(engine.port, "vllm:prompt_tokens_total") == 2
        assert [data for _, data in events][-1] == "[DONE]"
    finally:
        conn.close()
    assert metric_value(engine.port, "vllm:num_requests_running") == 0
    assert metric_value(engine.port, "vllm:kv_cache_usage_perc") == 0
    assert metric_value(engine.port, "vllm:generation_tokens_total") == 10
    _, _, body = request(engine.port, "GET", "/metrics")
    assert 'vllm:request_success_total{finished_reason="length",model_name="fake-model"} 1.0' in body.decode()


def test_a_long_prefill_delays_the_first_token_then_streams(start_engine):
    """--first-token-delay: the request runs, nothing is counted until its first token (vLLM 0.32 counts
    a prompt's tokens when its prefill is done), then the tokens stream at the engine's pace."""
    engine = start_engine("--tokens-per-second", "20", "--first-token-delay", "1")
    started = time.monotonic()
    conn, resp = open_stream(engine.port, "/v1/completions", {"prompt": "a b c", "max_tokens": 4})
    try:
        events = read_events(resp)
        time.sleep(0.3)
        assert metric_value(engine.port, "vllm:num_requests_running") == 1
        assert metric_value(engine.port, "vllm:prompt_tokens_total") == 0
        assert metric_value(engine.port, "vllm:generation_tokens_total") == 0
        first, _ = next(events)
        assert first - started >= 1.0
        assert metric_value(engine.port, "vllm:prompt_tokens_total") == 3
        assert [data for _, data in events][-1] == "[DONE]"
    finally:
        conn.close()
    assert metric_value(engine.port, "vllm:generation_tokens_total") == 4


def test_metrics_by_name_answer_those_series_alone(start_engine):
    """As prometheus_client answers /metrics?name[]=... (vLLM's /metrics): what the progress probe reads."""
    engine = start_engine()
    query = "name[]=vllm:num_requests_running&name[]=vllm:generation_tokens_total"
    status, _, body = request(engine.port, "GET", f"/metrics?{query}")
    names = {line.split("{")[0] for line in body.decode().splitlines() if not line.startswith("#")}
    assert status == 200 and names == {"vllm:num_requests_running", "vllm:generation_tokens_total"}


def test_sigusr1_engine_dead_port_open(start_engine):
    engine = start_engine()
    assert request(engine.port, "GET", "/health")[0] == 200
    engine.signal(signal.SIGUSR1)
    wait_until(lambda: request(engine.port, "GET", "/health")[0] == 503, timeout=5)
    status, _, body = request(engine.port, "POST", "/v1/completions", {"prompt": "x"})
    assert status == 500
    assert json.loads(body)["error"]["code"] == 500
    assert engine.proc.poll() is None


def test_sigusr2_hangs_then_sigterm_exits(start_engine):
    engine = start_engine()
    engine.signal(signal.SIGUSR2)

    def health_times_out() -> bool:
        try:
            request(engine.port, "GET", "/health", timeout=1)
            return False
        except TimeoutError:
            return True

    wait_until(health_times_out, timeout=5)
    assert connectable(engine.port)
    engine.signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=5) == 0


@pytest.mark.parametrize("how", ["signal", "flag"])
def test_a_wedged_engine_answers_health_and_metrics_but_generates_nothing(start_engine, how):
    engine = start_engine(*(["--fault", "wedge"] if how == "flag" else []))
    if how == "signal":
        assert request(engine.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200
        engine.signal(signal.SIGWINCH)
        time.sleep(0.3)  # the signal is handled on the engine's loop
    before = metric_value(engine.port, "vllm:generation_tokens_total")
    with pytest.raises((socket.timeout, TimeoutError)):
        request(engine.port, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1}, timeout=1.5)
    assert request(engine.port, "GET", "/health")[0] == 200
    assert metric_value(engine.port, "vllm:generation_tokens_total") == before
    assert metric_value(engine.port, "vllm:num_requests_running") == 1  # the hung request holds its slot
    engine.signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=5) == 0


def test_fault_503_after_delay(start_engine):
    engine = start_engine("--fault", "503", "--fault-after", "1")
    wait_until(lambda: request(engine.port, "GET", "/health")[0] == 503, timeout=10)
    assert engine.proc.poll() is None


def test_fault_die_exits_1(start_engine):
    engine = start_engine("--fault", "die", "--fault-after", "0.5", ready=False)
    assert engine.proc.wait(timeout=10) == 1


def test_sigterm_exits_0_during_stream(start_engine):
    engine = start_engine("--tokens-per-second", "2")
    conn, resp = open_stream(engine.port, "/v1/completions", {"prompt": "x", "max_tokens": 100})
    try:
        next(read_events(resp))
        t0 = time.monotonic()
        engine.signal(signal.SIGTERM)
        assert engine.proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 3
    finally:
        conn.close()


def test_sigterm_while_loading_exits_0(start_engine):
    engine = start_engine("--startup-delay", "30", ready=False)
    wait_until(lambda: b"loading" in engine.log.read_bytes(), timeout=10)  # signal handlers are in place
    engine.signal(signal.SIGTERM)
    assert engine.proc.wait(timeout=5) == 0
