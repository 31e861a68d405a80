"""The Ansible collection's reading of mipart's reports (its module_utils/reports.py, pure), on
responses built from mipart's own API types: the modules and the agent cannot drift apart."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace

import statuses
from conftest import REPO, create_sim, mipart

from mipart.api.contract import Instances, Repartition, to_json

_SPEC = importlib.util.spec_from_file_location(
    "fleet_reports", REPO / "ansible_collections/mipart/host/plugins/module_utils/reports.py"
)
reports = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reports)

DIGEST = statuses.DIGEST
OTHER = "e" * 64


def report(status=None, instances=None) -> dict:
    """What `mipart status --json` prints while the agent answers (cli/status.py)."""
    status = status or statuses.status()
    listed = instances or statuses.instances(4)
    answer = {"answering": True, "api": "127.0.0.1:8049"}
    return json.loads(json.dumps({"agent": answer, "status": to_json(status), "instances": to_json(listed)}))


def test_a_host_serving_the_profile_waits_on_nothing():
    assert reports.pending(report(), DIGEST) == []
    assert reports.agent_words(report()) == []


def test_each_thing_the_host_still_does_is_named():
    busy = statuses.status(
        OTHER,
        gpus=(statuses.gpu(0, want=("QPX", "NPS2")),),
        repartition=Repartition(phase="starting", started=None, finished=None, error=""),
    )
    listed = Instances(instances=(statuses.instance(0), statuses.instance(1, "starting")))
    assert reports.pending(report(busy, listed), DIGEST) == [
        f"the agent runs profile {OTHER[:12]}, not {DIGEST[:12]}",
        "a repartition is starting",
        "the partitions do not match the profile",
        "mipart-vllm@1.service is starting",
    ]


def test_degraded_instances_still_serve():
    listed = Instances(instances=(statuses.instance(0, "degraded"),))
    assert reports.pending(report(instances=listed), DIGEST) == []


def test_the_agents_own_words_for_everything_it_reports_wrong():
    failing = statuses.status(
        profile_error="p.yaml:3:3: unknown key", reconcile_error="no GPU 9", override="/run/o.yaml"
    )
    failing = replace(
        failing, units_error="systemd unreachable", nginx=replace(failing.nginx, problem="nginx -t failed")
    )
    gone = replace(statuses.instance(2, "failed"), last_error="exit 1; gave up after 3 restarts")
    words = reports.agent_words(report(failing, Instances(instances=(statuses.instance(0), gone))))
    assert words == [
        "profile_error: p.yaml:3:3: unknown key",
        "profile.override: /run/o.yaml",
        "reconcile.error: no GPU 9",
        "units_error: systemd unreachable",
        "nginx.problem: nginx -t failed",
        "mipart-vllm@2.service failed: exit 1; gave up after 3 restarts",
    ]


def test_a_refusal_is_a_profile_error_new_since_the_reload():
    refused = report(statuses.status(OTHER, profile_error="p.yaml:3:3: unknown key"))
    assert reports.refusal(refused, before="") == "p.yaml:3:3: unknown key"
    assert reports.refusal(refused, before="p.yaml:3:3: unknown key") == ""  # not yet read again
    assert reports.refusal(report(), before="") == ""


def test_plan_changes_name_writes_reloads_and_the_profile_to_load():
    plan = {"partition": {"reload": False, "writes": []}}
    assert reports.plan_changes(plan, report(), DIGEST) == []
    assert reports.plan_changes(plan, report(), OTHER) == [
        f"the agent loads profile {OTHER[:12]} (it runs {DIGEST[:12]})"
    ]
    writes = [
        {"gpu": 0, "attribute": "current_memory_partition", "value": "NPS4", "after_reload": False},
        {"gpu": 1, "attribute": "current_compute_partition", "value": "CPX", "after_reload": True},
    ]
    assert reports.plan_changes({"partition": {"reload": True, "writes": writes}}, report(), DIGEST) == [
        "a driver reload (the memory partition changes)",
        "2 partition write(s) on GPU(s) 0, 1",
    ]


def test_an_agent_that_does_not_answer_as_the_cli_reports_it(tmp_path):
    """The real `mipart status --json` with nothing listening: waiting, and a start in the plan."""
    sim = create_sim(tmp_path, model="mi300x", gpus=1, compute="SPX", memory="NPS1")
    profile = sim.profile("services: {}\napi: {listen: '127.0.0.1:9'}\n")
    done = sim.run("status", "--json", "--profile", str(profile))
    assert done.returncode == 3, done.stderr
    down = json.loads(done.stdout)
    assert reports.loaded_digest(down) == ""
    [line] = reports.pending(down, DIGEST)
    assert line.startswith("mipart-agent is not answering on 127.0.0.1:9 (")
    plan = json.loads(mipart("plan", "--json", "--profile", profile, env=sim.env).stdout)
    assert reports.plan_changes(plan, down, DIGEST) == ["mipart-agent starts (it is not answering)"]
