"""The status API's host for the tests of it and of `mipart status`: a simulated 8 x MI300X host
(DPX/NPS2: 16 instances), a real mipart Agent filled in by hand, and its API served in a thread."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

from conftest import create_sim

PROFILE = """\
version: 1
gpus: {{compute: DPX, memory: NPS2}}
services:
  chat:
    model: test/fake-llm
    listen: "127.0.0.1:{listen}"
    command: ["{python}", "-m", "mipart.sim.engine"]
instances: {{user: root}}
api: {{listen: "{api}"}}
"""


# mipart's numbers on an 8 x MI300X host in DPX: 8 x GPU + partition (gpu.modes.logical_number).
DPX_NUMBERS = [8 * gpu + partition for gpu in range(8) for partition in range(2)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DummyRunner:
    """What the agent asks of systemd, answered from a dict."""

    def __init__(self):
        from mipart.values import UnitState

        self.states = {n: UnitState("active", "running", 0) for n in DPX_NUMBERS}
        self.nginx = {"back": True, "front": True}  # by layer

    def list_instances(self):
        return dict(self.states)

    def nginx_running(self, files) -> bool:
        return self.nginx[files.layer]


class QuietLog:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class SimApiHost:
    """A simulated host, a profile, and an Agent filled in by hand (no loop, no processes)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        sim = create_sim(tmp, model="mi300x", gpus=8, compute="DPX", memory="NPS2")
        self.root, self.run_dir, self.serving_dir, self.env = sim.root, sim.run_dir, sim.serving_dir, sim.env
        self.run_dir.mkdir()
        self.api_port = free_port()
        self.api = f"127.0.0.1:{self.api_port}"
        self.profile = tmp / "profile.yaml"
        self.profile.write_text(PROFILE.format(listen=free_port(), python=sys.executable, api=self.api))
        self.agent = self._agent()

    def _agent(self):
        from mipart.daemon.agent import Agent
        from mipart.gpu import discover
        from mipart.health.machine import InstanceHealth
        from mipart.serving.instances import plan_instances

        agent = Agent(str(self.profile), DummyRunner(), self.run_dir, self.root, QuietLog())
        assert agent.load_profile()
        agent.instances.reset(
            {
                s.number: s
                for s in plan_instances(agent.profile, discover(self.root).logical, self.serving_dir / "sockets")
            }
        )
        now = time.time()
        h = agent.instances.health
        h.update({n: InstanceHealth(n, state="ready", since=now - 300) for n in agent.specs})
        h[1] = InstanceHealth(
            1, state="degraded", since=now - 2, failures=1, last_error="/health did not answer within 1s"
        )
        h[8] = InstanceHealth(8, state="starting", since=now - 5)
        h[9] = InstanceHealth(
            9, state="restarting", since=now - 20, restart_attempts=2, restarts_total=2, last_error="unit failed/failed"
        )
        h[16] = InstanceHealth(
            16,
            state="failed",
            since=now - 60,
            restarts_total=5,
            last_error="unit failed/failed; gave up after 5 restarts",
        )
        h[17] = InstanceHealth(17, state="unhealthy", since=now - 30, failures=3, last_error="/health answered 503")
        agent.status.last_reconcile = now - 10
        return agent


class FakeInstances:
    """Each instance's socket answering GET /metrics from `bodies` (bytes; None: never answers), in a thread."""

    METRICS = b'vllm:num_requests_running{model_name="test/fake-llm"} 0.0\n'

    def __init__(self, sockets: list[str]):
        self.bodies: dict[str, bytes | None] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        for path in sockets:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            asyncio.run_coroutine_threadsafe(asyncio.start_unix_server(self._answer, path), self.loop).result(10)

    async def _answer(self, reader, writer) -> None:
        await reader.readuntil(b"\r\n\r\n")
        path = writer.get_extra_info("sockname")
        body = self.bodies.get(path, self.METRICS)
        if body is None:
            await asyncio.sleep(3600)
        head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
        writer.write(head.encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass  # the reader stopped at its bound
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class LiveApi:
    """start_api() on an event loop in a thread, as the agent runs it; stopped by close()."""

    def __init__(self, agent, listen: str):
        from mipart.api.server import start_api

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.runner = asyncio.run_coroutine_threadsafe(start_api(agent, listen), self.loop).result(10)
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
