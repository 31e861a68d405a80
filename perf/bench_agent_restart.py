"""Agent restart with an unchanged profile: instances untouched, READY=1 quickly, nginx serving throughout.

For each size (16 instances on a DPX/NPS2 host, 64 on CPX/NPS4; simulated 8 x MI300X), all
instances ready behind the real nginx, the bench restarts `mipart agent --runner process`
R times (SIGTERM, wait for its exit, start it again) and prints per restart:

  restarts  instances whose PID changed or vanished (compared before/after; goal 0)
  ready     agent start (just before the exec) -> READY=1 on NOTIFY_SOCKET, a unix datagram
            socket the bench binds; only datagrams whose SO_PASSCRED sender is the new agent count
  stop      SIGTERM -> agent exit

Meanwhile two bounded client loops run through nginx for the whole series: short completions
every ~20 ms, and back-to-back 1 s streams (checked to end with [DONE]); failures are counted.
It also reports whether nginx's master PID and nginx.conf stayed the same (no reload needed).

Goal: 0 instance restarts; READY <= 2 s; no failed request.
Run: .venv/bin/python perf/bench_agent_restart.py [--sizes 16,64] [--restarts 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import struct
import sys
import threading
import time
from pathlib import Path

from host import MODEL, BenchHost, machine, request, workdir

READY_TIMEOUT = 60.0
MAX_CLIENT_SECONDS = 900.0


class NotifySocket:
    """A NOTIFY_SOCKET like systemd's: datagrams with the sender's credentials."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(4096)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait_for(self, pid: int, message: str, timeout: float) -> float | None:
        """monotonic time a datagram from pid containing the line `message` arrived, None on timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                return None
            arrived = time.monotonic()
            sender = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("iII", payload[:12])[0]
            if sender == pid and message in data.decode(errors="replace").splitlines():
                return arrived
        return None

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


class Clients:
    """Bounded client loops through nginx, counting what failed."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.counts = {"short_ok": 0, "short_failed": 0, "stream_ok": 0, "stream_failed": 0}
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._short, daemon=True),
            threading.Thread(target=self._streams, daemon=True),
        ]

    def __enter__(self):
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _count(self, key: str, failure: str = "") -> None:
        with self.lock:
            self.counts[key] += 1
            if failure and len(self.failures) < 20:
                self.failures.append(failure)

    def _running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() - self.started < MAX_CLIENT_SECONDS

    def _short(self) -> None:
        while self._running():
            status, detail = request(self.port, max_tokens=1, timeout=5)
            if status == 200:
                self._count("short_ok")
            else:
                self._count("short_failed", f"short: {status} {detail}")
            time.sleep(0.02)

    def _streams(self) -> None:
        while self._running():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                body = json.dumps(
                    {"model": MODEL, "prompt": "hi", "max_tokens": 1000, "stream": True}
                )  # 1 s at 1000 tokens/s
                conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                text = response.read().decode(errors="replace")
                conn.close()
                if response.status == 200 and "data: [DONE]" in text and '"error"' not in text:
                    self._count("stream_ok")
                else:
                    self._count("stream_failed", f"stream: {response.status} {text[-200:]!r}")
            except OSError as exc:
                self._count("stream_failed", f"stream: {exc.__class__.__name__} {exc}")


def run_size(size: int, restarts: int) -> dict:
    compute, memory = ("DPX", "NPS2") if size == 16 else ("CPX", "NPS4")
    partitions = "all" if size in (16, 64) else f"0-{size - 1}"
    with workdir() as tmp:
        host = BenchHost(tmp, compute=compute, memory=memory, partitions=partitions, delay=1.0)
        notify = NotifySocket(tmp / "notify.sock")
        env = {"NOTIFY_SOCKET": str(notify.path)}
        try:
            agent = host.start_agent(env)
            if notify.wait_for(agent.pid, "READY=1", READY_TIMEOUT) is None:
                raise SystemExit(f"first agent never sent READY=1\n{host.log_tail()}")
            host.wait_ready(size, timeout=300)
            time.sleep(1.0)
            pids, master, conf = host.instance_pids(), host.nginx_master(), host.nginx_conf()
            if len(pids) != size:
                raise SystemExit(f"{len(pids)} instance processes, wanted {size}")
            print(f"\n{size} instances ({compute}/{memory}) ready; restarting the agent {restarts} times")
            print(f"{'#':>3} {'stop':>8} {'start->READY=1':>15} {'instance restarts':>18} {'conf after':>11}")
            rows = []
            with Clients(host.listen) as clients:
                time.sleep(1.0)
                for index in range(restarts):
                    before = host.instance_pids()
                    stopping = time.monotonic()
                    host.stop_agent()
                    stopped = time.monotonic() - stopping
                    notify.drain()
                    started = time.monotonic()
                    agent = host.start_agent(env)
                    ready_at = notify.wait_for(agent.pid, "READY=1", READY_TIMEOUT)
                    if ready_at is None:
                        raise SystemExit(f"agent sent no READY=1 within {READY_TIMEOUT}s\n{host.log_tail()}")
                    time.sleep(1.5)  # a few loop iterations: would it restart anything once running?
                    after = host.instance_pids()
                    changed = sum(1 for n, pid in before.items() if after.get(n) != pid)
                    ready_line = host.ready_line()
                    rows.append((stopped, ready_at - started, changed))
                    print(
                        f"{index + 1:>3} {stopped:>6.2f} s {ready_at - started:>13.2f} s {changed:>18} {'{}/{} ready'.format(*ready_line):>11}",
                        flush=True,
                    )
                time.sleep(1.0)
            final = host.instance_pids()
            result = {
                "size": size,
                "rows": rows,
                "counts": dict(clients.counts),
                "failures": list(clients.failures),
                "total_restarts": sum(1 for n, pid in pids.items() if final.get(n) != pid),
                "nginx_same_master": host.nginx_master() == master,
                "conf_same": host.nginx_conf() == conf,
            }
            ready = [r[1] for r in rows]
            c = result["counts"]
            print(
                f"READY=1 median {statistics.median(ready):.2f} s, max {max(ready):.2f} s (goal <= 2 s); "
                f"instance restarts over all {restarts} agent restarts: {result['total_restarts']} (goal 0)"
            )
            print(
                f"through nginx meanwhile: short {c['short_ok']} ok / {c['short_failed']} failed, "
                f"1 s streams {c['stream_ok']} ok / {c['stream_failed']} failed; "
                f"nginx master unchanged: {result['nginx_same_master']}, nginx.conf unchanged: {result['conf_same']}"
            )
            for failure in result["failures"][:5]:
                print(f"  failed: {failure}")
            return result
        finally:
            notify.close()
            host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", default="16,64", help="comma-separated instance counts (16 on DPX/NPS2, else CPX/NPS4)"
    )
    parser.add_argument("--restarts", type=int, default=5)
    args = parser.parse_args()
    print(machine())
    for size in (int(x) for x in args.sizes.split(",")):
        run_size(size, args.restarts)


if __name__ == "__main__":
    sys.exit(main())
