"""The agent's parts apart from its loop: spec files, the snapshot and its views, STATUS=, probing
results, dead units, profile reading. No processes, no network."""

from __future__ import annotations

import asyncio
import json
import time

from eventlog import Log
from specs import SPECS

from mipart.api import views
from mipart.api.contract import to_json_text
from mipart.api.host import HostSnapshot
from mipart.daemon import probing, profiles, recovery, specfiles
from mipart.daemon.notify import status_line
from mipart.daemon.snapshot import AgentSnapshot, AgentStatus, LayerState
from mipart.health.machine import InstanceHealth
from mipart.health.probe import ProbeResult
from mipart.profile.schema import HealthSpec
from mipart.values import UnitState

# -- spec files --------------------------------------------------------------------------------


def test_spec_files_are_written_once_restored_and_pruned(tmp_path):
    specfiles.write_specs(tmp_path, SPECS)
    path = tmp_path / "instances" / "2.json"
    assert json.loads(path.read_text())["socket"] == "/run/mipart-vllm/sockets/2/http.sock"
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    specfiles.write_specs(tmp_path, SPECS)
    assert path.stat().st_mtime_ns == before  # unchanged text: not rewritten
    path.unlink()
    log = Log()
    specfiles.restore_missing(tmp_path, SPECS, log)
    assert path.exists() and log.events == [("warning", "files.missing", {"specs": "2", "action": "rewrite"})]
    (tmp_path / "instances" / "9.json").write_text("{}")
    specfiles.remove_stale_specs(tmp_path, {0: SPECS[0]})
    assert sorted(p.name for p in (tmp_path / "instances").glob("*.json")) == ["0.json"]


# -- snapshot, views, STATUS= ----------------------------------------------------------------------


def snapshot(**status) -> AgentSnapshot:
    health = {
        0: InstanceHealth(0, state="ready"),
        1: InstanceHealth(1, state="degraded", last_error="slow"),
        2: InstanceHealth(2, state="draining", restarts_total=2),
        7: InstanceHealth(7, state="ready"),
    }
    return AgentSnapshot.of("/etc/p.yaml", True, AgentStatus(**status), SPECS, health)


def test_the_snapshot_is_a_copy_with_one_view_per_instance():
    status = AgentStatus(profile_digest="abc")
    health = {0: InstanceHealth(0, state="ready")}
    snap = AgentSnapshot.of("/p", True, status, SPECS, health)
    status.profile_error, health[0].state = "later", "failed"
    assert snap.status.profile_error == "" and snap.instances[0].state == "ready"
    assert list(snap.instances) == [0, 1, 2, 3]
    assert snap.instances[3].state == "starting" and snap.instances[3].since is None  # no health record yet


def test_counts_and_status_line():
    snap = snapshot()
    assert snap.counts() == {
        "ready": 1,
        "degraded": 1,
        "starting": 1,
        "unhealthy": 0,
        "restarting": 0,
        "draining": 1,
        "failed": 0,
    }
    assert snap.ready_count == 2  # instance 7 is not in the profile
    assert status_line(snap) == "2/4 instances ready"
    assert (
        status_line(snapshot(profile_error="p:1:1: bad", nginx=LayerState(error="x")))
        == "2/4 instances ready; profile rejected, running the last good one: p:1:1: bad"
    )
    assert (
        status_line(snapshot(reconcile_error="does not fit", nginx=LayerState(error="x")))
        == "2/4 instances ready; does not fit"
    )
    assert status_line(snapshot(nginx=LayerState(error="emerg"))) == "2/4 instances ready; nginx config rejected: emerg"
    sweeping = "profile override by mipart bench sweep: /run/mipart/profile.override.yaml"
    assert (
        status_line(snapshot(profile_override="/run/mipart/profile.override.yaml"))
        == f"2/4 instances ready; {sweeping}"
    )
    assert (
        status_line(snapshot(profile_override="/run/mipart/profile.override.yaml", nginx=LayerState(error="emerg")))
        == f"2/4 instances ready; nginx config rejected: emerg; {sweeping}"
    )  # the override is said whatever else is wrong


def test_views_fill_the_response_types():
    snap = snapshot(last_reconcile=1_700_000_000.0)
    host = HostSnapshot(units={2: ("active", "running")}, nginx_running=True)
    one = json.loads(to_json_text(views.instance(snap.instances[2], host)))
    assert one["api_version"] == 2 and one["state"] == "draining" and one["ready"] is False and one["restarts"] == 2
    assert (one["active_state"], one["sub_state"]) == ("active", "running") and one["devices"] == [
        "/dev/kfd",
        "/dev/dri/renderD130",
    ]
    listed = json.loads(to_json_text(views.instances(snap, host)))
    assert listed["instances"][2] == one and [i["number"] for i in listed["instances"]] == [0, 1, 2, 3]
    st = json.loads(to_json_text(views.status(snap, host)))
    assert st["instances"]["draining"] == 1 and st["instances"]["total"] == 4
    assert st["partition"]["matches"] is None and st["reconcile"]["last"] == "2023-11-14T22:13:20Z"
    [target] = [t for t in views.targets(snap, "127.0.0.1:8049") if t["labels"]["instance_unit"].endswith("@1.service")]
    assert target["targets"] == ["127.0.0.1:8049"]  # the agent's API: instances have no port
    assert target["labels"]["gpu"] == "1" and target["labels"]["__metrics_path__"] == "/v1/instances/1/metrics"


