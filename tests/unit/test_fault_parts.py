"""Issue 13's parts apart from processes: retries and backoff, confirming probes, the nginx
config's retry rules and generation, nginx's upstream error lines, and how problems reach
the status line, the API and the metrics. No nginx, no network."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from eventlog import Log
from specs import SPECS

from mipart.api import views
from mipart.api.contract import to_json_text
from mipart.api.host import HostSnapshot
from mipart.api.metrics import prometheus_metrics
from mipart.daemon import probing, routing, specfiles
from mipart.daemon.nginx_layer import NginxLayer
from mipart.daemon.notify import status_line
from mipart.daemon.retry import BACKOFF_MAX, Backoff
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus, LayerState
from mipart.health.machine import InstanceHealth
from mipart.health.probe import ProbeResult
from mipart.nginx.conf import generation_of, render_nginx
from mipart.nginx.files import NginxFiles
from mipart.profile import check_profile
from mipart.profile.schema import HealthSpec
from mipart.prometheus import metric_sum
from mipart.runners.unit_state import SystemdUnreadable


def test_backoff_doubles_up_to_its_cap_and_resets():
    b = Backoff()
    delays = [b.failed("x", 100.0) for _ in range(10)]
    assert delays[:3] == [0.5, 1.0, 2.0] and delays[-1] == BACKOFF_MAX
    assert not b.due(100.0 + BACKOFF_MAX - 1) and b.due(100.0 + BACKOFF_MAX)
    b.succeeded()
    assert b.due(0.0) and b.error == ""


def test_a_failure_is_told_once_per_error_with_its_next_try():
    b = Backoff()
    assert b.failure("disk full", 0.0, "keeps serving") == "keeps serving; retries with backoff (next in 0.5s)"
    assert b.failure("disk full", 1.0, "keeps serving") is None and b.failures == 2
    assert b.failure("gone", 2.0, "keeps serving") == "keeps serving; retries with backoff (next in 2s)"


def test_spec_files_report_a_directory_in_the_way_once_and_clear_when_it_is_gone(tmp_path):
    status, log = AgentStatus(), Log()
    files = specfiles.SpecFiles(tmp_path, tmp_path / "serving", log, status)
    (tmp_path / "instances/2.json").mkdir(parents=True)
    assert files.write(SPECS) is False
    assert "2.json" in status.spec_files_error and status.files_error == status.spec_files_error
    assert (tmp_path / "instances/3.json").is_file()  # the others are still written
    files.write(SPECS)
    assert [e[1] for e in log.events] == ["files.write_failed"]  # the same error is not logged again
    (tmp_path / "instances/2.json").rmdir()
    files.retry.next_try = 0.0
    files.restore(SPECS)
    assert status.spec_files_error == "" and (tmp_path / "instances/2.json").is_file()
    assert [e[1] for e in log.events] == ["files.write_failed", "files.ok"]


def test_instances_replaced_by_a_file_is_a_problem_not_an_exception(tmp_path):
    (tmp_path / "instances").write_text("in the way")
    assert "instances" in specfiles.write_specs(tmp_path, SPECS)
    assert "instances" in specfiles.restore_missing(tmp_path, SPECS, Log())
    specfiles.remove_stale_specs(tmp_path, {})


@pytest.mark.parametrize(
    "interval, timeout, unhealthy_after, spacing",
    [
        (1.0, 1.0, 2, 0.1),  # the issue's: confirmations overlap the first probe
        (2.0, 1.0, 3, 1.0),  # the defaults: room enough to confirm one after the other
        (1.0, 1.0, 1, 1.0),  # nothing to confirm
        (0.5, 0.3, 2, 0.3),
    ],
)
def test_confirming_probes_are_spaced_to_keep_the_bound(interval, timeout, unhealthy_after, spacing):
    spec = HealthSpec(interval=interval, timeout=timeout, unhealthy_after=unhealthy_after)
    assert probing.confirm_spacing(spec) == pytest.approx(spacing)
    worst = (
        interval + 0.1 + timeout + (unhealthy_after - 1) * probing.confirm_spacing(spec) + 0.2
    )  # late start, harvest, reload
    assert worst < interval * unhealthy_after + 0.5 or unhealthy_after == 1


def test_a_probe_left_unanswered_gets_an_overlapping_confirmation_and_results_count_in_start_order(monkeypatch):
    spec = HealthSpec(interval=1.0, timeout=1.0, unhealthy_after=2)
    started: list[float] = []
    loop_time = []

    async def hung(session, instance, health):
        started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(health.timeout if len(started) == 1 else health.timeout / 4)  # the confirmation ends first
        return ProbeResult(False, "/health did not answer within 1s")

    monkeypatch.setattr(probing, "probe", hung)

    async def run() -> list[tuple[int, str]]:
        prober, health, log, seen = probing.Prober(), {0: InstanceHealth(0, state="ready")}, Log(), []
        specs = {0: SPECS[0]}
        for _ in range(40):
            due, results = await prober.round(None, health, specs, spec)
            probing.record_results(due, results, spec, specs, log)
            seen += [(len(started), health[0].state)] if due else []
            loop_time.append(asyncio.get_running_loop().time())
            if health[0].state == "unhealthy":
                return seen
            await asyncio.sleep(0.05)
        return seen

    seen = asyncio.run(run())
    assert len(started) == 2 and started[1] - started[0] < spec.timeout  # the second began while the first waited
    assert seen[-1] == (2, "unhealthy")


def test_the_loop_sleeps_until_a_confirmation_is_due_and_a_failure_wakes_it(monkeypatch):
    """The hang bound must not be spent waiting for ticks: the loop sleeps until the next
    confirming probe and a failed probe wakes it; a passing one does not. Scheduled probes keep
    the tick, so idle instances in many phases do not multiply the loop's wake-ups."""
    answers = {0: ProbeResult(True), 1: ProbeResult(False, "/health answered 503")}

    async def answer(session, instance, health):
        await asyncio.sleep(0.05)
        return answers[instance.number]

    monkeypatch.setattr(probing, "probe", answer)
    spec = HealthSpec(interval=1.0, timeout=1.0, unhealthy_after=2)
    woken = []

    async def run():
        prober = probing.Prober(lambda: woken.append(asyncio.get_running_loop().time()))
        health = {n: InstanceHealth(n, state="ready", last_probe=time.monotonic() - 0.95) for n in (0, 1)}
        specs = {n: SPECS[n] for n in (0, 1)}
        idle = prober.pause(health, specs, spec, 0.1)  # a scheduled probe due in 0.05 s: the tick is kept
        health[0].last_probe = health[1].last_probe = 0.0
        await prober.round(None, health, specs, spec)  # both due: launched, unanswered
        confirming = prober.pause(health, specs, spec, 0.1)
        soon = prober.next_confirm(health, specs, spec) - min(h.last_probe for h in health.values())
        await asyncio.sleep(0.1)
        return idle, confirming, soon, health

    idle, confirming, soon, health = asyncio.run(run())
    assert idle == 0.1
    assert soon == pytest.approx(probing.confirm_spacing(spec)) and confirming <= probing.confirm_spacing(spec)
    assert len(woken) == 1  # the 503 woke the loop, the 200 did not
    health[0].state = health[1].state = "unhealthy"
    assert probing.Prober().next_confirm(health, {n: SPECS[n] for n in (0, 1)}, spec) == float("inf")


