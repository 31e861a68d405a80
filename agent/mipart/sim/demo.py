"""`make demo`: mipart's whole job on a simulated 8 x MI300X host, with no GPU and no systemd.

Repartitions the simulated host SPX/NPS1 -> DPX/NPS2, starts the agent with fake engines
under the local process runner and a real nginx (the host of mipart.sim.host), sends a
streamed request through the load balancer, then serves until Ctrl-C or SIGTERM, with or
without a terminal. Stopping it stops the agent, the instances and nginx, by PID.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mipart.sim.fake_profile import FakeEngineProfile, Ports
from mipart.sim.host import HostError, SimulatedHost
from mipart.sim.ports import port_free

LISTEN_PORT = int(os.environ.get("MIPART_DEMO_PORT", "8040"))
API_PORT = int(os.environ.get("MIPART_DEMO_API_PORT", "18079"))
INSTANCES = 16
READY_TIMEOUT = 120.0
MODEL = "mipart-demo/fake-llm"


class Stop(Exception):
    """A signal asked the demo to stop."""


def _stop(signum, frame) -> None:
    raise Stop(signal.Signals(signum).name)


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    ports = Ports(api=API_PORT, listen=LISTEN_PORT)
    busy = [p for p in ports.all() if not port_free(p)]
    if busy:
        raise SystemExit(
            f"demo: port(s) {busy} already in use; set MIPART_DEMO_PORT / MIPART_DEMO_API_PORT to free ones"
        )
    profile = FakeEngineProfile(
        ports,
        compute="DPX",
        memory="NPS2",
        model=MODEL,
        partitions="all",
        delay=3,
        tps=20,
        args='["--max-num-seqs", "64"]',
        interval="1s",
        timeout="500ms",
        unhealthy_after=2,
        restart_backoff="1s",
    )
    work = Path(tempfile.mkdtemp(prefix="mipart-demo-"))
    say(f"== simulated host: 8 x MI300X in SPX/NPS1 under {work / 'sys'}")
    try:
        host = SimulatedHost(work, profile, compute="SPX", memory="NPS1", expected=INSTANCES)
    except HostError as exc:
        raise SystemExit(f"demo: {exc}") from None
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        partition(host)
        serve(host)
    except Stop:
        print()
    except HostError as exc:
        raise SystemExit(f"demo: {exc}") from None
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("== stopping the agent, the instances and nginx")
        host.stop_agent()
        host.close()
        say(f"== done (logs kept in {work})")


def partition(host: SimulatedHost) -> None:
    say(f"== profile {host.profile}:\n{host.profile.read_text()}")
    say("== mipart validate\n" + host.mipart("validate", str(host.profile)))
    say("== mipart partition plan\n" + host.mipart("partition", "plan", "--profile", str(host.profile)))
    say("== mipart partition apply\n" + host.mipart("partition", "apply", "--profile", str(host.profile)))
    say(
        "== mipart partition apply (again: nothing to do)\n"
        + host.mipart("partition", "apply", "--profile", str(host.profile))
    )
    say("== mipart plan (instances and upstreams)\n" + host.mipart("plan", "--profile", str(host.profile)))


def serve(host: SimulatedHost) -> None:
    agent = host.start_agent(stop_on_exit=True)
    say(f"== agent started (pid {agent.pid}, log {host.log}); waiting for {INSTANCES} instances to be ready")
    host.wait_ready(INSTANCES, READY_TIMEOUT, progress=ready_printer(host))
    say(f"== a streamed completion through nginx on :{host.listen}")
    response = host.request(prompt="hello", max_tokens=8, stream=True)
    tokens = []
    print("  streamed:", end="", flush=True)
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: {"):
            tokens.append(json.loads(line[6:])["choices"][0]["text"])
            print(tokens[-1], end="", flush=True)
    print()
    say(f"  {len(tokens)} tokens from backend {response.getheader('X-Fake-Engine', '?')}")
    seen = {host.backend_of_one_request()[1] for _ in range(32)}
    say(f"== 32 more requests reached {len(seen)} distinct instances")
    lb, api = f"http://127.0.0.1:{host.listen}", f"http://127.0.0.1:{host.api_port}"
    say(
        "== serving until Ctrl-C (or SIGTERM). Try:\n"
        f"  curl {lb}/v1/models\n"
        f'  curl {lb}/v1/completions -H \'Content-Type: application/json\' -d \'{{"prompt": "hello", "max_tokens": '
        "8}'\n"
        f"  curl {api}/v1/status\n"
        f"  .venv/bin/mipart bench run --profile {host.profile} --no-progress   # the load tool installs on first use"
    )
    show = ready_printer(host)
    while True:
        if agent.poll() is not None:
            raise HostError(f"the agent exited ({agent.returncode}); see {host.log}")
        show()
        time.sleep(1)


def ready_printer(host: SimulatedHost) -> Callable[[], None]:
    """A progress callback that reads the status and prints a line when ready/planned changes; a live
    repartition (a `gpus:` edit, then SIGHUP) changes what is planned, so both come from the status."""
    started, last = time.monotonic(), [""]

    def show() -> None:
        counts = host.api_counts()
        line = "status API not answering" if counts is None else f"{counts.in_rotation}/{counts.total} instances ready"
        if line != last[0]:
            last[0] = line
            say(f"  {time.strftime('%H:%M:%S')} {line} (+{time.monotonic() - started:.1f}s)")

    return show


if __name__ == "__main__":
    main()