# -- probing and recovery ------------------------------------------------------------------------------


def test_a_rolling_instance_is_ready_only_on_its_new_server():
    due = [InstanceHealth(0), InstanceHealth(1), InstanceHealth(2, state="ready")]
    results = [ProbeResult(True), ProbeResult(True), ProbeResult(True)]
    asked = []

    async def digests():
        asked.append(1)
        return {0: "old", 1: SPECS[1].digest(), 2: "old"}

    got = asyncio.run(probing.only_new_servers(due, results, {0, 1, 2}, SPECS, digests))
    assert got == [probing.OLD_SERVER, ProbeResult(True), ProbeResult(True)]  # 2 is in rotation already
    assert asyncio.run(probing.only_new_servers(due, results, set(), SPECS, digests)) == results
    assert asked == [1]  # no unit read when no rolling instance answered


def test_recorded_results_log_each_state_change():
    log, h = Log(), InstanceHealth(1)
    assert probing.record_results([h], [ProbeResult(True)], HealthSpec(), SPECS, log) is True
    assert log.events == [
        ("info", "instance.ready", {"unit": "mipart-vllm@1", "gpu": "1", "reason": "/health 200", "was": "starting"})
    ]
    assert probing.record_results([h], [ProbeResult(True)], HealthSpec(), SPECS, log) is False and len(log.events) == 1


def test_a_dead_unit_leaves_rotation_at_once():
    log = Log()
    health = {n: InstanceHealth(n, state="ready") for n in SPECS}
    states = {
        0: UnitState("active", "running"),
        1: UnitState("failed", "failed"),
        3: UnitState("active", "running"),
    }
    assert recovery.mark_gone(health, SPECS, states, log) is True
    assert [(n, h.state) for n, h in health.items()] == [(0, "ready"), (1, "unhealthy"), (2, "unhealthy"), (3, "ready")]
    assert [f["reason"] for _, _, f in log.events] == ["unit failed/failed", "unit not running"]


def test_restarts_back_off_and_log():
    class Runner:
        restarted: list[int] = []

        def restart(self, n):
            self.restarted.append(n)

    log, runner = Log(), Runner()
    health = {1: InstanceHealth(1, state="unhealthy", last_error="/health answered 503")}
    asyncio.run(recovery.restart_due(health, SPECS, HealthSpec(restart_backoff=2.0), runner, log))
    assert runner.restarted == [1] and health[1].state == "restarting"
    assert log.events == [
        (
            "warning",
            "instance.restart",
            {"unit": "mipart-vllm@1", "gpu": "1", "reason": "/health answered 503", "attempt": 1, "next_backoff": "2s"},
        )
    ]


def test_last_error_is_how_the_server_ended_read_once_per_death():
    class Runner:
        asked: list[int] = []

        def last_exit(self, n):
            self.asked.append(n)
            if n == 2:
                raise RuntimeError("bus gone")
            return "exited with status 1 (exit-code); torch.OutOfMemoryError: HIP out of memory"

    log, runner = Log(), Runner()
    health = {
        0: InstanceHealth(0, state="ready"),
        1: InstanceHealth(1, state="unhealthy", last_error="ClientConnectorError"),
        2: InstanceHealth(2, state="unhealthy", last_error="unit not running"),
        3: InstanceHealth(3, state="starting"),
    }
    states = {
        0: UnitState("active", "running"),
        1: UnitState("failed", "failed"),
    }  # 3: its first start not listed yet
    asyncio.run(recovery.tell_exits(health, SPECS, states, runner, log))
    assert runner.asked == [1, 2]  # not the running one, nor one still starting
    assert health[1].last_error == "exited with status 1 (exit-code); torch.OutOfMemoryError: HIP out of memory"
    assert health[2].last_error == "unit not running"  # a runner that cannot tell leaves the reason as it was
    assert [e[1] for e in log.events] == ["instance.exited"]
    asyncio.run(recovery.tell_exits(health, SPECS, states, runner, log))
    assert runner.asked == [1, 2]  # once per death
    health[1].begin_restart(time.monotonic(), HealthSpec())
    asyncio.run(recovery.tell_exits(health, SPECS, {**states, 1: UnitState("failed", "failed")}, runner, log))
    assert runner.asked == [1, 2, 1]  # the next death is read again


def test_a_return_code_reads_like_systemd_says_it():
    from mipart.runners import exits

    assert exits.exit_status(exits.returncode_props(3)) == "exited with status 3 (exit-code)"
    assert exits.exit_status(exits.returncode_props(-9)) == "killed by signal 9 (signal)"
    assert exits.exit_status(exits.returncode_props(0)) == exits.exit_status(exits.returncode_props(None)) == ""


# -- the profile ----------------------------------------------------------------------------------


def test_a_bad_profile_is_reported_and_the_good_digest_kept(tmp_path):
    path = tmp_path / "profile.yaml"
    path.write_text("version: 1\nservices: [\n")
    log = Log()
    profile, error = profiles.read_profile(str(path), log, "0123456789abcdef")
    assert profile is None and error.startswith(str(path))
    assert log.events and all(e[1] == "profile.invalid" and e[2]["kept"] == "0123456789ab" for e in log.events)