def test_a_result_for_an_instance_that_moved_on_is_dropped(monkeypatch):
    async def ok(session, instance, health):
        return ProbeResult(True)

    monkeypatch.setattr(probing, "probe", ok)

    async def run():
        prober, h = probing.Prober(), InstanceHealth(0, state="ready", last_probe=0.0)
        await prober.round(None, {0: h}, {0: SPECS[0]}, HealthSpec())  # launched
        h.drain()
        await asyncio.sleep(0.01)
        return await prober.round(None, {0: h}, {0: SPECS[0]}, HealthSpec())

    due, results = asyncio.run(run())
    assert due == [] and results == []


def test_nginx_reports_count_as_one_failure_and_bring_a_probe_at_once(monkeypatch):
    asked = []

    async def fine(session, instance, health):
        asked.append(instance.number)
        return ProbeResult(True)

    monkeypatch.setattr(probing, "probe", fine)
    h = InstanceHealth(1, state="ready")
    h.last_probe = 10**9  # not due by the schedule

    async def run():
        prober = probing.Prober()
        got = await prober.round(
            None,
            {1: h},
            {1: SPECS[1]},
            HealthSpec(),
            suspects={SPECS[1].address: "upstream server temporarily disabled"},
        )
        await asyncio.sleep(0.01)
        return got, await prober.round(None, {1: h}, {1: SPECS[1]}, HealthSpec())

    (due, results), (due2, results2) = asyncio.run(run())
    assert due == [h] and results == [ProbeResult(False, "nginx: upstream server temporarily disabled")]
    assert asked == [1] and results2 == [ProbeResult(True)]


PROFILE = check_profile(
    'version: 1\nservices:\n  chat: {model: org/m, listen: "127.0.0.1:8040", partitions: [0, 1]}\nhealth: {interval: 1s}\n'
)


def test_the_config_retries_failures_before_a_byte_and_carries_its_generation():
    conf = render_nginx(PROFILE, tuple(SPECS.values())[:2], frozenset({0, 1}), Path("/run/test/nginx"))
    assert "proxy_next_upstream error timeout http_500 http_502 http_503 non_idempotent;" in conf
    assert "proxy_next_upstream_tries 3;" in conf and "proxy_request_buffering on;" in conf
    assert f"server {SPECS[0].address} max_fails=1 fail_timeout=1s;" in conf
    generation = generation_of(conf)
    assert len(generation) == 12 and conf.splitlines()[1] == f"# generation {generation}"
    assert (
        generation_of(render_nginx(PROFILE, tuple(SPECS.values())[:2], frozenset({0, 1}), Path("/run/test/nginx")))
        == generation
    )
    assert (
        generation_of(render_nginx(PROFILE, tuple(SPECS.values())[:2], frozenset({0}), Path("/run/test/nginx")))
        != generation
    )


