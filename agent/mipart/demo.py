"""`make demo`: mipart's whole job on a simulated 8 x MI300X host, with no GPU and no systemd.

Repartitions the simulated host SPX/NPS1 -> DPX/NPS2, starts the agent with fake
engines under the local process runner and a real nginx, sends a streamed request
through the load balancer, and shows live status until Ctrl-C (or, without a
terminal, until serving is proven).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mipart.sim.ports import port_free

LISTEN_PORT = int(os.environ.get("MIPART_DEMO_PORT", "8040"))
BASE_PORT = int(os.environ.get("MIPART_DEMO_BASE_PORT", "18081"))
READY_TIMEOUT = 120.0

PROFILE = """\
version: 1
gpus:
  compute: DPX
  memory: NPS2
services:
  chat:
    model: mipart-demo/fake-llm
    partitions: all
    listen: "127.0.0.1:{listen}"
    runtime: native
    command: ["{python}", "-m", "mipart.sim.engine", "--startup-delay", "3", "--tokens-per-second", "20"]
    args: ["--max-num-seqs", "64"]
instances: {{base_port: {base}, user: root}}
health: {{interval: 1s, timeout: 500ms, unhealthy_after: 2}}
api: {{listen: "127.0.0.1:{api}"}}
"""


def say(text: str) -> None:
    print(text, flush=True)


def mipart(*args: str, env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "mipart", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"demo: `mipart {' '.join(args)}` failed:\n{done.stderr.strip()}")
    return done.stdout.rstrip()


def health(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=0.5)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def stream_once(port: int) -> tuple[str, list[str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"model": "mipart-demo/fake-llm", "prompt": "hello", "max_tokens": 8, "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    backend = response.getheader("X-Fake-Engine", "?")
    tokens = []
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: ") and line != "data: [DONE]":
            tokens.append(json.loads(line[6:])["choices"][0]["text"])
            print(f"\r  streamed: {''.join(tokens)}", end="", flush=True)
    print()
    return backend, tokens


def main() -> None:
    api_port = BASE_PORT - 2
    busy = [p for p in (LISTEN_PORT, api_port, *range(BASE_PORT, BASE_PORT + 16)) if not port_free(p)]
    if busy:
        raise SystemExit(f"demo: port(s) {busy} already in use; set MIPART_DEMO_PORT / MIPART_DEMO_BASE_PORT to free ones")
    work = Path(tempfile.mkdtemp(prefix="mipart-demo-"))
    sim, run = work / "sys", work / "run"
    env = {
        **os.environ,
        "MIPART_SYSFS_ROOT": str(sim),
        "MIPART_RUN_DIR": str(run),
        "MIPART_RELOAD_CMD": f"{sys.executable} -m mipart sim reload {sim}",
    }
    profile = work / "profile.yaml"
    profile.write_text(PROFILE.format(listen=LISTEN_PORT, base=BASE_PORT, api=api_port, python=sys.executable))
    say(f"== simulated host: 8 x MI300X in SPX/NPS1 under {sim}")
    mipart("sim", "create", str(sim), "--model", "mi300x", "--gpus", "8", "--compute", "SPX", "--memory", "NPS1", env=env)
    say(f"== profile {profile}:\n{profile.read_text()}")
    say("== mipart validate\n" + mipart("validate", str(profile), env=env))
    say("== mipart partition plan\n" + mipart("partition", "plan", "--profile", str(profile), env=env))
    say("== mipart partition apply\n" + mipart("partition", "apply", "--profile", str(profile), env=env))
    say("== mipart partition apply (again: nothing to do)\n" + mipart("partition", "apply", "--profile", str(profile), env=env))
    say("== mipart plan (instances and upstreams)\n" + mipart("plan", "--profile", str(profile), env=env))
    agent_log = open(work / "agent.log", "wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "mipart", "agent", "--profile", str(profile), "--runner", "process", "--stop-on-exit"],
        env=env, stdout=agent_log, stderr=subprocess.STDOUT,
    )
    say(f"== agent started (pid {agent.pid}, log {work / 'agent.log'}); load balancer: http://127.0.0.1:{LISTEN_PORT}/v1")
    interactive = sys.stdin.isatty()
    try:
        started = time.monotonic()
        ready = 0
        while ready < 16:
            if agent.poll() is not None:
                raise SystemExit(f"demo: the agent exited ({agent.returncode}); see {work / 'agent.log'}")
            if time.monotonic() - started > READY_TIMEOUT:
                raise SystemExit(f"demo: instances not ready after {READY_TIMEOUT:g}s; see {work / 'agent.log'}")
            ready = sum(health(BASE_PORT + n) for n in range(16))
            print(f"\r  {ready}/16 instances ready ({time.monotonic() - started:4.1f}s)", end="", flush=True)
            time.sleep(0.5)
        print()
        time.sleep(0.5)
        say(f"== a streamed completion through nginx on :{LISTEN_PORT}")
        backend, tokens = stream_once(LISTEN_PORT)
        say(f"  {len(tokens)} tokens from backend {backend}")
        seen = {stream_once_quiet(LISTEN_PORT) for _ in range(32)}
        say(f"== 32 more requests reached {len(seen)} distinct instances")
        if interactive:
            say("== serving; Ctrl-C stops the agent, the instances and nginx")
            while agent.poll() is None:
                ready = sum(health(BASE_PORT + n) for n in range(16))
                print(f"\r  {time.strftime('%H:%M:%S')} {ready}/16 instances ready, lb http://127.0.0.1:{LISTEN_PORT}", end="", flush=True)
                time.sleep(1)
    except KeyboardInterrupt:
        print()
    finally:
        say("== stopping")
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        agent_log.close()
    say("== done")


def stream_once_quiet(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "hi", "max_tokens": 1}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.getheader("X-Fake-Engine", "?")


if __name__ == "__main__":
    main()
