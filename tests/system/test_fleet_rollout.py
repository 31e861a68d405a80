"""The collection's rollout playbook (mipart.host.rollout) over three mipart hosts behind HAProxy, which
health-checks each host's readiness path, with a client loop through it: each scenario prints what the
clients saw.

One bed serves every scenario (booting it takes most of a test's time). Each scenario starts from whatever
profile the fleet serves, as long as every host serves the same one (checked first), so each also runs on
its own: (b) a compute change on one GPU needs the memory mode the bed boots with (NPS1), so it comes first;
(c) leaves its canary drained with a broken profile until it rolls the old one back, so it comes last.
"""

from __future__ import annotations

import json

import pytest

from .controller import Run
from .fleet import ENGINE, Host, profile, wait
from .rollout_bed import HOST_WIDE, ROLLING, RolloutBed, digest, failed, status

DRAIN, APPLY = "Drain the host and wait out its notice", "Apply it and wait until the host serves it"


@pytest.fixture(scope="module")
def bed(tmp_path_factory, deb, ansible_bin):
    with RolloutBed(tmp_path_factory.mktemp("rollout"), deb, ansible_bin) as bed:
        print(f"fleet up: {', '.join(f'{k} {v:.1f}s' for k, v in bed.fleet.timings.items())}")
        yield bed


def said(label: str, run: Run, seen: dict[str, int], taken_out: dict[str, int]) -> None:
    """The scenario's figures, as the test prints them."""
    print(
        f"{label}: {failed(seen)} failed client requests of {sum(seen.values())} {seen}; playbook {run.seconds:.1f}s, "
        f"exit {run.done.returncode}; taken out of HAProxy: {taken_out}; recap {run.recap()}"
    )


def assert_serves_its_profile(host: Host) -> None:
    """The agent runs the profile on the host's disk, on the partitions it asks, and the host is in rotation."""
    now = status(host)
    assert now["profile"]["digest"] == digest(host) and now["partition"]["matches"] is True, now
    assert now["readiness"] == {"ready": True, "reason": None, "since": None, "drained": False}, now["readiness"]


def test_b_a_compute_change_on_one_gpu_rolls_per_gpu_with_no_failed_request_and_no_host_drained(bed):
    assert "memory: NPS1" in bed.serving()
    run, seen, taken_out = bed.rollout(profile(gpus=ROLLING))
    said("(b) a compute change on one GPU, per GPU", run, seen, taken_out)
    assert run.done.returncode == 0, run.output[-8000:]
    assert failed(seen) == 0 and seen.get("200", 0) > 0, seen
    assert taken_out == dict.fromkeys(bed.names, 0)
    plans = run.task("Plan the profile on the host")
    assert sorted(plans) == bed.names
    assert all(c.result["rollout"]["mode"] == "rolling" and not c.result["outage"] for [c] in plans.values())
    assert all(c.status == "skipped" for cases in run.task(DRAIN).values() for c in cases)
    for host in bed.fleet.hosts:
        assert_serves_its_profile(host)
        units = json.loads(host.machine.run("mipart status --json").stdout)["instances"]
        assert len(units["instances"] if isinstance(units, dict) else units) == 3  # DPX on GPU 0, SPX on GPU 1


def test_a_a_memory_mode_change_drains_each_host_in_turn_with_no_failed_request(bed):
    before = {h.name: status(h)["profile"]["digest"] for h in bed.fleet.hosts}
    check, seen, taken_out = bed.rollout(profile(gpus=HOST_WIDE), "--check", "--diff")
    said("(a) --check --diff first", check, seen, taken_out)
    assert check.done.returncode == 0, check.output[-8000:]
    assert "-gpus: {compute: DPX, memory: NPS1" in check.done.stdout, check.done.stdout[-4000:]  # each host's diff
    assert "+gpus: {compute: DPX, memory: NPS2" in check.done.stdout
    assert all(c.changed for cases in check.task(DRAIN).values() for c in cases)  # each would be drained
    assert sorted(check.task(DRAIN)) == bed.names
    assert all(c.status == "skipped" for cases in check.task(APPLY).values() for c in cases)
    assert {h.name: status(h)["profile"]["digest"] for h in bed.fleet.hosts} == before
    assert all(not status(h)["readiness"]["drained"] for h in bed.fleet.hosts)
    assert taken_out == dict.fromkeys(bed.names, 0) and failed(seen) == 0

    run, seen, taken_out = bed.rollout(profile(gpus=HOST_WIDE))
    said("(a) a memory mode change, a driver reload on every host", run, seen, taken_out)
    assert run.done.returncode == 0, run.output[-8000:]
    assert failed(seen) == 0 and seen.get("200", 0) > 0, seen
    assert taken_out == dict.fromkeys(bed.names, 1), "each host left the balancer once, while it was drained"
    drains = run.task(DRAIN)
    assert sorted(drains) == bed.names and all(c.changed for [c] in drains.values())
    assert run.done.stdout.count(f"TASK [{APPLY}]") == 2, "two waves: the canary, then the other two"
    assert sorted(run.task(APPLY)) == bed.names
    for host in bed.fleet.hosts:
        assert_serves_its_profile(host)


