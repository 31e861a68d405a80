"""A wedged engine under load is caught by default, and a slow but working one is not: the progress
probe (health/progress.py) with the real agent, real nginx and fake engines, health.stall_after at
its default. Load is perf/faults.py's client (streaming completions on kept-alive connections, one
record per request), bounded in clients and seconds.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from datetime import datetime

import pytest
from conftest import REPO
from serving import ServingHost

from mipart.health.progress import idle_read_every
from mipart.profile.schema import HealthSpec

sys.path.insert(0, str(REPO / "perf"))
import faults as harness  # noqa: E402  (the fault harness: perf/faults.py)

pytestmark = pytest.mark.nginx
STALL_AFTER = HealthSpec().stall_after  # the default: the profiles below do not set it
INTERVAL, TIMEOUT = 0.5, 0.3  # ServingHost's health interval and timeout


def serving(tmp_path, **fields) -> ServingHost:
    return ServingHost(
        tmp_path,
        instances=4,
        partitions='"0-1,8-9"',  # GPUs 0-1 in DPX
        interval="500ms",
        timeout="300ms",
        **fields,
    )


def load(host, tmp_path, seconds: float, clients: int = 16, max_tokens: int = 20):
    out = tmp_path / "load.json"
    return harness.start_load(host.listen, out, clients=clients, seconds=seconds, think=0.1, max_tokens=max_tokens), out


def left_rotation(log: str, number: int) -> float | None:
    """Wall clock of the agent's first `instance.unhealthy` for NUMBER."""
    found = re.search(rf"timestamp='([^']+)' level='\w+' event='instance.unhealthy' unit='mipart-vllm@{number}'", log)
    return datetime.fromisoformat(found.group(1).replace("Z", "+00:00")).timestamp() if found else None


def test_a_wedged_engine_under_load_leaves_rotation_within_the_bound(tmp_path):
    host = serving(tmp_path)
    try:
        host.start_agent()
        host.wait_ready()
        # Under load for longer than an idle instance's reads are apart before the wedge: the bound
        # for traffic (one that catches the first requests after an idle spell is stall_after / 4 longer).
        lead = idle_read_every(HealthSpec()) + 2
        seconds = lead + STALL_AFTER + 15
        client, out = load(host, tmp_path, seconds)
        time.sleep(lead)
        victim = host.instance_pids()[8]
        wedged_at = time.time()
        os.kill(victim, signal.SIGWINCH)  # /health and /metrics answer 200; no token is made again
        records = harness.finish_load(client, out, seconds)
        out_at = left_rotation(host.log_text(), 8)
        assert out_at is not None, host.log_tail()
        # stall_after from the last read that saw a token, the read after it, its timeout, nginx -t and reload
        bound = STALL_AFTER + 2 * INTERVAL + TIMEOUT + 1.0
        assert out_at - wedged_at <= bound, f"out of rotation {out_at - wedged_at:.2f}s after the wedge"
        reason = next(line for line in host.log_text().splitlines() if "event='instance.unhealthy'" in line)
        assert "requests running and no token generated or prefilled" in reason, reason
        after = [r for r in records if r.start > out_at + 1.0]  # the reload has taken by then
        assert len(after) > 100 and all(r.outcome == harness.OK for r in after), {r.outcome for r in after}
        host.wait_for(lambda: host.instance_pids().get(8) not in (None, victim), timeout=20, what="a new instance 8")
    finally:
        host.close()


def test_a_slow_prefill_is_no_wedge(tmp_path):
    """Every request's first token comes 20 s after it is admitted (a long prompt's prefill), then it
    streams: the counters stand still under load for 20 s at a time, and no instance leaves rotation."""
    host = serving(tmp_path, args='["--first-token-delay", "20"]')
    try:
        host.start_agent()
        host.wait_ready(timeout=60)  # wait_ready's one request through nginx takes the 20 s itself
        seconds = 45.0
        client, out = load(host, tmp_path, seconds, clients=8, max_tokens=5)
        records = harness.finish_load(client, out, seconds + 25)
        assert len(records) >= 8 and all(r.outcome == harness.OK for r in records), {r.outcome for r in records}
        assert "event='instance.unhealthy'" not in host.log_text()
        assert host.ready_count() == 4
    finally:
        host.close()