# Lines as nginx 1.22 writes them (seen in its upstream error log).
NGINX_LINES = [
    "2026/12/01 08:30:12 [warn] 17301#17301: *1 upstream server temporarily disabled while reading response header from upstream, "
    'client: 127.0.0.1, server: , request: "POST /v1/completions HTTP/1.1", upstream: "http://127.0.0.1:21001/v1/completions", host: "x"',
    "2026/12/01 08:30:13 [error] 17301#17301: *7 connect() failed (111: Connection refused) while connecting to upstream, "
    'client: 127.0.0.1, server: , request: "POST /v1/completions HTTP/1.1", upstream: "http://127.0.0.1:21002/v1/completions", host: "x"',
    "2026/12/01 08:30:14 [notice] 17301#17301: signal process started",
]


def test_upstream_failures_are_read_from_nginx_log_once(tmp_path):
    files = NginxFiles(tmp_path)
    router = routing.Router(
        files, NginxFiles(tmp_path / "front", "front"), runner=None, log=Log(), status=AgentStatus()
    )
    assert router.upstream_failures() == {}
    files.upstream_log.write_text("\n".join(NGINX_LINES) + "\n")
    assert router.upstream_failures() == {
        "127.0.0.1:21001": "upstream server temporarily disabled",
        "127.0.0.1:21002": "connect() failed (111: Connection refused)",
    }
    assert router.upstream_failures() == {}  # read once
    files.upstream_log.write_text(NGINX_LINES[1] + "\n")  # emptied and written anew
    assert list(router.upstream_failures()) == ["127.0.0.1:21002"]


class Unreadable:
    """A runner whose systemd does not answer (a unit state read killed under the agent's restart)."""

    def nginx_running(self, files):
        raise SystemdUnreadable("systemctl show failed: exit status -15")


def test_an_unreadable_nginx_state_is_no_verdict_and_no_step_failure(tmp_path):
    files = NginxFiles(tmp_path)
    files.conf.write_text("# what runs\n")
    log = Log()
    layer = NginxLayer(files, Unreadable(), log, LayerState())
    assert asyncio.run(layer.running()) is None
    assert asyncio.run(layer.needs_update()) is False  # neither gone nor started again on an unknown
    assert log.events == []


def test_stray_workers_stale_config_and_file_errors_reach_status_api_and_metrics():
    def snap(back: dict | None = None, front: dict | None = None, **status):
        layers = {
            name: LayerState(**{"generation": "aaa", "serving": "aaa", **(fields or {})})
            for name, fields in (("nginx", back), ("front", front))
        }
        return AgentSnapshot.of("/p", True, AgentStatus(**layers, **status), SPECS, {})

    def layer_value(text: str, name: str, layer: str) -> float:
        [line] = [line for line in text.splitlines() if line.startswith(f'{name}{{layer="{layer}"}} ')]
        return float(line.rsplit(" ", 1)[1])

    assert status_line(snap()) == "0/4 instances ready"
    assert (
        status_line(snap({"strays": 2}))
        == "0/4 instances ready; 2 nginx workers serve a frozen config without their master"
    )
    stale = snap({"serving": "old", "overdue": True})
    assert status_line(stale) == "0/4 instances ready; nginx still serves config generation old, not aaa"
    assert status_line(snap(spec_files_error="cannot write /run/x: Not a directory")).endswith(
        "Not a directory (retrying)"
    )
    # The front layer's own troubles reach STATUS= too, named as the front's.
    assert (
        status_line(snap(front={"strays": 1}))
        == "0/4 instances ready; nginx front: 1 nginx workers serve a frozen config without their master"
    )
    assert status_line(snap(front={"error": "bind() failed"})) == (
        "0/4 instances ready; nginx front config rejected: bind() failed"
    )
    body = json.loads(to_json_text(views.status(stale, HostSnapshot(nginx_running=True, front_running=False))))
    assert (
        body["nginx"]["current"] is False and body["nginx"]["serving_generation"] == "old" and body["nginx"]["problem"]
    )
    assert body["nginx"]["front"] == {
        "config_valid": True,
        "error": "",
        "running": False,
        "generation": "aaa",
        "serving_generation": "aaa",
        "current": True,
        "stray_workers": 0,
        "problem": "",
    }
    strays = snap({"strays": 3, "files_error": "cannot write /run/mipart/nginx: Not a directory"})
    text = prometheus_metrics(strays)
    assert layer_value(text, "mipart_nginx_stray_workers", "back") == 3
    assert layer_value(text, "mipart_nginx_config_current", "back") == 0
    assert layer_value(text, "mipart_nginx_config_current", "front") == 1
    assert metric_sum(text, "mipart_files_ok") == 0
    assert metric_sum(prometheus_metrics(snap()), "mipart_nginx_config_current") == 2  # both layers current
    front_file = snap(front={"files_error": "cannot write /run/mipart/nginx-front: Not a directory"})
    assert metric_sum(prometheus_metrics(front_file), "mipart_files_ok") == 0