def test_d_a_second_run_of_the_same_rollout_changes_nothing(bed):
    text = bed.serving()
    run, seen, taken_out = bed.rollout(text)
    said("(d) the same rollout again", run, seen, taken_out)
    assert run.done.returncode == 0, run.output[-8000:]
    assert run.recap() == {
        n: {"ok": run.recap()[n]["ok"], "changed": 0, "unreachable": 0, "failed": 0} for n in bed.names
    }
    assert all(c.status == "skipped" for cases in run.task(DRAIN).values() for c in cases)
    assert all(c.result["action"] == "none" for cases in run.task(APPLY).values() for c in cases)
    assert failed(seen) == 0 and taken_out == dict.fromkeys(bed.names, 0)


def test_c_a_profile_that_fails_on_the_canary_stops_the_rollout_and_keeps_the_canary_drained_until_fixed(bed):
    old = bed.serving()
    assert ENGINE in old
    broken = old.replace(ENGINE, '["/bin/false"]')  # valid, but its instances exit at once: never ready
    canary, *others = bed.fleet.hosts
    old_digests = {h.name: status(h)["profile"]["digest"] for h in others}
    before = bed.taken_out()
    run, seen, _ = bed.rollout(broken, "-e", "mipart_apply_timeout=20")
    # The canary is drained without waiting out its notice (the playbook reports the failure at once):
    # HAProxy takes it out within its two checks.
    out = lambda: bed.balancer.servers()[canary.name]["status"].startswith("DOWN")  # noqa: E731 - not "UP 1/2"
    wait(out, 30, "HAProxy takes the drained canary out")
    taken_out = {name: n - before[name] for name, n in bed.taken_out().items()}
    said("(c) a profile whose instances never become ready", run, seen, taken_out)
    assert run.done.returncode != 0
    recap = run.recap()
    assert recap[canary.name]["failed"] == 1, run.output[-6000:]
    assert all(recap[h.name]["failed"] == 0 and recap[h.name]["changed"] == 0 for h in others), recap
    assert sorted(run.task(APPLY)) == [canary.name], "the rollout went past the canary"
    readiness = status(canary)["readiness"]
    assert readiness["drained"] is True and readiness["ready"] is False, readiness
    assert readiness["reason"].startswith("drained: mipart rollout failed on this host"), readiness
    assert taken_out[canary.name] == 1
    servers = bed.balancer.servers()
    assert servers[canary.name]["status"].startswith("DOWN")
    for host in others:
        assert host.machine.run("cat /etc/mipart/profile.yaml").stdout == old
        assert_serves_its_profile(host)
        assert status(host)["profile"]["digest"] == old_digests[host.name]
        assert servers[host.name]["status"] == "UP" and taken_out[host.name] == 0
    assert failed(seen) == 0, seen

    # The operator puts the old profile back and runs the rollout again: the canary serves it and is undrained
    # (its drain is the rollout's own); the others run it already.
    run, seen, _ = bed.rollout(old)
    said("(c) then the old profile again", run, seen, {})
    assert run.done.returncode == 0, run.output[-8000:]
    assert {name: r["changed"] > 0 for name, r in run.recap().items()} == {
        canary.name: True,
        **{h.name: False for h in others},
    }
    for host in bed.fleet.hosts:
        assert_serves_its_profile(host)
    wait(lambda: bed.balancer.servers()[canary.name]["status"] == "UP", 30, "HAProxy takes the canary back")
    assert failed(seen) == 0, seen
