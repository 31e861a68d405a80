"""The per-instance health state machine, driven directly (no processes)."""

from __future__ import annotations

import time

from mipart.health.machine import InstanceHealth
from mipart.health.queue import queue_depth
from mipart.profile.schema import HealthSpec

SPEC = HealthSpec(
    interval=2.0,
    timeout=1.0,
    unhealthy_after=3,
    startup_timeout=60.0,
    restart_backoff=1.0,
    restart_backoff_max=5.0,
    max_restarts=4,
)


def test_starting_failures_are_not_failures_and_first_200_joins():
    h = InstanceHealth(0)
    for _ in range(10):
        assert h.record(False, "connection refused", SPEC) is False
    assert h.state == "starting"
    assert h.record(True, "", SPEC) is True  # joined nginx
    assert h.state == "ready" and h.in_rotation


def test_ready_degrades_then_leaves_after_unhealthy_after_failures():
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    assert h.record(False, "timeout", SPEC) is False and h.state == "degraded" and h.in_rotation
    assert h.record(False, "timeout", SPEC) is False and h.state == "degraded"
    assert h.record(False, "timeout", SPEC) is True and h.state == "unhealthy" and not h.in_rotation
    assert h.last_error == "timeout"


def test_one_failure_then_success_recovers_without_leaving():
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    h.record(False, "timeout", SPEC)
    assert h.record(True, "", SPEC) is False and h.state == "ready" and h.failures == 0


def test_degraded_instances_are_reprobed_faster():
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    assert h.probe_interval(SPEC) == 2.0
    h.record(False, "timeout", SPEC)
    assert h.probe_interval(SPEC) == 1.0


def test_restarts_back_off_exponentially_then_give_up():
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    now, delays = time.monotonic(), []
    assert h.unit_gone("unit failed/failed", now) is True
    while True:
        assert h.needs_restart(now, SPEC)
        delay = h.begin_restart(now, SPEC)
        if delay is None:
            break
        delays.append(delay)
        assert not h.needs_restart(now, SPEC)  # restarting: no second restart at once
        assert h.unit_gone("unit failed/failed", now) is False  # just restarted: give it its chance
        now = h.next_restart
        h.unit_gone("unit failed/failed", now)
    assert delays == [1.0, 2.0, 4.0, 5.0]  # capped at restart_backoff_max
    assert h.state == "failed" and "gave up after 4 restarts" in h.last_error
    assert not h.needs_restart(now + 1000, SPEC)  # never again by itself


def test_becoming_ready_resets_the_backoff():
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    h.unit_gone("killed", time.monotonic())
    h.begin_restart(time.monotonic(), SPEC)
    h.record(True, "", SPEC)
    assert h.state == "ready" and h.restart_attempts == 0 and h.restarts_total == 1


def test_startup_timeout_triggers_a_restart():
    h = InstanceHealth(0)
    assert not h.needs_restart(h.started_at + 59, SPEC)
    assert h.needs_restart(h.started_at + 61, SPEC)
    assert "startup_timeout" in h.last_error


def test_queue_depth_marks_degraded_but_keeps_serving():
    text = '# HELP x\nvllm:num_requests_waiting{model_name="a"} 7.0\nvllm:num_requests_waiting{model_name="b"} 5.0\nvllm:num_requests_running{model_name="a"} 3.0\n'
    assert queue_depth(text) == 12.0
    assert queue_depth("vllm:num_requests_running 1\n") is None
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    assert h.record(True, "12 requests waiting > health.queue_depth_limit 10", SPEC) is False
    assert h.state == "degraded" and h.in_rotation
    assert h.record(True, "", SPEC) is False and h.state == "ready"


def test_a_draining_instance_is_left_to_its_planned_restart():
    """Its old server stopping is expected: no second, crash-style restart (it made duplicates)."""
    h = InstanceHealth(0)
    h.record(True, "", SPEC)
    assert h.drain() is True and not h.in_rotation
    now = time.monotonic()
    assert h.unit_gone("unit not running", now) is False
    assert h.state == "draining" and not h.needs_restart(now + 1000, SPEC)
    assert not h.due(now + 1000, SPEC)  # not probed: the old server must not rejoin
